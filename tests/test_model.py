"""Language model and sequence model: shapes, parameter counts, tracing."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.config import base_config
from lstm_jax.model import LanguageModel, LMConfig, SeqConfig, SequenceModel, count_params

CELL_NAMES = ["lstm", "gru", "rnn_tanh", "rnn_relu", "irnn"]
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1, "irnn": 1}


def closed_form(cell, v, e, h, layers, tied=False):
    """LSTM 4H(D+H+1), GRU 3H(D+H+1) + H (b_hn), RNN H(D+H+1) per layer."""
    g = GATES[cell]
    d0 = e or v
    per_layer = [
        g * h * ((d0 if i == 0 else h) + h + 1) + (h if cell == "gru" else 0) for i in range(layers)
    ]
    projection = h * e if tied and e != h else 0  # tied with E != H: a [H, E] projection
    return v * e + sum(per_layer) + (0 if tied else h * v) + v + projection


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("embed,tied", [(0, False), (6, False), (8, True), (6, True)])
def test_param_count_matches_closed_form(name, embed, tied):
    cfg = LMConfig(
        vocab_size=13, embed_dim=embed, hidden_size=8, num_layers=3, cell=name, tie_embeddings=tied
    )
    model = LanguageModel(cfg)
    params = model.init(jax.random.key(0))
    expected = closed_form(name, 13, embed, 8, 3, tied)
    assert count_params(params) == expected == model.param_count()


def test_sequence_model_param_count_and_modes():
    for mode, shape in [("last", (2, 3)), ("all", (2, 9, 3))]:
        m = SequenceModel(
            SeqConfig(
                input_dim=2, output_dim=3, hidden_size=5, num_layers=2, cell="gru", output_mode=mode
            )
        )
        p = m.init(jax.random.key(0))
        assert count_params(p) == m.param_count() == (3 * 5 * 8 + 5) + (3 * 5 * 11 + 5) + 18
        out, carry = m.apply(p, jnp.ones((2, 9, 2)))
        assert out.shape == shape and len(carry) == 2


def test_lm_apply_shapes_and_carry_threading():
    m = LanguageModel(LMConfig(vocab_size=11, embed_dim=4, hidden_size=6, num_layers=2))
    p = m.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 10), 0, 11)
    logits, carry = m.apply(p, tokens, m.init_carry(3))
    assert logits.shape == (3, 10, 11)
    l1, c1 = m.apply(p, tokens[:, :4], m.init_carry(3))
    l2, c2 = m.apply(p, tokens[:, 4:], c1)
    np.testing.assert_allclose(jnp.concatenate([l1, l2], 1), logits, atol=1e-5)


def test_one_hot_equals_identity_embedding():
    """One-hot inputs (char-rnn) equal an embedding table that is the identity."""
    one_hot = LanguageModel(LMConfig(vocab_size=7, hidden_size=5, num_layers=1))
    table = LanguageModel(LMConfig(vocab_size=7, embed_dim=7, hidden_size=5, num_layers=1))
    p = one_hot.init(jax.random.key(0))
    p_table = {**p, "embed": jnp.eye(7)}
    tokens = jnp.arange(14).reshape(2, 7) % 7
    a, _ = one_hot.apply(p, tokens, one_hot.init_carry(2))
    b, _ = table.apply(p_table, tokens, table.init_carry(2))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_dropout_train_vs_eval():
    m = LanguageModel(LMConfig(vocab_size=11, embed_dim=4, hidden_size=6, dropout=0.5))
    p = m.init(jax.random.key(0))
    tokens = jnp.ones((2, 5), jnp.int32)
    ev1, _ = m.apply(p, tokens, m.init_carry(2))
    ev2, _ = m.apply(p, tokens, m.init_carry(2), rng=jax.random.key(1))  # train=False
    np.testing.assert_array_equal(ev1, ev2)
    tr, _ = m.apply(p, tokens, m.init_carry(2), train=True, rng=jax.random.key(1))
    assert not np.allclose(tr, ev1)
    with pytest.raises(ValueError, match="needs an rng"):
        m.apply(p, tokens, m.init_carry(2), train=True)


def test_jitted_forward_traces_once():
    m = LanguageModel(LMConfig(vocab_size=11, embed_dim=4, hidden_size=6))
    p = m.init(jax.random.key(0))
    traces = []

    @jax.jit
    def forward(params, tokens, carry):
        traces.append(1)  # runs only while tracing
        return m.apply(params, tokens, carry)

    tokens = jnp.zeros((2, 5), jnp.int32)
    out1, c = forward(p, tokens, m.init_carry(2))
    out2, _ = forward(p, tokens + 1, c)
    assert len(traces) == 1
    assert not np.allclose(out1, out2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_layers=0), "num_layers must be >= 1"),
        (dict(hidden_size=0), "hidden_size must be >= 1"),
        (dict(cell="lstn"), "unknown cell 'lstn'"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(tie_embeddings=True), r"tie_embeddings needs an embedding table \(embed_dim > 0\)"),
        (dict(impl="cudnn9"), "unknown layer implementation"),
        (dict(matmul_precision="fp32"), r"matmul_precision must be one of \('default'"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LMConfig(vocab_size=10, **{"hidden_size": 8, **kwargs})


@pytest.mark.parametrize("impl", ["scan", "fused"])
def test_matmul_precision_reaches_every_matmul(impl):
    """ "highest" and "default" both train; under "highest" every matmul of the
    forward and the backward pass (the fused layer's hand-written one too)
    asks XLA for full precision, under "default" none does."""
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 11)

    def loss_and_hlo(precision):
        cfg = LMConfig(vocab_size=11, embed_dim=4, hidden_size=6, impl=impl)
        m = LanguageModel(dataclasses.replace(cfg, matmul_precision=precision))
        params = m.init(jax.random.key(0))

        def loss(params):
            logits, _ = m.apply(params, tokens, m.init_carry(2))
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        step = jax.jit(jax.value_and_grad(loss))
        dots = re.findall(r"stablehlo\.dot_general.*", step.lower(params).as_text())
        return step(params), dots

    (highest, grads_highest), dots_highest = loss_and_hlo("highest")
    (default, grads_default), dots_default = loss_and_hlo("default")
    assert len(dots_highest) == len(dots_default) > 6  # forward and backward, every layer
    assert all("precision = [HIGHEST, HIGHEST]" in d for d in dots_highest)
    assert not any("HIGHEST" in d for d in dots_default)
    np.testing.assert_allclose(highest, default, rtol=1e-5)  # CPUs compute fp32 either way
    for a, b in zip(jax.tree.leaves(grads_highest), jax.tree.leaves(grads_default), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_lm_config_defaults_are_the_training_configs():
    """One set of defaults: LMConfig's agree with config.py's `c.model`."""
    model = base_config().model.to_dict()
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(LMConfig)
        if f.default is not dataclasses.MISSING
    }
    assert set(model) <= set(defaults) | {"vocab_size"}, set(model) - set(defaults)
    assert {k: defaults[k] for k in model} == model


@pytest.mark.parametrize("impl", ["scan", "fused"])
def test_start_equals_a_reset_at_step_zero(impl):
    """`start` zeroes the marked rows' carry before step 0: the same logits and
    final carry as a `reset` mask that is True at step 0 only, while the
    unmarked rows keep their carried state."""
    m = LanguageModel(LMConfig(vocab_size=11, embed_dim=4, hidden_size=6, num_layers=2, impl=impl))
    params = m.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (3, 5), 0, 11)
    leaves, tree = jax.tree.flatten(m.init_carry(3))
    keys = jax.random.split(jax.random.key(2), len(leaves))
    noise = [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    carry = jax.tree.unflatten(tree, noise)
    start = jnp.array([True, False, True])
    reset = jnp.zeros((3, 5), bool).at[:, 0].set(start)

    got = m.apply(params, tokens, carry, start=start)
    want = m.apply(params, tokens, carry, reset=reset)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)
    fresh, _ = m.apply(params, tokens, m.init_carry(3))
    np.testing.assert_allclose(got[0][::2], fresh[::2], rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[0][1], fresh[1], atol=1e-3)
