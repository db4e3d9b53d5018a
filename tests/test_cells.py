"""Each cell's step against a NumPy reference of the same equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import cells, initializers


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(p, h, c, x):
    """The course project's equations, one weight block per gate, concatenated [h, x]."""
    hx = np.concatenate([h, x], axis=-1)
    w = np.concatenate([p["w_h"], p["w_x"]], axis=0)  # [H + D, 4H]
    hid = h.shape[-1]
    blocks = {g: slice(k * hid, (k + 1) * hid) for k, g in enumerate(cells.LSTM_GATES)}
    gate = lambda g: hx @ w[:, blocks[g]] + p["b"][blocks[g]]
    f, i = sigmoid(gate("forget")), sigmoid(gate("input"))
    g, o = np.tanh(gate("cell")), sigmoid(gate("output"))
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def numpy_gru(p, h, x):
    hid = h.shape[-1]
    wx, wh, b = p["w_x"], p["w_h"], p["b"]
    s = lambda k: slice(k * hid, (k + 1) * hid)
    r = sigmoid(x @ wx[:, s(0)] + h @ wh[:, s(0)] + b[s(0)])
    z = sigmoid(x @ wx[:, s(1)] + h @ wh[:, s(1)] + b[s(1)])
    n = np.tanh(x @ wx[:, s(2)] + b[s(2)] + r * (h @ wh[:, s(2)] + p["b_hn"]))
    return (1 - z) * n + z * h


def numpy_rnn(p, h, x, act):
    return act(x @ p["w_x"] + h @ p["w_h"] + p["b"])


def random_params(cell, key, d, h, dtype):
    """Non-trivial weights and biases (the defaults have zero biases)."""
    params = cell.init(key, d, h, dtype)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(params))
    return {
        k: jax.random.uniform(kk, v.shape, dtype, -0.5, 0.5)
        for kk, (k, v) in zip(keys, sorted(params.items()), strict=True)
    }


CASES = [
    ("lstm", lambda p, carry, x: numpy_lstm(p, carry[0], carry[1], x)),
    ("gru", lambda p, carry, x: numpy_gru(p, carry, x)),
    ("rnn_tanh", lambda p, carry, x: numpy_rnn(p, carry, x, np.tanh)),
    ("rnn_relu", lambda p, carry, x: numpy_rnn(p, carry, x, lambda v: np.maximum(v, 0))),
]


@pytest.mark.parametrize("name,reference", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-6), ("float32", 1e-5)])
def test_step_matches_numpy(name, reference, dtype, tol):
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        cell = cells.make_cell(name)
        b, d, h = 3, 5, 4
        params = random_params(cell, jax.random.key(0), d, h, dt)
        k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
        x = jax.random.normal(k1, (b, d), dt)
        h0 = jax.random.normal(k2, (b, h), dt)
        c0 = jax.random.normal(k3, (b, h), dt)
        carry = cells.LSTMCarry(h0, c0) if name == "lstm" else h0
        new_carry, out = cell.step(params, carry, x)
        np_p = {k: np.asarray(v) for k, v in params.items()}
        np_carry = (np.asarray(h0), np.asarray(c0)) if name == "lstm" else np.asarray(h0)
        expected = reference(np_p, np_carry, np.asarray(x))
        if name == "lstm":
            np.testing.assert_allclose(out, expected[0], atol=tol, rtol=tol)
            np.testing.assert_allclose(new_carry.c, expected[1], atol=tol, rtol=tol)
            assert out.dtype == dt
        else:
            np.testing.assert_allclose(out, expected, atol=tol, rtol=tol)
            np.testing.assert_allclose(new_carry, out)


def test_lstm_gate_bias_options():
    for fb, ib in ((0.0, 0.0), (1.0, 0.0), (6.0, -3.0)):
        p = cells.LSTM(forget_bias=fb, input_bias=ib).init(jax.random.key(0), 3, 4)
        b = np.asarray(p["b"]).reshape(4, 4)
        np.testing.assert_array_equal(b[cells.LSTM_GATES.index("forget")], fb)
        np.testing.assert_array_equal(b[cells.LSTM_GATES.index("input")], ib)
        np.testing.assert_array_equal(b[cells.LSTM_GATES.index("cell")], 0.0)
        np.testing.assert_array_equal(b[cells.LSTM_GATES.index("output")], 0.0)


def test_lstm_gate_biases_are_ignored_by_other_cells():
    """One config switches cells: the LSTM's gate biases must not break a GRU."""
    gru = cells.make_cell("gru", forget_bias=3.0, input_bias=-3.0)
    np.testing.assert_array_equal(gru.init(jax.random.key(0), 3, 4)["b"], 0.0)
    lstm = cells.make_cell("lstm", forget_bias=3.0, input_bias=-3.0)
    assert (lstm.forget_bias, lstm.input_bias) == (3.0, -3.0)


def test_initializers():
    key = jax.random.key(0)
    u = initializers.get("uniform", 0.08)(key, (200, 200), jnp.float32)
    assert float(jnp.abs(u).max()) <= 0.08 and float(jnp.abs(u).max()) > 0.07
    eye = initializers.get("identity", 1.0)(key, (5, 5), jnp.float32)
    np.testing.assert_array_equal(eye, np.eye(5))
    q = initializers.get("orthogonal", 0.08)(key, (6, 6), jnp.float32)
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-5)
    n = initializers.get("normal", 0.01)(key, (300, 300), jnp.float32)
    assert abs(float(n.std()) - 0.01) < 1e-3


def test_recurrent_init_is_per_gate_block():
    cell = cells.LSTM(recurrent_init="orthogonal")
    w_h = np.asarray(cell.init(jax.random.key(0), 3, 4)["w_h"])
    for k in range(4):
        block = w_h[:, 4 * k : 4 * (k + 1)]
        np.testing.assert_allclose(block @ block.T, np.eye(4), atol=1e-5)


def test_irnn_is_relu_with_identity_recurrence():
    cell = cells.make_cell("irnn")
    p = cell.init(jax.random.key(0), 3, 4)
    np.testing.assert_array_equal(p["w_h"], np.eye(4))
    assert cell.activation == "relu"


def test_bad_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown cell 'lstn'.*'gru'.*'lstm'"):
        cells.make_cell("lstn")
    with pytest.raises(ValueError, match=r"unknown initializer 'xavier'.*'glorot_uniform'"):
        cells.make_cell("lstm", kernel_init="xavier").init(jax.random.key(0), 2, 2)
    with pytest.raises(ValueError, match=r"unknown RNN activation 'gelu'.*'relu', 'tanh'"):
        cells.SimpleRNN(activation="gelu")
