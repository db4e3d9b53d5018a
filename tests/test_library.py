"""The library surface against Flax's own layer: `lstm_jax.linen.LSTM` with the
variables of `nn.RNN(nn.OptimizedLSTMCell(H))` gives Flax's outputs, carry and
gradients, in float64, for every option and the CPU implementations; the
functional API (`lstm_jax.apply_layers`) likewise."""

from __future__ import annotations

import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax
from lstm_jax import layers
from lstm_jax import linen as lj
from lstm_jax.layers import fallback

B, T, D, H = 5, 9, 3, 4
LENGTHS = np.array([9, 4, 1, 7, 9])  # the full length, length 1 and others
IMPLS = ["scan", "fused"]
OPTIONS = {
    "plain": {},
    "seq_lengths": {"seq_lengths": LENGTHS},
    "reverse": {"reverse": True},
    "reverse+seq_lengths": {"reverse": True, "seq_lengths": LENGTHS},
    "reverse+keep_order+seq_lengths": {
        "reverse": True,
        "keep_order": True,
        "seq_lengths": LENGTHS,
    },
    "time_major": {"time_major": True},
}
TOL = dict(rtol=0, atol=1e-12)


@pytest.fixture(autouse=True)
def float64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def flax_layer(**kw) -> nn.RNN:
    return nn.RNN(nn.OptimizedLSTMCell(H, param_dtype=jnp.float64), return_carry=True, **kw)


def inputs(time_major=False):
    x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
    return jnp.swapaxes(x, 0, 1) if time_major else x


def valid(options, time_major=False) -> np.ndarray:
    """[B, T, 1] (or [T, B, 1]) True at the real steps: the outputs compared."""
    lengths = options.get("seq_lengths", np.full(B, T))
    mask = np.arange(T)[None, :, None] < lengths[:, None, None]
    return np.swapaxes(mask, 0, 1) if time_major else mask


def test_the_variables_and_their_initial_values_are_flax_s():
    x = inputs()
    theirs = flax_layer().init(jax.random.key(0), x)
    ours = lj.LSTM(H, impl="scan", param_dtype=jnp.float64).init(jax.random.key(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_outputs_carry_and_gradients_equal_flax_s(impl, name):
    options = dict(OPTIONS[name])
    time_major = options.pop("time_major", False)
    x = inputs(time_major)
    variables = flax_layer(time_major=time_major).init(jax.random.key(0), x)
    mask = jnp.asarray(valid(options, time_major), jnp.float64)
    ours = lj.LSTM(H, impl=impl, return_carry=True, time_major=time_major)
    theirs = flax_layer(time_major=time_major)

    def loss(layer, variables, x):
        (c, h), ys = layer.apply(variables, x, **options)
        weights = jnp.arange(1.0, 1.0 + ys.size).reshape(ys.shape) / ys.size
        return jnp.sum(ys * mask * weights) + jnp.sum(c * 0.3) + jnp.sum(h * 0.7), (c, h, ys)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)
    (_, (c1, h1, y1)), g1 = grad(ours, variables, x)
    (_, (c2, h2, y2)), g2 = grad(theirs, variables, x)
    np.testing.assert_allclose(c1, c2, **TOL)
    np.testing.assert_allclose(h1, h2, **TOL)
    np.testing.assert_allclose(y1 * mask, y2 * mask, **TOL)
    assert not np.any(np.asarray(y1) * (1 - np.asarray(mask)))  # padding outputs are zero
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def test_padding_never_changes_the_carry():
    x = inputs()
    variables = flax_layer().init(jax.random.key(0), x)
    layer = lj.LSTM(H, impl="fused", return_carry=True)
    garbage = jnp.where(jnp.asarray(valid({"seq_lengths": LENGTHS})), x, 1e3)
    (c1, h1), y1 = layer.apply(variables, x, seq_lengths=LENGTHS)
    (c2, h2), y2 = layer.apply(variables, garbage, seq_lengths=LENGTHS)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("impl", IMPLS)
def test_an_initial_carry_with_lengths_runs_exactly(impl):
    x = inputs()
    variables = flax_layer().init(jax.random.key(0), x)
    k1, k2 = jax.random.split(jax.random.key(3))
    carry = (jax.random.normal(k1, (B, H), jnp.float64), jax.random.normal(k2, (B, H)))
    theirs = flax_layer().apply(variables, x, initial_carry=carry, seq_lengths=LENGTHS)
    fallback._warned.clear()  # each reason is said once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = lj.LSTM(H, impl=impl, return_carry=True).apply(
            variables, x, initial_carry=carry, seq_lengths=LENGTHS
        )
    fell_back = [w for w in caught if issubclass(w.category, layers.LayerFallbackWarning)]
    assert not fell_back  # fused holds the LSTM's carry through the padding (held gates)
    np.testing.assert_allclose(ours[0][0], theirs[0][0], **TOL)
    np.testing.assert_allclose(ours[0][1], theirs[0][1], **TOL)
    mask = valid({"seq_lengths": LENGTHS})
    np.testing.assert_allclose(ours[1] * mask, theirs[1] * mask, **TOL)


def test_a_gru_with_a_carry_and_lengths_runs_the_masked_scan_and_says_so():
    """Held gates are the LSTM's; another cell with a given initial carry and
    lengths runs the reference masked scan, with one warning."""
    gru = lstm_jax.make_cell("gru")
    params = lstm_jax.init_layers(jax.random.key(0), gru, D, H, num_layers=1)
    carry = [jax.random.normal(jax.random.key(4), (B, H), jnp.float64)]
    run = functools.partial(
        lstm_jax.apply_layers, gru, params, inputs(), initial_carry=carry, seq_lengths=LENGTHS
    )
    fallback._warned.clear()
    with pytest.warns(layers.LayerFallbackWarning, match='"fused" runs as "scan".* for the gru'):
        _, ys = run(impl="fused")
    np.testing.assert_array_equal(ys, run(impl="scan")[1])


@pytest.mark.parametrize("num_layers", [2, 3])
def test_a_stack_equals_flax_layers_in_sequence(num_layers):
    x = inputs()
    ours = lj.LSTM(H, num_layers=num_layers, impl="fused", return_carry=True)
    variables = ours.init(jax.random.key(0), x)
    carries, ys = ours.apply(variables, x, seq_lengths=LENGTHS)
    h = x
    for i in range(num_layers):
        layer_vars = {"params": variables["params"][f"layers_{i}"]}
        (c, hh), h = flax_layer().apply(layer_vars, h, seq_lengths=LENGTHS)
        np.testing.assert_allclose(carries[i][0], c, **TOL)
        np.testing.assert_allclose(carries[i][1], hh, **TOL)
        h = h * valid({"seq_lengths": LENGTHS})  # ours: zero past the length
    np.testing.assert_allclose(ys, h, **TOL)


def test_flax_bidirectional_takes_ours():
    x = inputs()
    theirs = nn.Bidirectional(
        nn.RNN(nn.OptimizedLSTMCell(H, param_dtype=jnp.float64)),
        nn.RNN(nn.OptimizedLSTMCell(H, param_dtype=jnp.float64)),
    )
    ours = nn.Bidirectional(lj.LSTM(H, impl="fused"), lj.LSTM(H, impl="fused"))
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    mask = valid({"seq_lengths": LENGTHS})
    y1 = ours.apply(variables, x, seq_lengths=LENGTHS)
    y2 = theirs.apply(variables, x, seq_lengths=LENGTHS)
    np.testing.assert_allclose(y1 * mask, y2 * mask, **TOL)


def test_vmap_over_a_batch_of_sequences():
    x = inputs()
    variables = flax_layer().init(jax.random.key(0), x)
    layer = lj.LSTM(H, impl="fused")
    one = jax.vmap(lambda xi, n: layer.apply(variables, xi[None], seq_lengths=n[None])[0])
    np.testing.assert_allclose(
        one(x, jnp.asarray(LENGTHS)), layer.apply(variables, x, seq_lengths=LENGTHS), **TOL
    )


def test_auto_picks_an_exact_layer_that_runs_this_call_without_a_fallback():
    """ "auto" is the default of every layer, model and config; it never lands on
    a layer that would fall back (and warn) for the call at hand."""
    from lstm_jax import config as config_lib
    from lstm_jax.layers import onednn
    from lstm_jax.model import LMConfig, RecurrentCoreConfig

    lstm, gru = lstm_jax.make_cell("lstm"), lstm_jax.make_cell("gru")
    here = "onednn" if onednn.installed() else "fused"  # this CPU; a CUDA GPU: "cudnn"
    assert layers.resolve_impl("auto", cell=lstm, dtype=jnp.float32) == here
    assert layers.resolve_impl("auto", cell=lstm, dtype=jnp.float32, reset_mask=True) == "fused"
    # variable lengths: oneDNN takes them by held gates (lengths.held_layer), cuDNN does not
    assert layers.resolve_impl("auto", cell=lstm, dtype=jnp.float32, seq_lengths=True) == here
    assert layers.resolve_impl("auto", cell=lstm, dtype=jnp.float64) == "fused"
    assert layers.resolve_impl("auto", cell=gru, dtype=jnp.float32) == "fused"

    class Unfused:  # a cell "fused" has no backward pass for (as research's PerturbedCell)
        pass

    assert layers.resolve_impl("auto", cell=Unfused()) == "scan"
    assert layers.resolve_impl("scan", cell=lstm) == "scan"  # a name is kept as given
    assert config_lib.base_config().model.impl == "auto"
    assert LMConfig(vocab_size=5).impl == RecurrentCoreConfig().impl == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error", fallback.LayerFallbackWarning)
        params = lstm_jax.init_layers(jax.random.key(0), gru, D, H, num_layers=1)
        lstm_jax.apply_layers(gru, params, inputs(), seq_lengths=LENGTHS)  # auto: "fused"


def test_the_public_api():
    assert {"apply_layers", "init_layers", "make_cell", "LAYER_IMPLS", "resolve_impl"} <= set(
        lstm_jax.__all__
    )
    assert all(hasattr(lstm_jax, name) for name in lstm_jax.__all__)
    assert layers.resolve_impl("auto") in ("cudnn", "onednn", "fused")
    with pytest.raises(ValueError, match="valid: .*'auto'"):
        layers.resolve_impl("fast")
    cell = lstm_jax.make_cell("lstm")
    params = lstm_jax.init_layers(jax.random.key(0), cell, D, H, num_layers=2)
    carries, ys = lstm_jax.apply_layers(cell, params, inputs(), seq_lengths=LENGTHS, impl="fused")
    assert ys.shape == (B, T, H) and len(carries) == 2


# ---------------------------------------------------------------------------
# NNX


def nnx_rnn(cell_type, **kw):
    from flax import nnx

    cell = cell_type(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    return nnx.RNN(cell, return_carry=True, **kw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_nnx_equals_nnx_rnn(impl, name):
    from flax import nnx

    from lstm_jax import nnx as ljx

    options = dict(OPTIONS[name])
    time_major = options.pop("time_major", False)
    x = inputs(time_major)
    theirs = nnx_rnn(nnx.OptimizedLSTMCell, time_major=time_major)
    ours = ljx.LSTM(
        D,
        H,
        rngs=nnx.Rngs(0),
        param_dtype=jnp.float64,
        impl=impl,
        return_carry=True,
        time_major=time_major,
    )
    # the same constructor arguments give the same initial values
    for a, b in zip(
        jax.tree.leaves(nnx.state(ours.cell, nnx.Param)),
        jax.tree.leaves(nnx.state(theirs.cell, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    mask = valid(options, time_major)
    (c1, h1), y1 = ours(x, **options)
    (c2, h2), y2 = theirs(x, **options)
    np.testing.assert_allclose(c1, c2, **TOL)
    np.testing.assert_allclose(h1, h2, **TOL)
    np.testing.assert_allclose(y1 * mask, y2 * mask, **TOL)


@pytest.mark.parametrize("cell_name", ["OptimizedLSTMCell", "LSTMCell"])
def test_nnx_conversion_from_flax_rnn(cell_name):
    from flax import nnx

    from lstm_jax import nnx as ljx

    theirs = nnx_rnn(getattr(nnx, cell_name), reverse=True)
    ours = ljx.LSTM.from_rnn(theirs, impl="fused")
    x = inputs()
    (c1, h1), y1 = ours(x, seq_lengths=LENGTHS)
    (c2, h2), y2 = theirs(x, seq_lengths=LENGTHS)
    mask = valid({"seq_lengths": LENGTHS})
    np.testing.assert_allclose(c1, c2, **TOL)
    np.testing.assert_allclose(h1, h2, **TOL)
    np.testing.assert_allclose(y1 * mask, y2 * mask, **TOL)

    def loss(model):
        (c, h), ys = model(x, seq_lengths=LENGTHS)
        return jnp.sum(ys * mask) + jnp.sum(c) + jnp.sum(h)

    g1 = nnx.grad(loss)(ours)
    g2 = nnx.grad(loss)(theirs)
    if cell_name == "OptimizedLSTMCell":  # the same parameter tree
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
            np.testing.assert_allclose(a, b, **TOL)


def test_nnx_bidirectional_takes_ours():
    from flax import nnx

    from lstm_jax import nnx as ljx

    def ours(seed):
        return ljx.LSTM(D, H, rngs=nnx.Rngs(seed), param_dtype=jnp.float64, impl="fused")

    def theirs(seed):
        return nnx.RNN(nnx.OptimizedLSTMCell(D, H, param_dtype=jnp.float64, rngs=nnx.Rngs(seed)))

    x = inputs()
    mask = valid({"seq_lengths": LENGTHS})
    y1 = nnx.Bidirectional(ours(0), ours(1))(x, seq_lengths=LENGTHS)
    y2 = nnx.Bidirectional(theirs(0), theirs(1))(x, seq_lengths=LENGTHS)
    np.testing.assert_allclose(y1 * mask, y2 * mask, **TOL)


# ---------------------------------------------------------------------------
# The vendor layers, which compute in float32: oneDNN (built on first use with
# g++, so in the slow tier) and cuDNN (on a CUDA GPU only).

F32_TOL = dict(rtol=0, atol=2e-5)


def float32_case(impl: str, options: dict):
    jax.config.update("jax_enable_x64", False)
    x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)
    theirs = nn.RNN(nn.OptimizedLSTMCell(H), return_carry=True)
    variables = theirs.init(jax.random.key(0), x)
    mask = valid(options)

    def loss(layer, variables, x):
        (c, h), ys = layer.apply(variables, x, **options)
        return jnp.sum(ys * mask) + jnp.sum(c) + jnp.sum(h), (c, h, ys)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)
    (_, (c1, h1, y1)), g1 = grad(lj.LSTM(H, impl=impl, return_carry=True), variables, x)
    (_, (c2, h2, y2)), g2 = grad(theirs, variables, x)
    np.testing.assert_allclose(c1, c2, **F32_TOL)
    np.testing.assert_allclose(h1, h2, **F32_TOL)
    np.testing.assert_allclose(y1 * mask, y2 * mask, **F32_TOL)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, **F32_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "reverse", "seq_lengths"])
def test_onednn_equals_flax_in_float32(name):
    from lstm_jax.layers import onednn

    if not onednn.installed():
        pytest.skip("oneDNN's wheels are not installed (the [onednn] extra)")
    float32_case("onednn", OPTIONS[name])


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["plain", "reverse", "seq_lengths", "reverse+seq_lengths"])
def test_cudnn_equals_flax_in_float32(name):
    float32_case("cudnn", OPTIONS[name])


# ---------------------------------------------------------------------------
# The exactness table (python -m benchmarks.flax_exactness), measured here on
# the CPU's float64 layers: every case within 1e-12 of Flax, and the float32
# floor it is set against above zero (the measure sees a difference).


@pytest.mark.slow
def test_the_exactness_table_measures_every_case():
    from benchmarks import flax_exactness as fe

    for case in fe.CASES:
        row = fe.measure("fused", case)
        assert row.runs_as == "fused", case
        assert row.dtype == "float64"
        assert max(row.outputs, row.carry, row.d_params, row.d_inputs) < 1e-12, row
    floor = fe.measure(fe.FLAX_FLOAT32, "seq_lengths")
    assert floor.dtype == "float32" and 1e-10 < floor.outputs < 1e-4, floor
    assert fe.table([floor])[2].startswith("| flax | seq_lengths | Flax nn.RNN | float32 |")
