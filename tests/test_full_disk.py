"""A full disk, for real: a small tmpfs mounted for the test (root only; else
skipped, saying why). The run ends with one line and exit 2, the finished
checkpoints stay, nothing half-written stays, and a rerun resumes."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess

import helpers
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    # two checkpoints of dnd:smoke (about 1.3 MB each with the optimizer state) fit, a third not
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2600k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def train(workdir: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        helpers.train_cli(
            workdir,
            "--config.train.progress=false",
            "--config.train.num_steps=100",
            "--config.train.checkpoint_every=5",
            "--config.train.eval_every=0",
            "--config.train.sample_length=0",
        ),
        cwd=helpers.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def leftovers(workdir: pathlib.Path) -> list[str]:
    return [p.name for p in workdir.rglob("*") if "tmp" in p.name]


def test_a_full_disk_ends_in_one_line_and_keeps_the_checkpoints(small_disk):
    wd = small_disk / "wd"
    out = train(wd)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "No space left on device" in lines[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    kept = sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and f"the earlier checkpoints are kept: {kept}" in lines[0]
    assert leftovers(wd) == []
    # on the still-full disk: the same one line, nothing lost
    again = train(wd)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 2, again.stderr
    assert "Traceback" not in again.stderr and leftovers(wd) == []
    # no space at all: the metrics writer fails first, also in one line
    with contextlib.suppress(OSError), open(small_disk / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
    full = train(wd)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "No space left on device" in full.stderr and "Traceback" not in full.stderr
    assert leftovers(wd) == []
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
