"""End-to-end training: every config's smoke variant, exact resume, signals,
and the errors a user gets for bad input."""

import json
import signal
import subprocess
import sys
import time

import helpers
import jax
import ml_collections
import numpy as np
import optax
import pytest
from helpers import ROOT, final_params, smoke

from lstm_jax import checkpoint, host, optim, train
from lstm_jax import config as config_lib
from lstm_jax import workdir as workdir_lib


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,path_fixture",
    [
        ("dnd:smoke", None),
        ("dnd:char,smoke", None),
        ("shakespeare_char:smoke", "story"),
        ("min_char_rnn:smoke", "story"),
        ("ptb_small:smoke", "ptb_dir"),
        ("short_story:smoke", "story"),
    ],
)
def test_smoke_configs_train_end_to_end(name, path_fixture, request, tmp_path, capsys):
    c = smoke(name)
    if path_fixture:
        c.data.path = str(request.getfixturevalue(path_fixture))
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert summary["final_step"] == c.train.num_steps
    assert np.isfinite(summary["val_loss"])
    rows = [json.loads(x) for x in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(
        range(c.train.log_every, c.train.num_steps + 1, c.train.log_every)
    )
    assert all("train_loss" in r for r in rows)
    evals = [r["step"] for r in rows if "val_loss" in r]
    assert evals == list(range(c.train.eval_every, c.train.num_steps + 1, c.train.eval_every))
    if c.train.sample_length:  # a sample is printed at each evaluation
        assert capsys.readouterr().out.count("sample at step") == len(evals)
    saved = json.loads((tmp_path / "wd" / "config.json").read_text())
    assert saved["model"] == c.model.to_dict()


@pytest.mark.slow
def test_training_learns(tmp_path, story):
    """A small char LSTM beats the unigram baseline on a repetitive text."""
    c = smoke(
        "shakespeare_char:smoke",
        train__num_steps=150,
        train__eval_every=150,
        optim__learning_rate=1e-2,
    )
    c.data.path = str(story)
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert summary["val_loss"] < 0.6 * summary["unigram_val_loss"]


@pytest.mark.slow
def test_onednn_dots_train_the_same_model(tmp_path):
    """train.cpu_dots="onednn" changes only the matmul library XLA:CPU calls:
    the same losses as the default, up to float summation order."""
    runs = {}
    for dots in ("default", "onednn"):
        c = smoke("dnd:smoke", train__num_steps=10, train__cpu_dots=dots, model__dropout=0.0)
        summary = train.train_and_evaluate(c, str(tmp_path / dots))
        lines = (tmp_path / dots / "metrics.jsonl").read_text().splitlines()
        runs[dots] = [json.loads(x)["train_loss"] for x in lines], summary["val_loss"]
    (losses, val), (onednn_losses, onednn_val) = runs["default"], runs["onednn"]
    assert len(losses) == 2 and losses[-1] < losses[0]
    np.testing.assert_allclose(onednn_losses, losses, rtol=1e-4)
    np.testing.assert_allclose(onednn_val, val, rtol=1e-4)
    assert host.cpu_compiler_options("onednn", backend="gpu") == {}
    assert host.cpu_compiler_options("onednn", backend="cpu")["xla_cpu_use_onednn"]


@pytest.mark.slow
def test_exact_resume_is_bitwise(tmp_path):
    """2N steps in one run == N steps, restart, N more (dropout on, state carried)."""
    one = smoke("dnd:smoke", train__num_steps=16, train__eval_every=8, train__checkpoint_every=8)
    train.train_and_evaluate(one, str(tmp_path / "one"))
    first = smoke("dnd:smoke", train__num_steps=8, train__eval_every=8, train__checkpoint_every=8)
    train.train_and_evaluate(first, str(tmp_path / "two"))
    second = smoke("dnd:smoke", train__num_steps=16, train__eval_every=8, train__checkpoint_every=8)
    summary = train.train_and_evaluate(second, str(tmp_path / "two"))
    assert summary["final_step"] == 16
    step_a, state_a = final_params(tmp_path / "one")
    step_b, state_b = final_params(tmp_path / "two")
    assert step_a == step_b == 16
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [5, 8, 10, 15, 16]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_exits_128_plus_signal_and_rerun_resumes(tmp_path, signum):
    """Preempted (SIGTERM) or interrupted (Ctrl-C): save, then exit 143 / 130,
    so `train && sample` or a job scheduler does not take the run as finished."""
    wd = tmp_path / "wd"
    cmd = helpers.train_cli(
        wd,
        "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=0",
        "--config.train.eval_every=0",
        "--config.train.log_every=1",
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = wd / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 3
    ):
        time.sleep(0.2)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, out.decode()[-2000:]
    assert f"got {signal.Signals(signum).name}; finishing" in out.decode()
    steps = checkpoint.Checkpointer(wd / "checkpoints", read_only=True).all_steps()
    assert len(steps) == 1 and steps[0] >= 3
    c = smoke("dnd:smoke", train__num_steps=steps[0] + 2, train__eval_every=0)
    summary = train.train_and_evaluate(c, str(wd))
    assert summary["final_step"] == steps[0] + 2


# ---------------------------------------------------------------------------
# Bad input: each gets a clear error before any compute, nothing overwritten.


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (dict(optim__learning_rate=-1.0), ValueError, "optim.learning_rate must be > 0"),
        (dict(model__num_layers=0), ValueError, "model.num_layers must be >= 1"),
        (
            dict(model__cell="lstn"),
            ValueError,
            r"unknown cell 'lstn'; valid cells: \['gru', 'irnn'",
        ),
        (
            dict(optim__name="adamax"),
            ValueError,
            r"unknown optimizer 'adamax'; valid optimizers: \['adagrad', 'adam'",
        ),
        (
            dict(optim__schedule="linear"),
            ValueError,
            r"unknown schedule 'linear'; valid schedules: \['constant'",
        ),
        (
            dict(optim__clip_mode="norm"),
            ValueError,
            r"unknown clip mode 'norm'.*'element', 'global_norm', 'none'",
        ),
        (dict(data__corpus="wiki"), ValueError, r"unknown corpus 'wiki'.*dnd_spells"),
        (dict(data__tokenizer="bpe"), ValueError, r"unknown tokenizer 'bpe'"),
        (
            dict(train__cpu_dots="mkl"),
            ValueError,
            r"unknown train.cpu_dots 'mkl'; valid: \['default', 'onednn'\]",
        ),
    ],
)
def test_bad_config_values(overrides, error, message, tmp_path):
    c = smoke("dnd:smoke", **overrides)
    with pytest.raises(error, match=message):
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # refused before anything was written


def test_unencodable_sample_prime_fails_before_training(tmp_path):
    c = smoke("dnd:char,smoke")
    c.train.sample_prime = "spell \u2603"
    with pytest.raises(ValueError, match="\u2603"):
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not workdir_lib.has_checkpoint(tmp_path / "wd")  # nothing trained, nothing saved


@pytest.mark.slow
def test_unknown_config_key_fails_on_the_command_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lstm_jax.train",
            "--config",
            "configs/dnd.py:smoke",
            "--workdir",
            str(tmp_path / "wd"),
            "--config.train.num_step=5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert 'Did you mean "num_steps" instead of "num_step"' in out.stderr
    assert not (tmp_path / "wd").exists()


def test_unknown_key_in_a_config_dict():
    c = ml_collections.ConfigDict(config_lib.base_config().to_dict())
    c.train.num_step = 5
    with pytest.raises(
        KeyError, match=r"unknown config key train.'num_step'; did you mean train.'num_steps'"
    ):
        config_lib.validate(c)


def test_missing_and_empty_files(tmp_path):
    c = smoke("short_story:smoke")
    c.data.path = str(tmp_path / "nope.txt")
    with pytest.raises((FileNotFoundError, ValueError), match="nope.txt"):
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    (tmp_path / "empty.txt").write_text("")
    c.data.path = str(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="empty"):
        train.train_and_evaluate(c, str(tmp_path / "wd"))


def test_corpus_too_small_says_the_minimum(tmp_path):
    (tmp_path / "tiny.txt").write_text("a spell of fire and ice " * 5)
    c = smoke("short_story:smoke", train__batch_size=64, train__seq_len=16)
    c.data.path = str(tmp_path / "tiny.txt")
    c.data.batching = "streams"
    with pytest.raises(ValueError, match=r"at least batch_size\*seq_len\+1 = 1025 tokens"):
        train.train_and_evaluate(c, str(tmp_path / "wd"))


@pytest.mark.slow
def test_incompatible_workdir_is_refused_and_kept(tmp_path):
    wd = tmp_path / "wd"
    train.train_and_evaluate(smoke("dnd:smoke", train__num_steps=10), str(wd))
    before = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file() and "tb" not in p.parts}
    bigger = smoke("dnd:smoke", model__hidden_size=64)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"model.hidden_size: 32 -> 64.*new --workdir"
    ):
        train.train_and_evaluate(bigger, str(wd))
    after = {p: p.read_bytes() for p in wd.rglob("*") if p.is_file() and "tb" not in p.parts}
    assert before == after


@pytest.mark.slow
def test_corrupt_checkpoint_gets_a_clear_error(tmp_path):
    wd = tmp_path / "wd"
    train.train_and_evaluate(smoke("dnd:smoke", train__num_steps=10), str(wd))
    for f in (wd / "checkpoints" / "10" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match=r"cannot read checkpoint .*10.*corrupt"):
        train.train_and_evaluate(smoke("dnd:smoke", train__num_steps=20), str(wd))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # a relu RNN is unbounded, so a huge step overflows to inf and then NaN
    c = smoke(
        "dnd:smoke",
        model__cell="rnn_relu",
        optim__name="sgd",
        optim__learning_rate=1e12,
        optim__clip_mode="none",
        train__checkpoint_every=1,
        train__num_steps=50,
    )
    with pytest.raises(
        train.NonFiniteLossError, match=r"non-finite training loss .* at step (\d+)"
    ) as error:
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    # step s's loss is the loss of checkpoint s - 1's parameters: set aside
    bad = error.value.step - 1
    assert (tmp_path / "wd" / "checkpoints-damaged" / str(bad)).is_dir()
    ckpt = checkpoint.Checkpointer(tmp_path / "wd" / "checkpoints", read_only=True)
    last = ckpt.latest_step()
    assert last is None or last < bad
    if last is not None:
        _, state = final_params(tmp_path / "wd")
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
        assert f"step {last}, is kept" in str(error.value)
    # the advice, followed: same workdir, a lower learning rate and clipping
    message = str(error.value)
    assert "--config.optim.learning_rate" in message and "--config.optim.clip_value=1" in message
    c.optim.learning_rate, c.optim.clip_mode, c.optim.clip_value = 1e-3, "global_norm", 1.0
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert summary["start_step"] == (last or 0) and summary["final_step"] == 50


# ---------------------------------------------------------------------------
# The optax chain against reference compositions.


def optim_config(**kw):
    c = config_lib.base_config().optim
    c.unlock()
    c.update(kw)
    return c


def run_updates(tx, steps=3, value=1.0):
    params = {"w": np.linspace(-1.0, 1.0, 6).reshape(2, 3).astype(np.float32)}
    state = tx.init(params)
    out = []
    for i in range(steps):
        grads = {"w": params["w"] * (7.0 + i)}
        updates, state = tx.update(grads, state, params, value=value)
        params = optax.apply_updates(params, updates)
        out.append(params["w"])
    return np.stack(out)


@pytest.mark.parametrize(
    "cfg,reference",
    [
        (
            dict(
                name="rmsprop", learning_rate=2e-3, decay=0.95, clip_mode="element", clip_value=5.0
            ),
            lambda: optax.chain(
                optax.clip(5.0), optax.rmsprop(2e-3, decay=0.95, eps=1e-8, eps_in_sqrt=False)
            ),
        ),
        (
            dict(name="rmsprop", learning_rate=1e-3, decay=0.9, eps_in_sqrt=True, clip_mode="none"),
            lambda: optax.rmsprop(1e-3, decay=0.9, eps=1e-8, eps_in_sqrt=True),
        ),
        (
            dict(name="sgd", learning_rate=1.0, clip_mode="global_norm", clip_value=5.0),
            lambda: optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(1.0)),
        ),
        (
            dict(name="adagrad", learning_rate=0.1, clip_mode="element", clip_value=5.0),
            lambda: optax.chain(
                optax.clip(5.0), optax.adagrad(0.1, initial_accumulator_value=0.0, eps=1e-8)
            ),
        ),
        (dict(name="adam", learning_rate=1e-3, clip_mode="none"), lambda: optax.adam(1e-3)),
    ],
)
def test_optimizer_chain_equals_reference(cfg, reference):
    got = run_updates(optim.make_optimizer(optim_config(**cfg), steps_per_epoch=10))
    np.testing.assert_allclose(got, run_updates(reference()), rtol=1e-6)


def test_rmsprop_eps_outside_the_root_is_pytorchs_and_char_rnns_formula():
    """torch.optim.RMSprop / char-rnn's optim.rmsprop, written out:
    v = a v + (1 - a) g^2;  w -= lr g / (sqrt(v) + eps). Gradients of 1e-5 make
    the placement matter: sqrt(v) is ~1e-5, far below sqrt(eps) = 1e-4."""
    lr, a, eps = 2e-3, 0.95, 1e-8
    w0 = np.linspace(-1.0, 1.0, 6).reshape(2, 3).astype(np.float64)
    grads = [w0 * 1e-5 * (1 + i) for i in range(3)]
    w, v, expected = w0.copy(), np.zeros_like(w0), []
    for g in grads:
        v = a * v + (1 - a) * g * g
        w = w - lr * g / (np.sqrt(v) + eps)
        expected.append(w.copy())

    def run(eps_in_sqrt):
        c = optim_config(name="rmsprop", learning_rate=lr, decay=a, eps=eps, clip_mode="none")
        c.eps_in_sqrt = eps_in_sqrt
        tx = optim.make_optimizer(c, steps_per_epoch=10)
        params = {"w": w0.astype(np.float32)}
        state, out = tx.init(params), []
        for g in grads:
            updates, state = tx.update({"w": g.astype(np.float32)}, state, params)
            params = optax.apply_updates(params, updates)
            out.append(np.asarray(params["w"]))
        return np.stack(out)

    np.testing.assert_allclose(run(False), np.stack(expected), rtol=1e-5, atol=1e-7)
    # optax's default placement takes far smaller steps here (sqrt(v + eps) ~ 1e-4)
    step_inside = np.abs(run(True)[-1] - w0).max()
    step_outside = np.abs(run(False)[-1] - w0).max()
    assert step_inside < 0.5 * step_outside


def test_schedules():
    spe = 100
    zaremba = optim.make_schedule(
        optim_config(schedule="step", learning_rate=1.0, decay_rate=0.5, decay_after_epochs=4), spe
    )
    # epochs 0-3 at 1.0, then halved at the start of every epoch from epoch 4 (the 5th)
    assert [float(zaremba(e * spe)) for e in range(7)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]
    charrnn = optim.make_schedule(
        optim_config(
            schedule="exponential", learning_rate=2e-3, decay_rate=0.97, decay_after_epochs=10
        ),
        spe,
    )
    assert float(charrnn(10 * spe)) == pytest.approx(2e-3)
    assert float(charrnn(12 * spe)) == pytest.approx(2e-3 * 0.97**2)
    cosine = optim.make_schedule(
        optim_config(
            schedule="warmup_cosine",
            learning_rate=1.0,
            warmup_steps=10,
            decay_steps=110,
            end_fraction=0.1,
        ),
        spe,
    )
    assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(110)) == pytest.approx(0.1)


def test_reduce_on_plateau_lowers_the_rate():
    c = optim_config(
        name="sgd",
        learning_rate=1.0,
        schedule="reduce_on_plateau",
        decay_rate=0.5,
        plateau_patience=1,
        clip_mode="none",
    )
    tx = optim.make_optimizer(c, steps_per_epoch=1)
    params = {"w": np.ones(3, np.float32)}
    state = tx.init(params)
    schedule = optim.make_schedule(c, 1)
    for _ in range(6):  # a loss that never improves
        _, state = tx.update({"w": np.ones(3, np.float32)}, state, params, value=1.0)
    assert float(optim.current_learning_rate(c, schedule, 6, state)) < 1.0
