"""Metric sinks (JSONL + TensorBoard), the progress bar, reference losses, and
where a run's wall time went (`PhaseTimer`, `time_breakdown`).

Only process 0 of a multi-process run writes; the others get no-op sinks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging

from lstm_jax.data import batching


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per line. A line that is not one (a
    last line torn by a crash mid-write, or a damaged one) is dropped with a
    warning naming the file and line."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row, reason = None, str(e)
        else:
            reason = f"a {type(row).__name__}, not an object"
        if isinstance(row, dict):
            rows.append(row)
        else:
            logging.warning(
                "%s:%d: dropped a line that is not a JSON object (%s)", path, number, reason
            )
    return rows


def write_jsonl_atomically(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """Replaces `path` by `rows` all at once: a temporary file in the same
    directory, then a rename, so a crash leaves the old file or the new one."""
    f = tempfile.NamedTemporaryFile(  # noqa: SIM115 (removed below if anything fails)
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)
    except BaseException:  # a full disk, say: leave no half-written file behind
        with contextlib.suppress(OSError):
            os.unlink(f.name)
        raise


class MetricWriter:
    """Appends one JSON object per logged step to WORKDIR/metrics.jsonl and the
    same scalars to TensorBoard event files in WORKDIR/tb (tensorboardX, so no
    TensorFlow install is needed)."""

    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not self.enabled:
            return
        # Lines past the step we resume from were logged by a run that died
        # before its next checkpoint; that run is being redone, so drop them.
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomically(self.path, kept)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step" and isinstance(v, int | float):
                self._tb.add_scalar(k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


def per_token_report(loss_nats: float, tokenizer_kind: str) -> dict[str, float]:
    """Bits per character for char models, perplexity for word models."""
    if tokenizer_kind == "char":
        return {"bpc": loss_nats / math.log(2)}
    return {"perplexity": math.exp(min(loss_nats, 50.0))}


def unigram_loss(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of `eval_ids` under the add-one-smoothed
    unigram distribution of `train_ids`: the baseline a model must beat."""
    block = 1 << 24  # in blocks: the ids may be a memory-mapped corpus of any size
    counts = np.ones(vocab_size, np.float64)
    for i in range(0, len(train_ids), block):
        counts += np.bincount(train_ids[i : i + block], minlength=vocab_size)
        batching.release_pages(train_ids)
    logp = np.log(counts / counts.sum())
    total = 0.0
    for i in range(0, len(eval_ids), block):
        total += float(logp[eval_ids[i : i + block]].sum())
        batching.release_pages(eval_ids)
    return -total / len(eval_ids)


class Progress:
    """A tqdm bar with loss, speed and ETA (process 0 only, when enabled)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def set_postfix(self, **postfix: Any) -> None:
        """Values shown after the bar (read at log steps: the bar never waits
        for the device)."""
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)

    @contextlib.contextmanager
    def subtask(self, total: int, desc: str, min_total: int = 50) -> Iterator[Callable[[], None]]:
        """A second bar under the first, for a long evaluation (`min_total`
        batches or more); yields the function to call after each batch."""
        if self.bar is None or total < min_total:
            yield lambda: None
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
        try:
            yield lambda: bar.update(1)
        finally:
            bar.close()

    def write(self, message: str) -> None:
        if jax.process_index() != 0:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class PhaseTimer:
    """Wall time by phase, for the train CLI's breakdown.

    `with timer.phase("evals"): ...` adds the block's wall time to "evals".
    The caller makes the device finish what a phase started (for example by
    reading a result) before the block ends; otherwise the time shows up in
    whichever later phase waits for it.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def total(self, *names: str) -> float:
        return sum(self.seconds.get(n, 0.0) for n in names)


# Phases inside the loop that are not the train step; "steps" is the rest.
LOOP_OVERHEAD = ("evals", "compile_sample", "samples", "logging", "checkpoints")


def time_breakdown(timer: PhaseTimer, loop_seconds: float) -> dict[str, float]:
    """Seconds by phase so far (time/...), the steps' share of the loop, and the
    fraction of the loop's wall time spent outside the train step."""
    overhead = timer.total(*LOOP_OVERHEAD)
    out = {f"time/{k}": round(v, 4) for k, v in timer.seconds.items() if k != "loop"}
    out["time/steps"] = round(max(0.0, loop_seconds - overhead), 4)
    out["outside_step_fraction"] = round(overhead / loop_seconds, 4) if loop_seconds else 0.0
    return out
