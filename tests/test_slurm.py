"""launch/slurm.sbatch, run for real: a one-node SLURM on this machine
(launch/slurm_local/cluster.py: munged, slurmctld, slurmd), `sbatch` of the real
script with CPU overrides on the command line, two `srun` tasks that find each
other through SLURM's environment (jax.distributed.initialize with no arguments).

Needs root and Debian's slurmctld/slurmd/slurm-client/munge packages (.ci/run
installs them where it can); elsewhere every test here skips, saying why.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
from helpers import assert_same_run, cli_overrides, smoke_config, subprocess_env

from lstm_jax import train

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "launch" / "slurm_local"))
import cluster  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 16  # helpers.OVERRIDES: dnd:smoke, 16 steps, every step logged
LONG_STEPS = 200  # the preempted run: long enough to be signalled before it ends
LONG = {
    "train.num_steps": LONG_STEPS,
    "train.eval_every": 50,
    "train.checkpoint_every": 50,
    "train.watchdog_s": 120,  # a hung job fails in minutes, not at the test's timeout
}
REPEATS = 5  # the uninterrupted and the preempted job, each run this many times
# A CPU node: two tasks of one CPU each, no GPUs (the script's GPU directives are
# defaults; command-line flags override them).
SBATCH_CPU_FLAGS = [
    "--nodes=1",
    "--ntasks-per-node=2",
    "--cpus-per-task=1",
    "--gpus-per-node=0",
    "--time=10",
]
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, request):
    """A running one-node cluster: the environment for sbatch/scancel/scontrol."""
    why = cluster.missing_requirements()
    if why:
        pytest.skip(f"no local SLURM: {why}")
    root = tmp_path_factory.mktemp("slurm")
    start = time.monotonic()
    try:
        cluster.up(root)
    except RuntimeError as e:
        cluster.down(root)
        pytest.skip(f"local SLURM bring-up failed: {e}")
    TIMINGS["bring-up"] = time.monotonic() - start
    yield subprocess_env(
        SLURM_CONF=str(root / "slurm.conf"), PYTHON=sys.executable, PYTHONPATH=str(ROOT)
    )
    start = time.monotonic()
    cluster.down(root)  # cancels every job and kills what is left of them first
    TIMINGS["teardown"] = time.monotonic() - start
    assert not (root / "pids").exists()
    assert not cluster.job_processes(root), "a job's processes outlived the cluster"
    line = ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items())
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when the tests pass
        print(f"\nlocal SLURM wall times: {line}")


def sbatch_command(workdir: pathlib.Path, log: pathlib.Path, **overrides) -> list[str]:
    """The exact submission: CPU flags, the real script, the smoke config."""
    return [
        "sbatch",
        *SBATCH_CPU_FLAGS,
        f"--output={log}",
        "launch/slurm.sbatch",
        "configs/dnd.py:smoke",
        str(workdir),
        *cli_overrides(**overrides),
    ]


def scontrol_job(env: dict, job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def tasks_exited_with(srun_log: str, code: int) -> set[int]:
    """The task ids srun reports as "task 1: Exited with exit code C" or
    "tasks 0-1: Exited with exit code C"."""
    ids: set[int] = set()
    pattern = rf"tasks? ([0-9,-]+): Exited with exit code {code}\b"
    for spec in re.findall(pattern, srun_log):
        for part in spec.split(","):
            first, _, last = part.partition("-")
            ids.update(range(int(first), int(last or first) + 1))
    return ids


def test_tasks_exited_with_reads_both_srun_forms():
    assert tasks_exited_with("srun: error: vm: tasks 0-1: Exited with exit code 143", 143) == {
        0,
        1,
    }
    two_lines = (
        "srun: error: vm: task 1: Exited with exit code 143\n"
        "srun: error: vm: task 0: Exited with exit code 143\n"
    )
    assert tasks_exited_with(two_lines, 143) == {0, 1}
    assert tasks_exited_with("srun: error: vm: task 1: Terminated", 143) == set()
    assert tasks_exited_with("srun: error: vm: task 0: Exited with exit code 1430", 143) == set()


def submit(env: dict, command: list[str]) -> str:
    """`sbatch --parsable ...` from the project root; the job id."""
    out = subprocess.run(
        [command[0], "--parsable", *command[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().split(";")[0]


def wait_for_job(env: dict, job_id: str, timeout: float = 600) -> dict[str, str]:
    """The job's final record. Polled here rather than by `sbatch --wait`, whose
    backing-off polls would round the measured wall times up by tens of seconds."""
    deadline = time.monotonic() + timeout
    while (job := scontrol_job(env, job_id))["JobState"] in ACTIVE:
        assert time.monotonic() < deadline, f"job {job_id} still {job['JobState']}"
        time.sleep(0.3)
    return job


def submit_and_wait(env: dict, command: list[str]) -> tuple[str, dict[str, str]]:
    job_id = submit(env, command)
    return job_id, wait_for_job(env, job_id)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pathlib.Path:
    """STEPS steps of one process on one CPU device, in the test process."""
    wd = tmp_path_factory.mktemp("reference") / "wd"
    train.train_and_evaluate(smoke_config(), str(wd))
    return wd


def test_sbatch_two_tasks_equal_one_process(slurm, reference, tmp_path):
    log = tmp_path / "job.out"
    start = time.monotonic()
    _, job = submit_and_wait(slurm, sbatch_command(tmp_path / "wd", log))
    TIMINGS["job"] = time.monotonic() - start
    text = log.read_text()
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), text[-4000:]
    assert "lstm_jax: 1 node(s), 2 process(es)" in text  # srun's view
    assert "data parallel: 2 process(es) x 1 cpu device(s) = 2" in text  # JAX's view
    assert_same_run(tmp_path / "wd", reference, range(1, STEPS + 1))


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory) -> pathlib.Path:
    """The long run, submitted the same way and left alone. (Against one process,
    LONG_STEPS steps of all-reduce summation order drift past helpers'
    tolerance; preemption is judged against the same two-task layout.)"""
    wd = tmp_path_factory.mktemp("uninterrupted") / "wd"
    start = time.monotonic()
    _, job = submit_and_wait(slurm, sbatch_command(wd, wd.parent / "job.out", **LONG))
    TIMINGS["uninterrupted job"] = time.monotonic() - start
    assert job["JobState"] == "COMPLETED", (wd.parent / "job.out").read_text()[-4000:]
    return wd


@pytest.mark.parametrize("repeat", range(1, REPEATS))
def test_uninterrupted_job_repeats(slurm, uninterrupted, tmp_path, repeat):
    """The same job again (the fixture's run is the first of REPEATS): it
    completes, with the same metrics and state."""
    start = time.monotonic()
    _, job = submit_and_wait(slurm, sbatch_command(tmp_path / "wd", tmp_path / "job.out", **LONG))
    TIMINGS[f"uninterrupted job {repeat + 1}"] = time.monotonic() - start
    assert job["JobState"] == "COMPLETED", (tmp_path / "job.out").read_text()[-4000:]
    assert_same_run(tmp_path / "wd", uninterrupted, range(1, LONG_STEPS + 1))


@pytest.mark.parametrize("repeat", range(REPEATS))
def test_scancel_term_saves_and_resubmission_resumes(slurm, uninterrupted, tmp_path, repeat):
    wd, log = tmp_path / "wd", tmp_path / "job-%j.out"
    command = sbatch_command(wd, log, **LONG)
    start = time.monotonic()
    job_id = submit(slurm, command)
    metrics_file = wd / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics_file.exists() and metrics_file.stat().st_size):
        assert time.monotonic() < deadline, "the job wrote no metrics in 300 s"
        time.sleep(0.2)
    # What a preemption or --signal=TERM@120 delivers: SIGTERM to every task of the step.
    subprocess.run(["scancel", "--signal=TERM", job_id], env=slurm, check=True)
    job = wait_for_job(slurm, job_id)
    TIMINGS[f"preempted job {repeat + 1}"] = time.monotonic() - start
    text = pathlib.Path(str(log).replace("%j", job_id)).read_text()
    saved = re.search(r"signal 15: saved checkpoint at step (\d+); exiting", text)
    assert saved, text[-4000:]
    step = int(saved.group(1))
    assert step < LONG_STEPS, "the run ended before the signal: raise LONG_STEPS"
    # Both tasks exited 128 + SIGTERM after the collective save, and so did the
    # job. srun reports tasks that exit together on one line ("tasks 0-1: ..."),
    # and one line per task when they leave a moment apart.
    assert tasks_exited_with(text, 143) == {0, 1}, text[-4000:]
    assert (job["JobState"], job["ExitCode"]) == ("FAILED", "143:0")
    assert str(step) in os.listdir(wd / "checkpoints")

    start = time.monotonic()
    job_id, job = submit_and_wait(slurm, command)  # the same command, unchanged
    TIMINGS[f"resumed job {repeat + 1}"] = time.monotonic() - start
    text = pathlib.Path(str(log).replace("%j", job_id)).read_text()
    assert job["JobState"] == "COMPLETED", text[-4000:]
    assert f"; resuming at step {step}" in text, text[-4000:]  # resumed, not restarted
    assert_same_run(wd, uninterrupted, range(1, LONG_STEPS + 1))
