"""What the research tools share: the command line, the workdir, result files,
figures and small statistics.

Every tool is a module with `run(config, workdir) -> dict` and a CLI

    python -m lstm_jax.research.<name> --config configs/ablations/<name>.py[:smoke] \\
        --workdir DIR [--config.x.y=v ...]

The CLI flags are defined when the module runs as a script (`cli(run)`), not on
import, so several tools (and `lstm_jax.train`, which defines flags of the same
names) can be imported into one process, e.g. by the tests.

Everything a tool writes is machine-readable (CSV, JSON) or a PNG figure; no
pickle anywhere.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from lstm_jax import config as config_lib

RunFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def define_flags(
    description: str, flag_values: Any = None, argv: Sequence[str] | None = None
) -> tuple[Any, Any]:
    """Defines `--config` (a locked config file, `path.py[:arg]`, with
    `--config.a.b=v` overrides) and `--workdir` on `flag_values` (absl's global
    FLAGS by default). ml_collections registers the override flags it finds in
    `argv` (default `sys.argv`) at definition time. Returns the flag holders."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FLAGS if flag_values is None else flag_values
    config_flag = config_flags.DEFINE_config_file(
        "config",
        None,
        f"{description} config file (configs/ablations/*.py[:smoke]).",
        flag_values=fv,
        lock_config=True,
        sys_argv=None if argv is None else list(argv),
    )
    workdir_flag = flags.DEFINE_string(
        "workdir", None, "Directory for results and figures.", flag_values=fv
    )
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    return config_flag, workdir_flag


def cli(run: RunFn, description: str) -> None:
    """Defines the flags, parses argv (`absl.app.run`) and calls `run`.

    The config is locked, so an unknown override key fails while the flags are
    parsed, before any compute. Prints the scalar results as JSON.
    """
    from absl import app

    config_flag, workdir_flag = define_flags(description)

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        results = run(config_flag.value, workdir_flag.value)
        print(json.dumps(summarize_for_print(results), indent=2, default=_json_default))

    app.run(main)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` the way `--config` does (`config.load`)."""
    return config_lib.load(spec)


def summarize_for_print(results: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar/short entries of a result dict (what the CLI prints)."""

    def short(v: Any) -> bool:
        if isinstance(v, int | float | str | bool) or v is None:
            return True
        if isinstance(v, Mapping):
            return len(json.dumps(v, default=_json_default)) < 4000
        return isinstance(v, list | tuple) and len(v) <= 20

    return {k: v for k, v in results.items() if short(v)}


# ---------------------------------------------------------------------------
# Workdir and result files
# ---------------------------------------------------------------------------


def prepare_workdir(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> Path:
    """Creates `workdir` and writes the resolved config there as `config.json`."""
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "config.json", config.to_dict())
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "__array__"):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _finite_or_none(x: Any) -> Any:
    """JSON has no inf/nan: they become None (null), recursively."""
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented JSON; NaN/inf become null."""
    obj = json.loads(json.dumps(obj, default=_json_default))
    Path(path).write_text(json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes a list of dicts (one per row, same keys) as CSV with a header."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    fields = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r[k]) for k in fields})


def write_csv_columns(path: str | os.PathLike, columns: Mapping[str, Any]) -> None:
    """Writes equal-length numeric columns as CSV (fast path for large grids)."""
    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], np.float64).ravel() for n in names])
    np.savetxt(path, data, fmt="%.6g", delimiter=",", header=",".join(names), comments="")


def _csv_value(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return f"{float(v):.6g}"
    if isinstance(v, np.generic):
        return v.item()
    return "" if v is None else v


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Reads a CSV written by `write_csv` (values stay strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 80) -> None:
    """Saves a PNG (small: modest dpi, tight box, optimized) and closes the figure."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pil_kwargs={"optimize": True})
    pyplot().close(fig)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def precision(float64: bool) -> contextlib.AbstractContextManager:
    """`with precision(True):` enables float64 in JAX for the block only
    (`jax.enable_x64`); arrays must still be cast (see `to_float64`)."""
    import jax

    return jax.enable_x64(True) if float64 else contextlib.nullcontext()


def to_float64(tree: Any) -> Any:
    """Casts every floating array of a pytree to float64 (inside `precision(True)`)."""
    import jax
    import jax.numpy as jnp

    def cast(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


class Stopwatch:
    """Wall-clock seconds since construction (`elapsed()`)."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


def fit_log10_slope(x: np.ndarray, y: np.ndarray, floor: float = 0.0) -> tuple[float, int]:
    """Least-squares slope of `log10(y)` against `x`, over the points where
    `y > floor` and is finite. Returns (slope, number of points used); the
    slope is NaN with fewer than two usable points."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y) & (y > floor)
    if ok.sum() < 2:
        return float("nan"), int(ok.sum())
    slope, _ = np.polyfit(x[ok], np.log10(y[ok]), 1)
    return float(slope), int(ok.sum())


def first_below(x: np.ndarray, y: np.ndarray, threshold: float) -> float | None:
    """The first `x` (in order) where `y < threshold` (NaN counts as below:
    an underflowed gradient); None if `y` never falls below."""
    y = np.asarray(y, np.float64)
    below = ~(y >= threshold)
    if not below.any():
        return None
    return float(np.asarray(x)[int(np.argmax(below))])
