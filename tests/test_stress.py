"""Multi-process runs never hang, in loops: two processes on JAX's runtime,
repeated with a warm compilation cache; a planted hang caught by the watchdog;
SIGTERM to a process stuck in a collective. (The SLURM jobs' repeats are in
tests/test_slurm.py.)"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import helpers
import pytest
from helpers import ROOT, cli_overrides, run_local, subprocess_env

from lstm_jax import watchdog

pytestmark = pytest.mark.slow

RUNS = 20  # two-process runs in the warm-cache loop
LOOP_STEPS = 60


def train_command(workdir: pathlib.Path, **overrides) -> list[str]:
    return helpers.train_cli(workdir, *cli_overrides(**overrides))


def cache_files(directory: pathlib.Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def report(line: str, request) -> None:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when the tests pass
        print(f"\n{line}")


def test_two_process_runs_with_a_warm_cache_never_hang(tmp_path, request, monkeypatch):
    """RUNS runs of dnd:smoke, every step logged, sharing one cache directory.
    A one-process run fills it first; before the fix, every two-process run
    after the first that filled it hung at step 1."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LSTM_JAX_COMPILE_CACHE", str(cache))
    warm = subprocess.run(
        train_command(tmp_path / "one", **{"train.num_steps": 2}),
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert warm.returncode == 0, warm.stderr[-3000:]
    before = cache_files(cache)
    assert before, "the one-process run wrote nothing to the cache"
    times, failures = [], []
    overrides = {"train.num_steps": LOOP_STEPS, "train.log_every": 1, "train.watchdog_s": 60}
    for i in range(RUNS):
        start = time.monotonic()
        code, out = run_local(2, train_command(tmp_path / f"wd{i}", **overrides), 150)
        times.append(time.monotonic() - start)
        if code != 0 or f"step {LOOP_STEPS}: train" not in out:
            failures.append(f"run {i}: exit {code}\n{out[-3000:]}")
        assert "compile cache off: 2 processes" in out.splitlines()[0], out[:500]
    report(
        f"two-process warm-cache loop: {RUNS - len(failures)}/{RUNS} passed; wall time "
        f"median {statistics.median(times):.1f} s, max {max(times):.1f} s",
        request,
    )
    assert not failures, "\n".join(failures[:2])
    assert cache_files(cache) == before  # the two-process runs neither wrote nor read it


def start_two_processes(tmp_path: pathlib.Path, **overrides) -> tuple[subprocess.Popen, int]:
    """launch/local.py with 2 processes in the background; returns it and its
    children's pids once step 12 is in metrics.jsonl and a checkpoint is finished."""
    wd = tmp_path / "wd"
    cmd = [sys.executable, "launch/local.py", "-n", "2", "--", *train_command(wd, **overrides)]
    launcher = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while '"step": 12,' not in _read(wd / "metrics.jsonl") or not _finished(wd):
        assert launcher.poll() is None, launcher.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no step 12 and checkpoint in 120 s"
        time.sleep(0.2)
    children = _children(launcher.pid)
    assert len(children) == 2, children
    return launcher, children


def _finished(workdir: pathlib.Path) -> bool:
    directory = workdir / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _children(parent: int) -> dict[int, int]:
    """{process_id: pid} of the launcher's children."""
    out = {}
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent:
            ids = [a for a in argv if a.startswith(b"--process_id=")]
            out[int(ids[0].split(b"=")[1])] = int(proc.name)
    return out


LONG = {
    "train.num_steps": 100_000,
    "train.log_every": 1,
    "train.checkpoint_every": 5,
    "train.eval_every": 0,
    "train.progress": False,
}


def test_a_planted_hang_is_caught_by_the_watchdog(tmp_path):
    """Process 1 stops (SIGSTOP) inside the step loop: process 0 waits in the
    step's all-reduce, where no Python runs. Its watchdog dumps the stacks and
    exits 4; the launcher stops process 1; the finished checkpoints stay."""
    # 30 s: long enough for the compiles of a loaded CI machine, which also count
    launcher, children = start_two_processes(tmp_path, **LONG, **{"train.watchdog_s": 30})
    os.kill(children[1], signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        out, _ = launcher.communicate(timeout=180)
    finally:
        _kill(launcher, children)
    assert launcher.returncode == watchdog.EXIT_HUNG, out[-4000:]
    assert time.monotonic() - stopped < 90
    assert "lstm_jax.train: watchdog: stacks of every thread follow" in out
    assert "(most recent call first)" in out and "train.py" in out
    hung = [line for line in out.splitlines() if "the run hung" in line]
    assert hung and "no progress for" in hung[0] and "exiting with 4" in hung[0], out[-3000:]
    assert "Newest finished checkpoint kept: step " in hung[0]
    kept = hung[0].split("kept: step ")[1].split()[0]
    assert (tmp_path / "wd" / "checkpoints" / kept).is_dir()
    assert not _children(launcher.pid)


def test_sigterm_ends_a_process_stuck_in_a_collective(tmp_path):
    """SIGTERM to process 0 while process 1 is stopped: Python's handler cannot
    run (the main thread waits in C++), the watchdog sees the signal and ends
    the process after train.watchdog_grace_s with 143, no watchdog_s needed."""
    launcher, children = start_two_processes(
        tmp_path, **LONG, **{"train.watchdog_s": 0, "train.watchdog_grace_s": 5}
    )
    os.kill(children[1], signal.SIGSTOP)
    time.sleep(2)  # process 0 is now waiting for process 1
    os.kill(children[0], signal.SIGTERM)
    signalled = time.monotonic()
    try:
        out, _ = launcher.communicate(timeout=120)
    finally:
        _kill(launcher, children)
    assert launcher.returncode == 128 + signal.SIGTERM, out[-4000:]
    assert time.monotonic() - signalled < 60
    assert "got SIGTERM, then no progress for 5 s" in out, out[-3000:]


def test_children_die_with_a_killed_launcher(tmp_path):
    """SIGKILL to launch/local.py (no chance to pass anything on): the kernel's
    parent-death signal sends its children SIGTERM; they save and exit."""
    launcher, children = start_two_processes(tmp_path, **LONG)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in children.values()):
        assert time.monotonic() < deadline, f"orphans left: {children}"
        time.sleep(0.2)


def _kill(launcher: subprocess.Popen, children: dict[int, int]) -> None:
    """Leave nothing behind, whatever the test saw (a stopped child ignores the
    parent-death SIGTERM until it is continued)."""
    for pid in [launcher.pid, *children.values()]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    launcher.wait()


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
