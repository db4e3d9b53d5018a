"""The fast layers (lstm_jax/layers/fused.py, cudnn.py) against plain autodiff of the
reference scan.

Exactness is checked in float64, so that 1e-5 measures the math and not the
rounding: forward outputs, final carries, and gradients with respect to the
parameters, the inputs and the incoming carry, for every cell, 1-3 layers,
with and without reset masks and with a zero or a carried (random) state.
"""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from layer_cases import (
    CELL_NAMES,
    B,
    D,
    H,
    T,
    all_cases,
    assert_trees_close,
    make,
    reset_mask,
    value_and_grads,
)

from lstm_jax import cells, recurrent
from lstm_jax.layers import LAYER_IMPLS, cudnn, fallback, fused, get_layer_impl, scan
from lstm_jax.layers.fallback import LayerFallbackWarning
from lstm_jax.model import LanguageModel, LMConfig


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_fused_equals_autodiff_of_scan(name, num_layers):
    assert_trees_close(all_cases("fused", name, num_layers), all_cases("scan", name, num_layers))


@pytest.mark.slow
@pytest.mark.parametrize("name", CELL_NAMES)
def test_remat_equals_scan_with_tail_chunk(name):
    """ "fused_remat" at T = 7: chunks of ceil(sqrt(7)) = 3, so two
    checkpointed chunks and a tail of 1 step (where stream 2 resets)."""
    assert fused.auto_chunk(T) == 3 and T % 3 == 1
    assert_trees_close(all_cases("fused_remat", name, 2), all_cases("scan", name, 2))


def test_remat_saves_memory():
    """At T = 400 the checkpointed layer's backward needs far less scratch
    memory than the plain scan's (XLA's own accounting, no execution)."""
    cell = cells.make_cell("lstm")
    t, b, h = 400, 8, 64
    params = cell.init(jax.random.key(0), h, h)
    xs = jnp.ones((t, b, h))
    carry = cell.zero_carry(b, h)

    def peak(impl):
        def loss(params, xs):
            _, hs = get_layer_impl(impl)(cell, params, xs, carry, None, unroll=1)
            return jnp.sum(hs)

        compiled = jax.jit(jax.grad(loss, (0, 1))).lower(params, xs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert peak("fused_remat") < peak("scan") / 3


def test_unroll_and_unknown_options():
    with jax.enable_x64(True):
        cell, layers, xs, carried = make("lstm", 2)
        ref = recurrent.run_stack(cell, layers, xs, carried, reset_mask())
        got = recurrent.run_stack(cell, layers, xs, carried, reset_mask(), unroll=3, impl="fused")
        assert_trees_close(got, ref)
    with pytest.raises(ValueError, match="remat_chunk must be >= 1"):
        fused.fused_layer_time_major(cell, layers[0], xs, carried[0], remat_chunk=0)


def test_bf16_compute_runs_and_stays_close():
    """bf16 matmul operands, fp32 accumulation/params/carry: close to fp32,
    and the gradients keep fp32 dtypes."""
    cell, layers, xs, carried = make("lstm", 2, dtype=jnp.float32)
    run = jax.jit(lambda impl, *a: value_and_grads(cell, *a, reset_mask(), impl), static_argnums=0)
    ref = run("fused", layers, xs, carried)
    got = run("fused_bf16", layers, xs, carried)
    assert_trees_close(got, ref, tol=5e-2)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(got[2]))
    assert not np.allclose(got[1][1], ref[1][1], atol=1e-7)  # bf16 really was used


def test_lm_with_fused_impl_matches_scan():
    """The whole language model (embedding, stack, readout) and its gradient."""
    cfg = LMConfig(vocab_size=11, embed_dim=6, hidden_size=8, num_layers=2)
    tokens = jax.random.randint(jax.random.key(1), (3, 9), 0, 11)
    reset = jnp.zeros((3, 9), bool).at[1, 4].set(True)

    params = LanguageModel(cfg).init(jax.random.key(0))

    @functools.partial(jax.jit, static_argnums=0)
    def loss_and_grad(impl, params):
        model = LanguageModel(dataclasses.replace(cfg, impl=impl))

        def loss(params):
            logits, carry = model.apply(params, tokens, model.init_carry(3), reset=reset)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + jnp.sum(carry[0].h)

        return jax.value_and_grad(loss)(params)

    assert_trees_close(loss_and_grad("fused", params), loss_and_grad("scan", params), tol=1e-5)


def test_cudnn_weight_layout_matches_reference_lstm():
    """The packing `to_cudnn_weights` feeds jax.experimental.rnn; its CPU
    reference (`lstm_ref`, same layout) must reproduce our LSTM layer. On CPU
    the "cudnn" impl itself falls back to "fused"."""
    from jax.experimental import rnn

    with jax.enable_x64(True):
        cell, layers, xs, carried = make("lstm", 1)
        (h, c), ys = recurrent.run_layer(cell, layers[0], xs, carried[0])
        w = cudnn.to_cudnn_weights(layers[0])
        assert w.shape == (rnn.get_num_params_in_lstm(D, H, 1, False),)
        w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, H, 1, False)
        y_ref, h_ref, c_ref = rnn.lstm_ref(
            xs,
            carried[0].h[None],
            carried[0].c[None],
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            jnp.full((B,), T, jnp.int32),
            D,
            H,
            1,
            0.0,
            False,
        )
        np.testing.assert_allclose(ys, y_ref, atol=1e-10)
        np.testing.assert_allclose(h, h_ref[0], atol=1e-10)
        np.testing.assert_allclose(c, c_ref[0], atol=1e-10)
    if jax.default_backend() == "cpu":
        assert not cudnn.cudnn_available()


def test_registered_names():
    for name in ("fused", "fused_remat", "fused_bf16"):
        assert get_layer_impl(name) is fused.LAYER_IMPLS[name]
    assert get_layer_impl("scan") is scan.scan_layer_time_major
    assert get_layer_impl("cudnn") is cudnn.cudnn_layer_time_major
    assert sorted(LAYER_IMPLS) == sorted(["scan", *fused.LAYER_IMPLS, "cudnn", "onednn"])
    assert recurrent.get_layer_impl is get_layer_impl  # the stack reads the one registry
    with pytest.raises(ValueError, match=r"implementation 'fast'; valid: \[.*'fused'"):
        get_layer_impl("fast")
    assert fused.auto_chunk(10_000) == 100 and fused.auto_chunk(1) == 1


def _fallback_messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, LayerFallbackWarning)]


def test_cudnn_fallback_warns_once_per_reason(monkeypatch):
    """Off a GPU, "cudnn" runs as "fused" (the same values) and says why, once
    per reason however often it is traced; another reason is said once more."""
    if cudnn.cudnn_available():
        pytest.skip("cuDNN runs here; tests/test_layers_gpu.py covers it")
    monkeypatch.setattr(fallback, "_warned", set())
    cell, layers, xs, carried = make("lstm", 1, dtype=jnp.float32)
    xs = jnp.swapaxes(xs, 0, 1)  # [T, B, D]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = cudnn.cudnn_layer_time_major(cell, layers[0], xs, carried[0])
        cudnn.cudnn_layer_time_major(cell, layers[0], xs, carried[0])
        cudnn.cudnn_layer_time_major(cell, layers[0], xs, carried[0], reset_mask().T)
    messages = _fallback_messages(record)
    assert len(messages) == 2, messages
    assert messages[0].startswith('layer "cudnn" runs as "fused"') and "backend: cpu" in messages[0]
    assert "no mid-sequence reset" in messages[1]
    assert_trees_close(got, fused.fused_layer_time_major(cell, layers[0], xs, carried[0]), 0)


def test_bench_cli_and_json_rows():
    """The benchmark's plumbing (no timing): options, the JSON row, the FLOP
    count behind the roofline column (~20 MFLOP per token at the course-project size)."""
    from benchmarks import configs, peers, tables, throughput, timing

    with pytest.raises(SystemExit):
        throughput.parse_args(["--configs", "no_such_config"])
    with pytest.raises(SystemExit):
        throughput.parse_args(["--impls", "no_such_impl"])
    args = throughput.parse_args(["--configs", "seeds", "--threads", "2,1", "--xla_option", "a=1"])
    assert args.threads == [2, 1] and args.compiler_options == {"a": 1}
    assert args.configs == ["course_project"]  # the config's older name still works
    args = throughput.parse_args(["--impls", "scan,fused", "--cpu_devices", "2"])
    assert args.impls == ["scan", "fused", "scan@2cpu", "fused@2cpu"]
    assert configs.split_impl("fused@2cpu") == ("fused", 2, "default")
    assert configs.split_impl("fused") == ("fused", 1, "default")
    assert configs.split_impl("fused+onednn@2cpu") == ("fused", 2, "onednn")
    args = throughput.parse_args(["--impls", "fused", "--cpu_dots", "onednn", "--cpu_devices", "2"])
    assert args.impls == ["fused", "fused+onednn", "fused@2cpu", "fused+onednn@2cpu"]
    both = timing.Row("zaremba_small", "fused+onednn@2cpu", configs.TRAIN_CONFIGS["zaremba_small"])
    assert tables.label(both) == "ours: fused (custom VJP), oneDNN dots, rows over 2 CPU devices"
    with pytest.raises(SystemExit):
        throughput.parse_args(["--cpu_dots", "mkl"])
    split = timing.Row("char_rnn", "fused@2cpu", configs.TRAIN_CONFIGS["char_rnn"])
    assert tables.label(split) == "ours: fused (custom VJP), rows over 2 CPU devices"
    with pytest.raises(SystemExit):
        throughput.parse_args(["--cpu_devices", "-1"])
    shape = configs.TRAIN_CONFIGS["course_project"]
    assert shape.train_flops_per_token == pytest.approx(19.9e6, rel=0.01)
    ours = timing.Row("course_project", "fused", shape, times=[0.5, 1.0, 0.75], cpu=[1.0, 1.0, 1.0])
    peer = timing.Row("course_project", "torch", shape, times=[1.5, 1.5, 1.5], cpu=[1.0, 1.0, 1.0])
    rates = timing.MatmulRates("cpu", "cpu", {"float32": 270.0})
    row = ours.as_json(rates, tables.ratios(ours, [ours, peer]))
    shape_keys = {"vocab", "embed", "hidden", "layers", "batch", "seq"}
    assert {"config", "impl", "tokens_per_s", *shape_keys} <= row.keys()
    assert row["tokens_per_s"] == pytest.approx(6400 / 0.75, abs=0.1)  # median step
    assert row["ratios"]["vs_torch"] == pytest.approx(2.0)
    # PyTorch also runs with freed memory retained; "best row" takes the faster.
    args = throughput.parse_args(["--threads", "2,1", "--torch_malloc", "retain"])
    assert args.torch_malloc == ["retain"] and args.malloc == "retain"
    with pytest.raises(SystemExit):
        throughput.parse_args(["--torch_malloc", "jemalloc"])
    assert peers.torch_impl(2, [2, 1], "retain") == "torch_retain"
    assert peers.torch_impl(1, [2, 1], "default") == "torch_1t"
    fast = timing.Row("course_project", "torch_retain", shape, times=[0.5, 0.5, 0.5], cpu=[1.0] * 3)
    both = tables.ratios(ours, [ours, peer, fast])
    assert both["vs_torch"] == pytest.approx(2.0)
    assert both["vs_torch_best"] == pytest.approx(2 / 3)
    assert both["vs_torch_as_shipped"] == pytest.approx(2.0)  # the retain row left out
    assert "vs_torch_as_shipped" not in tables.ratios(ours, [ours, fast])
    table = tables.markdown([ours, peer, fast], rates, [])
    ours_line = next(line for line in table.splitlines() if "| ours: fused" in line)
    assert "| 2.00x | 0.67x |" in ours_line  # as shipped, then best row


def test_unknown_cell_falls_back_to_the_reference_scan(monkeypatch):
    """A cell the fused path does not know runs through the reference scan."""

    @dataclasses.dataclass(frozen=True)
    class HalfTanh(cells._CellBase):
        name = "half_tanh"

        def recur(self, params, carry, x_proj):
            h = 0.5 * jnp.tanh(x_proj + carry @ params["w_h"])
            return h, h

    cell = HalfTanh(init_scale=0.3)
    params = cell.init(jax.random.key(0), D, H)
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    carry = cell.zero_carry(B, H)
    assert fused.cell_kind(cell) is None
    monkeypatch.setattr(fallback, "_warned", set())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = fused.fused_layer_time_major(cell, params, xs, carry, reset_mask().T)
        jax.jit(functools.partial(fused.fused_layer_time_major, cell))(params, xs, carry)
    assert _fallback_messages(record) == [
        'layer "fused" runs as "scan": no hand-written backward pass for the cell HalfTanh'
    ]
    ref = scan.scan_layer_time_major(cell, params, xs, carry, reset_mask().T)
    assert_trees_close(got, ref, tol=1e-6)
