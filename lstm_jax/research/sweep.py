"""Sweeps in one program: K models trained at once with `jax.vmap`.

K *members* differ in seed, learning rate and/or initialisation scale; their
parameters and optimizer states carry a leading axis `[K, ...]`, and one jitted
program (a `lax.scan` over `chunk` steps, vmapped over the members, followed by
an evaluation on a shared held-out batch) trains all of them. It compiles once
and runs on one device; the host loop only reads the K evaluation results
between chunks to record when each member solves its task and to stop early.
Axes that change shapes (cell, hidden size, sequence length) cannot share a
program: `lstm_jax.research.long_range` loops over them and calls `train_sweep` once
per point.

What a member is, exactly (and what `train_single`, the plain one-model loop
the tests compare against, does with the same member):

    key         = jax.random.key(seed)
    params      = SequenceModel(config with init_scale).init(fold_in(key, 0))
    batch_s     = task.sample(fold_in(fold_in(key, 1), s), batch_size)   s = 0, 1, ...
    optimizer   = optim.make_optimizer(config.optim with learning_rate)

How the per-member hyperparameters enter one program:

* seed: the keys above, one per member (vmapped key arrays).
* init scale: the scale handed to the cell's initializers (`model.init_scale`:
  uniform bound, normal std, identity scale) is traced, so member k's
  parameters are exactly the ones its own config would give.
* learning rate: every optimizer of `lstm_jax.optim` ends in
  `scale_by_learning_rate(schedule)` and every schedule is linear in
  `optim.learning_rate`, so training at rate `lr_k` equals training at the
  config's rate `lr_0` with the updates multiplied by `lr_k / lr_0`
  (to float rounding; a member at `lr_0` is bit-identical). The optimizer
  states are therefore the same pytree for all members and stack.

Members that differ only in learning rate or init scale share seed, weights'
random draws and batches: a controlled comparison. Members with different seeds
are independent runs.

References: the vmapped-ensemble pattern follows the JAX "vmap over
parameters" idiom (e.g. the Flax/JAX ensembling examples); the success criteria
are the tasks' own (`lstm_jax.research.synthetic`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lstm_jax import optim
from lstm_jax.model import SeqConfig, SequenceModel
from lstm_jax.research.synthetic import Task, TaskBatch

Array = jax.Array
Params = Any


@dataclasses.dataclass(frozen=True)
class Member:
    """One model of a sweep: its seed and hyperparameters."""

    seed: int
    learning_rate: float
    init_scale: float | None = None  # None: the cell's default scale


def grid(
    seeds: Sequence[int],
    learning_rates: Sequence[float],
    init_scales: Sequence[float | None] = (None,),
) -> list[Member]:
    """The product seeds x learning rates x init scales, in that nesting order."""
    seeds, lrs, scales = list(seeds), list(learning_rates), list(init_scales) or [None]
    if not seeds or not lrs:
        raise ValueError("a sweep needs at least one seed and one learning rate")
    if any(lr is None or not lr > 0 for lr in lrs):
        raise ValueError(f"learning rates must be > 0, got {lrs}")
    if None in scales and len(scales) > 1:
        raise ValueError(f"init scales must be all numbers or a single None, got {scales}")
    if any(s is not None and not s > 0 for s in scales):
        raise ValueError(f"init scales must be > 0, got {scales}")
    return [
        Member(int(seed), float(lr), None if s is None else float(s))
        for seed, lr, s in itertools.product(seeds, lrs, scales)
    ]


def member_keys(seed: int) -> tuple[Array, Array]:
    """(init key, data key) of a member; batch s is drawn from fold_in(data key, s)."""
    key = jax.random.key(seed)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def seq_config(task: Task, model: ml_collections.ConfigDict, **overrides: Any) -> SeqConfig:
    """The `SeqConfig` for `task` from a config's `model` section (+ overrides:
    cell, hidden_size, ...). Input/output sizes and output mode come from the task."""
    fields = {f.name for f in dataclasses.fields(SeqConfig)}
    options = {k: v for k, v in model.to_dict().items() if k in fields}
    options.update(overrides)
    return SeqConfig(
        input_dim=task.input_dim,
        output_dim=task.output_dim,
        output_mode=task.output_mode,
        **options,
    )


def with_learning_rate(optim_config: ml_collections.ConfigDict, lr: float):
    """A copy of `config.optim` with another learning rate."""
    c = copy.deepcopy(optim_config)
    with c.unlocked():
        c.learning_rate = float(lr)
    return c


def init_params(config: SeqConfig, key: Array, init_scale: Array | float | None) -> Params:
    """`SequenceModel.init` at `init_scale` (may be traced, so vmappable)."""
    if init_scale is not None:
        config = dataclasses.replace(config, init_scale=init_scale)
    return SequenceModel(config).init(key)


# ----------------------------------------------------------------------------
# One member's step: shared by the vmapped sweep and the single-run reference.


def make_step(
    model: SequenceModel,
    task: Task,
    optimizer: optax.GradientTransformationExtraArgs,
    batch_size: int,
    train_set_size: int = 0,
    train_metrics: bool = False,
) -> Callable[..., tuple[Params, Any, dict[str, Array]]]:
    """`step(params, opt_state, data_key, index, lr_scale=None) -> (params,
    opt_state, metrics)`: sample batch `index`, one optimizer update (updates
    times `lr_scale` when given). Pure; jit or vmap it.

    `train_set_size` N > 0: the batches come from a fixed training set of N
    sequences (sequence j drawn from `fold_in(set key, j)`, the set key fixed
    per member), rows picked uniformly with replacement (`sample_batch`).
    `train_metrics`: the metrics also hold the task's own on the training
    batch, before the update, as "train_<name>" (a stopping rule on training
    sequences, such as Hochreiter & Schmidhuber's ST3, reads them)."""

    def loss_fn(params, batch: TaskBatch):
        outputs, _ = model.apply(params, batch.inputs)  # [B, O] or [B, T, O]
        return task.loss(outputs, batch), outputs

    def step(params, opt_state, data_key, index, lr_scale=None):
        batch = sample_batch(task, data_key, index, batch_size, train_set_size)
        (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params, value=loss)
        if lr_scale is not None:
            updates = jax.tree.map(lambda u: u * lr_scale, updates)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        if train_metrics:
            on_batch = task.metrics(jax.lax.stop_gradient(outputs), batch)
            metrics.update({f"train_{k}": v for k, v in on_batch.items() if k != "loss"})
        return params, opt_state, metrics

    return step


def sample_batch(
    task: Task, data_key: Array, index: Array | int, batch_size: int, train_set_size: int = 0
) -> TaskBatch:
    """Batch `index` of a member: fresh sequences from `fold_in(data_key,
    index)`, or with `train_set_size` N > 0, `batch_size` of the N fixed ones
    (as a paper that trains on a fixed set: Arjovsky et al. 2016 use 100k)."""
    key = jax.random.fold_in(data_key, index)
    if not train_set_size:
        return task.sample(key, batch_size)
    rows = jax.random.randint(key, (batch_size,), 0, train_set_size)  # [B]
    set_key = jax.random.fold_in(data_key, 2**31 - 1)  # the member's set (no step's index)
    one = jax.vmap(lambda j: task.sample(jax.random.fold_in(set_key, j), 1))(rows)
    return jax.tree.map(lambda x: x[:, 0], one)  # [B, 1, ...] -> [B, ...]


def make_eval(model: SequenceModel, task: Task) -> Callable[[Params, TaskBatch], dict]:
    """`evaluate(params, batch) -> task.metrics` (scalars: loss and the criterion)."""

    def evaluate(params, batch: TaskBatch):
        outputs, _ = model.apply(params, batch.inputs)
        return task.metrics(outputs, batch)

    return evaluate


def eval_batch(task: Task, eval_seed: int, batch_size: int) -> TaskBatch:
    """The held-out batch every member is scored on (independent of member seeds:
    training keys are `key(seed)`-derived, this one `fold_in(key(eval_seed), 2**20)`)."""
    key = jax.random.fold_in(jax.random.key(eval_seed), 2**20)
    return jax.jit(task.sample, static_argnums=1)(key, batch_size)


# ----------------------------------------------------------------------------
# The reference: one member, one model, a Python loop of jitted steps.


def train_single(
    task: Task,
    config: SeqConfig,
    optim_config: ml_collections.ConfigDict,
    member: Member,
    num_steps: int,
    batch_size: int,
    steps_per_epoch: int = 100,
    train_set_size: int = 0,
) -> tuple[Params, np.ndarray]:
    """Trains one model the plain way (its own config, its own optimizer at
    `member.learning_rate`). Returns (params, training losses [num_steps])."""
    if member.init_scale is not None:
        config = dataclasses.replace(config, init_scale=member.init_scale)
    model = SequenceModel(config)
    init_key, data_key = member_keys(member.seed)
    params = model.init(init_key)
    optimizer = optim.make_optimizer(
        with_learning_rate(optim_config, member.learning_rate), steps_per_epoch
    )
    opt_state = optimizer.init(params)
    step_fn = jax.jit(make_step(model, task, optimizer, batch_size, train_set_size))
    losses = []
    for s in range(num_steps):
        params, opt_state, metrics = step_fn(params, opt_state, data_key, s)
        losses.append(float(metrics["loss"]))
    return params, np.asarray(losses)


# ----------------------------------------------------------------------------
# The sweep: K members, one program.


class SweepState(NamedTuple):
    params: Params  # leaves [K, ...]
    opt_state: Any  # leaves [K, ...]


@dataclasses.dataclass
class SweepResult:
    """What `train_sweep` returns (host arrays; K members, S steps run).

    Attributes:
      members: the K members, in order.
      params: final parameters, leaves `[K, ...]` (a member frozen when it
        solved or diverged keeps its parameters of that moment).
      train: per-step training metrics, `{"loss": [K, S], "grad_norm": [K, S]}`
        (NaN after a member was frozen).
      eval_steps: `[E]` the step after which each evaluation ran.
      evals: per-evaluation task metrics, `{name: [K, E]}` (NaN once frozen).
      solved_step: per member, the first evaluated step at which
        `task.solved` held (None: never).
      stop_step: per member, the step it stopped training at.
      final: per member, the task metrics at `stop_step`.
      diverged: per member, whether its loss became non-finite.
      steps_run: steps the program ran (the largest `stop_step`).
      seconds: wall time, compile included; compile_seconds: the first chunk's
        extra time over the mean of the others (an estimate).
    """

    members: list[Member]
    params: Params
    train: dict[str, np.ndarray]
    eval_steps: np.ndarray
    evals: dict[str, np.ndarray]
    solved_step: list[int | None]
    stop_step: list[int]
    final: list[dict[str, float]]
    diverged: list[bool]
    steps_run: int
    seconds: float
    compile_seconds: float


def make_chunk(
    model: SequenceModel,
    task: Task,
    optimizer: optax.GradientTransformationExtraArgs,
    batch_size: int,
    chunk: int,
    vectorize: str = "vmap",
    train_set_size: int = 0,
    train_metrics: bool = False,
) -> Callable:
    """The compiled program: `chunk` steps of all K members, then their evaluation.

    `chunk_fn(state, lr_scales [K], data_keys [K], active [K] bool, start,
    eval_batch) -> (state, train metrics {name: [K, chunk]}, eval metrics
    {name: [K]})`. An inactive member keeps its state (its metrics are NaN).

    `vectorize`: "vmap" batches the K members into one program (the point of a
    sweep on an accelerator); "map" runs the same member function over the K
    members with `lax.map` inside the same program (one compile; on a small
    CPU, where XLA's batched matmuls are slow, about twice as fast).
    """
    check_vectorize(vectorize)
    step = make_step(model, task, optimizer, batch_size, train_set_size, train_metrics)
    evaluate = make_eval(model, task)

    def member_chunk(params, opt_state, lr_scale, data_key, active, start, batch):
        def body(carry, s):
            params, opt_state = carry
            new_params, new_opt_state, metrics = step(params, opt_state, data_key, s, lr_scale)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
            metrics = jax.tree.map(lambda m: jnp.where(active, m, jnp.nan), metrics)
            return (keep(new_params, params), keep(new_opt_state, opt_state)), metrics

        (params, opt_state), metrics = jax.lax.scan(
            body, (params, opt_state), start + jnp.arange(chunk)
        )
        evals = jax.tree.map(lambda m: jnp.where(active, m, jnp.nan), evaluate(params, batch))
        return params, opt_state, metrics, evals

    def chunk_fn(state: SweepState, lr_scales, data_keys, active, start, batch):
        per_member = (state.params, state.opt_state, lr_scales, data_keys, active)
        if vectorize == "vmap":
            out = jax.vmap(member_chunk, in_axes=(0, 0, 0, 0, 0, None, None))(
                *per_member, start, batch
            )
        else:  # "map": the same member function, one member after the other
            out = jax.lax.map(lambda m: member_chunk(*m, start, batch), per_member)
        params, opt_state, metrics, evals = out
        return SweepState(params, opt_state), metrics, evals

    return jax.jit(chunk_fn, donate_argnums=0)


VECTORIZE = ("vmap", "map")


def check_vectorize(vectorize: str) -> None:
    if vectorize not in VECTORIZE:
        raise ValueError(f"unknown vectorize mode {vectorize!r}; valid: {list(VECTORIZE)}")


def init_sweep(
    config: SeqConfig,
    optimizer: optax.GradientTransformation,
    members: Sequence[Member],
) -> SweepState:
    """Stacked parameters and optimizer states of the K members (one vmapped init)."""
    init_keys = jnp.stack([member_keys(m.seed)[0] for m in members])
    scales = [m.init_scale for m in members]

    def init_one(key, scale):
        params = init_params(config, key, scale)
        return SweepState(params, optimizer.init(params))

    if scales[0] is None:
        return jax.jit(jax.vmap(lambda k: init_one(k, None)))(init_keys)
    return jax.jit(jax.vmap(init_one))(init_keys, jnp.asarray(scales, jnp.float32))


def train_sweep(
    task: Task,
    config: SeqConfig,
    optim_config: ml_collections.ConfigDict,
    members: Sequence[Member],
    *,
    num_steps: int,
    batch_size: int,
    eval_every: int,
    eval_batch_size: int,
    eval_seed: int = 0,
    steps_per_epoch: int = 100,
    stop_when_solved: bool = True,
    vectorize: str = "vmap",
    train_set_size: int = 0,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Trains the K `members` on `task` in one vmapped program.

    Every `eval_every` steps all members are scored on one shared held-out batch
    of `eval_batch_size` sequences. With `stop_when_solved`, a member that meets
    `task.solved` stops updating (as its own run would stop), and the program
    ends when no member is left; a member whose loss is non-finite stops too.
    `num_steps` must be a multiple of `eval_every`. `vectorize`: see `make_chunk`.
    """
    if eval_every < 1 or num_steps % eval_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a positive multiple of eval_every ({eval_every})"
        )
    members = list(members)
    if not members:
        raise ValueError("a sweep needs at least one member")
    if len({m.init_scale is None for m in members}) > 1:
        raise ValueError("init scales must be all numbers or all None (the cell default)")
    k = len(members)
    t0 = time.perf_counter()
    model = SequenceModel(config)
    base_lr = float(optim_config.learning_rate)
    optimizer = optim.make_optimizer(optim_config, steps_per_epoch)
    state = init_sweep(config, optimizer, members)
    lr_scales = jnp.asarray([m.learning_rate / base_lr for m in members], jnp.float32)
    data_keys = jnp.stack([member_keys(m.seed)[1] for m in members])
    batch = eval_batch(task, eval_seed, eval_batch_size)
    chunk_fn = make_chunk(model, task, optimizer, batch_size, eval_every, vectorize, train_set_size)

    active = np.ones(k, bool)
    solved_step: list[int | None] = [None] * k
    stop_step = [num_steps] * k
    final: list[dict[str, float]] = [{} for _ in range(k)]
    diverged = [False] * k
    train_chunks, eval_rows, eval_steps, chunk_seconds = [], [], [], []
    start = 0
    while start < num_steps and active.any():
        tc = time.perf_counter()
        state, metrics, evals = chunk_fn(
            state, lr_scales, data_keys, jnp.asarray(active), jnp.int32(start), batch
        )
        metrics = jax.tree.map(np.asarray, metrics)  # waits for the program
        evals = {name: np.asarray(v, np.float64) for name, v in evals.items()}
        chunk_seconds.append(time.perf_counter() - tc)
        start += eval_every
        train_chunks.append(metrics)
        eval_rows.append(evals)
        eval_steps.append(start)
        for i in np.flatnonzero(active):
            final[i] = {name: float(v[i]) for name, v in evals.items()}
            finite = math.isfinite(final[i]["loss"]) and bool(
                np.all(np.isfinite(metrics["loss"][i]))
            )
            if not finite:
                diverged[i], active[i], stop_step[i] = True, False, start
            elif task.solved(final[i]):
                if solved_step[i] is None:
                    solved_step[i] = start
                if stop_when_solved:
                    active[i], stop_step[i] = False, start
        if log is not None:
            crit = evals[task.criterion]
            log(
                f"  step {start:6d}: {task.criterion} "
                + " ".join("   -  " if np.isnan(v) else f"{v:.4f}" for v in crit)
                + f"  ({int(active.sum())}/{k} training)"
            )
    for i in np.flatnonzero(active):
        stop_step[i] = start
    train = {
        name: np.concatenate([np.asarray(c[name], np.float64) for c in train_chunks], axis=1)
        for name in train_chunks[0]
    }
    seconds = time.perf_counter() - t0
    rest = chunk_seconds[1:]
    compile_s = chunk_seconds[0] - (float(np.mean(rest)) if rest else 0.0)
    return SweepResult(
        members=members,
        params=jax.tree.map(np.asarray, state.params),
        train=train,
        eval_steps=np.asarray(eval_steps),
        evals={name: np.stack([r[name] for r in eval_rows], axis=1) for name in eval_rows[0]},
        solved_step=solved_step,
        stop_step=stop_step,
        final=final,
        diverged=diverged,
        steps_run=start,
        seconds=seconds,
        compile_seconds=max(compile_s, 0.0),
    )


def member_params(params: Params, i: int) -> Params:
    """Member i's parameters out of a stacked `[K, ...]` pytree."""
    return jax.tree.map(lambda x: x[i], params)
