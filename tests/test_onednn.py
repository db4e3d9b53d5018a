"""The "onednn" layer (lstm_jax/layers/onednn.py: oneDNN's LSTM primitive through the
XLA FFI) against plain autodiff of the reference scan.

oneDNN computes in fp32, so the layer runs in fp32 here and is compared with
the float64 scan on the same (fp32-rounded) inputs, to 1e-5: forward outputs,
final carries and gradients with respect to the parameters, the inputs and the
incoming carry, for 1-3 layers, with a zero or a carried state, and with a
reset mask (which the primitive cannot express, so "fused" runs it).

Runs where the optional oneDNN wheels are installed (`.[onednn]`, which
`make test` installs); there, a failing build is a failing test, not a skip.
"""

import importlib.metadata
import json
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_python
from layer_cases import B, D, H, T, all_cases, assert_trees_close, reset_mask

from lstm_jax import cells, optim, recurrent, train
from lstm_jax import config as config_lib
from lstm_jax.data.batching import TrainBatcher
from lstm_jax.layers import fallback, onednn
from lstm_jax.layers.fallback import LayerFallbackWarning


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _installed("onednn-devel-cpu-gomp"),
    reason="oneDNN not installed (pip install -e '.[onednn]')",
)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_onednn_equals_autodiff_of_scan(num_layers):
    got = all_cases("onednn", "lstm", num_layers, jnp.float32)
    want = all_cases("scan", "lstm", num_layers, jnp.float64)
    assert_trees_close(jax.tree.map(lambda a: np.asarray(a, np.float64), got), want, tol=1e-5)


def test_vmap_over_models_equals_scan():
    """vmap (over two parameter sets, as a seed sweep does) runs the primitive
    once per mapped row: values and gradients equal the vmapped scan."""
    cell = cells.make_cell("lstm")
    keys = jax.random.split(jax.random.key(1), 2)
    params = jax.vmap(lambda k: recurrent.init_stack(k, cell, D, H, 1)[0])(keys)
    xs = jax.random.normal(jax.random.key(2), (B, T, D))
    carry = recurrent.zero_stack_carry(cell, 1, B, H)[0]

    def loss(params, impl):
        _, hs = recurrent.run_layer(cell, params, xs, carry, impl=impl)
        return jnp.sum(hs**2)

    for f in (loss, jax.grad(loss)):
        got = jax.vmap(lambda p, f=f: f(p, "onednn"))(params)
        want = jax.vmap(lambda p, f=f: f(p, "scan"))(params)
        assert_trees_close(got, want, tol=1e-4)


def _stack_hlo(cell, reset) -> str:
    layers = recurrent.init_stack(jax.random.key(0), cell, D, H, 2)
    carries = recurrent.zero_stack_carry(cell, 2, B, H)

    def loss(layers, xs):
        _, hs = recurrent.run_stack(cell, layers, xs, carries, reset, impl="onednn")
        return jnp.sum(hs)

    xs = jnp.ones((B, T, D))
    return jax.jit(jax.grad(loss)).lower(layers, xs).as_text()


def test_lstm_runs_through_the_primitive():
    """Without a reset, forward and backward of both layers are FFI calls
    (the comparison above would also pass if every layer fell back)."""
    hlo = _stack_hlo(cells.make_cell("lstm"), None)
    assert hlo.count(onednn.FORWARD_TARGET) == 2
    assert hlo.count(onednn.BACKWARD_TARGET) == 2


@pytest.mark.parametrize("name", ["gru", "rnn_tanh"])
def test_other_cells_and_resets_take_the_fused_path(name, monkeypatch):
    """...and say so, once per reason."""
    monkeypatch.setattr(fallback, "_warned", set())
    with pytest.warns(
        LayerFallbackWarning, match=f'"onednn" runs as "fused".*LSTM only, not {name[:3]}'
    ):
        assert onednn.FORWARD_TARGET not in _stack_hlo(cells.make_cell(name), None)
    reset = jnp.asarray(reset_mask())
    with pytest.warns(LayerFallbackWarning, match="no mid-sequence reset"):
        assert onednn.FORWARD_TARGET not in _stack_hlo(cells.make_cell("lstm"), reset)


def test_variable_lengths_run_the_primitive_with_held_gates(monkeypatch):
    """`seq_lengths` on oneDNN (no reset mask): padded steps hold the carry
    through saturated gates (lengths.held_layer). With any initial carry, large
    weights, a row of length 0 and garbage in the padding: the primitive runs
    (no fallback), a length-0 row keeps its carry bit for bit, and outputs,
    carry and gradients equal the float64 masked scan."""
    from lstm_jax import api
    from lstm_jax.layers import lengths

    cell = cells.make_cell("lstm")
    steps, batch = 12, 6
    seq_lengths = jnp.asarray([12, 5, 0, 9, 1, 3])
    keys = jax.random.split(jax.random.key(5), 6)
    params = {
        "w_x": 3 * jax.random.normal(keys[0], (D, 4 * H)),
        "w_h": 3 * jax.random.normal(keys[1], (H, 4 * H)),
        "b": jax.random.normal(keys[2], (4 * H,)),
    }
    valid = lengths.valid_mask(seq_lengths, steps)[..., None]
    xs = jnp.where(valid, jax.random.normal(keys[3], (steps, batch, D)), 1e4)  # garbage padding
    carry = cells.LSTMCarry(
        jax.random.normal(keys[4], (batch, H)), 5 * jax.random.normal(keys[5], (batch, H))
    )

    def run(impl, dtype):
        def loss(p, xs, carry):
            out, hs = api.apply_layer(cell, p, xs, carry, seq_lengths=seq_lengths, impl=impl)
            w = jnp.arange(hs.size, dtype=dtype).reshape(hs.shape) / hs.size
            return jnp.sum(hs * w) + jnp.sum(out.h * 0.3) + jnp.sum(out.c * 0.7), (out, hs)

        cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            *cast((params, xs, carry))
        )

    monkeypatch.setattr(fallback, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerFallbackWarning)
        (_, (out, hs)), grads = run("onednn", jnp.float32)
        hlo = (
            jax.jit(lambda xs: api.apply_layer(cell, params, xs, carry, seq_lengths=seq_lengths))
            .lower(xs)
            .as_text()
        )
    assert onednn.FORWARD_TARGET in hlo  # "auto" with lengths on this CPU: the primitive
    np.testing.assert_array_equal(out.h[2], carry.h[2])  # length 0: the carry as given
    np.testing.assert_array_equal(out.c[2], carry.c[2])
    with jax.enable_x64(True):
        (_, want), want_grads = run("scan", jnp.float64)
    got = jax.tree.map(lambda a: np.asarray(a, np.float64), ((out, hs), grads))
    assert_trees_close(got, (want, want_grads), tol=2e-5)
    assert not np.any(np.asarray(hs) * ~np.asarray(valid))  # padded outputs are zero
    assert not np.any(np.asarray(grads[1]) * ~np.asarray(valid))  # nothing enters the padding


def test_missing_onednn_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path))
    with pytest.raises(onednn.OnednnUnavailable, match=r"pip install -e '\.\[onednn\]'"):
        onednn.build()


@pytest.mark.slow
def test_build_failure_is_reported(monkeypatch, tmp_path):
    """A compiler error surfaces with the compiler's message, and no .so is cached."""
    bad = tmp_path / "broken.cc"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(onednn, "SOURCE", bad)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(onednn.OnednnUnavailable, match="building broken.cc failed"):
        onednn.build()
    assert not list((tmp_path / "cache").rglob("*.so"))


# Two CPU devices in one process: the stack split by rows (shard_map), each
# device calling the primitive on its own rows, against one device.
ROWS_PER_DEVICE = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp
    from lstm_jax import parallel, recurrent
    from lstm_jax.cells import make_cell

    parallel.use_cpu_devices(2)
    mesh = parallel.data_mesh()
    T, B, D, H = 9, 4, 3, 6
    k = jax.random.split(jax.random.key(0), 4)
    cell = make_cell("lstm")
    layers = recurrent.init_stack(k[0], cell, D, H, 2)
    carries = jax.tree.map(lambda c: jax.random.normal(k[1], c.shape),
                           recurrent.zero_stack_carry(cell, 2, B, H))
    xs = jax.random.normal(k[2], (B, T, D))
    cot = jax.random.normal(k[3], (B, T, H))

    def loss(layers, xs, carries, mesh, impl):
        c, hs = recurrent.run_stack(cell, layers, xs, carries, impl=impl, mesh=mesh)
        return jnp.sum(hs * cot) + sum(jnp.sum(x) for x in jax.tree.leaves(c))

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    one = jax.jit(lambda *a: grad(*a, None, "onednn"))(layers, xs, carries)
    two = jax.jit(lambda *a: grad(*a, mesh, "onednn"))(layers, xs, carries)
    ref = jax.jit(lambda *a: grad(*a, None, "scan"))(layers, xs, carries)
    diff = lambda a, b: max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(
        jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    print("RESULT " + json.dumps({"devices": jax.device_count(),
                                  "two_vs_one": diff(two, one), "one_vs_scan": diff(one, ref)}))
    """
)


@pytest.mark.slow
def test_two_devices_each_run_the_primitive():
    out = run_python(["-c", ROWS_PER_DEVICE])
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["devices"] == 2
    assert result["two_vs_one"] < 1e-5, result
    assert result["one_vs_scan"] < 1e-4, result  # fp32 against fp32


def test_train_and_eval_steps_run_the_primitive_and_match_scan():
    """The batchers reset at step 0 only and the steps hand that to the model as
    `start`, so an LSTM language model's train and eval steps run oneDNN's
    primitive (not the fused fallback a reset mask would force), and one train
    step gives the scan's loss and parameters."""
    vocab, rows, steps = 13, 4, 6
    c = config_lib.base_config()
    c.model.hidden_size, c.model.embed_dim, c.model.num_layers = 8, 4, 2
    c.model.impl = "onednn"
    batch = TrainBatcher(np.arange(200) % vocab, rows, steps, mode="streams").next_batch()
    assert batch.reset[:, 0].all()  # the first batch of an epoch restarts every stream

    def one_step(impl):
        c.model.impl = impl
        model = train.build_model(c, vocab)
        optimizer = optim.make_optimizer(c.optim, 10)
        state = train.init_state(c, model, optimizer, rows)
        step = train.make_train_step(model, optimizer, lambda s, o: 0.0)
        eval_step = train.make_eval_step(model)
        hlo = step.lower(state, batch).as_text()
        eval_hlo = eval_step.lower(state.params, state.carry, batch).as_text()
        new_state, metrics = step(jax.tree.map(jnp.copy, state), batch)
        return hlo, eval_hlo, new_state.params, float(metrics["train_loss"])

    hlo, eval_hlo, params, loss = one_step("onednn")
    assert hlo.count(onednn.FORWARD_TARGET) == 2 and hlo.count(onednn.BACKWARD_TARGET) == 2
    assert eval_hlo.count(onednn.FORWARD_TARGET) == 2
    _, _, want_params, want_loss = one_step("scan")
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert_trees_close(params, want_params, tol=1e-5)
