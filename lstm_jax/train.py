"""Train a recurrent language model.

    python -m lstm_jax.train --config configs/dnd.py --workdir workdirs/dnd
    python -m lstm_jax.train --config configs/dnd.py:smoke --config.train.num_steps=50
    python launch/local.py -n 2 -- python -m lstm_jax.train --config ...   # 2 processes

One linear loop (big_vision / Flax-examples style):

    config -> corpus -> tokenizer -> token ids -> train/valid split
           -> TrainBatcher (B streams x T steps, carry passed across windows;
                            each process reads only its own rows)
           -> train_step(state, batch) -> (state, metrics)   [jit, donated state]
           -> metrics.jsonl + TensorBoard + progress bar     [process 0 only]
           -> evaluate() over the whole validation split with carried state
           -> orbax checkpoint: state + data position + tokenizer + config

The same loop runs on one device, on the devices of one host and on many hosts
(data parallel, see lstm_jax/parallel.py): the state lives on a 1-D device mesh,
parameters and optimizer state replicated (or the optimizer state sharded),
the batch and the carried state split by rows; the step is one `jit`, and its
loss is the mean over the global batch, so N devices compute what one would.

A rerun in the same workdir resumes from the latest checkpoint, exactly:
parameters, optimizer state, carried state, step and data position are all
restored, and per-step randomness is `fold_in(key(seed), step)`.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from jax.sharding import Mesh
from ml_collections import config_flags

from lstm_jax import config as config_lib
from lstm_jax import host, optim, parallel
from lstm_jax import sample as sampling
from lstm_jax.checkpoint import Checkpointer, CheckpointError
from lstm_jax.data import batching, corpora, tokenizers
from lstm_jax.metrics import MetricWriter, Progress, per_token_report, unigram_loss
from lstm_jax.model import LanguageModel, LMConfig, count_params


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
    corpus: corpora.Corpus


# ----------------------------------------------------------------------------
# Building blocks: data, model, optimizer, state.


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Corpus -> tokenizer (built on the training text) -> ids per split."""
    d = config.data
    corpus = corpora.load_corpus(d.corpus, d.path, encoding_errors=d.encoding_errors)
    train_text = corpus.splits["train"] if corpus.splits else corpus.text
    options = {}
    if d.tokenizer == "word":
        options = dict(
            lowercase=d.lowercase,
            min_count=d.min_count,
            max_vocab=d.max_vocab or None,
            split=d.word_split,
        )
    tokenizer = tokenizers.build_tokenizer(d.tokenizer, train_text, **options)
    if corpus.splits:
        splits = {k: tokenizer.encode(v) for k, v in corpus.splits.items()}
    else:
        ids = tokenizer.encode(corpus.text)
        fractions = (1.0 - d.val_fraction - d.test_fraction, d.val_fraction, d.test_fraction)
        splits = batching.split_by_fraction(ids, fractions)
    return Data(tokenizer, splits, corpus)


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> LanguageModel:
    return LanguageModel(LMConfig(vocab_size=vocab_size, **config.model.to_dict()))


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


# ----------------------------------------------------------------------------
# The two jitted functions.


def make_train_step(
    model: LanguageModel,
    optimizer: optax.GradientTransformationExtraArgs,
    learning_rate: Callable,
    mesh: Mesh | None = None,
    shardings: TrainState | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> Callable[[TrainState, batching.Batch], tuple[TrainState, dict]]:
    """The jitted step. With a `mesh` (and the state's `shardings`), the batch
    is split by rows over the devices and XLA all-reduces the gradients; the
    loss is a mean over the global batch, so the result is the one-device step's.
    `compiler_options`: XLA options for this step (host.cpu_compiler_options)."""

    def loss_fn(params, carry, batch, rng):
        logits, carry = model.apply(
            params, batch.inputs, carry, reset=batch.reset, train=True, rng=rng, mesh=mesh
        )
        total, count = masked_nll(logits, batch.targets, batch.mask)
        return total / jnp.maximum(count, 1.0), carry

    def train_step(state: TrainState, batch: batching.Batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step + 1)
        (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(
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
        return new_state, metrics

    options = compiler_options or None
    if mesh is None:
        return jax.jit(train_step, donate_argnums=0, compiler_options=options)
    rows, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(shardings, rows),
        out_shardings=(shardings, rep),
        donate_argnums=0,
        compiler_options=options,
    )


def make_eval_step(
    model: LanguageModel,
    mesh: Mesh | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> Callable:
    """(params, carry, batch) -> (sum of nll, token count, carry); with a `mesh`,
    rows split over devices and the sums are global."""

    def eval_step(params, carry, batch: batching.Batch):
        logits, carry = model.apply(params, batch.inputs, carry, reset=batch.reset, mesh=mesh)
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


def evaluate(
    eval_step: Callable,
    model: LanguageModel,
    params: Any,
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    max_batches: int = 0,
    mesh: Mesh | None = None,
) -> float:
    """Mean nats/token over the split (every target once, state carried).

    With a `mesh`, every process walks the same batches and feeds its devices'
    rows (`eval_step` from `make_eval_step(model, mesh)`); the sums are global,
    so the value is the single-process one whatever the number of processes.
    """
    total, count, carry = 0.0, 0.0, None
    for i, batch in enumerate(batching.eval_batches(ids, batch_size, seq_len)):
        if max_batches and i >= max_batches:
            break
        if mesh is not None:
            batch = parallel.to_global(batch, mesh, batch_size)
        if carry is None:
            carry = model.init_carry(batch_size)
            carry = carry if mesh is None else parallel.to_global(carry, mesh, batch_size)
        t, c, carry = eval_step(params, carry, batch)
        total, count = total + float(t), count + float(c)
    return total / max(count, 1.0)


# ----------------------------------------------------------------------------
# Workdir: resolved config, tokenizer, compatibility with an earlier run.

# Fields that must match for a workdir's checkpoint to be resumed; the rest
# (num_steps, eval/log cadence, learning rate schedule...) may change.
COMPAT_SECTIONS = ("seed", "data", "model")
COMPAT_FIELDS = ("optim.name", "train.batch_size", "train.seq_len")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compat_view(config: dict) -> dict:
    """The dotted fields of `config` that a resumed run must share."""
    flat = _flatten(config)
    return {
        k: v
        for k, v in flat.items()
        if (k.split(".")[0] in COMPAT_SECTIONS or k in COMPAT_FIELDS)
        and k not in ("model.impl", "model.unroll")
    }


def check_compatible(saved: dict, current: dict, workdir: pathlib.Path) -> None:
    old, new = compat_view(saved), compat_view(current)
    diffs = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old | new)
        if old.get(k) != new.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"the checkpoint in {workdir} was trained with a different config "
            f"({'; '.join(diffs)}). Refusing to resume or overwrite it: use a new --workdir, "
            "or restore the original settings."
        )


def has_checkpoint(workdir: pathlib.Path) -> bool:
    ckpt_dir = workdir / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits.

    A save is collective, so with several processes all must stop at the same
    step: they agree every `every` steps (one tiny all-gather); one process
    checks its flag every step at no cost.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signum = signum

    def agreed(self, step: int, every: int) -> bool:
        if jax.process_count() == 1:
            return self.signum is not None
        return step % every == 0 and parallel.any_process(self.signum is not None)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class NonFiniteLossError(FloatingPointError):
    @classmethod
    def at(cls, step: int, loss: float, ckpt: Checkpointer) -> NonFiniteLossError:
        return cls(
            f"non-finite training loss ({loss}) at step {step}; stopping. The last good "
            f"checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}. "
            "Try a lower optim.learning_rate or gradient clipping."
        )


# ----------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (or resume) in `workdir`; returns a summary of the run."""
    config_lib.validate(config)
    mesh = parallel.data_mesh()
    par = config.get("parallel", config_lib.base_config().parallel)
    cpu = jax.default_backend() == "cpu"
    if cpu and par.cpu_devices and jax.local_device_count() != par.cpu_devices:
        logging.warning(  # JAX started before main() could set it (a library caller)
            "parallel.cpu_devices=%d applies only at process start (`python -m "
            "lstm_jax.train` sets it); this process has %d CPU device(s)",
            par.cpu_devices,
            jax.local_device_count(),
        )
    batch_size = parallel.global_batch_size(
        config.train.batch_size, par.per_device_batch_size, mesh.devices.size
    )
    if batch_size != config.train.batch_size:  # per-device batch given: record the global one
        config = copy.deepcopy(config)
        config.train.batch_size = batch_size
    workdir_path = pathlib.Path(workdir)
    cfg_dict = config.to_dict()
    saved_config = workdir_path / "config.json"
    if saved_config.exists() and has_checkpoint(workdir_path):  # before any compute
        check_compatible(json.loads(saved_config.read_text()), cfg_dict, workdir_path)

    t = config.train
    data = load_data(config)
    tokenizer = data.tokenizer
    ckpt = Checkpointer(workdir_path / "checkpoints", keep=t.keep_checkpoints)
    latest = ckpt.latest_step()
    meta = ckpt.restore_meta(latest) if latest is not None else None
    if meta is not None:
        check_compatible(meta["config"], cfg_dict, workdir_path)
        if meta["tokenizer"] != tokenizer.to_json():
            raise CheckpointError(
                f"the corpus no longer gives the vocabulary the checkpoint in {workdir} was "
                "trained with. Refusing to resume: use a new --workdir."
            )

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
    model = build_model(config, tokenizer.vocab_size)
    # A short sample at each evaluation, as min-char-rnn prints one. Built here so
    # a prime the vocabulary cannot encode fails before any compute.
    sampler = None
    if t.sample_length:
        sampler = sampling.make_sampler(
            model,
            tokenizer,
            prime=t.sample_prime,
            length=t.sample_length,
            stop_at_record_end=tokenizer.record_separator_id is not None,
        )
    optimizer = optim.make_optimizer(config.optim, batcher.steps_per_epoch)
    schedule = optim.make_schedule(config.optim, batcher.steps_per_epoch)
    make_state = lambda: init_state(config, model, optimizer, t.batch_size)
    shardings = state_sharding(mesh, jax.eval_shape(make_state), par.shard_optimizer_state)
    state = jax.jit(make_state, out_shardings=shardings)()  # built in place on the mesh

    parallel.barrier("lstm_jax.train: workdir read")  # before process 0 rewrites config.json
    if jax.process_index() == 0:
        workdir_path.mkdir(parents=True, exist_ok=True)
        saved_config.write_text(json.dumps(cfg_dict, indent=2) + "\n")
        tokenizer.save(workdir_path / "tokenizer.json")

    if meta is not None:  # into this run's shardings, whatever mesh wrote the checkpoint
        state = ckpt.restore_state(latest, state)
        batcher.restore(meta["data_state"])
    start = int(state.step)
    best_val = meta.get("best_val_loss") if meta else None

    writer = MetricWriter(workdir_path, resume_step=start)
    progress = Progress(t.num_steps, start, t.progress)
    kind = config.data.tokenizer
    val_ids = data.splits["valid"]
    unigram = unigram_loss(data.splits["train"], val_ids, tokenizer.vocab_size)
    n_params = count_params(state.params)
    progress.write(
        f"{data.corpus.description}: {len(data.splits['train']):,} train / {len(val_ids):,} "
        f"valid tokens, vocab {tokenizer.vocab_size:,}; model {config.model.num_layers}x"
        f"{config.model.hidden_size} {config.model.cell}, {n_params:,} parameters; "
        f"{batcher.steps_per_epoch} steps/epoch" + (f"; resuming at step {start}" if start else "")
    )
    if mesh.devices.size > 1:
        progress.write(parallel.describe(mesh, t.batch_size))

    compiler_options = host.cpu_compiler_options(t.get("cpu_dots", "default"))
    train_step = make_train_step(
        model,
        optimizer,
        lambda step, s: optim.current_learning_rate(config.optim, schedule, step, s),
        mesh,
        shardings,
        compiler_options,
    )
    eval_step = make_eval_step(model, mesh, compiler_options)

    def run_eval() -> float:
        return evaluate(
            eval_step,
            model,
            state.params,
            val_ids,
            t.batch_size,
            t.seq_len,
            t.max_eval_batches,
            mesh,
        )

    def save(step: int, val_loss: float | None) -> None:
        meta = {
            "step": step,
            "data_state": batcher.state(),
            "tokenizer": tokenizer.to_json(),
            "config": cfg_dict,
            "val_loss": val_loss,
            "best_val_loss": best_val,
        }
        ckpt.save(step, state, meta, val_loss)

    summary: dict[str, Any] = {"unigram_val_loss": unigram, "num_params": n_params}
    val_loss = None
    tokens_per_step = t.batch_size * t.seq_len
    window_start, window_steps = time.perf_counter(), 0
    try:
        with _StopSignal() as stop:
            for step in range(start + 1, t.num_steps + 1):
                batch = parallel.to_global(batcher.next_batch(), mesh, t.batch_size)
                state, metrics = train_step(state, batch)
                loss = float(metrics["train_loss"])
                if not math.isfinite(loss):
                    raise NonFiniteLossError.at(step, loss, ckpt)
                window_steps += 1
                progress.update(1, loss=f"{loss:.3f}")
                is_eval = (t.eval_every and step % t.eval_every == 0) or step == t.num_steps
                row = None
                if step % t.log_every == 0 or is_eval:
                    elapsed = time.perf_counter() - window_start
                    row = {k: float(v) for k, v in metrics.items()}
                    row["tokens_per_s"] = window_steps * tokens_per_step / max(elapsed, 1e-9)
                    row["epoch"] = step / batcher.steps_per_epoch
                    window_start, window_steps = time.perf_counter(), 0
                if is_eval:
                    val_loss = run_eval()
                    best_val = val_loss if best_val is None else min(best_val, val_loss)
                    row.update(
                        val_loss=val_loss,
                        **{f"val_{k}": v for k, v in per_token_report(val_loss, kind).items()},
                    )
                    progress.write(
                        f"step {step}: train {loss:.4f}  val {val_loss:.4f} nats/token "
                        + " ".join(
                            f"{k} {v:.3f}" for k, v in per_token_report(val_loss, kind).items()
                        )
                    )
                if is_eval and sampler is not None and jax.process_index() == 0:
                    # process 0 alone, on its local replica: no collective to wait on
                    local_params = jax.tree.map(lambda x: x.addressable_data(0), state.params)
                    key = jax.random.fold_in(jax.random.key(config.seed), step)
                    text = sampler(local_params, key).samples[0].text
                    progress.write(f"sample at step {step}: {text!r}")
                    writer.text(step, "sample", text)
                if row is not None:
                    writer.write(step, row)
                if (
                    (t.checkpoint_every and step % t.checkpoint_every == 0)
                    or is_eval
                    or (step == t.num_steps)
                ):
                    save(step, val_loss if is_eval else None)
                if stop.agreed(step, every=t.log_every):
                    if ckpt.latest_step() != step:
                        save(step, None)
                    progress.write(
                        f"signal {stop.signum}: saved checkpoint at step {step}; exiting"
                    )
                    summary["interrupted_at"] = step
                    summary["signal"] = stop.signum
                    break
    finally:
        progress.close()
        writer.close()
        ckpt.close()

    summary.update(final_step=int(state.step), val_loss=val_loss, best_val_loss=best_val)
    if val_loss is not None:
        summary.update({f"val_{k}": v for k, v in per_token_report(val_loss, kind).items()})
        summary.update({f"unigram_{k}": v for k, v in per_token_report(unigram, kind).items()})
    return summary


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
# Multi-process runs (lstm_jax/parallel.py). Under SLURM's srun or on a Cloud TPU
# VM, JAX finds the other processes itself and none of these is needed.
flags.DEFINE_enum(
    "distributed",
    "auto",
    list(parallel.DISTRIBUTED_MODES),
    "auto: join a multi-process run when the flags below are given or JAX detects a "
    "cluster (SLURM, Open MPI, TPU VM); on: always call jax.distributed.initialize; off: never.",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1.")
flags.DEFINE_bool(
    "retain_freed_memory",
    True,
    "Keep freed host memory in the process between train steps (glibc mallopt, "
    "lstm_jax/host.py): no page faults on each step's fresh buffers; 1.14-1.39x "
    "faster steps on CPU at the word-level sizes. --noretain_freed_memory: glibc's defaults.",
)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = FLAGS.config
    if FLAGS.retain_freed_memory:
        host.retain_freed_memory()  # before JAX starts its threads
    par = config.get("parallel", config_lib.base_config().parallel)
    parallel.use_cpu_devices(par.cpu_devices)  # before any JAX computation
    parallel.initialize(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    config_file = config_flags.get_config_filename(FLAGS["config"])
    workdir = FLAGS.workdir or f"workdirs/{pathlib.Path(config_file.split(':')[0]).stem}"
    summary = train_and_evaluate(config, workdir)
    if jax.process_index() == 0:
        print(json.dumps(summary, indent=2))
    if summary.get("signal"):
        # Saved, but not finished: exit as a shell reports a process killed by
        # that signal (SIGTERM 143, SIGINT 130), so `train && sample`, a SLURM
        # dependency or a Kubernetes Job does not take a preempted run as done.
        sys.exit(128 + summary["signal"])


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
