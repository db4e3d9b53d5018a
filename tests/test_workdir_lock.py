"""One run per workdir: a second trainer on a busy workdir is refused at once,
naming the holder; the lock dies with its process (no stale lock)."""

from __future__ import annotations

import json
import subprocess
import time

import helpers
import pytest

from lstm_jax import workdir as workdir_lib

ROOT = helpers.ROOT


def test_a_held_workdir_is_refused_and_freed_on_close(tmp_path):
    first = workdir_lib.lock_workdir(tmp_path / "wd")
    with pytest.raises(workdir_lib.WorkdirBusyError, match=r"in use by another run \(pid \d+ on "):
        workdir_lib.lock_workdir(tmp_path / "wd")
    first.close()
    workdir_lib.lock_workdir(tmp_path / "wd").close()  # free again


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_a_second_trainer_exits_2_while_the_first_runs(tmp_path, attempt):
    """The race, for real: the second CLI starts while the first trains; it
    exits 2 with one line, and the first finishes untouched."""
    wd = tmp_path / "wd"
    cmd = helpers.train_cli(
        wd, "--config.train.progress=false", "--config.train.checkpoint_every=20"
    )
    first = subprocess.Popen(
        [*cmd, "--config.train.num_steps=400"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (wd / "metrics.jsonl").exists():
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    second = subprocess.run(
        [*cmd, "--config.optim.learning_rate=0.01"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _, first_err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 2 and "is in use by another run (pid " in lines[0], second.stderr
    assert first.returncode == 0, first_err[-3000:]
    rows = (wd / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(row)["step"] for row in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # no duplicated or stray rows
