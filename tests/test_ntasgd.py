"""NT-ASGD (Merity, Keskar & Socher 2017, Algorithm 1): the averaging
transformation against a NumPy loop, the trigger against awd-lstm-lm's rule,
evaluation and sampling on the averaged weights, exact resume across the
trigger, and nothing changed when it is off."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import final_params, smoke

from lstm_jax import checkpoint, metrics, optim, sample, train
from lstm_jax import config as config_lib
from lstm_jax.research import long_range


def optim_config(**kw):
    c = config_lib.base_config().optim
    c.unlock()
    c.update(kw)
    return c


# ---------------------------------------------------------------------------
# The transformation.


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def test_nt_average_equals_the_mean_of_the_iterates_since_the_trigger():
    """SGD with global-norm clipping, written out in float64: before the
    trigger the updates are SGD's and the 'average' is the iterate; from the
    trigger at step T the average is (w_T + ... + w_k) / (k - T + 1)."""
    lr, clip, before, after = 0.3, 2.0, 3, 5
    w0 = {"w": np.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": np.array([0.5, -0.25, 2.0])}

    def grad(w, i):  # depends on the iterate, so a wrong trajectory shows
        return {"w": w["w"] * (3.0 + i) + 0.1, "b": np.sin(w["b"]) * (1.0 + i)}

    ref, iterates = {k: v.copy() for k, v in w0.items()}, []
    for i in range(before + after):
        g = grad(ref, i)
        norm = np.sqrt(sum((x**2).sum() for x in g.values()))
        scale = min(1.0, clip / norm)
        ref = {k: ref[k] - lr * scale * g[k] for k in ref}
        iterates.append(ref)

    c = optim_config(name="nt_asgd", learning_rate=lr, clip_mode="global_norm", clip_value=clip)
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in w0.items()}
    state = tx.init(params)
    assert isinstance(state, optim.NTAverageState) and not bool(state.averaging)

    @jax.jit  # one compiled step serves both phases: the flag is traced, not branched on
    def update(params, state, grads):
        updates, state = tx.update(grads, state, params, value=0.0)
        return optax.apply_updates(params, updates), state

    for i in range(before + after):
        if i == before:  # the evaluation after step T = `before` triggers
            state = optim.start_averaging(state)
        g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grad(_host(params), i))
        params, state = update(params, state, g)
        k = i + 1  # steps taken
        for name in w0:
            np.testing.assert_allclose(params[name], iterates[i][name], rtol=2e-5, atol=1e-6)
        avg = optim.averaged_params(state)
        if k <= before:  # not averaging yet: the iterate itself, bitwise
            assert int(state.num_averaged) == 1 and not bool(state.averaging)
            for name in w0:
                np.testing.assert_array_equal(avg[name], params[name])
        else:
            assert int(state.num_averaged) == k - before + 1
            mean = {n: np.mean([w[n] for w in iterates[before - 1 : k]], axis=0) for n in w0}
            for name in w0:
                np.testing.assert_allclose(avg[name], mean[name], rtol=2e-5, atol=1e-6)
                assert not np.allclose(avg[name], params[name])  # the average is not the iterate


# ---------------------------------------------------------------------------
# The trigger.


def awd_lstm_lm_trigger(losses, nonmono):
    """awd-lstm-lm's main.py (salesforce/awd-lstm-lm), its epoch loop with the
    training and model saving left out: the check runs before the epoch's loss
    is appended. Returns the index of the triggering evaluation, or None."""
    best_val_loss = []
    for epoch, val_loss in enumerate(losses):
        if len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono]):
            return epoch  # print('Switching to ASGD')
        best_val_loss.append(val_loss)
    return None


def trigger_index(losses, n):
    tracker = optim.NTTrigger(n)
    fired = [i for i, v in enumerate(losses) if tracker.observe(step=10 * (i + 1), val_loss=v)]
    assert len(fired) <= 1  # it fires once
    assert tracker.val_losses == list(losses)
    if fired:
        assert tracker.trigger_step == 10 * (fired[0] + 1)
    return fired[0] if fired else None


@pytest.mark.parametrize(
    "losses,n,expected",
    [
        ([9, 8, 7, 6, 5, 4, 3, 2, 1], 5, None),  # monotone decrease: never
        ([5, 4, 3, 3, 3, 3, 3, 3, 3], 2, None),  # a tie is not worse
        # plateau after the best: eval 5 (t=5) compares with min(logs[:3]) = 3
        ([5, 4, 3, 3.5, 3.6, 3.2], 2, 5),
        # t=3 compares with logs[:1] = [5] only: 3.5 and 3.6 do not trigger yet
        ([5, 4, 3, 3.5, 3.6, 3.7], 2, 5),
        # a rise right after the first eval, but t > n is not yet true
        ([5, 6, 7], 2, None),
        ([5, 6, 7, 8], 2, 3),  # t=3 > 2 and 8 > min([5])
        ([4, 3, 2, 1, 0.5, 0.4, 9], 5, 6),  # AWD's n=5: the 7th eval at the earliest
        ([4, 5, 6, 7, 8, 9], 5, None),  # fewer than n+2 evals: never
        # worse than the 5 latest, but compared only with eval 0 (4): no
        ([4, 3, 2, 1, 0.5, 0.4, 0.45], 5, None),
        ([4, 3, 2, 1, 0.5, 0.4, 0.3, 3.9], 5, 7),
    ],
)
def test_trigger_rule_matches_awd_lstm_lm(losses, n, expected):
    assert awd_lstm_lm_trigger(losses, n) == expected
    assert trigger_index(losses, n) == expected


def test_trigger_rule_on_random_sequences():
    rng = np.random.default_rng(0)
    fired = 0
    for _ in range(300):
        n = int(rng.integers(1, 6))
        losses = list(np.round(5 - np.cumsum(rng.normal(0.05, 0.2, rng.integers(1, 15))), 1))
        expected = awd_lstm_lm_trigger(losses, n)
        assert trigger_index(losses, n) == expected
        fired += expected is not None
    assert 30 < fired < 270  # both outcomes were exercised


# ---------------------------------------------------------------------------
# Training with NT-ASGD: AWD's SGD (lr 30, clip 0.25) on the tiny dnd model
# bounces enough that n=1 triggers within 20 steps (evaluated every 2).

STEPS, EVERY = 20, 2


def nt_config(num_steps=STEPS):
    return smoke(
        "dnd:smoke",
        optim__name="nt_asgd",
        optim__learning_rate=30.0,
        optim__clip_value=0.25,
        optim__nt_asgd_interval=1,
        model__dropout=0.0,
        train__num_steps=num_steps,
        train__eval_every=EVERY,
        train__checkpoint_every=EVERY,
        train__log_every=EVERY,
        train__sample_length=4,
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("ntasgd") / "full"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):  # the smoke config prints, no progress bar
        summary = train.train_and_evaluate(nt_config(), str(wd))
    return wd, summary, console.getvalue()


def eval_rows(wd):
    return [r for r in metrics.read_jsonl(wd / "metrics.jsonl") if "val_loss" in r]


def test_averaging_starts_where_the_rule_says_and_is_logged(full_run):
    wd, summary, console = full_run
    rows = eval_rows(wd)
    losses = [r["val_loss"] for r in rows]
    index = awd_lstm_lm_trigger(losses, 1)
    assert index is not None and rows[index]["step"] < STEPS  # the setup triggers
    trigger = rows[index]["step"]
    assert summary["nt_asgd_trigger_step"] == trigger
    assert [r["step"] for r in rows if "nt_asgd_trigger_step" in r] == [trigger]
    assert rows[index]["nt_asgd_trigger_step"] == trigger
    started = [line for line in console.splitlines() if "NT-ASGD averages" in line]
    assert len(started) == 1 and started[0].startswith(f"step {trigger}: val loss")
    meta = checkpoint.Checkpointer(wd / "checkpoints", read_only=True).restore_meta(STEPS)
    assert meta["nt_asgd"] == {"val_losses": losses, "trigger_step": trigger}


def test_evaluation_uses_the_averaged_weights(full_run):
    """The reported val loss is the averaged params' loss, computed here
    directly; the raw iterate's loss differs."""
    wd, summary, _ = full_run
    trigger = summary["nt_asgd_trigger_step"]
    step, state = final_params(wd)
    assert step == STEPS and bool(state.opt_state.averaging)
    assert int(state.opt_state.num_averaged) == STEPS - trigger + 1
    c = nt_config()
    data = train.load_data(c)
    model = train.build_model(c, data.tokenizer.vocab_size)
    t = c.train

    def loss(params):
        eval_step = train.make_eval_step(model)
        ids = data.splits["valid"]
        return train.evaluate(eval_step, model, params, ids, t.batch_size, t.seq_len, 3)

    averaged = loss(optim.averaged_params(state.opt_state))
    assert averaged == pytest.approx(summary["val_loss"], rel=1e-6)
    assert abs(loss(state.params) - averaged) > 1e-3
    assert summary["best_val_loss"] == min(r["val_loss"] for r in eval_rows(wd))


def test_sampler_restores_the_averaged_weights(full_run):
    wd, _, _ = full_run
    _, state = final_params(wd)
    restored = sample.restore(wd)
    assert restored.averaged and "NT-ASGD averaged" in sample._describe(restored)
    flat = checkpoint.flat_leaves(restored.params)
    avg = checkpoint.flat_leaves(optim.averaged_params(state.opt_state))
    raw = checkpoint.flat_leaves(state.params)
    assert flat.keys() == avg.keys() == raw.keys()
    for name in flat:
        np.testing.assert_array_equal(flat[name], avg[name])
    assert any(not np.array_equal(flat[n], raw[n]) for n in flat)
    text = sample.sample_text(
        restored.model, restored.params, restored.tokenizer, jax.random.key(0), length=5
    )
    assert text.samples[0].num_tokens == 5


def test_resume_across_the_trigger_equals_one_run(full_run, tmp_path):
    """Stopped before the trigger (the val-loss history must carry over),
    then after it (the average must), then finished: the same params,
    optimizer state (average, count, flag), val losses and trigger step."""
    wd, summary, _ = full_run
    trigger = summary["nt_asgd_trigger_step"]
    cuts = [trigger - 2 * EVERY, trigger + EVERY, STEPS]
    assert 0 < cuts[0] < trigger < cuts[1] < STEPS
    split = tmp_path / "split"
    for num_steps in cuts:
        last = train.train_and_evaluate(nt_config(num_steps), str(split))
    assert last["start_step"] == cuts[1] and last["nt_asgd_trigger_step"] == trigger
    _, one = final_params(wd)
    _, two = final_params(split)
    assert jax.tree.structure(one) == jax.tree.structure(two)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["val_loss"] for r in eval_rows(split)] == [r["val_loss"] for r in eval_rows(wd)]
    metas = [
        checkpoint.Checkpointer(w / "checkpoints", read_only=True).restore_meta(STEPS)
        for w in (wd, split)
    ]
    assert metas[0]["nt_asgd"] == metas[1]["nt_asgd"]


# ---------------------------------------------------------------------------
# Off by default; bad values.


def test_off_by_default_the_optimizer_state_and_updates_are_unchanged():
    c = config_lib.base_config()
    assert c.optim.name == "adam" and optim.NTTrigger.from_config(c.optim, None) is None
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}
    tx = optim.make_optimizer(c.optim, steps_per_epoch=10)
    ref = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(optax.constant_schedule(2e-3)))
    s, r = tx.init(params), ref.init(params)
    assert jax.tree.structure(s) == jax.tree.structure(r)
    assert not optax.tree_utils.tree_get_all_with_path(s, "averaged_params")
    for i in range(3):
        g = {"w": params["w"] * (7.0 + i)}
        u, s = tx.update(g, s, params, value=1.0)
        v, r = ref.update(g, r, params)
        np.testing.assert_array_equal(u["w"], v["w"])


def test_off_by_default_a_run_writes_no_averaging(tmp_path):
    c = smoke("dnd:smoke", train__num_steps=2, train__eval_every=2, train__sample_length=0)
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert "nt_asgd_trigger_step" not in summary
    ckpt = checkpoint.Checkpointer(tmp_path / "wd" / "checkpoints", read_only=True)
    assert "nt_asgd" not in ckpt.restore_meta(2)
    assert not any("averaged" in k for k in ckpt.array_shapes(2))
    assert not sample.restore(tmp_path / "wd").averaged


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(optim__nt_asgd_interval=0), r"optim.nt_asgd_interval must be >= 1"),
        (dict(train__evaluate=False), r"nt_asgd.*needs train.evaluate=True"),
    ],
)
def test_bad_nt_asgd_config(overrides, message):
    c = smoke("dnd:smoke", optim__name="nt_asgd", **overrides)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(c)


def test_research_tasks_refuse_nt_asgd():
    c = long_range.base_config()
    c.optim.name = "nt_asgd"
    with pytest.raises(ValueError, match="research tasks do not average"):
        long_range.validate(c)
