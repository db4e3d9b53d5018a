"""The best checkpoint (lowest validation loss) is kept and found, across
resumes, with real orbax checkpoints: a later Checkpointer on the same
directory is what a resumed run or the sampler opens."""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from lstm_jax.checkpoint import Checkpointer, CheckpointError


def state(step: int) -> dict:
    return {"w": jnp.full((3,), float(step))}


def save_all(directory, losses: dict[int, float | None], keep: int = 2) -> Checkpointer:
    ckpt = Checkpointer(directory, keep=keep)
    for step, loss in losses.items():
        ckpt.save(step, state(step), {"step": step}, loss)
    ckpt.wait_until_finished()
    return ckpt


def test_the_best_survives_resumes_and_is_what_best_loads(tmp_path):
    directory = tmp_path / "checkpoints"
    # val loss bottoms at step 2, then rises: best is not latest
    ckpt = save_all(directory, {1: 5.0, 2: 3.0, 3: 4.0, 4: None, 5: 6.0})
    assert ckpt.all_steps() == [2, 4, 5] and ckpt.resolve_step("best") == 2
    ckpt.close()
    for resume in range(3):  # each resume is a new manager, as in a new process
        first = 6 + 3 * resume
        ckpt = save_all(directory, {first: 7.0, first + 1: None, first + 2: 8.0})
        assert ckpt.resolve_step("best") == 2, ckpt.all_steps()
        assert 2 in ckpt.all_steps() and ckpt.all_steps()[-2:] == [first + 1, first + 2]
        assert ckpt.legacy_steps() == []
        ckpt.close()
    reader = Checkpointer(directory, read_only=True)
    step = reader.resolve_step("best")
    assert step == 2
    assert float(reader.restore_state(step, state(0))["w"][0]) == 2.0


def test_a_better_loss_takes_over(tmp_path):
    ckpt = save_all(tmp_path / "c", {1: 5.0, 2: 3.0, 3: 4.0, 4: 2.5, 5: 6.0, 6: 7.0})
    assert ckpt.resolve_step("best") == 4 and ckpt.all_steps() == [4, 5, 6]


def test_best_is_refused_without_any_validation_loss(tmp_path):
    ckpt = save_all(tmp_path / "c", {1: None, 2: None, 3: None})
    assert ckpt.all_steps() == [2, 3]
    with pytest.raises(CheckpointError, match="has a validation loss"):
        ckpt.resolve_step("best")
    assert ckpt.resolve_step("latest") == 3


def test_checkpoints_without_recorded_metrics_are_kept(tmp_path, caplog):
    """An older workdir: its checkpoints have no metrics item. They stay, with a
    warning, while the new ones rotate."""
    directory = tmp_path / "c"
    save_all(directory, {1: 5.0, 2: 3.0, 3: 4.0}, keep=3).close()
    for step in (1, 2, 3):  # what an older lstm_jax left: no recorded metrics
        metrics = directory / str(step) / "metrics"
        for f in metrics.iterdir():
            f.unlink()
        metrics.rmdir()
        meta = directory / str(step) / "_CHECKPOINT_METADATA"
        if meta.exists():
            data = json.loads(meta.read_text())
            data.pop("metrics", None)
            meta.write_text(json.dumps(data))
    ckpt = save_all(directory, {4: 9.0, 5: 9.5, 6: 9.7})
    assert ckpt.legacy_steps() == [1, 2, 3]
    assert ckpt.all_steps() == [1, 2, 3, 4, 5, 6]
    assert "without a recorded validation loss" in caplog.text
