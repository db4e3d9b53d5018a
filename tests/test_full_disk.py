"""A full disk, for real: a small tmpfs mounted for the test (root only; else
skipped, saying why). The run ends with one line and exit 2, the finished
checkpoints stay, nothing half-written stays, and once space is freed a rerun
resumes. The disk is filled on purpose (a filler file leaves less room than one
checkpoint), so what fails does not hang on how orbax orders its deletions."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess

import helpers
import pytest

pytestmark = pytest.mark.slow

CHECKPOINT_BYTES = 1_300_000  # one checkpoint of dnd:smoke, with the optimizer state
ROOM_FOR_LOGS = 200_000  # metrics lines and TensorBoard events fit, a checkpoint not


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def train(workdir: pathlib.Path, num_steps: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        helpers.train_cli(
            workdir,
            "--config.train.progress=false",
            f"--config.train.num_steps={num_steps}",
            "--config.train.checkpoint_every=5",
            "--config.train.eval_every=0",
            "--config.train.sample_length=0",
        ),
        cwd=helpers.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def fill(disk: pathlib.Path, leave: int) -> None:
    """Writes a filler file until `leave` bytes (or none) are free."""
    with contextlib.suppress(OSError), open(disk / "filler", "ab") as f:
        while True:
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            if free <= leave:
                return
            f.write(b"\0" * min(65536, free - leave))
            f.flush()


def checkpoints(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def leftovers(workdir: pathlib.Path) -> list[str]:
    return [p.name for p in workdir.rglob("*") if "tmp" in p.name]


def assert_one_line_failure(out: subprocess.CompletedProcess) -> list[str]:
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "No space left on device" in lines[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return lines


def test_a_full_disk_ends_in_one_line_and_keeps_the_checkpoints(small_disk):
    wd = small_disk / "wd"
    first = train(wd, num_steps=10)
    assert first.returncode == 0, first.stderr[-3000:]
    assert checkpoints(wd) == [5, 10]
    # less room than one checkpoint: the save at step 15 fails
    fill(small_disk, leave=ROOM_FOR_LOGS)
    assert ROOM_FOR_LOGS < CHECKPOINT_BYTES
    lines = assert_one_line_failure(train(wd, num_steps=100))
    assert "the earlier checkpoints are kept: [5, 10]" in lines[0]
    assert checkpoints(wd) == [5, 10] and leftovers(wd) == []
    # on the still-full disk: the same one line, nothing lost
    assert_one_line_failure(train(wd, num_steps=100))
    assert checkpoints(wd) == [5, 10] and leftovers(wd) == []
    # no space at all: the metrics writer fails first, also in one line
    fill(small_disk, leave=0)
    full = train(wd, num_steps=100)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "No space left on device" in full.stderr and "Traceback" not in full.stderr
    assert checkpoints(wd) == [5, 10] and leftovers(wd) == []
    # space freed: the same command resumes from step 10 and finishes
    (small_disk / "filler").unlink()
    resumed = train(wd, num_steps=20)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 10" in resumed.stdout + resumed.stderr
    assert checkpoints(wd)[-1] == 20
