"""Train a recurrent language model.

    python -m lstm_jax.train --config configs/dnd.py --workdir workdirs/dnd
    python -m lstm_jax.train --config configs/dnd.py:smoke --config.train.num_steps=50
    python launch/local.py -n 2 -- python -m lstm_jax.train --config ...   # 2 processes

`train_and_evaluate` reads top to bottom in named phases (the Flax examples'
shape), each one short function:

    setup            config -> corpus -> tokenizer -> token ids -> splits checked
                     -> TrainBatcher (B streams x T steps, carry passed across
                        windows; each process reads only its own rows)
                     -> model, optimizer, sampler, checkpointer
    restore_or_init  the newest checkpoint's state (checked against this config),
                     or a fresh one, built in place on the device mesh
    compile_steps    train_step(state, batch) -> (state, metrics)  [jit, donated]
                     and the eval step, compiled once, ahead of time
    train_loop       batch -> train_step, dispatched without waiting; at a log,
                     eval or checkpoint step the metrics since the last one are
                     read at once (the only device-to-host sync), then:
                     on_eval (validation + a sample), log, save
    finish           the summary, with where the wall time went

The same loop runs on one device, on the devices of one host and on many hosts
(data parallel, see lstm_jax/parallel.py): the state lives on a 1-D device mesh,
parameters and optimizer state replicated (or the optimizer state sharded),
the batch and the carried state split by rows; the step is one `jit`, and its
loss is the mean over the global batch, so N devices compute what one would.

A rerun in the same workdir resumes from the latest checkpoint, exactly:
parameters, optimizer state, carried state, step and data position are all
restored, and per-step randomness is `fold_in(key(seed), step)`.

The command line (flags, process setup, the watchdog, exit codes) is
lstm_jax/train_cli.py; what a workdir holds and when a run may resume it,
lstm_jax/workdir.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from lstm_jax import cells, cli, host, layers, optim, parallel
from lstm_jax import config as config_lib
from lstm_jax import model as model_lib
from lstm_jax import sample as sampling
from lstm_jax import workdir as workdir_lib
from lstm_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    DamagedCheckpointError,
    flat_leaves,
    shape_mismatch,
)
from lstm_jax.data import batching, corpora, token_cache, tokenizers
from lstm_jax.metrics import (
    MetricWriter,
    PhaseTimer,
    Progress,
    per_token_report,
    time_breakdown,
    unigram_loss,
)
from lstm_jax.model import LanguageModel, LastHidden, count_params


class TrainState(NamedTuple):
    """Everything a step reads and writes; all arrays, all checkpointed."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    carry: Any  # the recurrent state carried into the next window (TBPTT)
    rng: jax.Array  # uint32 key data of the run's base key


class Data(NamedTuple):
    tokenizer: tokenizers.Tokenizer
    splits: dict[str, np.ndarray]  # "train", "valid", "test" -> token ids
    description: str  # what was read: paths, bytes, and the token cache's state


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Corpus -> tokenizer (built on the training text) -> ids per split. A file
    corpus goes through the token cache (tokenized once, then memory-mapped);
    dnd_spells, or data.cache=False, is read and tokenized in memory."""
    d = config.data
    options = {}
    if d.tokenizer == "word":
        options = dict(
            lowercase=d.lowercase,
            min_count=d.min_count,
            max_vocab=d.max_vocab or None,
            split=d.word_split,
        )
    split_paths = {s: d.get(f"{s}_path") for s in ("train", "valid", "test")}
    files = corpora.corpus_files(d.corpus, d.path, split_paths)
    fractions = (1.0 - d.val_fraction - d.test_fraction, d.val_fraction, d.test_fraction)
    if files is not None and d.get("cache", True):
        cached = token_cache.prepare(
            files,
            d.tokenizer,
            options,
            encoding_errors=d.encoding_errors,
            root=token_cache.cache_root(d.get("cache_dir")),
        )
        if files.has_splits:
            splits = {k: cached.part(k) for k in ("train", "valid", "test")}
        else:
            splits = batching.split_by_fraction(cached.part("all"), fractions)
        description = f"{cached.description}; token cache {cached.status}"
        return Data(cached.tokenizer, splits, description)
    if files is not None:
        corpus = corpora.read_corpus(files, d.encoding_errors)
    else:
        corpus = corpora.load_corpus(d.corpus, d.path, encoding_errors=d.encoding_errors)
    train_text = corpus.splits["train"] if corpus.splits else corpus.text
    tokenizer = tokenizers.build_tokenizer(d.tokenizer, train_text, **options)
    if corpus.splits:
        splits = {k: tokenizer.encode(v) for k, v in corpus.splits.items()}
    else:
        splits = batching.split_by_fraction(tokenizer.encode(corpus.text), fractions)
    return Data(tokenizer, splits, corpus.description)


def check_splits(data: Data, config: ml_collections.ConfigDict) -> None:
    """Refuse, before any compute, a validation split that evaluation cannot
    score (it needs at least one input/target pair). The training split's size
    is checked by the TrainBatcher."""
    if not config.train.evaluate:
        return
    n = len(data.splits.get("valid", ()))
    if n < 2:
        raise ValueError(
            f"the validation split has {n} token(s) (data.val_fraction="
            f"{config.data.val_fraction}); evaluation needs at least 2. Raise "
            "--config.data.val_fraction, or turn evaluation off with "
            "--config.train.evaluate=False."
        )


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> LanguageModel:
    return model_lib.build_model(config.model.to_dict(), vocab_size)


def init_state(
    config: ml_collections.ConfigDict,
    model: LanguageModel,
    optimizer: optax.GradientTransformation,
    batch_size: int,
) -> TrainState:
    key = jax.random.key(config.seed)
    params = model.init(jax.random.fold_in(key, 0))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        carry=model.init_carry(batch_size),
        rng=jax.random.key_data(key),
    )


def state_sharding(mesh: Mesh, abstract: TrainState, shard_optimizer_state: bool) -> TrainState:
    """Where each part of the state lives on the data mesh.

    Parameters, step and key: replicated. The carry: split by rows like the
    batch, since each row is one stream's recurrent state. The optimizer state:
    replicated, or split over devices to save memory (`parallel.shard_optimizer_state`).
    """
    rep = parallel.replicated(mesh)
    opt = (
        parallel.optimizer_state_sharding(abstract.opt_state, mesh)
        if shard_optimizer_state
        else jax.tree.map(lambda _: rep, abstract.opt_state)
    )
    return TrainState(
        step=rep,
        params=jax.tree.map(lambda _: rep, abstract.params),
        opt_state=opt,
        carry=jax.tree.map(lambda _: parallel.batch_sharding(mesh), abstract.carry),
        rng=rep,
    )


def masked_nll(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
    """Sum of per-token negative log-likelihood (nats) and number of tokens."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
    return jnp.sum(nll * mask), jnp.sum(mask)


def activation_penalty(
    hidden: LastHidden,
    mask: jax.Array,  # [B, T] 1 = a real step
    reset: jax.Array | None,  # [B, T] True = the stream restarts before step t
    alpha: float,
    beta: float,
) -> jax.Array:
    """AWD-LSTM's activation regularization (Merity, Keskar & Socher 2017,
    sec. 4.6; Merity et al. 2017, "Revisiting Activation Regularization"):

        AR  = alpha * mean(dropped_h_t ** 2)          the outputs the readout sees
        TAR = beta * mean((h_t - h_{t-1}) ** 2)       the undropped outputs

    means over units and the real steps (`mask`); TAR pairs only two real steps
    of one stream (not across a `reset`, where a new document starts)."""
    units = hidden.raw.shape[-1]
    penalty = jnp.zeros((), jnp.float32)
    if alpha:
        sq = jnp.sum(jnp.square(hidden.dropped), axis=-1)  # [B, T]
        penalty += alpha * jnp.sum(sq * mask) / (jnp.maximum(jnp.sum(mask), 1.0) * units)
    if beta:
        pair = mask[:, 1:] * mask[:, :-1]  # [B, T-1]
        if reset is not None:
            pair = pair * (1.0 - reset[:, 1:].astype(pair.dtype))
        diff = jnp.sum(jnp.square(hidden.raw[:, 1:] - hidden.raw[:, :-1]), axis=-1)
        penalty += beta * jnp.sum(diff * pair) / (jnp.maximum(jnp.sum(pair), 1.0) * units)
    return penalty


# ----------------------------------------------------------------------------
# The two jitted functions.


def _resets(batch: batching.Batch, mid_sequence_resets: bool) -> dict[str, jax.Array]:
    """The model's reset argument for `batch`: the whole [B, T] mask, or only
    its first column as `start` when the batch resets at step 0 only."""
    if mid_sequence_resets:
        return {"reset": batch.reset}
    return {"start": batch.reset[:, 0]}


def make_train_step(
    model: LanguageModel,
    optimizer: optax.GradientTransformationExtraArgs,
    learning_rate: Callable,
    mesh: Mesh | None = None,
    shardings: TrainState | None = None,
    compiler_options: dict[str, Any] | None = None,
    *,
    activation_reg: float = 0.0,
    temporal_activation_reg: float = 0.0,
    mid_sequence_resets: bool = False,
    stop_flag: bool = False,
) -> Callable[..., tuple[TrainState, dict]]:
    """The jitted step. With a `mesh` (and the state's `shardings`), the batch
    is split by rows over the devices and XLA all-reduces the gradients; the
    loss is a mean over the global batch, so the result is the one-device step's.
    `compiler_options`: XLA options for this step (host.cpu_compiler_options).
    `activation_reg`, `temporal_activation_reg`: AWD-LSTM's AR and TAR
    (`activation_penalty`), added to the optimised loss only; the logged
    `train_loss` stays the cross-entropy.
    `mid_sequence_resets`: honour `batch.reset` at every step. Off by default:
    the batchers reset at step 0 only (`batching.Batch`), and the model then
    gets `reset[:, 0]` as `start`, which every layer implementation runs (a
    full mask sends `onednn` and `cudnn` to `fused`).
    `stop_flag`: the step takes a third argument, an int32 vector with one
    entry per device (rows split like the batch) that each process fills with
    its own "a signal came" flag, and returns its maximum as `metrics["stop"]`.
    The processes' agreement to stop is then reduced inside the step's own
    program, in the order of its other collectives, never as a separate
    collective racing it (`train_loop`)."""
    regularize = bool(activation_reg or temporal_activation_reg)

    def loss_fn(params, carry, batch, rng):
        out = model.apply(
            params,
            batch.inputs,
            carry,
            **_resets(batch, mid_sequence_resets),
            train=True,
            rng=rng,
            mesh=mesh,
            return_hidden=regularize,
        )
        logits, carry = out[:2]
        total, count = masked_nll(logits, batch.targets, batch.mask)
        loss = total / jnp.maximum(count, 1.0)
        if not regularize:
            return loss, (carry, loss)
        penalty = activation_penalty(
            out[2], batch.mask, batch.reset, activation_reg, temporal_activation_reg
        )
        return loss + penalty, (carry, loss)

    def train_step(state: TrainState, batch: batching.Batch, stop: jax.Array | None = None):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step + 1)
        (_, (carry, loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.carry, batch, rng
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=loss)
        new_state = TrainState(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            carry=jax.lax.stop_gradient(carry),  # truncated BPTT: no gradient across windows
            rng=state.rng,
        )
        metrics = {
            "train_loss": loss,
            "grad_norm": optax.tree.norm(grads),  # before clipping
            "learning_rate": learning_rate(state.step, state.opt_state),
        }
        if stop is not None:
            metrics["stop"] = jnp.max(stop)
        return new_state, metrics

    options = compiler_options or None
    if mesh is None:
        return jax.jit(train_step, donate_argnums=0, compiler_options=options)
    rows, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(shardings, rows, rows) if stop_flag else (shardings, rows),
        out_shardings=(shardings, rep),
        donate_argnums=0,
        compiler_options=options,
    )


def make_eval_step(
    model: LanguageModel,
    mesh: Mesh | None = None,
    compiler_options: dict[str, Any] | None = None,
    mid_sequence_resets: bool = False,
) -> Callable:
    """(params, carry, batch) -> (sum of nll, token count, carry); with a `mesh`,
    rows split over devices and the sums are global. `mid_sequence_resets`: as
    `make_train_step`'s."""

    def eval_step(params, carry, batch: batching.Batch):
        logits, carry = model.apply(
            params, batch.inputs, carry, **_resets(batch, mid_sequence_resets), mesh=mesh
        )
        total, count = masked_nll(logits, batch.targets, batch.mask)
        return total, count, carry

    options = compiler_options or None
    if mesh is None:
        return jax.jit(eval_step, compiler_options=options)
    rows, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(
        eval_step,
        in_shardings=(rep, rows, rows),
        out_shardings=(rep, rep, rows),
        compiler_options=options,
    )


def _eval_inputs(
    model: LanguageModel, batch: batching.Batch, batch_size: int, mesh: Mesh | None
) -> tuple[Any, batching.Batch]:
    """The zero carry and the batch, as the eval step takes them (on the mesh:
    global arrays, every process passing all rows)."""
    carry = model.init_carry(batch_size)
    if mesh is None:
        return carry, batch
    return parallel.to_global(carry, mesh, batch_size), parallel.to_global(batch, mesh, batch_size)


def evaluate(
    eval_step: Callable,
    model: LanguageModel,
    params: Any,
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    max_batches: int = 0,
    mesh: Mesh | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Mean nats/token over the split (every target once, state carried).

    The sums stay on the device until the last batch: one read, not one per
    batch. With a `mesh`, every process walks the same batches and feeds its
    devices' rows (`eval_step` from `make_eval_step(model, mesh)`); the sums are
    global, so the value is the single-process one whatever the number of processes.
    `on_batch(i)`: called after batch i is dispatched (the watchdog's heartbeat).
    """
    total, count, carry = 0.0, 0.0, None
    for i, batch in enumerate(batching.eval_batches(ids, batch_size, seq_len)):
        if max_batches and i >= max_batches:
            break
        first_carry, batch = _eval_inputs(model, batch, batch_size, mesh)
        t, c, carry = eval_step(params, first_carry if carry is None else carry, batch)
        total, count = total + t, count + c
        if on_batch is not None:
            on_batch(i)
    batching.release_pages(ids)  # a memory-mapped split's pages leave the resident set
    return float(total) / max(float(count), 1.0)


def stop_flags(mesh: Mesh, requested: bool) -> Any:
    """This process's stop flag for the train step: one int32 per local device,
    as a global [devices] array split like the batch rows."""
    local = np.full((jax.local_device_count(),), int(requested), np.int32)
    return parallel.to_global(local, mesh, mesh.devices.size)


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm stopped being finite at `step`; nothing
    after the last good checkpoint is saved (`keep_finite_checkpoints`)."""

    def __init__(self, message: str, step: int = 0):
        super().__init__(message)
        self.step = step

    @classmethod
    def at(cls, step: int, steps: tuple[int, int], loss: float, grad_norm: float):
        return cls(
            f"non-finite training loss ({loss}, gradient norm {grad_norm}) at step {step}, "
            f"the first bad one of steps {steps[0]}-{steps[1]} (read together); stopping.",
            step,
        )


def keep_finite_checkpoints(run: Run, error: NonFiniteLossError) -> NonFiniteLossError:
    """After a non-finite loss at step s: the checkpoint of step s - 1 holds
    the parameters that gave it (step s's loss is theirs), so it is set aside
    (into checkpoints-damaged/), and the error names the newest checkpoint
    left, whose parameters gave a finite loss, and a rerun that can work."""
    run.ckpt.wait_until_finished()
    bad, note = error.step - 1, ""
    if bad in run.ckpt.all_steps():
        moved = run.ckpt.set_aside(bad)
        parallel.barrier("lstm_jax.train: non-finite checkpoint set aside")
        run.ckpt.reload()
        note = f" Checkpoint {bad}, whose parameters gave that loss, is set aside in {moved}."
    latest = run.ckpt.latest_step()
    kept = (
        f" The newest checkpoint whose parameters gave a finite loss, step {latest}, is kept "
        f"in {run.ckpt.directory}; rerun the same command with"
        if latest is not None
        else " No checkpoint was kept; rerun with"
    )
    return NonFiniteLossError(
        f"{error}{note}{kept} a lower --config.optim.learning_rate (now "
        f"{run.config.optim.learning_rate:g}) or gradient clipping "
        "(--config.optim.clip_mode=global_norm --config.optim.clip_value=1).",
        error.step,
    )


# ----------------------------------------------------------------------------
# The run, in phases.


class Steps(NamedTuple):
    """The compiled train and eval steps."""

    train: Callable
    eval: Callable


@dataclasses.dataclass
class Run:
    """What the phases share; built once by `setup`."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    mesh: Mesh
    data: Data
    batcher: batching.TrainBatcher
    model: LanguageModel
    optimizer: optax.GradientTransformationExtraArgs
    schedule: Callable
    ckpt: Checkpointer
    meta: dict | None  # the newest checkpoint's metadata, None for a fresh run
    sampler: Callable | None
    timer: PhaseTimer
    shardings: TrainState | None = None  # set by restore_or_init
    nt: optim.NTTrigger | None = None  # NT-ASGD's val-loss history; set by restore_or_init
    steps: Steps | None = None  # set by compile_steps
    # progress reports for the CLI's watchdog (lstm_jax/watchdog.py): "step 12", ...
    heartbeat: Callable[[str], None] = lambda where: None
    lock: Any = None  # the workdir lock's open file (process 0), held while the run lives


def resolve_config(config: ml_collections.ConfigDict, num_devices: int):
    """Validated, every field present, and the global batch size recorded."""
    config_lib.validate(config)
    config = config_lib.complete(config)
    par = config.parallel
    cpu = jax.default_backend() == "cpu"
    if cpu and par.cpu_devices and jax.local_device_count() != par.cpu_devices:
        logging.warning(  # JAX started before main() could set it (a library caller)
            "parallel.cpu_devices=%d applies only at process start (`python -m "
            "lstm_jax.train` sets it); this process has %d CPU device(s)",
            par.cpu_devices,
            jax.local_device_count(),
        )
    batch_size = parallel.global_batch_size(
        config.train.batch_size, par.per_device_batch_size, num_devices
    )
    if batch_size != config.train.batch_size:  # per-device batch given: record the global one
        config = copy.deepcopy(config)
        config.train.batch_size = batch_size
    return config


def setup(config: ml_collections.ConfigDict, workdir: pathlib.Path, timer: PhaseTimer) -> Run:
    """Everything but the state, checked before any compute: the workdir and an
    earlier run's config, the data and its splits, the model, the sampler."""
    mesh = parallel.data_mesh()
    config = resolve_config(config, mesh.devices.size)
    workdir_lib.check_workdir(workdir)
    cfg_dict = config.to_dict()
    saved_config = workdir / "config.json"
    if saved_config.exists() and workdir_lib.has_checkpoint(workdir):
        workdir_lib.check_compatible(workdir_lib.read_saved_config(saved_config), cfg_dict, workdir)

    t = config.train
    with timer.phase("data"):
        data = load_data(config)
        check_splits(data, config)
    shard_index, num_shards = parallel.process_rows(mesh)
    batcher = batching.TrainBatcher(  # this process's rows of every global batch
        data.splits["train"],
        t.batch_size,
        t.seq_len,
        mode=config.data.batching,
        seed=config.seed,
        shard_index=shard_index,
        num_shards=num_shards,
    )
    model = build_model(config, data.tokenizer.vocab_size)
    # A short sample at each evaluation, as min-char-rnn prints one. Built here so
    # a prime the vocabulary cannot encode fails before any compute.
    sampler = None
    if t.sample_length:
        sampler = sampling.make_sampler(
            model,
            data.tokenizer,
            prime=t.sample_prime,
            length=t.sample_length,
            stop_at_record_end=data.tokenizer.record_separator_id is not None,
            cli="train",
        )
    optimizer = optim.make_optimizer(config.optim, batcher.steps_per_epoch)
    schedule = optim.make_schedule(config.optim, batcher.steps_per_epoch)

    # Every input is checked: now the workdir is locked (created if new) and read.
    lock = workdir_lib.lock_workdir(workdir)
    try:
        ckpt, meta = open_checkpoints(config, workdir, data)
    except BaseException:
        if lock is not None:
            lock.close()  # a refused resume frees the workdir at once
        raise
    run = Run(
        config, workdir, mesh, data, batcher, model, optimizer, schedule, ckpt, meta, sampler, timer
    )
    run.lock = lock
    return run


def open_checkpoints(
    config: ml_collections.ConfigDict, workdir: pathlib.Path, data: Data
) -> tuple[Checkpointer, dict | None]:
    """The checkpoint manager and the newest checkpoint's metadata (None for a
    new run), checked against this config and vocabulary."""
    cfg_dict = config.to_dict()
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    meta = workdir_lib.newest_meta(ckpt, fallback=config.train.restore_fallback)
    if meta is not None:
        workdir_lib.check_compatible(meta["config"], cfg_dict, workdir)
        if meta["tokenizer"] != data.tokenizer.to_json():
            raise CheckpointError(
                f"the corpus no longer gives the vocabulary the checkpoint in {workdir} was "
                "trained with. Refusing to resume: use a new --workdir."
            )
    return ckpt, meta


def restore_or_init(run: Run) -> TrainState:
    """The newest checkpoint's state in this run's shardings (whatever mesh
    wrote it), or a fresh one; then process 0 writes config.json and the
    tokenizer (only once the restore worked: a refused resume changes nothing)."""
    config = run.config
    make_state = lambda: init_state(config, run.model, run.optimizer, config.train.batch_size)
    run.shardings = state_sharding(
        run.mesh, jax.eval_shape(make_state), config.parallel.shard_optimizer_state
    )
    state = jax.jit(make_state, out_shardings=run.shardings)()  # built in place on the mesh
    if run.meta is not None:
        check_saved_tree(run, state)
        state = restore_checkpoint(run, state)
        run.batcher.restore(run.meta["data_state"])
    parallel.barrier("lstm_jax.train: workdir read")  # before process 0 rewrites config.json
    if jax.process_index() == 0:
        run.workdir.mkdir(parents=True, exist_ok=True)
        (run.workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        run.data.tokenizer.save(run.workdir / "tokenizer.json")
    run.nt = optim.NTTrigger.from_config(config.optim, run.meta)  # after a fallback's meta
    return state


def check_saved_tree(run: Run, target: TrainState) -> None:
    """Refuse, naming the arrays, a checkpoint whose state is not the one this
    config builds: an optimizer setting that adds or drops state (momentum, a
    plateau schedule, another optimizer) or a changed size. Such a restore
    would otherwise fail inside orbax and read as a damaged checkpoint."""
    step = run.meta["step"]
    try:
        saved = run.ckpt.array_shapes(step)
    except DamagedCheckpointError:
        if run.config.train.restore_fallback:
            return  # unreadable: the fallback finds the newest good one
        raise
    wanted = {name: tuple(x.shape) for name, x in flat_leaves(target).items()}
    mismatch = shape_mismatch(saved, wanted)
    if not mismatch:
        return
    raise CheckpointError(
        f"the checkpoint at step {step} in {run.workdir} holds another training state than "
        f"this config builds ({mismatch}). A setting that changes the saved state "
        "differs from the run that wrote it (an optim field such as name, momentum or "
        "schedule, or a model size). Restore that setting, or use a new --workdir; "
        "nothing in the workdir was changed."
    )


def restore_checkpoint(run: Run, target: TrainState) -> TrainState:
    """The newest checkpoint, verified against its checksums. A damaged one is
    refused, unless train.restore_fallback asks for the newest that verifies
    (its metadata then replaces `run.meta`)."""
    if run.config.train.restore_fallback:
        check = lambda step, meta: workdir_lib.check_meta_fields(run.ckpt, step, meta)
        step, state, run.meta = run.ckpt.restore_newest_good(target, check)
        newer = [s for s in run.ckpt.all_steps() if s > step]
        for damaged in newer:  # so that this run can save those steps again
            moved = run.ckpt.set_aside(damaged)
        if newer:
            parallel.barrier("lstm_jax.train: damaged checkpoints set aside")
            run.ckpt.reload()
            if jax.process_index() == 0:
                print(
                    f"lstm_jax.train: resuming from checkpoint {step}, the newest that "
                    f"verifies; set aside {newer} in {moved.parent}"
                )
        return state
    try:
        return run.ckpt.restore_state(run.meta["step"], target)
    except DamagedCheckpointError as e:
        raise DamagedCheckpointError(
            f"{e} Or resume from the newest checkpoint that verifies: "
            "--config.train.restore_fallback=True."
        ) from e


def compile_steps(run: Run, state: TrainState) -> Steps:
    """Compile the train and eval steps ahead of time, so the breakdown shows
    each compile on its own (a hit in the persistent cache is a fast one)."""
    config, t = run.config, run.config.train
    options = host.cpu_compiler_options(t.cpu_dots)
    learning_rate = lambda step, s: optim.current_learning_rate(config.optim, run.schedule, step, s)
    mesh = run.mesh
    train_step = make_train_step(
        run.model,
        run.optimizer,
        learning_rate,
        mesh,
        run.shardings,
        options,
        activation_reg=t.activation_reg,
        temporal_activation_reg=t.temporal_activation_reg,
        stop_flag=True,
    )
    position = run.batcher.state()  # a batch of the right shapes, then rewind
    batch = parallel.to_global(run.batcher.next_batch(), mesh, t.batch_size)
    run.batcher.restore(position)
    with run.timer.phase("compile_train"):
        train_compiled = train_step.lower(state, batch, stop_flags(mesh, False)).compile()
    eval_step = make_eval_step(run.model, mesh, options)
    if not t.evaluate:
        return Steps(train_compiled, eval_step)
    first = next(batching.eval_batches(run.data.splits["valid"], t.batch_size, t.seq_len))
    carry, first = _eval_inputs(run.model, first, t.batch_size, mesh)
    with run.timer.phase("compile_eval"):
        eval_compiled = eval_step.lower(state.params, carry, first).compile()
    return Steps(train_compiled, eval_compiled)


class Window:
    """The steps since the device was last read. Their metrics stay on the
    device; `read` fetches them all at once, checks that they are finite, and
    returns the last step's values with the window's throughput."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.steps: list[int] = []
        self.metrics: list[dict] = []
        self.start = time.perf_counter()

    def add(self, step: int, metrics: dict) -> None:
        self.steps.append(step)
        self.metrics.append(metrics)

    def read(self) -> dict[str, float]:
        with jax.transfer_guard_device_to_host("allow"):
            values = jax.device_get(self.metrics)  # waits for the window's last step
        for step, v in zip(self.steps, values, strict=True):
            # A non-finite gradient makes the next parameters non-finite: the
            # state after this step must not be saved either.
            loss, grad_norm = float(v["train_loss"]), float(v["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                span = (self.steps[0], self.steps[-1])
                raise NonFiniteLossError.at(step, span, loss, grad_norm)
        row = {k: float(x) for k, x in values[-1].items()}
        row["stop"] = max(float(v.get("stop", 0)) for v in values)  # any step of the window
        elapsed = time.perf_counter() - self.start
        row["tokens_per_s"] = len(self.steps) * self.tokens_per_step / max(elapsed, 1e-9)
        return row

    def reset(self) -> None:
        self.steps, self.metrics = [], []
        self.start = time.perf_counter()


class Events(NamedTuple):
    """What a step triggers besides the step itself."""

    log: bool
    eval: bool
    checkpoint: bool

    @classmethod
    def at(cls, step: int, t: ml_collections.ConfigDict) -> Events:
        last = step == t.num_steps
        is_eval = bool((t.eval_every and step % t.eval_every == 0) or last)
        return cls(
            log=step % t.log_every == 0 or is_eval,
            eval=is_eval,
            checkpoint=bool((t.checkpoint_every and step % t.checkpoint_every == 0) or is_eval),
        )


class Profile:
    """A jax.profiler trace of steps [start, start + num) into WORKDIR/tb,
    where TensorBoard's profile plugin finds it (train.profile_start_step)."""

    def __init__(self, t: ml_collections.ConfigDict, workdir: pathlib.Path):
        self.first = t.profile_start_step
        self.last = t.profile_start_step + t.profile_num_steps - 1
        self.logdir = workdir / "tb"
        self.active = False

    def before(self, step: int) -> None:
        if self.first and step == self.first and jax.process_index() == 0:
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def after(self, step: int, state: TrainState) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def eval_params(run: Run, state: TrainState) -> Any:
    """The weights evaluation, the best checkpoint and samples use: with
    NT-ASGD, once averaging has started, the average of the iterates (Merity
    et al. 2017), laid out as the params are; otherwise the iterate itself."""
    if run.nt is None or not run.nt.averaging:
        return state.params
    return jax.device_put(optim.averaged_params(state.opt_state), run.shardings.params)


def nt_asgd_trigger(
    run: Run, state: TrainState, step: int, row: dict, progress: Progress
) -> TrainState:
    """NT-ASGD's trigger, on the host after an evaluation: if the val loss is
    worse than the best of those more than n evaluations old, averaging starts
    from the current iterate (the optimizer state's flag is set)."""
    if run.nt is None or row.get("val_loss") is None:
        return state
    if not run.nt.observe(step, row["val_loss"]):
        return state
    row["nt_asgd_trigger_step"] = step
    progress.write(
        f"step {step}: val loss {row['val_loss']:.4f} is worse than the best of the "
        f"evaluations more than {run.nt.interval} ago; NT-ASGD averages the weights from here on"
    )
    start = jax.jit(optim.start_averaging, out_shardings=run.shardings.opt_state, donate_argnums=0)
    return state._replace(opt_state=start(state.opt_state))


def evaluate_split(
    run: Run, params: Any, split: str, step: int, progress: Progress, phase: str = "evals"
) -> float:
    """Mean nats/token over a split (valid: at most train.max_eval_batches
    batches; test: all of it), with a progress bar when it is long; its time
    goes to `phase`."""
    t = run.config.train
    ids = run.data.splits[split]
    limit = t.max_eval_batches if split == "valid" else 0
    total = batching.num_eval_batches(len(ids), t.batch_size, t.seq_len)
    total = min(total, limit) if limit else total

    def on_batch(i: int) -> None:
        run.heartbeat(f"step {step}, {split} evaluation batch {i}")
        advance()

    with run.timer.phase(phase), progress.subtask(total, f"{split} eval") as advance:
        return evaluate(
            run.steps.eval,
            run.model,
            params,
            ids,
            t.batch_size,
            t.seq_len,
            limit,
            run.mesh,
            on_batch=on_batch,
        )


def on_eval(
    run: Run, state: TrainState, step: int, row: dict, writer: MetricWriter, progress: Progress
) -> None:
    """Validation loss (when evaluating) and a short sample, into `row`."""
    t, kind = run.config.train, run.config.data.tokenizer
    params = eval_params(run, state)
    if t.evaluate:
        val_loss = evaluate_split(run, params, "valid", step, progress)
        report = per_token_report(val_loss, kind)
        row.update(val_loss=val_loss, **{f"val_{k}": v for k, v in report.items()})
        progress.write(
            f"step {step}: train {row['train_loss']:.4f}  val {val_loss:.4f} nats/token "
            + " ".join(f"{k} {v:.3f}" for k, v in report.items())
        )
    if run.sampler is not None and jax.process_index() == 0:
        # process 0 alone, on its local replica: no collective to wait on
        phase = "samples" if "compile_sample" in run.timer.seconds else "compile_sample"
        with run.timer.phase(phase):  # the first call compiles the sampler
            local_params = jax.tree.map(lambda x: x.addressable_data(0), params)
            key = jax.random.fold_in(jax.random.key(run.config.seed), step)
            text = run.sampler(local_params, key).samples[0].text
        progress.write(f"sample at step {step}: {text!r}")
        writer.text(step, "sample", text)


def save(run: Run, state: TrainState, step: int, val_loss: float | None, best: float | None):
    meta = {
        "step": step,
        "data_state": run.batcher.state(),
        "tokenizer": run.data.tokenizer.to_json(),
        "config": run.config.to_dict(),
        "val_loss": val_loss,
        "best_val_loss": best,
    }
    if run.nt is not None:  # NT-ASGD's val-loss history and trigger step
        meta["nt_asgd"] = run.nt.to_json()
    run.heartbeat(f"step {step}, saving a checkpoint")
    with run.timer.phase("checkpoints"):
        run.ckpt.save(step, state, meta, val_loss)
    run.heartbeat(f"step {step}, checkpoint saved")


def train_loop(run: Run, state: TrainState, writer: MetricWriter, progress: Progress) -> dict:
    """Steps from the state's step to train.num_steps; returns what happened."""
    t = run.config.train
    start = int(state.step)
    best = run.meta.get("best_val_loss") if run.meta else None
    outcome: dict[str, Any] = {"val_loss": None}
    window, profile = Window(t.batch_size * t.seq_len), Profile(t, run.workdir)
    alone = jax.process_count() == 1
    loop_start = time.perf_counter()
    with cli.StopSignal("lstm_jax.train") as stop:
        for step in range(start + 1, t.num_steps + 1):
            # Dispatch and move on: the host prepares the next batch while the
            # device computes. The guard makes any read of the device here an error.
            with jax.transfer_guard_device_to_host("disallow_explicit"):
                batch = parallel.to_global(run.batcher.next_batch(), run.mesh, t.batch_size)
                profile.before(step)
                flags = stop_flags(run.mesh, stop.requested)
                state, metrics = run.steps.train(state, batch, flags)
                window.add(step, metrics)
                profile.after(step, state)
                progress.update(1)
            run.heartbeat(f"step {step}")
            # One process stops at once; several agree through the steps' own
            # reduction of their flags, read at the log steps (`Window.read`).
            events = Events.at(step, t)
            if not (any(events) or (alone and stop.requested)):
                continue
            try:
                row = window.read()  # the loop's only wait for the device
            except NonFiniteLossError as e:
                raise keep_finite_checkpoints(run, e) from None
            stopping = bool(row.pop("stop")) or (alone and stop.requested)
            progress.set_postfix(loss=f"{row['train_loss']:.3f}")
            row["epoch"] = step / run.batcher.steps_per_epoch
            if events.eval:
                on_eval(run, state, step, row, writer, progress)
                state = nt_asgd_trigger(run, state, step, row, progress)
                outcome["val_loss"] = row.get("val_loss")
                best = _best(best, row.get("val_loss"))
            if events.eval or stopping:
                row.update(time_breakdown(run.timer, time.perf_counter() - loop_start))
            if events.log:
                with run.timer.phase("logging"):
                    writer.write(step, row)
                    batching.release_pages(run.batcher.ids)
            if events.checkpoint or (stopping and run.ckpt.latest_step() != step):
                save(run, state, step, row.get("val_loss"), best)
            if stopping:
                with run.timer.phase("checkpoints"):
                    run.ckpt.wait_until_finished()
                progress.write(f"signal {stop.signum}: saved checkpoint at step {step}; exiting")
                outcome.update(interrupted_at=step, signal=stop.signum)
                break
            window.reset()
    profile.close()
    run.timer.add("loop", time.perf_counter() - loop_start)
    outcome.update(final_step=int(state.step), best_val_loss=best)
    if t.evaluate and len(run.data.splits.get("test", ())) >= 2 and "interrupted_at" not in outcome:
        # once, at the end, on the weights the run ends with (test perplexity)
        step = outcome["final_step"]
        params = eval_params(run, state)
        outcome["test_loss"] = evaluate_split(run, params, "test", step, progress, "test_eval")
        report = per_token_report(outcome["test_loss"], run.config.data.tokenizer)
        progress.write(
            f"step {step}: test {outcome['test_loss']:.4f} nats/token "
            + " ".join(f"{k} {v:.3f}" for k, v in report.items())
        )
    if run.nt is not None:
        outcome["nt_asgd_trigger_step"] = run.nt.trigger_step
    return outcome


def _best(best: float | None, value: float | None) -> float | None:
    if value is None:
        return best
    return value if best is None else min(best, value)


def finish(run: Run, outcome: dict, start: int, wall_start: float) -> dict[str, Any]:
    """The summary: losses, baselines and where the wall time went."""
    kind, splits = run.config.data.tokenizer, run.data.splits
    unigram = None
    if len(splits["valid"]):
        unigram = unigram_loss(splits["train"], splits["valid"], run.data.tokenizer.vocab_size)
    summary: dict[str, Any] = {
        "versions": host.versions(),
        "unigram_val_loss": unigram,
        "start_step": start,
        **outcome,
    }
    if outcome["val_loss"] is not None:
        for name, loss in (
            ("val", outcome["val_loss"]),
            ("unigram", unigram),
            ("test", outcome.get("test_loss")),
        ):
            if loss is None:
                continue
            summary.update({f"{name}_{k}": v for k, v in per_token_report(loss, kind).items()})
    timer = run.timer
    timer.add("total", time.perf_counter() - wall_start)
    loop = timer.seconds.pop("loop", 0.0)
    breakdown = time_breakdown(timer, loop)
    summary["time_s"] = {k.removeprefix("time/"): v for k, v in breakdown.items() if "/" in k}
    summary["outside_step_fraction"] = breakdown["outside_step_fraction"]
    named = sum(v for k, v in summary["time_s"].items() if k != "total")
    summary["time_s"]["other"] = round(max(0.0, summary["time_s"]["total"] - named), 4)
    steps_run = outcome["final_step"] - start
    if steps_run and summary["time_s"]["steps"]:
        summary["steps_per_s"] = round(steps_run / summary["time_s"]["steps"], 2)
    return summary


def describe_run(run: Run, state: TrainState, progress: Progress) -> int:
    """The run's one-line description; returns the parameter count."""
    c, d, t = run.config, run.data, run.config.train
    start, n_params = int(state.step), count_params(state.params)
    cell = cells.make_cell(c.model.cell)
    layer = layers.resolve_impl(c.model.impl, cell=cell, dtype=jnp.float32)  # "auto": which
    progress.write(
        f"{d.description}: {len(d.splits['train']):,} train / "
        f"{len(d.splits['valid']):,} valid"
        + (f" / {len(d.splits['test']):,} test" if len(d.splits.get("test", ())) else "")
        + f" tokens, vocab {d.tokenizer.vocab_size:,}; model "
        f"{c.model.num_layers}x{c.model.hidden_size} {c.model.cell} ({layer} layer), "
        f"{n_params:,} parameters; {run.batcher.steps_per_epoch} steps/epoch"
        + (f"; resuming at step {start}" if start else "")
    )
    if run.mesh.devices.size > 1:
        progress.write(parallel.describe(run.mesh, t.batch_size))
    return n_params


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    startup_seconds: float | None = None,
    heartbeat: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) in `workdir`; returns a summary of the run, with the
    wall time by phase (`time_s`). `startup_seconds`: the process's time before
    this call (interpreter and imports), shown as the breakdown's "startup".
    `heartbeat(where)`: called at every step and phase (the CLI's watchdog)."""
    wall_start = time.perf_counter() - (startup_seconds or 0.0)
    timer = PhaseTimer()
    if startup_seconds is not None:
        timer.add("startup", startup_seconds)
    setup_start = time.perf_counter()
    run = setup(config, pathlib.Path(workdir), timer)
    timer.add("setup", time.perf_counter() - setup_start - timer.seconds["data"])
    if heartbeat is not None:
        run.heartbeat = heartbeat
    try:
        run.heartbeat("restoring or initialising the state")
        with timer.phase("init"):
            state = restore_or_init(run)
        run.heartbeat("compiling the steps")
        run.steps = compile_steps(run, state)
        run.heartbeat("compiled")
        start = int(state.step)
        writer = MetricWriter(run.workdir, resume_step=start)
        progress = Progress(run.config.train.num_steps, start, run.config.train.progress)
        n_params = describe_run(run, state, progress)
        try:
            outcome = train_loop(run, state, writer, progress)
            outcome["num_params"] = n_params
        finally:
            progress.close()
            writer.close()
    finally:
        # after the loop: not part of the loop's overhead (metrics.LOOP_OVERHEAD)
        with timer.phase("final_save"):
            run.ckpt.close()  # waits for a save still being written
        if run.lock is not None:
            run.lock.close()  # the next run may start
    return finish(run, outcome, start, wall_start)


if __name__ == "__main__":
    # `python -m lstm_jax.train`: the command line is lstm_jax/train_cli.py (which
    # imports this module under its own name, lstm_jax.train).
    from lstm_jax import train_cli

    train_cli.run()
