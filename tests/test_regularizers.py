"""AWD-LSTM's regularizers (Merity, Keskar & Socher 2017) on the language
model, each against an independent reference: locked (variational) dropout,
embedding dropout, weight-dropped recurrent kernels, activation regularization
and the tied readout through a projection. docs/regularization.md."""

import dataclasses
import json
import pathlib

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstm_jax import config as config_lib
from lstm_jax import optim, recurrent, train
from lstm_jax import workdir as workdir_lib
from lstm_jax.data import batching
from lstm_jax.model import LanguageModel, LMConfig, _reg_key, count_params, embedding_dropout

V, E, H, B, T = 11, 4, 6, 3, 7


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(layer, xs, masks_between=None):
    """A plain loop of the LSTM equations (gate order i, f, g, o) over xs [B, T, D]."""
    w_x, w_h, b = (np.asarray(layer[k], np.float64) for k in ("w_x", "w_h", "b"))
    h = np.zeros((xs.shape[0], w_h.shape[0]))
    c = np.zeros_like(h)
    out = []
    for t in range(xs.shape[1]):
        z = xs[:, t] @ w_x + h @ w_h + b
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def tokens_for(key=1):
    return jax.random.randint(jax.random.key(key), (B, T), 0, V)


# ---------------------------------------------------------------------------
# 1. Locked (variational) dropout and embedding dropout


def test_locked_mask_is_constant_over_time_and_scaled():
    p = 0.4
    x = jnp.ones((8, 5, 16))
    y = np.asarray(recurrent.locked_dropout(x, p, jax.random.key(3)))
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))  # same at every step
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / (1 - p)], rtol=1e-6)
    assert len({row.tobytes() for row in y[:, 0]}) == 8  # a different mask per row
    assert 0.3 < np.mean(y == 0) < 0.5
    np.testing.assert_array_equal(recurrent.locked_dropout(x, p, None), x)  # eval: identity


def test_model_with_locked_dropout_equals_hand_written_forward():
    p_in, p_hid, p_out = 0.3, 0.5, 0.4
    cfg = LMConfig(
        vocab_size=V,
        embed_dim=E,
        hidden_size=H,
        num_layers=2,
        init_scale=0.5,  # logits of order 1, so the tolerance measures something
        impl="scan",
        matmul_precision="highest",
        dropout_input=p_in,
        dropout_hidden=p_hid,
        dropout_output=p_out,
    )
    model = LanguageModel(cfg)
    params = model.init(jax.random.key(0))
    tokens, rng = tokens_for(), jax.random.key(7)
    logits, _ = model.apply(params, tokens, model.init_carry(B), train=True, rng=rng)

    # The masks, drawn from the keys the model documents: [B, 1, D] each.
    def mask(rate, key, dim):
        keep = np.asarray(recurrent.locked_dropout_keep(rate, key, (B, T, dim), 1))
        assert keep.shape == (B, 1, dim)
        return keep / (1 - rate)

    stack_key = jax.random.split(rng, 3)[1]
    m_in = mask(p_in, _reg_key(rng, "input"), E)
    m_hid = mask(p_hid, jax.random.fold_in(jax.random.fold_in(stack_key, 1), 1), H)
    m_out = mask(p_out, _reg_key(rng, "output"), H)

    xs = np.asarray(params["embed"], np.float64)[np.asarray(tokens)] * m_in
    h1 = numpy_lstm(params["layers"][0], xs)
    h2 = numpy_lstm(params["layers"][1], h1 * m_hid)
    w, b = (np.asarray(params["readout"][k], np.float64) for k in ("w", "b"))
    want = (h2 * m_out) @ w + b
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)

    # Eval: no masks, deterministic, the same as a model without the regularizers.
    plain = LanguageModel(
        LMConfig(vocab_size=V, embed_dim=E, hidden_size=H, num_layers=2, impl="scan")
    )
    got, _ = model.apply(params, tokens, model.init_carry(B))
    ref, _ = plain.apply(params, tokens, plain.init_carry(B))
    np.testing.assert_array_equal(got, ref)


def test_locked_and_ordinary_dropout_both_apply():
    """With `dropout` and `dropout_output` both set, the outputs carry both masks:
    the Zaremba masks are the ones drawn without the locked dropout."""
    base = LMConfig(vocab_size=V, embed_dim=E, hidden_size=H, num_layers=1, dropout=0.3)
    both = dataclasses.replace(base, dropout_output=0.5)
    params = LanguageModel(base).init(jax.random.key(0))
    tokens, rng = tokens_for(), jax.random.key(5)

    def last_hidden(cfg):  # readout with w = I, b = 0 shows the hidden state
        p = {**params, "readout": {"w": jnp.eye(H, V), "b": jnp.zeros(V)}}
        m = LanguageModel(cfg)
        return np.asarray(m.apply(p, tokens, m.init_carry(B), train=True, rng=rng)[0][..., :H])

    a, b = last_hidden(base), last_hidden(both)
    keep = np.asarray(recurrent.locked_dropout_keep(0.5, _reg_key(rng, "output"), (B, T, H), 1))
    np.testing.assert_allclose(b, a * keep / 0.5, rtol=1e-6, atol=1e-7)
    assert np.any(a == 0) and np.mean(b == 0) > np.mean(a == 0)


def test_embedding_dropout_zeroes_every_occurrence_of_a_dropped_word():
    table = jax.random.normal(jax.random.key(0), (V, E))
    p = 0.5
    dropped = np.asarray(embedding_dropout(table, p, jax.random.key(2)))
    gone = np.all(dropped == 0, axis=1)
    assert 0 < gone.sum() < V  # some words dropped, some kept
    np.testing.assert_allclose(dropped[~gone], np.asarray(table)[~gone] / (1 - p), rtol=1e-6)

    cfg = LMConfig(vocab_size=V, embed_dim=E, hidden_size=H, dropout_embedding=p)
    model = LanguageModel(cfg)
    params = model.init(jax.random.key(0))
    rng = jax.random.key(9)
    tokens = jnp.tile(jnp.arange(V), (B, 2))  # every word, several times
    used = np.asarray(embedding_dropout(params["embed"], p, _reg_key(rng, "embedding")))
    gone = np.all(used == 0, axis=1)
    assert 0 < gone.sum() < V
    xs = np.asarray(model.embed({**params, "embed": used}, tokens))
    np.testing.assert_array_equal(np.all(xs == 0, axis=-1), gone[np.asarray(tokens)])
    # The model's forward is the plain forward on that table.
    got, _ = model.apply(params, tokens, model.init_carry(B), train=True, rng=rng)
    want, _ = model.apply({**params, "embed": jnp.asarray(used)}, tokens, model.init_carry(B))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(dropout_input=1.0), r"model.dropout_input must be in \[0, 1\)"),
        (dict(dropout_hidden=-0.1), r"model.dropout_hidden must be in \[0, 1\)"),
        (dict(dropout_output=1.5), r"model.dropout_output must be in \[0, 1\)"),
        (dict(dropout_embedding=1.0, embed_dim=4), r"model.dropout_embedding must be in"),
        (dict(dropout_embedding=0.1), r"model.dropout_embedding .* needs embed_dim > 0"),
        (dict(weight_drop=1.0), r"model.weight_drop must be in \[0, 1\)"),
    ],
)
def test_bad_model_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LMConfig(vocab_size=10, hidden_size=8, **kwargs)


def test_train_without_rng_is_refused():
    model = LanguageModel(LMConfig(vocab_size=V, hidden_size=H, dropout_hidden=0.2))
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="dropout_hidden > 0 needs an rng"):
        model.apply(params, tokens_for(), model.init_carry(B), train=True)


# ---------------------------------------------------------------------------
# 2. Weight-dropped recurrent kernels (DropConnect)


def test_weight_drop_fused_equals_scan_with_the_same_mask():
    """The fused layer (custom VJP) with weight drop == the scan layer run in
    eval mode on kernels masked by hand: values and gradients."""
    p = 0.5
    cfg = LMConfig(
        vocab_size=V, embed_dim=E, hidden_size=H, num_layers=2, init_scale=0.5, weight_drop=p
    )
    params = LanguageModel(cfg).init(jax.random.key(0))
    tokens, rng = tokens_for(), jax.random.key(4)
    reset = jnp.zeros((B, T), bool).at[1, 3].set(True)
    keeps = [
        recurrent.dropout_keep(
            p, jax.random.fold_in(_reg_key(rng, "weight"), i), layer["w_h"].shape
        )
        for i, layer in enumerate(params["layers"])
    ]

    def loss(model, params, train):
        logits, carry = model.apply(
            params, tokens, model.init_carry(B), reset=reset, train=train, rng=rng
        )
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + jnp.sum(carry[0].h)

    fused = LanguageModel(cfg)
    got = jax.jit(jax.value_and_grad(lambda q: loss(fused, q, True)))(params)

    scan = LanguageModel(dataclasses.replace(cfg, impl="scan", weight_drop=0.0))

    def by_hand(params):  # the masked kernels, written into the parameters
        layers = [
            {**layer, "w_h": jnp.where(k, layer["w_h"] / (1 - p), 0.0)}
            for layer, k in zip(params["layers"], keeps, strict=True)
        ]
        return loss(scan, {**params, "layers": layers}, False)

    want = jax.jit(jax.value_and_grad(by_hand))(params)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for layer_grad, keep in zip(got[1]["layers"], keeps, strict=True):
        assert 0 < np.mean(keep) < 1
        assert np.all(np.asarray(layer_grad["w_h"])[~np.asarray(keep)] == 0)  # dropped: no grad
    # The same model in eval mode uses the full kernels.
    full = loss(scan, params, False)
    assert not np.isclose(full, want[0])
    np.testing.assert_allclose(loss(fused, params, False), full, rtol=1e-5)


# ---------------------------------------------------------------------------
# 3. Activation regularization (AR) and temporal activation regularization (TAR)


def numpy_penalty(raw, dropped, mask, reset, alpha, beta):
    """AR and TAR written out with loops over rows and steps."""
    raw, dropped, mask, reset = (np.asarray(a, np.float64) for a in (raw, dropped, mask, reset))
    ar_sum = ar_n = tar_sum = tar_n = 0.0
    for b in range(raw.shape[0]):
        for t in range(raw.shape[1]):
            if mask[b, t]:
                ar_sum += np.sum(dropped[b, t] ** 2)
                ar_n += raw.shape[2]
            if t > 0 and mask[b, t] and mask[b, t - 1] and not reset[b, t]:
                tar_sum += np.sum((raw[b, t] - raw[b, t - 1]) ** 2)
                tar_n += raw.shape[2]
    return alpha * ar_sum / ar_n + beta * tar_sum / tar_n


def masked_batch():
    tokens = tokens_for()
    mask = np.ones((B, T), np.float32)
    mask[2, 5:] = 0.0  # padded tail
    reset = np.zeros((B, T), bool)
    reset[0, 4] = True  # a new document in row 0
    return batching.Batch(
        inputs=tokens, targets=(tokens + 1) % V, mask=jnp.asarray(mask), reset=jnp.asarray(reset)
    )


def test_ar_tar_equal_numpy_on_the_models_hidden_states():
    cfg = LMConfig(
        vocab_size=V, embed_dim=E, hidden_size=H, init_scale=0.5, dropout=0.2, dropout_output=0.3
    )
    model = LanguageModel(cfg)
    params = model.init(jax.random.key(0))
    batch = masked_batch()
    logits, _, hidden = model.apply(
        params,
        batch.inputs,
        model.init_carry(B),
        reset=batch.reset,
        train=True,
        rng=jax.random.key(3),
        return_hidden=True,
    )
    # `dropped` is what the readout saw; `raw` is the layer's output (a dropped unit is 0
    # in `dropped` only).
    w, b = params["readout"]["w"], params["readout"]["b"]
    np.testing.assert_allclose(logits, hidden.dropped @ w + b, rtol=1e-5, atol=1e-6)
    assert np.any(hidden.dropped == 0) and not np.any(hidden.raw == 0)
    got = train.activation_penalty(hidden, batch.mask, batch.reset, 2.0, 1.0)
    want = numpy_penalty(hidden.raw, hidden.dropped, batch.mask, batch.reset, 2.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    only_ar = numpy_penalty(hidden.raw, hidden.dropped, batch.mask, batch.reset, 2.0, 0.0)
    np.testing.assert_allclose(
        train.activation_penalty(hidden, batch.mask, batch.reset, 2.0, 0.0), only_ar, rtol=1e-5
    )
    assert 0 < only_ar < want


def _one_step(config, batch, **penalty):
    model = train.build_model(config, V)
    optimizer = optim.make_optimizer(config.optim, 10)
    state = train.init_state(config, model, optimizer, B)
    step = train.make_train_step(
        model, optimizer, lambda s, o: 0.0, mid_sequence_resets=True, **penalty
    )
    return model, state, step(jax.tree.map(jnp.copy, state), batch)  # the step donates its state


def _config(**model):
    c = config_lib.base_config()
    c.model.hidden_size, c.model.embed_dim, c.model.num_layers = H, E, 2
    c.model.dropout = 0.2
    c.model.init_scale = 0.5  # activations large enough for AR/TAR to matter
    # SGD: the update is the gradient (Adam's first step is about lr * sign(g))
    c.optim.name, c.optim.learning_rate, c.optim.clip_mode = "sgd", 0.5, "none"
    for k, v in model.items():
        c.model[k] = v
    return c


def test_train_step_optimises_ce_plus_penalty_and_logs_the_ce():
    """One train step against a hand-written one: grad of CE + the numpy-checked
    penalty, the same optimizer; `train_loss` is the cross-entropy alone."""
    config, batch = _config(dropout_output=0.3), masked_batch()
    model, state, (new_state, metrics) = _one_step(
        config, batch, activation_reg=2.0, temporal_activation_reg=1.0
    )
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1)
    optimizer = optim.make_optimizer(config.optim, 10)

    def ce_and_penalty(params):
        logits, _, hidden = model.apply(
            params,
            batch.inputs,
            state.carry,
            reset=batch.reset,
            train=True,
            rng=rng,
            return_hidden=True,
        )
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch.targets[..., None], -1)
        ce = jnp.sum(nll[..., 0] * batch.mask) / jnp.sum(batch.mask)
        return ce, train.activation_penalty(hidden, batch.mask, batch.reset, 2.0, 1.0)

    (ce, penalty) = ce_and_penalty(state.params)
    grads = jax.grad(lambda p: sum(ce_and_penalty(p)))(state.params)
    updates, _ = optimizer.update(grads, optimizer.init(state.params), state.params)
    want = optax.apply_updates(state.params, updates)
    np.testing.assert_allclose(metrics["train_loss"], ce, rtol=1e-6)
    assert penalty > 1e-3
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Without AR/TAR: the same cross-entropy, other parameters.
    _, _, (plain_state, plain_metrics) = _one_step(config, batch)
    np.testing.assert_allclose(plain_metrics["train_loss"], metrics["train_loss"], rtol=1e-6)
    for a, b in zip(plain_state.params["layers"], new_state.params["layers"], strict=True):
        assert not np.allclose(a["w_h"], b["w_h"], rtol=1e-4, atol=1e-6)


def test_defaults_leave_the_train_step_as_it_was():
    """Every new field at its default: the step is the plain one (the cross-entropy
    of the Zaremba-dropout forward, whose masks are drawn from split(rng, 3) as
    before), to the bit."""
    config, batch = _config(), masked_batch()
    model, state, (new_state, metrics) = _one_step(
        config, batch, activation_reg=0.0, temporal_activation_reg=0.0
    )
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 1)
    k_in, k_stack, k_out = jax.random.split(rng, 3)
    optimizer = optim.make_optimizer(config.optim, 10)

    def ce(params):  # the forward written out of its parts, with the old keys
        xs = recurrent.dropout(model.embed(params, batch.inputs), 0.2, k_in)
        _, hs = recurrent.run_stack(
            model.cell,
            params["layers"],
            xs,
            state.carry,
            batch.reset,
            dropout_rate=0.2,
            rng=k_stack,
            impl="fused",
        )
        logits = model.readout(params, recurrent.dropout(hs, 0.2, k_out))
        total, count = train.masked_nll(logits, batch.targets, batch.mask)
        return total / count

    loss, grads = jax.jit(jax.value_and_grad(ce))(state.params)
    updates, _ = optimizer.update(grads, optimizer.init(state.params), state.params)
    want = optax.apply_updates(state.params, updates)
    np.testing.assert_allclose(metrics["train_loss"], loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("field", ["activation_reg", "temporal_activation_reg"])
def test_bad_penalty_values(field):
    c = config_lib.base_config()
    c.train[field] = -1.0
    with pytest.raises(ValueError, match=rf"train.{field} must be >= 0"):
        config_lib.validate(c)


# ---------------------------------------------------------------------------
# 4. Tied embeddings through a projection when embed_dim != hidden_size


def test_tied_projection_logits_by_hand_and_param_count():
    cfg = LMConfig(vocab_size=V, embed_dim=E, hidden_size=H, init_scale=0.5, tie_embeddings=True)
    model = LanguageModel(cfg)
    params = model.init(jax.random.key(0))
    assert set(params["readout"]) == {"b", "proj"}
    assert params["readout"]["proj"].shape == (H, E)
    hs = np.asarray(jax.random.normal(jax.random.key(1), (B, T, H)), np.float64)
    p, emb, b = (
        np.asarray(a, np.float64)
        for a in (params["readout"]["proj"], params["embed"], params["readout"]["b"])
    )
    np.testing.assert_allclose(
        model.readout(params, jnp.asarray(hs, jnp.float32)),
        hs @ p @ emb.T + b,
        rtol=1e-5,
        atol=1e-5,
    )
    # The whole model: logits from the last layer's outputs, by hand.
    logits, _, hidden = model.apply(params, tokens_for(), model.init_carry(B), return_hidden=True)
    raw = np.asarray(hidden.raw, np.float64)
    np.testing.assert_allclose(logits, raw @ p @ emb.T + b, rtol=1e-5, atol=1e-5)
    # Closed form: V*E + layers + V + H*E, as the pytree counts it.
    layers = sum(4 * H * (d + H + 1) for d in (E, H))
    assert count_params(params) == model.param_count() == V * E + layers + V + H * E
    # E == H: no projection, as before.
    square = LanguageModel(dataclasses.replace(cfg, embed_dim=H))
    sq_params = square.init(jax.random.key(0))
    assert set(sq_params["readout"]) == {"b"}
    assert count_params(sq_params) == square.param_count()


def test_tied_projection_trains_and_gets_gradients():
    cfg = LMConfig(vocab_size=V, embed_dim=E, hidden_size=H, tie_embeddings=True)
    model = LanguageModel(cfg)
    params = model.init(jax.random.key(0))
    tokens = tokens_for()

    def loss(params):
        logits, _ = model.apply(params, tokens, model.init_carry(B))
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = jax.grad(loss)(params)
    assert np.any(np.asarray(grads["readout"]["proj"]) != 0)


# ---------------------------------------------------------------------------
# End to end


AWD = dict(
    model__dropout_input=0.65,
    model__dropout_hidden=0.3,
    model__dropout_output=0.4,
    model__dropout_embedding=0.1,
    model__weight_drop=0.5,
    model__tie_embeddings=True,  # embed 16, hidden 32: through the projection
    train__activation_reg=2.0,
    train__temporal_activation_reg=1.0,
)


@pytest.mark.slow  # about 17 s on two shared cores
def test_smoke_run_with_every_regularizer(tmp_path):
    c = helpers.smoke("dnd:smoke", **AWD)
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert summary["final_step"] == c.train.num_steps
    assert np.isfinite(summary["val_loss"])
    rows = [json.loads(x) for x in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["train_loss"]) for r in rows)


def test_checkpoint_without_the_new_fields_still_resumes():
    """A config saved before these fields existed compares equal to today's
    defaults (the fields read as 0 / off)."""
    current = helpers.smoke("dnd:smoke").to_dict()
    saved = json.loads(json.dumps(current))
    for field in ("dropout_input", "dropout_hidden", "dropout_output", "weight_drop"):
        del saved["model"][field]
    del saved["model"]["dropout_embedding"]
    workdir_lib.check_compatible(saved, current, pathlib.Path("wd"))
    changed = helpers.smoke("dnd:smoke", model__weight_drop=0.5).to_dict()
    with pytest.raises(train.CheckpointError, match=r"model.weight_drop: 0.0 -> 0.5"):
        workdir_lib.check_compatible(saved, changed, pathlib.Path("wd"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(model__weight_drop=1.0), r"model.weight_drop must be in \[0, 1\)"),
        (dict(model__dropout_embedding=0.1, model__embed_dim=0), "needs embed_dim > 0"),
        (dict(train__activation_reg=-2.0), r"train.activation_reg must be >= 0"),
    ],
)
def test_bad_values_stop_a_run_before_anything_is_written(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(helpers.smoke("dnd:smoke", **overrides), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_regularizer_keys_are_apart_from_dropouts_keys():
    """No regularizer mask may reuse a key of `model.dropout` (embedding, stack,
    output, and the stack's per-layer keys), or the masks would be correlated."""
    from lstm_jax import model as model_lib
    from lstm_jax import recurrent

    rng = jax.random.key(7)
    dropout_keys = list(jax.random.split(rng, 3))
    dropout_keys += [recurrent._layer_rng(dropout_keys[1], i) for i in range(4)]
    dropout_keys += [recurrent._locked_rng(dropout_keys[1], i) for i in range(4)]
    reg_keys = [model_lib._reg_key(rng, name) for name in model_lib._REG_KEYS]
    reg_keys += [jax.random.fold_in(model_lib._reg_key(rng, "weight"), i) for i in range(4)]
    data = [tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in dropout_keys + reg_keys]
    assert len(set(data)) == len(data)
