"""Synthetic long-range sequence tasks, generated on the fly from a PRNG key.

These are the classic benchmarks for "can a recurrent net carry information
across a long time lag" (docs/research_tasks.md). Every task is a frozen (hashable) dataclass
whose fields are its static options, so a task can be closed over or passed as a
static argument to `jax.jit`. Sampling is pure `jax.numpy`: static shapes, no
Python control flow on traced values, so `sample` can be jitted and vmapped over
keys.

The API a task runner needs::

    task = make_task("adding_hochreiter", seq_len=100)
    batch = task.sample(key, batch_size)   # TaskBatch(inputs, targets, mask)
    # batch.inputs: [B, T, task.input_dim] float32, T == task.seq_len
    outputs = model(batch.inputs)          # [B, T, task.output_dim]
    loss = task.loss(outputs, batch)       # scalar; "last" tasks read outputs[:, -1]
    metrics = task.metrics(outputs, batch) # dict of scalars, incl. task.criterion
    task.solved(metrics)                   # host-side bool
    task.baseline, task.baseline_text      # loss of the best constant guess

Conventions shared by all tasks:

* `output_mode == "last"`: the loss reads the model output at the last step only;
  `loss`/`metrics` take `outputs` as `[B, output_dim]` or, for convenience, the
  full `[B, T, output_dim]` sequence (then the last step is taken).
  `output_mode == "all"`: the loss reads every step, `outputs` is `[B, T, D]`.
* `kind == "regression"`: `targets` are float32 (`[B, D]` or `[B, T, D]`), the loss
  is the mean squared error (mean over the `D` output units, then the
  `mask`-weighted mean over examples/steps).
  `kind == "classification"`: `targets` are int32 class ids (`[B]` or `[B, T]`),
  `outputs` are unnormalised logits, the loss is the `mask`-weighted mean softmax
  cross-entropy in nats.
* `mask` is float32 (`[B]` or `[B, T]`): where the loss counts.
* Sequences have a fixed length `seq_len` (the 1997 paper draws lengths between
  `T` and `T + T/10`; static shapes rule that out, see each task's notes).

References:
  [HS97]  S. Hochreiter, J. Schmidhuber. Long Short-Term Memory. Neural
          Computation 9(8):1735-1780, 1997. Experiments 4 (adding) and 6a
          (temporal order).
  [LJH15] Q. V. Le, N. Jaitly, G. E. Hinton. A Simple Way to Initialize Recurrent
          Networks of Rectified Linear Units. arXiv:1504.00941, 2015. Adding problem.
  [ASB16] M. Arjovsky, A. Shah, Y. Bengio. Unitary Evolution Recurrent Neural
          Networks. ICML 2016. Copying memory problem.
  [J12]   H. Jaeger. Long Short-Term Memory in Echo State Networks: Details of a
          Simulation Study. Jacobs University Bremen, Technical Report 27, 2012.
          Timer task (as specified for this project; see `Timer`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "TASKS",
    "AddingHochreiter",
    "AddingLe",
    "Copy",
    "Task",
    "TaskBatch",
    "TemporalOrder",
    "Timer",
    "make_task",
]

OutputMode = Literal["last", "all"]
Kind = Literal["regression", "classification"]
Metrics = Mapping[str, jax.Array | float]


class TaskBatch(NamedTuple):
    """One batch of a synthetic task.

    Attributes:
      inputs: `[B, T, input_dim]` float32.
      targets: float32 `[B, output_dim]` ("last" regression) or `[B, T, output_dim]`
        ("all" regression); int32 class ids `[B]` ("last" classification) or
        `[B, T]` ("all" classification).
      mask: float32 loss weights, `[B]` ("last") or `[B, T]` ("all").
    """

    inputs: jax.Array
    targets: jax.Array
    mask: jax.Array


# ----------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------


def _check_int(task: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{task}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{task}: {name} must be >= {minimum}, got {value}")


def _check_fraction(task: str, name: str, value: Any) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0.0 <= value <= 1.0:
        raise ValueError(f"{task}: {name} must be a number in [0, 1], got {value!r}")


def _check_positive(task: str, name: str, value: Any) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not value > 0:
        raise ValueError(f"{task}: {name} must be a positive number, got {value!r}")


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """`sum(values * mask) / sum(mask)`; 0 when the mask is empty."""
    mask = mask.astype(jnp.float32)
    total = jnp.sum(values * mask)
    count = jnp.sum(mask)
    return jnp.where(count > 0, total / jnp.maximum(count, 1e-12), 0.0)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-position softmax cross-entropy in nats: `[..., C], [...] -> [...]`."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _randint_columns(
    key: jax.Array, batch_size: int, bounds: list[tuple[int, int]]
) -> tuple[jax.Array, ...]:
    """One `[B, 1]` int32 column per `(low, high)` half-open range, from a single
    `randint` draw."""
    low = jnp.array([lo for lo, _ in bounds], jnp.int32)
    high = jnp.array([hi for _, hi in bounds], jnp.int32)
    draws = jax.random.randint(key, (batch_size, len(bounds)), low, high)  # [B, n]
    return tuple(draws[:, i : i + 1] for i in range(len(bounds)))


def _positions(seq_len: int) -> jax.Array:
    """`[1, T]` int32 time indices, for comparing against per-example positions `[B, 1]`."""
    return jnp.arange(seq_len, dtype=jnp.int32)[None, :]


# ----------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """Base class of the synthetic tasks. Subclasses are frozen dataclasses.

    Class attributes every task sets:
      name: the registry name (`make_task(name)`).
      kind: "regression" (MSE) or "classification" (softmax cross-entropy).
      output_mode: "last" (loss at the last step only) or "all" (every step).
      criterion: the `metrics()` key that `solved()` thresholds.
    Properties: `seq_len`, `input_dim`, `output_dim`, `baseline`, `baseline_text`.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    output_mode: ClassVar[OutputMode]
    criterion: ClassVar[str]

    # -- interface every task implements --------------------------------------

    @property
    def seq_len(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def input_dim(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def output_dim(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def baseline(self) -> float:  # pragma: no cover - overridden
        """Expected `loss` of the best constant (input-ignoring) prediction."""
        raise NotImplementedError

    @property
    def baseline_text(self) -> str:  # pragma: no cover - overridden
        """One line saying what the baseline guess is and what it scores."""
        raise NotImplementedError

    def sample(self, key: jax.Array, batch_size: int) -> TaskBatch:  # pragma: no cover
        """Draws a batch of `batch_size` (static) sequences from `key`."""
        raise NotImplementedError

    def solved(self, metrics: Metrics) -> bool:  # pragma: no cover - overridden
        """Host-side success test on the output of `metrics`."""
        raise NotImplementedError

    def _task_metrics(self, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
        return {}

    # -- shared machinery -------------------------------------------------------

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The task's options (dataclass fields) and their defaults."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    def readout(self, outputs: jax.Array) -> jax.Array:
        """The outputs the loss reads: for "last" tasks a `[B, T, D]` sequence is
        reduced to its last step `[B, D]`; anything else is returned unchanged."""
        if self.output_mode == "last" and outputs.ndim == 3:
            return outputs[:, -1]
        return outputs

    def loss(self, outputs: jax.Array, batch: TaskBatch) -> jax.Array:
        """Scalar loss: masked-mean MSE (regression) or cross-entropy (classification).

        Args:
          outputs: model outputs, `[B, output_dim]` for "last" (or the full
            `[B, T, output_dim]`, whose last step is used) and `[B, T, output_dim]`
            for "all". Classification outputs are logits.
          batch: the `TaskBatch` the outputs were computed from.
        """
        outputs = self.readout(outputs)
        if self.kind == "regression":
            per_pos = jnp.mean(jnp.square(outputs.astype(jnp.float32) - batch.targets), axis=-1)
        else:
            per_pos = _cross_entropy(outputs, batch.targets)
        return _masked_mean(per_pos, batch.mask)  # per_pos: [B] or [B, T]

    def metrics(self, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
        """`{"loss": ..., <task metrics>}`, all scalars; jittable."""
        outputs = self.readout(outputs)
        return {"loss": self.loss(outputs, batch), **self._task_metrics(outputs, batch)}


# ----------------------------------------------------------------------------
# 1. Adding problem, Hochreiter & Schmidhuber 1997, experiment 4
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AddingHochreiter(Task):
    """The adding problem of [HS97], experiment 4 ("Adding problem").

    Each step is a pair `(value, marker)`; `value ~ U[-1, 1]`. Exactly two steps
    carry marker 1.0: the first at a position `p1` drawn uniformly from the first
    10 steps (the paper's "one of the first ten pairs"), the second at `p2`. The
    target at the last step is `0.5 + (X1 + X2) / 4.0` (the sum `X1 + X2 in [-2, 2]`
    scaled to `[0, 1]`), where `X1, X2` are the two marked values. A sequence is
    processed correctly when `|output - target| < tolerance` (paper: 0.04).

    Layouts (static option `paper_layout`):

    * `False` (default, the project's spec): markers in `{0, 1}`; `p1` uniform in
      `[0, 10)`, `p2` uniform in `[10, seq_len // 2)`, so `p1 < p2` always.
    * `True` (the paper's wording): `p2` is "one of the first T/2 - 1 still
      unmarked pairs", i.e. uniform over `[0, seq_len // 2) minus {p1}` (so it may
      fall before `p1`); the first and the last step carry marker -1 unless
      marked; and if step 0 is marked its value is set to 0 (the paper says "X1 is
      set to zero in the rare case where the first pair got marked"; we zero the
      value of whichever marked pair sits at step 0, which also covers `p2 == 0`).

    Both layouts use a fixed length `seq_len` (the paper draws the length between
    `T` and `T + T/10`, with `T = 100` its shortest setting: hence the default).

    Success: `solved` when `accuracy` (fraction of sequences with absolute error
    below `tolerance`) is at least `solve_accuracy` (default 0.99). The paper
    stops training once the average training error is below 0.01 and the 2000
    most recent sequences were all correct, and reports 1-3 wrong out of 2560
    test sequences; `solve_accuracy = 1 - 2 / 2560` mimics that test. `metrics`
    also reports `mse` and `mean_abs_error`.

    Baseline: the constant 0.5 (the target's mean) scores MSE `Var(target) =
    (Var X1 + Var X2) / 16 = (1/3 + 1/3) / 16 = 1/24 ~ 0.0417` (a little lower in the
    paper layout, where a value at step 0 is zeroed) and `accuracy ~ 0.16`.
    """

    name: ClassVar[str] = "adding_hochreiter"
    kind: ClassVar[Kind] = "regression"
    output_mode: ClassVar[OutputMode] = "last"
    criterion: ClassVar[str] = "accuracy"

    FIRST_MARK_WINDOW: ClassVar[int] = 10  # p1 is one of the first 10 steps [HS97]

    seq_len: int = 100  # T; >= 22 so that [10, T // 2) is non-empty
    paper_layout: bool = False  # True: -1 end markers and p2 anywhere in [0, T//2) \ {p1}
    tolerance: float = 0.04  # |error| below this counts as correct [HS97]
    solve_accuracy: float = 0.99  # solved when accuracy >= this

    def __post_init__(self) -> None:
        _check_int(self.name, "seq_len", self.seq_len, 2 * self.FIRST_MARK_WINDOW + 2)
        if not isinstance(self.paper_layout, bool):
            raise ValueError(f"{self.name}: paper_layout must be a bool, got {self.paper_layout!r}")
        _check_positive(self.name, "tolerance", self.tolerance)
        _check_fraction(self.name, "solve_accuracy", self.solve_accuracy)

    @property
    def input_dim(self) -> int:
        return 2  # (value, marker)

    @property
    def output_dim(self) -> int:
        return 1

    @property
    def _p_first_step_marked(self) -> float:
        """Probability that step 0 is marked (only matters in the paper layout)."""
        if not self.paper_layout:
            return 0.0
        w, half = self.FIRST_MARK_WINDOW, self.seq_len // 2
        return 1.0 / w + (1.0 - 1.0 / w) / (half - 1)

    @property
    def baseline(self) -> float:
        # Each marked value is U[-1, 1] (variance 1/3) unless zeroed at step 0.
        return (2.0 - self._p_first_step_marked) / 3.0 / 16.0

    @property
    def baseline_text(self) -> str:
        return f"constant 0.5: MSE {self.baseline:.4f} (1/24 ~ 0.0417), accuracy ~0.16"

    def sample(self, key: jax.Array, batch_size: int) -> TaskBatch:
        t_len, half, w = self.seq_len, self.seq_len // 2, self.FIRST_MARK_WINDOW
        k_val, k_pos = jax.random.split(key)
        values = jax.random.uniform(k_val, (batch_size, t_len), jnp.float32, -1.0, 1.0)  # [B, T]
        if self.paper_layout:
            # p1 in [0, 10); r in [0, T/2 - 1): the T/2 - 1 unmarked choices left.
            p1, r = _randint_columns(k_pos, batch_size, [(0, w), (0, half - 1)])  # [B, 1] each
            p2 = r + (r >= p1)  # skip p1: uniform over [0, T/2) \ {p1}
        else:
            p1, p2 = _randint_columns(k_pos, batch_size, [(0, w), (w, half)])  # [B, 1] each
        t = _positions(t_len)  # [1, T]
        marked = (t == p1) | (t == p2)  # [B, T], exactly two per row
        markers = marked.astype(jnp.float32)
        if self.paper_layout:
            ends = (t == 0) | (t == t_len - 1)
            markers = jnp.where(ends & ~marked, -1.0, markers)
            values = jnp.where((t == 0) & marked, 0.0, values)
        x_sum = jnp.sum(jnp.where(marked, values, 0.0), axis=1, keepdims=True)  # [B, 1]
        targets = 0.5 + x_sum / 4.0  # [B, 1]
        inputs = jnp.stack([values, markers], axis=-1)  # [B, T, 2]
        return TaskBatch(inputs, targets, jnp.ones((batch_size,), jnp.float32))

    def _task_metrics(self, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
        abs_err = jnp.abs(outputs[:, 0].astype(jnp.float32) - batch.targets[:, 0])  # [B]
        return {
            "mse": _masked_mean(jnp.square(abs_err), batch.mask),
            "mean_abs_error": _masked_mean(abs_err, batch.mask),
            "accuracy": _masked_mean((abs_err < self.tolerance).astype(jnp.float32), batch.mask),
        }

    def solved(self, metrics: Metrics) -> bool:
        return float(metrics["accuracy"]) >= self.solve_accuracy


# ----------------------------------------------------------------------------
# 2. Adding problem, Le, Jaitly & Hinton 2015
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AddingLe(Task):
    """The adding problem as used by [LJH15] (IRNN paper) and [ASB16].

    Input step `(value, marker)`, `value ~ U[0, 1]`; exactly two markers are 1.0,
    one at a position uniform in the first half `[0, T // 2)` and one uniform in
    the second half `[T // 2, T)`; all other markers are 0. The target at the last
    step is the plain sum of the two marked values (in `[0, 2]`); loss MSE.

    Success: `solved` when `mse < solve_mse` (default 0.01, i.e. ~6% of the
    baseline; [LJH15] compare test-MSE curves against the baseline rather than
    state a threshold). `metrics` also reports `mean_abs_error`.

    Baseline: always predicting 1.0 (the mean of the sum) scores MSE
    `Var(U1 + U2) = 2 / 12 = 1/6 ~ 0.167` ([LJH15]: "0.1767" for finite batches).
    [LJH15] use `T` in {150, 200, 300, 400}; default 150.
    """

    name: ClassVar[str] = "adding_le"
    kind: ClassVar[Kind] = "regression"
    output_mode: ClassVar[OutputMode] = "last"
    criterion: ClassVar[str] = "mse"

    seq_len: int = 150  # T; >= 2 (one marker per half)
    solve_mse: float = 0.01  # solved when mse < this

    def __post_init__(self) -> None:
        _check_int(self.name, "seq_len", self.seq_len, 2)
        _check_positive(self.name, "solve_mse", self.solve_mse)

    @property
    def input_dim(self) -> int:
        return 2  # (value, marker)

    @property
    def output_dim(self) -> int:
        return 1

    @property
    def baseline(self) -> float:
        return 1.0 / 6.0  # variance of the sum of two independent U[0, 1]

    @property
    def baseline_text(self) -> str:
        return "constant 1.0: MSE 1/6 ~ 0.167"

    def sample(self, key: jax.Array, batch_size: int) -> TaskBatch:
        t_len, half = self.seq_len, self.seq_len // 2
        k_val, k_pos = jax.random.split(key)
        values = jax.random.uniform(k_val, (batch_size, t_len), jnp.float32)  # [B, T]
        # p1 in the first half, p2 in the second; [B, 1] each.
        p1, p2 = _randint_columns(k_pos, batch_size, [(0, half), (half, t_len)])
        t = _positions(t_len)
        marked = (t == p1) | (t == p2)  # [B, T]
        targets = jnp.sum(jnp.where(marked, values, 0.0), axis=1, keepdims=True)  # [B, 1]
        inputs = jnp.stack([values, marked.astype(jnp.float32)], axis=-1)  # [B, T, 2]
        return TaskBatch(inputs, targets, jnp.ones((batch_size,), jnp.float32))

    def _task_metrics(self, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
        err = outputs[:, 0].astype(jnp.float32) - batch.targets[:, 0]  # [B]
        return {
            "mse": _masked_mean(jnp.square(err), batch.mask),
            "mean_abs_error": _masked_mean(jnp.abs(err), batch.mask),
        }

    def solved(self, metrics: Metrics) -> bool:
        return float(metrics["mse"]) < self.solve_mse


# ----------------------------------------------------------------------------
# 3. Copying memory problem, Arjovsky, Shah & Bengio 2016
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Copy(Task):
    """The copying memory problem of [ASB16] (a delayed-recall task in the
    spirit of [HS97]).

    Vocabulary: class 0 is the blank, classes `1..n_symbols` the symbols,
    `n_symbols + 1` the delimiter (inputs only). With `k = copy_len`,
    `gap` = the paper's `T`, the sequence has `seq_len = gap + 2 k` steps::

        step:    0 .. k-1 | k .. k+gap-2 | k+gap-1   | k+gap .. seq_len-1
        input:   symbols  | blank (gap-1) | delimiter | blank (k)
        target:  blank ............................. | the k symbols

    Symbols are uniform over `1..n_symbols`. Inputs are one-hot over
    `n_symbols + 2` classes; outputs are logits over `n_symbols + 1` classes
    (blank + symbols), per step (output_mode "all").

    Loss: by default (`score_blanks=False`) the mask covers the last `k` steps
    only, so the loss is the mean cross-entropy per recalled symbol. With
    `score_blanks=True` every step is scored, as in [ASB16].

    Success: `accuracy` is the per-symbol accuracy of the argmax over the last `k`
    steps (whatever the mask); `solved` when it is at least `solve_accuracy`
    (default 0.99). `sequence_accuracy` counts sequences with all `k` right.

    Baseline: the memoryless strategy (blank until the recall, then uniform over
    the symbols) scores `log(n_symbols)` per recalled symbol (~2.079 for 8), or
    `k log(n_symbols) / seq_len` per step with `score_blanks=True` ([ASB16]:
    `10 log 8 / (T + 20)`). [ASB16] use `T` in {100, 200, 300, 500}; default 100.
    """

    name: ClassVar[str] = "copy"
    kind: ClassVar[Kind] = "classification"
    output_mode: ClassVar[OutputMode] = "all"
    criterion: ClassVar[str] = "accuracy"

    copy_len: int = 10  # k, symbols to remember [ASB16]
    n_symbols: int = 8  # alphabet size n [ASB16]
    gap: int = 100  # [ASB16]'s T: steps from the last symbol to the first recall step
    score_blanks: bool = False  # True: loss over every step, as in [ASB16]
    solve_accuracy: float = 0.99  # solved when per-symbol accuracy >= this

    def __post_init__(self) -> None:
        _check_int(self.name, "copy_len", self.copy_len, 1)
        _check_int(self.name, "n_symbols", self.n_symbols, 1)
        _check_int(self.name, "gap", self.gap, 1)
        if not isinstance(self.score_blanks, bool):
            raise ValueError(f"{self.name}: score_blanks must be a bool, got {self.score_blanks!r}")
        _check_fraction(self.name, "solve_accuracy", self.solve_accuracy)

    BLANK: ClassVar[int] = 0  # class id of the blank

    @property
    def delimiter(self) -> int:
        """Input class id of the delimiter."""
        return self.n_symbols + 1

    @property
    def seq_len(self) -> int:
        return self.gap + 2 * self.copy_len

    @property
    def input_dim(self) -> int:
        return self.n_symbols + 2  # blank, symbols, delimiter

    @property
    def output_dim(self) -> int:
        return self.n_symbols + 1  # blank, symbols

    @property
    def baseline(self) -> float:
        per_symbol = math.log(self.n_symbols)
        if self.score_blanks:
            return self.copy_len * per_symbol / self.seq_len
        return per_symbol

    @property
    def baseline_text(self) -> str:
        unit = "per step" if self.score_blanks else "per recalled symbol"
        return (
            f"memoryless (blanks, then uniform symbols): cross-entropy {self.baseline:.4f} {unit}"
        )

    def sample(self, key: jax.Array, batch_size: int) -> TaskBatch:
        k, t_len = self.copy_len, self.seq_len
        symbols = jax.random.randint(key, (batch_size, k), 1, self.n_symbols + 1)  # [B, k]
        ids = jnp.full((batch_size, t_len), self.BLANK, jnp.int32)
        ids = ids.at[:, :k].set(symbols).at[:, k + self.gap - 1].set(self.delimiter)  # [B, T]
        targets = jnp.full((batch_size, t_len), self.BLANK, jnp.int32)
        targets = targets.at[:, t_len - k :].set(symbols)  # [B, T]
        inputs = jax.nn.one_hot(ids, self.input_dim, dtype=jnp.float32)  # [B, T, n + 2]
        if self.score_blanks:
            mask = jnp.ones((batch_size, t_len), jnp.float32)
        else:
            mask = jnp.broadcast_to(self._recall_steps(), (batch_size, t_len))
        return TaskBatch(inputs, targets, mask)

    def _recall_steps(self) -> jax.Array:
        """`[1, T]` float32, 1 on the last `copy_len` steps."""
        return (_positions(self.seq_len) >= self.seq_len - self.copy_len).astype(jnp.float32)

    def _task_metrics(self, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
        k = self.copy_len
        pred = jnp.argmax(outputs[:, -k:], axis=-1)  # [B, k]
        correct = (pred == batch.targets[:, -k:]).astype(jnp.float32)  # [B, k]
        return {
            "accuracy": jnp.mean(correct),
            "sequence_accuracy": jnp.mean(jnp.min(correct, axis=1)),
        }

    def solved(self, metrics: Metrics) -> bool:
        return float(metrics["accuracy"]) >= self.solve_accuracy


# ----------------------------------------------------------------------------
# 4. Temporal order, Hochreiter & Schmidhuber 1997, experiment 6a
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TemporalOrder(Task):
    """The temporal order problem of [HS97], task 6a ("two relevant, widely
    separated symbols").

    Alphabet (input one-hot index): `a b c d X Y E B` = 0..7 (8 input units, as in
    the paper). As in the paper, the sequence starts with `E` and ends with `B`
    (the "trigger symbol"); every other step is uniform over `{a, b, c, d}` except
    steps `t1` and `t2`, each independently `X` or `Y` with probability 1/2. The
    class at the last step is the order of the two: `XX, XY, YX, YY` = 0..3 (the
    paper's Q, R, S, U).

    Positions: the paper uses lengths 100-110 with `t1` in [10, 20] and `t2` in
    [50, 60]. With our fixed length `T = seq_len` the windows are scaled
    proportionally: `t1` uniform in `[T // 10, T // 5]` and `t2` uniform in
    `[T // 2, 3 T // 5]` (inclusive, 0-based, `E` at step 0), which gives exactly
    [10, 20] and [50, 60] for the default `T = 100`. `seq_len >= 10` keeps both
    windows strictly between the end symbols.

    Success: `accuracy` (argmax == label); `solved` when it is at least
    `solve_accuracy` (default 0.99). The paper counts a sequence correct when
    the final absolute error of all (locally coded) output units is below 0.3;
    `metrics["paper_accuracy"]` applies that test to the softmax probabilities
    (equivalent to `p(correct class) > 0.7`).

    Baseline: uniform guess, cross-entropy `log 4 ~ 1.386`, accuracy 0.25.
    """

    name: ClassVar[str] = "temporal_order"
    kind: ClassVar[Kind] = "classification"
    output_mode: ClassVar[OutputMode] = "last"
    criterion: ClassVar[str] = "accuracy"

    SYMBOLS: ClassVar[tuple[str, ...]] = ("a", "b", "c", "d", "X", "Y", "E", "B")
    CLASSES: ClassVar[tuple[str, ...]] = ("XX", "XY", "YX", "YY")
    N_DISTRACTORS: ClassVar[int] = 4  # a, b, c, d
    X: ClassVar[int] = 4
    Y: ClassVar[int] = 5
    START: ClassVar[int] = 6  # E, first step
    TRIGGER: ClassVar[int] = 7  # B, last step
    PAPER_OUTPUT_TOLERANCE: ClassVar[float] = 0.3  # [HS97]: all output errors below 0.3

    seq_len: int = 100  # T; the paper's shortest length; >= 10
    solve_accuracy: float = 0.99  # solved when accuracy >= this

    def __post_init__(self) -> None:
        _check_int(self.name, "seq_len", self.seq_len, 10)
        _check_fraction(self.name, "solve_accuracy", self.solve_accuracy)

    @property
    def windows(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Inclusive `(lo, hi)` ranges of `t1` and `t2`: [10, 20], [50, 60] at T = 100."""
        t = self.seq_len
        return (t // 10, t // 5), (t // 2, 3 * t // 5)

    @property
    def input_dim(self) -> int:
        return len(self.SYMBOLS)

    @property
    def output_dim(self) -> int:
        return len(self.CLASSES)

    @property
    def baseline(self) -> float:
        return math.log(len(self.CLASSES))

    @property
    def baseline_text(self) -> str:
        return "uniform guess: cross-entropy log 4 ~ 1.386, accuracy 0.25"

    def sample(self, key: jax.Array, batch_size: int) -> TaskBatch:
        t_len = self.seq_len
        (lo1, hi1), (lo2, hi2) = self.windows
        k_sym, k_pos = jax.random.split(key)
        ids = jax.random.randint(k_sym, (batch_size, t_len), 0, self.N_DISTRACTORS)  # [B, T]
        # Positions t1, t2 and whether each relevant symbol is Y (1) or X (0); [B, 1] each.
        t1, t2, y1, y2 = _randint_columns(
            k_pos, batch_size, [(lo1, hi1 + 1), (lo2, hi2 + 1), (0, 2), (0, 2)]
        )
        t = _positions(t_len)
        ids = jnp.where(t == t1, self.X + y1, ids)
        ids = jnp.where(t == t2, self.X + y2, ids)
        ids = ids.at[:, 0].set(self.START).at[:, -1].set(self.TRIGGER)
        labels = (2 * y1 + y2)[:, 0].astype(jnp.int32)  # [B]: XX, XY, YX, YY
        inputs = jax.nn.one_hot(ids, self.input_dim, dtype=jnp.float32)  # [B, T, 8]
        return TaskBatch(inputs, labels, jnp.ones((batch_size,), jnp.float32))

    def _task_metrics(self, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
        correct = jnp.argmax(outputs, axis=-1) == batch.targets  # [B]
        probs = jax.nn.softmax(outputs.astype(jnp.float32), axis=-1)  # [B, 4]
        one_hot = jax.nn.one_hot(batch.targets, self.output_dim, dtype=jnp.float32)
        max_err = jnp.max(jnp.abs(probs - one_hot), axis=-1)  # [B]
        paper_ok = max_err < self.PAPER_OUTPUT_TOLERANCE
        return {
            "accuracy": _masked_mean(correct.astype(jnp.float32), batch.mask),
            "paper_accuracy": _masked_mean(paper_ok.astype(jnp.float32), batch.mask),
        }

    def solved(self, metrics: Metrics) -> bool:
        return float(metrics["accuracy"]) >= self.solve_accuracy


# ----------------------------------------------------------------------------
# 5. Timer, after Jaeger 2012
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timer(Task):
    """A timer (delay) task after [J12]: hold an output for a cued duration.

    Inputs, two channels, one event per sequence:
      * `u1`, the start pulse: 1.0 at one step `s`, 0 elsewhere;
      * `u2`, the duration cue: a level `L / 10` with `L` uniform in 1..10
        (i.e. {0.1, ..., 1.0}), given at the pulse step `s` only, 0 elsewhere.
    Target (per step, output_mode "all"): 0.5 on the `D = round(u2 *
    max_duration)` steps `s, ..., s + D - 1` and 0 elsewhere. The rounding is
    half-up and done exactly in integers, `D = (L * max_duration + 5) // 10`
    (float `round` would be ambiguous at halves). The start `s` is uniform in
    `[0, seq_len - max_duration]`, so every pulse ends inside the sequence.

    The original timer runs up to 1000 steps; here durations scale with
    `max_duration` (default `seq_len // 2`, i.e. 50 at the default T = 100). The
    choice of a one-step cue (rather than a held level) makes the net remember
    the duration as well as count, which is the long-range part.

    Success: `solved` when the per-step `mse < solve_mse` (default 0.01).
    `metrics` also reports `max_abs_error`.

    Baseline: the best single constant is the target's mean `0.5 p`, with
    `p = E[D] / seq_len` the fraction of steps inside the pulse; it scores MSE
    `0.25 p (1 - p)` (~0.0499 at the defaults, where E[D] = 27.5).
    """

    name: ClassVar[str] = "timer"
    kind: ClassVar[Kind] = "regression"
    output_mode: ClassVar[OutputMode] = "all"
    criterion: ClassVar[str] = "mse"

    LEVELS: ClassVar[int] = 10  # u2 in {1/10, ..., 10/10}
    HEIGHT: ClassVar[float] = 0.5  # target value inside the pulse

    seq_len: int = 100  # T; >= 1
    max_duration: int | None = None  # steps for u2 = 1.0; None -> seq_len // 2
    solve_mse: float = 0.01  # solved when per-step mse < this

    def __post_init__(self) -> None:
        _check_int(self.name, "seq_len", self.seq_len, 1)
        if self.max_duration is None:
            object.__setattr__(self, "max_duration", max(self.seq_len // 2, 1))
        _check_int(self.name, "max_duration", self.max_duration, 1)
        if self.max_duration > self.seq_len:
            raise ValueError(
                f"{self.name}: max_duration ({self.max_duration}) must be <= seq_len "
                f"({self.seq_len})"
            )
        _check_positive(self.name, "solve_mse", self.solve_mse)

    @property
    def durations(self) -> tuple[int, ...]:
        """The pulse length for each level `L = 1..10`."""
        return tuple((lev * self.max_duration + 5) // 10 for lev in range(1, self.LEVELS + 1))

    @property
    def input_dim(self) -> int:
        return 2  # (start pulse u1, duration cue u2)

    @property
    def output_dim(self) -> int:
        return 1

    @property
    def baseline(self) -> float:
        p = sum(self.durations) / len(self.durations) / self.seq_len
        return self.HEIGHT**2 * p * (1.0 - p)

    @property
    def baseline_text(self) -> str:
        return f"best constant (target mean): per-step MSE {self.baseline:.4f}"

    def sample(self, key: jax.Array, batch_size: int) -> TaskBatch:
        t_len, max_d = self.seq_len, self.max_duration
        # Start step s in [0, T - max_duration] and level L in 1..10; [B, 1] each.
        start, level = _randint_columns(
            key, batch_size, [(0, t_len - max_d + 1), (1, self.LEVELS + 1)]
        )
        duration = (level * max_d + 5) // 10  # [B, 1], round-half-up of u2 * max_duration
        t = _positions(t_len)
        pulse = (t == start).astype(jnp.float32)  # [B, T]
        cue = pulse * (level.astype(jnp.float32) / self.LEVELS)  # [B, T]
        inside = (t >= start) & (t < start + duration)  # [B, T]
        targets = jnp.where(inside, self.HEIGHT, 0.0).astype(jnp.float32)[..., None]  # [B, T, 1]
        inputs = jnp.stack([pulse, cue], axis=-1)  # [B, T, 2]
        return TaskBatch(inputs, targets, jnp.ones((batch_size, t_len), jnp.float32))

    def _task_metrics(self, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
        err = outputs[..., 0].astype(jnp.float32) - batch.targets[..., 0]  # [B, T]
        return {
            "mse": _masked_mean(jnp.square(err), batch.mask),
            "max_abs_error": jnp.max(jnp.abs(err) * (batch.mask > 0)),
        }

    def solved(self, metrics: Metrics) -> bool:
        return float(metrics["mse"]) < self.solve_mse


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (AddingHochreiter, AddingLe, Copy, TemporalOrder, Timer)
}


def make_task(name: str, **options: Any) -> Task:
    """Builds the task registered as `name` with the given options.

    Raises:
      ValueError: unknown task name (the message lists the valid names), unknown
        option (the message lists that task's valid options), or a bad value.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    valid = cls.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items())
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {name!r}; valid options: {listing}"
        )
    return cls(**options)
