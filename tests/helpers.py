"""What the test files share (imported as `helpers`; no test module imports
another test module for these)."""

from __future__ import annotations

import pathlib
import sys

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """A config file's `get_config(arg)`, as `--config configs/x.py:arg` gives it."""
    path, _, arg = spec.partition(":")
    namespace: dict = {}
    file = ROOT / path
    exec(compile(file.read_text(), str(file), "exec"), namespace)
    return namespace["get_config"](arg or None)


def smoke(**overrides) -> ml_collections.ConfigDict:
    """configs/dnd.py:smoke with dotted overrides ("train.num_steps": 4, ...)."""
    config = load_config("configs/dnd.py:smoke")
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


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
