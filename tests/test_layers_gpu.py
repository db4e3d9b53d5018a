"""On a GPU: every layer implementation against the reference scan.

The CPU tests' cases (tests/test_fused.py `all_cases`: every cell, 1-3 layers,
with and without a reset mask, zero and carried state; forward outputs, final
carries and gradients with respect to the parameters, the inputs and the
incoming carry), run on the GPU at `jax.default_matmul_precision("highest")`
(JAX's default there is TF32, not fp32). Each layer runs in fp32 and is
compared with the float64 reference scan on the very same values, to the CPU
tests' 1e-5. "fused_bf16" gets the looser 5e-2 of its CPU test, as a relative
error of each array's norm: with bf16's ~3 significant digits, entries that
cancel (IRNN's gradients, 30x inputs) miss any elementwise bound, while a wrong
gate or gradient is off by O(1).

The "cudnn" layer must run cuDNN itself here, not its fallback: its HLO holds
cuDNN's RNN custom calls. Every test here is marked `gpu` and skips elsewhere
(tests/conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_cases import CELL_NAMES, B, D, H, T, all_cases, assert_trees_close

from lstm_jax import cells, recurrent
from lstm_jax.layers import cudnn

pytestmark = pytest.mark.gpu

PRECISION = "highest"
TOLERANCE = {"scan": 1e-5, "fused": 1e-5, "fused_remat": 1e-5, "cudnn": 1e-5, "fused_bf16": 5e-2}
CUDNN_CELLS = ["lstm"]  # cuDNN runs the LSTM only; other cells take the "fused" path


def assert_trees_close_in_norm(a, b, tol):
    """||x - y|| <= tol * ||y|| for every pair of leaves."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.linalg.norm(x - y) <= tol * np.linalg.norm(y), (np.linalg.norm(x - y), tol)


def _check_against_scan(impl, name, num_layers):
    got = all_cases(impl, name, num_layers, jnp.float32, PRECISION)
    want = all_cases("scan", name, num_layers, None, PRECISION)  # float64
    got = jax.tree.map(lambda a: np.asarray(a, np.float64), got)
    if impl == "fused_bf16":
        assert_trees_close_in_norm(got, want, tol=TOLERANCE[impl])
    else:
        assert_trees_close(got, want, tol=TOLERANCE[impl])


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("impl", ["scan", "fused", "fused_remat", "fused_bf16"])
def test_layer_equals_reference_scan_on_gpu(impl, name, num_layers):
    _check_against_scan(impl, name, num_layers)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("name", CUDNN_CELLS)
def test_cudnn_equals_reference_scan_on_gpu(name, num_layers):
    """Without a reset cuDNN computes the layer (checked below); with one, "fused"."""
    _check_against_scan("cudnn", name, num_layers)


def test_cudnn_layer_runs_cudnn_itself():
    """Forward and backward of both layers of a 2-layer LSTM stack lower to
    cuDNN's RNN custom calls (the comparison above would also pass if every
    layer fell back to "fused")."""
    assert cudnn.cudnn_available()
    cell = cells.make_cell("lstm")
    layers = recurrent.init_stack(jax.random.key(0), cell, D, H, 2)
    carries = recurrent.zero_stack_carry(cell, 2, B, H)

    def loss(layers, xs):
        _, hs = recurrent.run_stack(cell, layers, xs, carries, impl="cudnn")
        return jnp.sum(hs)

    with jax.default_matmul_precision(PRECISION):
        hlo = jax.jit(jax.grad(loss)).lower(layers, jnp.ones((B, T, D))).as_text()
    calls = [line for line in hlo.splitlines() if "cudnn_rnn" in line and "custom_call" in line]
    backward = [line for line in calls if "bwd" in line]
    assert len(calls) - len(backward) == 2 and len(backward) == 2, calls
