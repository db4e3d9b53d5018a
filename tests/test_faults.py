"""Fault injection: each fault a careful user can cause, reproduced on real orbax
checkpoints, and the behaviour asserted.

- damaged array bytes, truncated array data, a removed `ocdbt.process_0`:
  refused by `Checkpointer.restore_state` (the train CLI's restore) and by the
  sampler CLI in one clean line that lists the other checkpoints;
- a checkpoint from before checksums loads, with a warning;
- the newest-good fallback skips a damaged newest checkpoint;
- an unreadable tokenizer.json, temperature=inf;
- a torn last line in metrics.jsonl;
- an asynchronous save survives the train step donating (and XLA reusing) the
  state's buffers right after `save` returns;
- `kill -9` in the middle of saves (slow): every run resumes from a good
  checkpoint and ends bit for bit where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import helpers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import ROOT, smoke

from lstm_jax import checkpoint, metrics, optim, sample, train
from lstm_jax.checkpoint import CheckpointError, DamagedCheckpointError

STEPS = 20  # dnd:smoke, checkpointed at 10 and 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    wd = tmp_path_factory.mktemp("faults") / "wd"
    train.train_and_evaluate(
        smoke("dnd:smoke", train__num_steps=STEPS, train__checkpoint_every=10), str(wd)
    )
    assert checkpoint.Checkpointer(wd / "checkpoints", read_only=True).all_steps() == [10, 20]
    return wd


@pytest.fixture
def workdir(trained, tmp_path) -> pathlib.Path:
    """A copy of the trained workdir, free to damage."""
    return pathlib.Path(shutil.copytree(trained, tmp_path / "wd"))


def target_state(workdir: pathlib.Path) -> train.TrainState:
    """A fresh TrainState of the workdir's config: the structure to restore into."""
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    data = train.load_data(config)
    model = train.build_model(config, data.tokenizer.vocab_size)
    return train.init_state(
        config, model, optim.make_optimizer(config.optim, 10), config.train.batch_size
    )


def array_files(workdir: pathlib.Path, step: int) -> list[pathlib.Path]:
    """The array data files of a checkpoint, largest first."""
    d = workdir / "checkpoints" / str(step) / "state" / "ocdbt.process_0" / "d"
    return sorted((f for f in d.iterdir() if f.is_file()), key=lambda f: -f.stat().st_size)


def damage_arrays(workdir: pathlib.Path, step: int) -> None:
    """Overwrites 100 bytes in the middle of each array data file of the checkpoint
    (the fault-injection pass damaged the largest; where each array lands in OCDBT's
    files varies from save to save, and each of the large files holds one of the
    four large arrays, two of them params, so damaging each hits params)."""
    for f in array_files(workdir, step):
        if f.stat().st_size >= 1024:
            data = bytearray(f.read_bytes())
            middle = len(data) // 2
            data[middle : middle + 100] = bytes(range(100, 200))
            f.write_bytes(bytes(data))


REFUSED_20 = r"checkpoint \S+/20\b.*Other checkpoints here: \[10\]"


def run_sample(workdir: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lstm_jax.sample", "--workdir", str(workdir), "--length", "5"]
        + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_clean_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == sample.USAGE_ERROR, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, out.stderr[-3000:]
    return errors[0]


# ----------------------------------------------------------------------------
# Damaged arrays.


@pytest.mark.slow
def test_damaged_array_bytes_are_refused_by_restore_and_by_training(workdir):
    damage_arrays(workdir, 20)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    # zstd-compressed data: a damaged chunk either fails to decode ("cannot read")
    # or decodes to other values, which the checksums catch ("is damaged")
    with pytest.raises(DamagedCheckpointError, match=REFUSED_20):
        ckpt.restore_state(20, target_state(workdir))
    state10 = ckpt.restore_state(10, target_state(workdir))  # the other one is intact
    assert int(state10.step) == 10
    # the train CLI resumes through restore_state, so it refuses to train on it too
    with pytest.raises(DamagedCheckpointError, match=REFUSED_20):
        train.train_and_evaluate(smoke("dnd:smoke", train__num_steps=30), str(workdir))


@pytest.mark.slow
def test_damaged_checkpoint_train_cli_refuses_then_falls_back_when_asked(workdir):
    damage_arrays(workdir, 20)
    args = ["--config", "configs/dnd.py:smoke", "--workdir", str(workdir)]
    args += ["--config.train.num_steps=30"]
    cmd = [sys.executable, "-m", "lstm_jax.train", *args]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert re.search(REFUSED_20, refused.stderr) and "restore_fallback=True" in refused.stderr
    fallback = [*cmd, "--config.train.restore_fallback=True"]
    out = subprocess.run(fallback, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from checkpoint 10, the newest that verifies" in out.stdout
    summary = json.loads(out.stdout[out.stdout.index("\n{") :])
    assert summary["start_step"] == 10 and summary["final_step"] == 30


@pytest.mark.slow
def test_arrays_that_differ_from_their_checksums_are_named(workdir):
    """Values that read back without error but differ from what was saved: here
    the recorded checksum of one params array no longer matches its data."""
    path = workdir / "checkpoints" / "20" / "checksums" / checkpoint.CHECKSUMS_FILE
    saved = json.loads(path.read_text())
    saved["arrays"]["params/layers/0/w_h"] = "0" * 64
    path.write_text(json.dumps(saved))
    with pytest.raises(
        DamagedCheckpointError,
        match=r"checkpoint \S+/20 is damaged: 1 of 25 arrays differ from the checksums "
        r"written with them \(params/layers/0/w_h\)\. Other checkpoints here: \[10\]",
    ):
        checkpoint.Checkpointer(workdir / "checkpoints").restore_state(20, target_state(workdir))
    line = one_clean_error(run_sample(workdir))
    assert re.search(r"/20 is damaged: 1 of 9 arrays .*\(params/layers/0/w_h\)", line)


@pytest.mark.slow
def test_damaged_param_bytes_are_refused_by_the_sampler_cli(workdir):
    damage_arrays(workdir, 20)
    line = one_clean_error(run_sample(workdir))
    assert re.search(REFUSED_20, line)
    ok = run_sample(workdir, "--checkpoint", "10")  # the intact one still samples
    assert ok.returncode == 0, ok.stderr[-3000:]
    verbose = run_sample(workdir, "--verbose")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


@pytest.mark.slow
def test_truncated_and_missing_array_files_give_one_clean_line(workdir):
    for f in array_files(workdir, 20):  # every array loses its data
        f.write_bytes(f.read_bytes()[:16])
    line = one_clean_error(run_sample(workdir))
    assert re.search(r"cannot read checkpoint \S+/20 .*Other checkpoints here: \[10\]", line)
    shutil.rmtree(workdir / "checkpoints" / "20" / "state" / "ocdbt.process_0")
    with pytest.raises(DamagedCheckpointError, match=r"/20 .*Other checkpoints here: \[10\]"):
        sample.restore(workdir)
    with pytest.raises(DamagedCheckpointError, match=r"cannot read checkpoint \S+/20"):
        checkpoint.Checkpointer(workdir / "checkpoints").restore_state(20, target_state(workdir))


def test_newest_good_fallback_skips_a_damaged_checkpoint(workdir, caplog):
    damage_arrays(workdir, 20)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    target = target_state(workdir)
    with caplog.at_level(logging.WARNING):
        step, state, meta = ckpt.restore_newest_good(target)
    assert step == 10 and meta["step"] == 10
    assert "skipping checkpoint 20: " in caplog.text
    want = ckpt.restore_state(10, target)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    damage_arrays(workdir, 10)
    with pytest.raises(DamagedCheckpointError, match=r"every checkpoint .* is damaged"):
        ckpt.restore_newest_good(target)


@pytest.mark.slow
def test_checkpoint_without_checksums_loads_with_a_warning(trained, tmp_path, caplog):
    """A checkpoint as this project wrote them before checksums: orbax's
    StandardSave + JSON meta, no checksums item."""
    source = checkpoint.Checkpointer(trained / "checkpoints", read_only=True)
    state = source.restore_state(20, target_state(trained))
    meta = source.restore_meta(20)
    wd = tmp_path / "legacy"
    shutil.copytree(trained, wd, ignore=shutil.ignore_patterns("checkpoints"))
    legacy = ocp.CheckpointManager(
        (wd / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
        item_names=("state", "meta"),
    )
    legacy.save(
        20,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    legacy.close()

    ckpt = checkpoint.Checkpointer(wd / "checkpoints", read_only=True)
    assert not ckpt.has_checksums(20)
    with caplog.at_level(logging.WARNING):
        restored = ckpt.restore_state(20, target_state(wd))
    assert "has no checksums" in caplog.text and "without verification" in caplog.text
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not sample.restore(wd).verified
    assert sample.restore(trained).verified


# ----------------------------------------------------------------------------
# The sampler's other inputs.


def test_unreadable_tokenizer_file_is_named(workdir):
    meta_file = workdir / "checkpoints" / "20" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["tokenizer"]  # as an old checkpoint: the tokenizer comes from the workdir
    meta_file.write_text(json.dumps(meta))
    (workdir / "tokenizer.json").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cannot read the tokenizer file \S+tokenizer.json"):
        sample.restore(workdir)
    (workdir / "tokenizer.json").write_text('{"kind": "word"}')
    with pytest.raises(CheckpointError, match=r"the tokenizer in \S+tokenizer.json is unreadable"):
        sample.restore(workdir)


@pytest.mark.slow
def test_infinite_temperature_is_refused(trained):
    restored = sample.restore(trained)
    for t in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
            sample.make_sampler(restored.model, restored.tokenizer, length=5, temperature=t)
    line = one_clean_error(run_sample(trained, "--temperature", "inf"))
    assert "temperature must be > 0 and finite, got inf" in line


# ----------------------------------------------------------------------------
# metrics.jsonl


def test_torn_metrics_line_is_dropped_and_the_file_rewritten_atomically(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train_loss": 1.0 / s} for s in (5, 10, 15)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 20, "train_lo')
    inode = path.stat().st_ino
    with caplog.at_level(logging.WARNING):
        writer = metrics.MetricWriter(tmp_path, resume_step=10)
    writer.close()
    assert f"{path}:4: dropped a line" in caplog.text
    assert metrics.read_jsonl(path) == rows[:2]
    assert path.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir() if "metrics" in p.name) == ["metrics.jsonl"]


@pytest.mark.slow
def test_training_resumes_past_a_torn_metrics_line(workdir):
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 21, "train_loss": 0.5')  # killed mid-write after step 20
    summary = train.train_and_evaluate(smoke("dnd:smoke", train__num_steps=25), str(workdir))
    assert summary["final_step"] == 25
    steps = [r["step"] for r in metrics.read_jsonl(workdir / "metrics.jsonl")]
    assert steps == [5, 10, 15, 20, 25]


# ----------------------------------------------------------------------------
# Asynchronous saves and buffer donation.


def test_async_save_survives_donation_of_the_saved_buffers(tmp_path):
    """`save` returns once the arrays are in host memory: a donating step that
    overwrites the state, and even deleting the arrays outright, before the
    write finishes, leave the checkpoint with the values at save time."""
    key = jax.random.key(0)
    state = {
        "params": {"w": jax.random.normal(key, (256, 1024)), "b": jnp.arange(7.0)},
        "step": jnp.int32(3),
    }
    want = jax.tree.map(np.array, state)  # copies
    target = jax.tree.map(jnp.zeros_like, state)
    overwrite = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 - 1, s), donate_argnums=0)

    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(3, state, {"step": 3})
    state = overwrite(state)  # the next train step: donated state, new values
    ckpt.save(4, state, {"step": 4})
    for x in jax.tree.leaves(state):
        x.delete()  # the buffers are gone before the write finishes
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 4]
    got3 = ckpt.restore_state(3, target)
    got4 = ckpt.restore_state(4, target)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(got3), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    for a, b in zip(jax.tree.leaves(got4), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b) * 0 - 1)


@pytest.mark.slow
def test_save_is_asynchronous_and_close_waits(tmp_path):
    """`save` returns before the checkpoint is committed; `close` commits it."""
    state = {"w": jnp.ones((2048, 2048))}  # 16 MiB: more than a moment to write
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state, {"step": 1})
    committed_at_return = (tmp_path / "ckpt" / "1").is_dir()
    ckpt.close()
    assert (tmp_path / "ckpt" / "1").is_dir()
    assert not committed_at_return
    reread = checkpoint.Checkpointer(tmp_path / "ckpt", read_only=True)
    assert reread.saved_checksums(1) == {
        "w": checkpoint.array_checksum(np.ones((2048, 2048), np.float32))
    }


def test_a_failed_background_save_is_reported(tmp_path, monkeypatch):
    """A write that fails in the background (a full disk, here simulated in the
    checksum step) surfaces as a CheckpointError at the next wait, and nothing
    half-written is left as a checkpoint."""

    def disk_full(arrays):
        raise OSError("No space left on device (simulated)")

    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, {"w": jnp.ones(3)}, {"step": 1})
    ckpt.wait_until_finished()
    monkeypatch.setattr(checkpoint, "checksums", disk_full)
    ckpt.save(2, {"w": jnp.ones(3)}, {"step": 2})
    with pytest.raises(CheckpointError, match=r"writing checkpoint \S+/2 failed.*No space left"):
        ckpt.close()
    assert checkpoint.Checkpointer(tmp_path / "ckpt", read_only=True).all_steps() == [1]


# ----------------------------------------------------------------------------
# kill -9 during saves.

KILL_TRIALS = 6
KILL_STEPS = 30  # the reference run's length; every kill lands before it
# the killed runs save every step; the reference and the resumed runs only at the
# end (checkpoint_every may change on resume: it does not change the trajectory)
RESUMED = dict(train__checkpoint_every=0, train__eval_every=0, train__log_every=1)


def _saving_step(ckpt_dir: pathlib.Path) -> int | None:
    """The step of an orbax temporary (uncommitted) checkpoint directory, if one exists."""
    if not ckpt_dir.is_dir():
        return None
    for entry in os.scandir(ckpt_dir):
        if ".orbax-checkpoint-tmp" in entry.name:
            return int(entry.name.split(".")[0])
    return None


@pytest.mark.slow
def test_kill_9_during_saves_always_resumes_exactly(tmp_path):
    reference = tmp_path / "reference"
    train.train_and_evaluate(
        smoke("dnd:smoke", train__num_steps=KILL_STEPS, **RESUMED), str(reference)
    )
    _, want = _final_state(reference)

    rng = random.Random(0)
    exact = 0
    for trial in range(KILL_TRIALS):
        wd = tmp_path / f"trial{trial}"
        cmd = helpers.train_cli(
            wd,
            "--config.train.num_steps=100000",
            "--config.train.checkpoint_every=1",
            "--config.train.eval_every=0",
            "--config.train.log_every=1",
            "--config.train.keep_checkpoints=2",
        )
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # kill while the save of step >= `at` is being written, after a random delay
        at, delay = 2 + 3 * trial, rng.uniform(0, 0.05)
        deadline, saving = time.time() + 240, None
        while time.time() < deadline and proc.poll() is None:
            saving = _saving_step(wd / "checkpoints")
            if saving is not None and saving >= at:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-3000:]
        assert saving is not None, "no save was seen in progress"

        ckpt = checkpoint.Checkpointer(wd / "checkpoints", read_only=True)
        steps = ckpt.all_steps()
        assert steps, f"trial {trial}: no checkpoint survived"
        latest = steps[-1]
        # at most one save in flight: only the steps since the last finished one are lost
        assert latest >= saving - 1, (trial, saving, steps)
        assert latest < KILL_STEPS
        ckpt.restore_state(latest, target_state(wd))  # reads and verifies
        ckpt.close()

        summary = train.train_and_evaluate(
            smoke("dnd:smoke", train__num_steps=KILL_STEPS, **RESUMED), str(wd)
        )
        assert summary["final_step"] == KILL_STEPS
        _, got = _final_state(wd)
        same = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
        )
        exact += same
        print(f"kill -9 trial {trial}: saving step {saving}, resumed from {latest}, exact {same}")
    print(f"kill -9: {exact} of {KILL_TRIALS} trials resumed exactly")
    assert exact == KILL_TRIALS


def _final_state(workdir: pathlib.Path):
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    step = ckpt.latest_step()
    state = ckpt.restore_state(step, target_state(workdir))
    ckpt.close()
    return step, state
