"""What the test files share (imported as `helpers`; no test module imports
another test module for these)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np

from lstm_jax import checkpoint, optim, train
from lstm_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """A config file's `get_config(arg)`, as `--config configs/x.py:arg` gives it."""
    return config_lib.load(str(ROOT / spec))


def smoke(name: str = "dnd:smoke", /, **overrides) -> ml_collections.ConfigDict:
    """configs/NAME.py[:arg] with overrides, keyed "section.field" or
    section__field: smoke("dnd:smoke", train__num_steps=4)."""
    path, _, arg = name.partition(":")
    config = load_config(f"configs/{path}.py:{arg}")
    for key, value in overrides.items():
        section, field = re.split(r"\.|__", key, maxsplit=1)
        config[section][field] = value
    return config


def final_params(workdir: pathlib.Path):
    """The newest checkpoint of a train workdir: (step, state)."""
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    step = ckpt.latest_step()
    meta = ckpt.restore_meta(step)
    config = ml_collections.ConfigDict(meta["config"])
    data = train.load_data(config)
    model = train.build_model(config, data.tokenizer.vocab_size)
    opt = optim.make_optimizer(config.optim, 10)
    target = train.init_state(config, model, opt, config.train.batch_size)
    return step, ckpt.restore_state(step, target)


def train_cli(
    workdir: pathlib.Path, *flags: str, config: str = "configs/dnd.py:smoke"
) -> list[str]:
    """The train CLI's command line, run from the project root."""
    return [
        sys.executable,
        "-m",
        "lstm_jax.train",
        "--config",
        config,
        "--workdir",
        str(workdir),
        *flags,
    ]


STEPS, HALF = 16, 8
# The multi-process tests' run: dnd:smoke (word LSTM 2x32, dropout 0.2, RMSProp,
# global batch 8), evaluated and checkpointed at HALF and STEPS, every step logged.
OVERRIDES = {
    "train.num_steps": STEPS,
    "train.eval_every": HALF,
    "train.checkpoint_every": HALF,
    "train.log_every": 1,
    "train.keep_checkpoints": 3,
}
# Summation order differs between 1 device and an all-reduce; nothing else.
LOSS_TOL = dict(rtol=2e-6, atol=0)
STATE_TOL = dict(rtol=2e-5, atol=2e-7)


def smoke_config(**overrides) -> ml_collections.ConfigDict:
    """dnd:smoke with OVERRIDES, then `overrides` ("section.field" keys)."""
    return smoke("dnd:smoke", **{**OVERRIDES, **overrides})


def cli_overrides(**overrides) -> list[str]:
    return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def run_python(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """`python ARGS` from the project root on CPU (a fresh JAX), checked for success."""
    out = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def metrics(workdir: pathlib.Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step logged twice (not only process 0?): {steps}"
    return {r["step"]: r for r in rows}


def restore(workdir: pathlib.Path, step: int) -> train.TrainState:
    """A checkpoint, whatever mesh wrote it, restored onto this process's one device."""
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    config = ml_collections.ConfigDict(ckpt.restore_meta(step)["config"])
    data = train.load_data(config)
    model = train.build_model(config, data.tokenizer.vocab_size)
    target = train.init_state(
        config, model, optim.make_optimizer(config.optim, 10), config.train.batch_size
    )
    state = ckpt.restore_state(step, target)
    ckpt.close()
    return state


def assert_same_run(got: pathlib.Path, want: pathlib.Path, steps: range) -> None:
    """Same losses every step, same validation loss, same state at the last step."""
    g, w = metrics(got), metrics(want)
    np.testing.assert_allclose(
        [g[s]["train_loss"] for s in steps], [w[s]["train_loss"] for s in steps], **LOSS_TOL
    )
    for s in steps:
        if "val_loss" in w[s]:
            np.testing.assert_allclose(g[s]["val_loss"], w[s]["val_loss"], **LOSS_TOL)
    a, b = restore(got, steps[-1]), restore(want, steps[-1])
    assert int(a.step) == int(b.step) == steps[-1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **STATE_TOL)


def run_local(num_processes: int, command: list[str], timeout: float, **kw) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "launch/local.py",
        "-n",
        str(num_processes),
        "--timeout",
        str(timeout),
        *kw.pop("launcher_args", []),
        "--",
        *command,
    ]
    out = subprocess.run(
        cmd,
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout + 60,
    )
    return out.returncode, out.stdout
