"""Every module of lstm_jax, and of the benchmarks beside it, imports on its
own: no import cycles.

`python -c "import lstm_jax.layers.fused"`, and the same for each module,
but cheaper: one fresh interpreter imports the third-party packages once (not
lstm_jax), then forks one child per module, and each child imports only its
module. A cycle (a module reading a name from a partly initialised one) fails
in the child whose module starts it.
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

DRIVER = r"""
import importlib, json, os, sys, traceback

import absl.flags, flax, jax, jax.numpy, ml_collections, numpy, optax, orbax.checkpoint  # noqa

assert not any(m.startswith("lstm_jax") for m in sys.modules), "the driver imported lstm_jax"
OPTIONAL = {"torch"}  # benchmarks/bench_torch.py runs in the PyTorch peer's own environment
failures = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:  # the child: import one module, report, exit
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except ModuleNotFoundError as e:
            message = "" if e.name in OPTIONAL else traceback.format_exc()
        except BaseException:
            message = traceback.format_exc()
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        message = f.read()
    os.wait()
    if message:
        failures[name] = message
print("RESULT " + json.dumps(failures))
"""


def all_modules() -> list[str]:
    """Every module and package under lstm_jax/ and benchmarks/, dotted."""
    names = []
    for path in sorted([*(ROOT / "lstm_jax").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.slow
def test_every_module_imports_alone():
    names = all_modules()
    assert {"lstm_jax.layers", "lstm_jax.layers.fused", "lstm_jax.layers.scan"} <= set(names)
    assert {"benchmarks.throughput", "benchmarks.bench_torch"} <= set(names)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    failures = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert not failures, "\n".join(f"{name}:\n{tb}" for name, tb in failures.items())


def test_reference_scan_is_a_leaf():
    """layers/scan.py, the layer every fast path may fall back to, imports
    nothing of lstm_jax but the cells, so no fallback can close a cycle."""
    tree = ast.parse((ROOT / "lstm_jax" / "layers" / "scan.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    ours = {name for name in imported if name.split(".")[0] == "lstm_jax"}
    assert ours == {"lstm_jax.cells"}, ours
