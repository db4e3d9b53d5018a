"""launch/tpu_vm.sh --dry-run: the gcloud commands it would run, against a recorded expectation."""

from __future__ import annotations

import pathlib
import shlex
import shutil
import subprocess

import pytest

# runs the script in a subprocess (about a second), which the fast tier forbids
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
WHERE = ["--zone=us-central2-b", "--worker=all"]
EXPECTED = {
    "setup": [
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", *WHERE, str(ROOT),
         "my-v4-32:~/lstm_jax"],
        [*SSH, *WHERE, "--command=cd ~/lstm_jax && python3 -m venv .venv && .venv/bin/pip "
         "install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'"],
    ],
    "train": [
        [*SSH, *WHERE, "--command=cd ~/lstm_jax && .venv/bin/python -m lstm_jax.train "
         "--config configs/dnd.py --workdir /mnt/nfs/wd --config.train.num_steps=10 "
         "--config.data.path=/mnt/nfs/my\\ data"],
    ],
}  # fmt: skip
ARGS = {
    "setup": ["setup"],
    "train": ["train", "configs/dnd.py", "/mnt/nfs/wd", "--config.train.num_steps=10",
              "--config.data.path=/mnt/nfs/my data"],
}  # fmt: skip


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "launch" / "tpu_vm.sh"), "--dry-run", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def squeeze(argv: list[str]) -> list[str]:
    """The script wraps long remote commands over lines; compare words, not indentation."""
    return [" ".join(a.split()) for a in argv]


@pytest.mark.skipif(shutil.which("bash") is None, reason="launch/tpu_vm.sh needs bash")
@pytest.mark.parametrize("action", ["setup", "train"])
def test_dry_run_prints_the_gcloud_commands(action):
    out = dry_run("my-v4-32", "us-central2-b", *ARGS[action])
    assert out.returncode == 0, out.stderr
    got = [squeeze(shlex.split(line)) for line in out.stdout.splitlines()]
    assert got == EXPECTED[action]


def test_dry_run_keeps_a_train_flag_with_a_space_one_argument():
    out = dry_run("my-v4-32", "us-central2-b", *ARGS["train"])
    remote = shlex.split(out.stdout.splitlines()[0])[-1].removeprefix("--command=")
    assert shlex.split(remote)[-1] == "--config.data.path=/mnt/nfs/my data"


def test_dry_run_rejects_an_unknown_action():
    out = dry_run("my-v4-32", "us-central2-b", "deploy")
    assert out.returncode == 2 and "unknown action deploy" in out.stderr
