"""Throughput and memory benchmark, side by side with the peers (not a test).

    python -m lstm_jax.bench                                  # every config, markdown
    python -m lstm_jax.bench --configs seeds,sample --steps 20
    python -m lstm_jax.bench --configs long_seq               # memory vs T, remat on/off
    python -m lstm_jax.bench --json                           # one JSON object per row
    python -m lstm_jax.bench --threads 2,1                    # torch with 2 and 1 threads
    python -m lstm_jax.bench --impls scan,fused,fused_bf16    # any names in LAYER_IMPLS

What is measured (one process, one config at a time, peers run one after the
other, never concurrently, so they do not fight for the cores):

- train configs: one jitted train step = embed -> L-layer LSTM -> readout,
  mean cross-entropy, backward, global-norm clip 5, Adam(2e-3), fp32, params
  and optimizer state donated. tokens/s = B*T / median step time after
  `--warmup` steps, over `--rounds` x `--steps` timed steps; the rounds cycle
  through the implementations so that a load spike hits all of them alike.
  Rows: ours ("scan" = the reference lax.scan, "fused" = lstm_jax.fused,
  "onednn" = oneDNN's LSTM primitive through lstm_jax.onednn), the
  flax peers (`nn.RNN(nn.LSTMCell)`, `nn.RNN(nn.OptimizedLSTMCell)`) and
  PyTorch `nn.LSTM` with the same shapes, step and optimizer, run in the
  interpreter named by LSTM_JAX_TORCH_PYTHON with `torch.set_num_threads`
  = --threads (the column is skipped, and the table says so, when unset).
  With several thread counts, "vs PyTorch" is against the fastest torch row:
  on a machine shared with other jobs, 2 OpenMP threads can be far slower
  than 1.
- allocator: this process keeps freed memory between steps
  (`host.retain_freed_memory()`, as `python -m lstm_jax.train` does;
  `--malloc default` for glibc's defaults). That setting speeds PyTorch up
  too, so its train rows run both as shipped and with the same settings
  (`--torch_malloc`, rows "..., freed memory retained"). "vs PyTorch (best
  row)" is against the fastest of them, "vs PyTorch as shipped" against the
  fastest with glibc's defaults.
- tokens/CPU-s: tokens per CPU-second of the process (all threads): the work
  done, which other processes' load does not stretch the way it does wall time.
- compile: seconds of `jit(...).lower(...).compile()` (torch: the first step).
- peak MiB: from XLA's `memory_analysis()` of the compiled step: arguments +
  outputs - donated (aliased) + temporaries, i.e. params, optimizer state and
  every activation buffer; torch: growth of the process's peak RSS over the
  training loop (params are created before it, Adam state inside it).
  The "onednn" row's figure leaves out what oneDNN allocates itself (its
  scratchpad, ~27 MB at the seeds' size, and per-call weight reorders).
- roofline: train FLOPs per token (3x the forward matmul FLOPs: the LSTM's
  input and recurrent matmuls and the readout) x tokens/s, as a fraction of
  the best fp32 2048^3 matmul rate measured in this run.
- sample: characters/s of generation with the char-rnn model for 1 and 64
  streams, `lstm_jax.sample.generate` (one compiled loop) against PyTorch's
  step-by-step Python loop.
- long_seq: the char-rnn model at T = 1,000 and 10,000 with "scan", "fused"
  and "fused_remat": peak memory and tokens/s.
- cells: "scan" vs "fused" train tokens/s for LSTM, GRU and tanh-RNN at the
  char_rnn and seeds shapes (no peers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax import host, parallel
from lstm_jax.layers import onednn
from lstm_jax.model import LanguageModel, LMConfig

TORCH_SCRIPT = pathlib.Path(__file__).with_name("bench_torch.py")
MiB = 2**20


@dataclasses.dataclass(frozen=True)
class Shape:
    """A language model's shape and its batch: the key of every measurement."""

    vocab: int  # V
    embed: int  # E
    hidden: int  # H
    layers: int  # L
    batch: int  # B (streams when sampling)
    seq: int  # T (generated tokens when sampling)

    @property
    def train_flops_per_token(self) -> float:
        """3x the forward matmul FLOPs (forward, and two matmuls backward)."""
        fwd = sum(
            2 * 4 * self.hidden * ((self.embed if i == 0 else self.hidden) + self.hidden)
            for i in range(self.layers)
        )
        return 3.0 * (fwd + 2 * self.hidden * self.vocab)


# The word-level dnd model: configs/dnd.py (3x512, embed 256, batch 32, 15-word
# windows; dropout left out here, as for every config) with the vocabulary its
# word tokenizer builds from the SRD spells at min_count=2 (1,914 words).
TRAIN_CONFIGS: dict[str, Shape] = {
    "char_rnn": Shape(65, 64, 128, 2, 50, 50),  # karpathy/char-rnn defaults
    "seeds": Shape(65, 64, 512, 2, 64, 100),  # the seeds' char model size
    "zaremba_small": Shape(10000, 200, 200, 2, 20, 20),  # Zaremba et al. 2014, small
    "dnd_word": Shape(1914, 256, 512, 3, 32, 15),  # the headline word-level run
}
SAMPLE_SHAPE = Shape(65, 64, 128, 2, 1, 1000)  # char-rnn model; batch = streams
SAMPLE_STREAMS = (1, 64)
LONG_SEQ_SHAPE = Shape(65, 64, 128, 2, 50, 0)  # char-rnn model; seq from LONG_SEQ_T
LONG_SEQ_T = (1000, 10000)
CELLS_SHAPES = ("char_rnn", "seeds")  # "cells": scan vs fused for every cell type
CELL_TYPES = ("lstm", "gru", "rnn_tanh")
ALL_CONFIGS = (*TRAIN_CONFIGS, "sample", "long_seq", "cells")
OUR_IMPLS = ("scan", "fused")
PEERS = ("torch", "flax_lstm", "flax_optimized")
DOTS_LABELS = {"onednn": "oneDNN dots"}
MALLOC_MODES = ("default", "retain")  # glibc's defaults, or host.retain_freed_memory()
LABELS = {
    "scan": "ours: lax.scan (reference)",
    "fused": "ours: fused (custom VJP)",
    "fused_remat": "ours: fused + remat",
    "fused_bf16": "ours: fused, bf16 matmuls",
    "cudnn": "ours: cuDNN backend",
    "onednn": "ours: oneDNN LSTM primitive (FFI)",
    "torch": "PyTorch nn.LSTM",
    "flax_lstm": "flax nn.RNN(LSTMCell)",
    "flax_optimized": "flax nn.RNN(OptimizedLSTMCell)",
}


@dataclasses.dataclass
class Row:
    """One measured implementation on one config."""

    config: str
    impl: str
    shape: Shape
    times: list[float] = dataclasses.field(default_factory=list)  # seconds per step
    cpu: list[float] = dataclasses.field(default_factory=list)  # CPU seconds per step
    compile_s: float = float("nan")
    peak_mib: float = float("nan")
    note: str = ""
    cell: str = "lstm"

    @property
    def tokens_per_s(self) -> float:
        return self.shape.batch * self.shape.seq / float(np.median(self.times))

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per CPU-second (all threads): robust to other processes'
        load, which stretches wall time but not the work done."""
        total = sum(self.cpu)
        return self.shape.batch * self.shape.seq * len(self.cpu) / total if total else float("nan")

    @property
    def spread(self) -> float:
        """Interquartile range of the step time, relative to the median."""
        q1, q2, q3 = np.percentile(self.times, [25, 50, 75])
        return float((q3 - q1) / q2)

    def as_json(self, matmul_gflops: float, ratios: dict[str, float]) -> dict[str, Any]:
        s = self.shape
        out = {
            "config": self.config,
            "impl": self.impl,
            "cell": self.cell,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "tokens_per_cpu_s": round(self.tokens_per_cpu_s, 1),
            **dataclasses.asdict(s),
            "median_step_s": float(np.median(self.times)),
            "iqr_rel": round(self.spread, 4),
            "steps_timed": len(self.times),
            "compile_s": round(self.compile_s, 3),
            "peak_mib": round(self.peak_mib, 2),
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
        }
        if self.config != "sample":
            out["roofline_fraction"] = round(
                self.tokens_per_s * s.train_flops_per_token / (matmul_gflops * 1e9), 4
            )
            out["matmul_gflops"] = round(matmul_gflops, 1)
        return out


# ---------------------------------------------------------------------------
# Timing helpers


def matmul_gflops(n: int = 2048, reps: int = 8) -> float:
    """Best fp32 n^3 matmul rate of this machine right now (the roofline)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) used by this process so far."""
    t = os.times()
    return t.user + t.system


def _peak_mib(compiled: Any) -> float:
    """Arguments + outputs (less the donated, aliased part) + XLA's scratch.

    XLA's CPU `peak_memory_in_bytes` reports only the argument size, so the sum
    of the buffer sizes is used: an upper bound on what is live at once."""
    try:
        m = compiled.memory_analysis()
        total = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
    except (AttributeError, TypeError):  # a backend without the analysis
        return float("nan")
    return total / MiB


class JaxTrainer:
    """A compiled, donated train step and its state, timed a few steps at a time."""

    def __init__(
        self,
        loss_fn: Callable,
        params: Any,
        tokens: jax.Array,
        compiler_options: dict[str, Any] | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ):
        """With a `mesh`: params and optimizer state replicated, tokens split by rows."""
        opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(2e-3))
        targets = jnp.roll(tokens, -1, axis=1)
        jit_kw: dict[str, Any] = {}
        if mesh is not None:
            rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
            jit_kw = dict(in_shardings=(rep, rep, rows, rows), out_shardings=(rep, rep, rep))

        def step(params, opt_state, tokens, targets):
            loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        opt_state = opt.init(params)
        t0 = time.perf_counter()
        self.compiled = (
            jax.jit(step, donate_argnums=(0, 1), **jit_kw)
            .lower(params, opt_state, tokens, targets)
            .compile(compiler_options=compiler_options or None)
        )
        self.compile_s = time.perf_counter() - t0
        self.peak_mib = _peak_mib(self.compiled)
        if mesh is not None:  # place the arguments where the compiled step expects them
            params, opt_state = jax.device_put((params, opt_state), parallel.replicated(mesh))
            tokens, targets = jax.device_put((tokens, targets), parallel.batch_sharding(mesh))
        self.state = (params, opt_state)
        self.batch = (tokens, targets)

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Wall and CPU seconds of `steps` train steps."""
        times, cpu = [], []
        for _ in range(steps):
            c0, t0 = cpu_seconds(), time.perf_counter()
            params, opt_state, loss = self.compiled(*self.state, *self.batch)
            loss.block_until_ready()
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds() - c0)
            self.state = (params, opt_state)
        return times, cpu


def _xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _tokens(shape: Shape) -> jax.Array:
    return jax.random.randint(jax.random.key(1), (shape.batch, shape.seq), 0, shape.vocab)


def split_impl(impl: str) -> tuple[str, int, str]:
    """ "fused+onednn@2cpu" -> ("fused", 2, "onednn"): a layer implementation run
    with the batch split over 2 CPU devices (`--cpu_devices`) and XLA:CPU's dots
    from host.CPU_DOT_LIBRARIES (`--cpu_dots`); "fused" -> ("fused", 1, "default")."""
    name, _, devices = impl.partition("@")
    name, _, dots = name.partition("+")
    return name, int(devices.removesuffix("cpu")) if devices else 1, dots or "default"


def ours_trainer(
    shape: Shape, impl: str, compiler_options: dict[str, Any] | None = None, cell: str = "lstm"
) -> JaxTrainer:
    impl, devices, dots = split_impl(impl)
    compiler_options = {**(compiler_options or {}), **host.cpu_compiler_options(dots)}
    mesh = parallel.data_mesh(jax.devices()[:devices]) if devices > 1 else None
    model = LanguageModel(
        LMConfig(
            vocab_size=shape.vocab,
            embed_dim=shape.embed,
            hidden_size=shape.hidden,
            num_layers=shape.layers,
            impl=impl,
            cell=cell,
        )
    )
    carry = model.init_carry(shape.batch)

    def loss_fn(params, tokens, targets):
        logits, _ = model.apply(params, tokens, carry, mesh=mesh)
        return _xent(logits, targets)

    params, tokens = model.init(jax.random.key(0)), _tokens(shape)
    return JaxTrainer(loss_fn, params, tokens, compiler_options, mesh)


def flax_trainer(
    shape: Shape, optimized: bool, compiler_options: dict[str, Any] | None = None
) -> JaxTrainer:
    from flax import linen as nn  # a peer, imported only when measured

    cell_cls = nn.OptimizedLSTMCell if optimized else nn.LSTMCell

    class FlaxLM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(shape.vocab, shape.embed)(tokens)
            for _ in range(shape.layers):
                x = nn.RNN(cell_cls(shape.hidden))(x)
            return nn.Dense(shape.vocab)(x)

    net = FlaxLM()
    tokens = _tokens(shape)
    params = net.init(jax.random.key(0), tokens)

    def loss_fn(params, tokens, targets):
        return _xent(net.apply(params, tokens), targets)

    return JaxTrainer(loss_fn, params, tokens, compiler_options)


def torch_python() -> str | None:
    return os.environ.get("LSTM_JAX_TORCH_PYTHON") or None


def run_torch(job: dict[str, Any], malloc: str = "default") -> dict[str, Any]:
    """One job in torch's interpreter, with glibc's default allocator settings
    or ("retain") those of `host.retain_freed_memory`; returns its JSON result."""
    env = {**os.environ, **(host.malloc_env() if malloc == "retain" else {})}
    out = subprocess.run(
        [torch_python(), str(TORCH_SCRIPT), json.dumps(job)],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# Benchmarks


def bench_train(
    name: str, shape: Shape, impls: list[str], peers: list[str], args: argparse.Namespace
) -> list[Row]:
    opts = args.compiler_options
    makers: dict[str, Callable[[], JaxTrainer]] = {
        impl: (lambda impl=impl: ours_trainer(shape, impl, opts)) for impl in impls
    }
    for peer, optimized in (("flax_lstm", False), ("flax_optimized", True)):
        if peer in peers:
            makers[peer] = lambda o=optimized: flax_trainer(shape, o, compiler_options=opts)
    rows: dict[str, Row] = {}
    trainers: dict[str, JaxTrainer] = {}
    for key, make in makers.items():
        trainers[key] = trainer = make()
        trainer.run(args.warmup)
        rows[key] = Row(name, key, shape, compile_s=trainer.compile_s, peak_mib=trainer.peak_mib)
    torch_threads = args.threads if ("torch" in peers and torch_python()) else []
    torch_runs = [(th, m) for m in args.torch_malloc for th in torch_threads]
    for th, malloc in torch_runs:
        key = torch_impl(th, args.threads, malloc)
        rows[key] = Row(name, key, shape, peak_mib=0.0)
    for _ in range(args.rounds):  # cycle, so that load spikes hit every row
        for key, trainer in trainers.items():
            trainer.run(1)  # re-warm caches after the previous row
            times, cpu = trainer.run(args.steps)
            rows[key].times += times
            rows[key].cpu += cpu
        for th, malloc in torch_runs:
            job = {"kind": "train", **dataclasses.asdict(shape), "threads": th}
            res = run_torch({**job, "warmup": args.warmup, "steps": args.steps}, malloc)
            r = rows[torch_impl(th, args.threads, malloc)]
            r.times += res["times"]
            r.cpu += res["cpu"]
            r.compile_s = res["first_step_s"]
            r.peak_mib = max(r.peak_mib, res["peak_mib"])
            r.note = f"{th} threads" + (", freed memory retained" if malloc == "retain" else "")
    del trainers
    return list(rows.values())


def torch_impl(threads: int, all_threads: list[int], malloc: str = "default") -> str:
    """Row name of the torch peer: "torch" for the first --threads value (2 by
    default, as specified), "torch_<n>t" for any other thread count; with
    "_retain" appended when run with `host.malloc_env()`."""
    name = "torch" if threads == all_threads[0] else f"torch_{threads}t"
    return name if malloc == "default" else f"{name}_retain"


def _our_sampler(shape: Shape) -> Callable[[jax.Array], Any]:
    """`lstm_jax.sample.generate` on a fresh model (random weights: speed only)."""
    from lstm_jax import sample  # noqa: PLC0415  (CLI-only dependency)

    model = LanguageModel(
        LMConfig(
            vocab_size=shape.vocab,
            embed_dim=shape.embed,
            hidden_size=shape.hidden,
            num_layers=shape.layers,
        )
    )
    params = model.init(jax.random.key(0))
    prime = np.zeros((1,), np.int32)

    def run(key):
        return sample.generate(
            model, params, prime, key, length=shape.seq, num_samples=shape.batch
        ).tokens

    return run


def bench_sample(peers: list[str], args: argparse.Namespace) -> list[Row]:
    rows = []
    for streams in SAMPLE_STREAMS:
        shape = dataclasses.replace(SAMPLE_SHAPE, batch=streams)
        run = _our_sampler(shape)
        t0 = time.perf_counter()
        run(jax.random.key(0)).block_until_ready()
        ours = Row("sample", "generate", shape, compile_s=time.perf_counter() - t0)
        ours.note = "lstm_jax.sample.generate (one compiled loop)"
        torch_threads = args.threads if ("torch" in peers and torch_python()) else []
        torch_rows = {
            th: Row("sample", torch_impl(th, args.threads), shape, note=f"{th} threads")
            for th in torch_threads
        }
        for r in range(args.rounds):
            for i in range(max(3, args.steps // 3)):
                c0, t0 = cpu_seconds(), time.perf_counter()
                run(jax.random.key(1 + r * 100 + i)).block_until_ready()
                ours.times.append(time.perf_counter() - t0)
                ours.cpu.append(cpu_seconds() - c0)
            for th, row in torch_rows.items():
                job = {"kind": "sample", **dataclasses.asdict(shape), "threads": th}
                res = run_torch({**job, "steps": max(3, args.steps // 3)}, args.malloc)
                row.times += res["times"]
                row.cpu += res["cpu"]
        rows += [ours, *torch_rows.values()]
    return rows


def bench_cells(args: argparse.Namespace) -> list[Row]:
    """Train tokens/s of "scan" and "fused" for each cell type (no peers)."""
    rows = []
    for shape_name in CELLS_SHAPES:
        shape = TRAIN_CONFIGS[shape_name]
        trainers = {}
        for cell in CELL_TYPES:
            for impl in ("scan", "fused"):
                t = ours_trainer(shape, impl, args.compiler_options, cell=cell)
                t.run(args.warmup)
                trainers[(cell, impl)] = t
                row = Row(f"cells:{shape_name}", impl, shape, compile_s=t.compile_s, cell=cell)
                row.peak_mib = t.peak_mib
                rows.append(row)
        by_key = {(r.cell, r.impl): r for r in rows[-len(trainers) :]}
        for _ in range(args.rounds):
            for key, t in trainers.items():
                times, cpu = t.run(max(2, args.steps // 2))
                by_key[key].times += times
                by_key[key].cpu += cpu
        del trainers
    return rows


def bench_long_seq(args: argparse.Namespace) -> list[Row]:
    rows = []
    for t in LONG_SEQ_T:
        shape = dataclasses.replace(LONG_SEQ_SHAPE, seq=t)
        for impl in ("scan", "fused", "fused_remat"):
            trainer = ours_trainer(shape, impl, args.compiler_options)
            row = Row("long_seq", impl, shape, compile_s=trainer.compile_s)
            row.peak_mib = trainer.peak_mib
            trainer.run(1)
            row.times, row.cpu = trainer.run(args.long_steps)
            rows.append(row)
            del trainer
    return rows


# ---------------------------------------------------------------------------
# Reporting


def is_peer(impl: str) -> bool:
    return impl in PEERS or impl.startswith("torch_")


def ratios(row: Row, rows: list[Row]) -> dict[str, float]:
    """This row's tokens/s over each peer's, measured in the same run;
    "vs_torch_best" is over the fastest torch row (any thread count, either
    allocator setting), "vs_torch_as_shipped" over the fastest one run with
    glibc's default allocator settings."""
    out = {}
    torch_rates = {}  # torch row name -> tokens/s
    for other in rows:
        same = other.config == row.config and other.shape == row.shape
        if same and is_peer(other.impl) and other.impl != row.impl:
            out[f"vs_{other.impl}"] = row.tokens_per_s / other.tokens_per_s
            if other.impl.startswith("torch"):
                torch_rates[other.impl] = other.tokens_per_s
    if torch_rates and not row.impl.startswith("torch"):
        out["vs_torch_best"] = row.tokens_per_s / max(torch_rates.values())
        shipped = [rate for name, rate in torch_rates.items() if not name.endswith("_retain")]
        if shipped:
            out["vs_torch_as_shipped"] = row.tokens_per_s / max(shipped)
    return out


def label(r: Row) -> str:
    if r.impl.startswith("torch"):
        return f"PyTorch nn.LSTM ({r.note})" if r.config != "sample" else f"PyTorch ({r.note})"
    impl, devices, dots = split_impl(r.impl)
    text = LABELS.get(impl, impl)
    if dots != "default":
        text += f", {DOTS_LABELS.get(dots, dots)}"
    if devices > 1:
        text += f", rows over {devices} CPU devices"
    return text


def _fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def markdown(rows: list[Row], gflops: float, notes: list[str]) -> str:
    out = []
    train = [r for r in rows if r.config in TRAIN_CONFIGS]
    if train:
        out.append(
            f"Train step (fwd + bwd + clip + Adam, fp32), tokens/s, median of the timed "
            f"steps; roofline = the best 2048^3 fp32 matmul in this run, "
            f"{gflops:.0f} GFLOP/s.\n"
        )
        out.append(
            "| config (V, E, H, L, B, T) | implementation | tokens/s | IQR | "
            "vs PyTorch as shipped | vs PyTorch (best row) | vs flax LSTMCell | "
            "vs flax Optimized | roofline | tokens/CPU-s | compile s | peak MiB |"
        )
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in train:
            s, q = r.shape, ratios(r, rows)
            frac = r.tokens_per_s * s.train_flops_per_token / (gflops * 1e9)
            out.append(
                f"| {r.config} ({s.vocab}, {s.embed}, {s.hidden}, {s.layers}, {s.batch}, "
                f"{s.seq}) | {label(r)} | {r.tokens_per_s:,.0f} | "
                f"{100 * r.spread:.0f}% | {_fmt_ratio(q.get('vs_torch_as_shipped'))} | "
                f"{_fmt_ratio(q.get('vs_torch_best'))} | {_fmt_ratio(q.get('vs_flax_lstm'))} | "
                f"{_fmt_ratio(q.get('vs_flax_optimized'))} | {100 * frac:.0f}% | "
                f"{r.tokens_per_cpu_s:,.0f} | {r.compile_s:.1f} | {r.peak_mib:,.0f} |"
            )
    sample = [r for r in rows if r.config == "sample"]
    if sample:
        out.append(
            "\nSampling (char-rnn model, V=65, E=64, 2x128), characters/s, "
            f"{SAMPLE_SHAPE.seq} tokens per stream:\n"
        )
        out.append(
            "| streams | implementation | chars/s | IQR | vs PyTorch (best row) | chars/CPU-s |"
        )
        out.append("|--:|---|--:|--:|--:|--:|")
        for r in sample:
            name = "ours: sample.generate" if r.impl == "generate" else label(r) + " step loop"
            q = ratios(r, rows)
            out.append(
                f"| {r.shape.batch} | {name} | {r.tokens_per_s:,.0f} | "
                f"{100 * r.spread:.0f}% | {_fmt_ratio(q.get('vs_torch_best'))} | "
                f"{r.tokens_per_cpu_s:,.0f} |"
            )
    longs = [r for r in rows if r.config == "long_seq"]
    if longs:
        out.append(
            "\nLong sequences (char-rnn model, B=50), train step, XLA peak memory and tokens/s:\n"
        )
        out.append("| T | implementation | peak MiB | vs scan memory | tokens/s | compile s |")
        out.append("|--:|---|--:|--:|--:|--:|")
        for r in longs:
            base = next(o for o in longs if o.shape == r.shape and o.impl == "scan")
            out.append(
                f"| {r.shape.seq:,} | {label(r)} | {r.peak_mib:,.0f} | "
                f"{r.peak_mib / base.peak_mib:.2f} | {r.tokens_per_s:,.0f} | "
                f"{r.compile_s:.1f} |"
            )
    cell_rows = [r for r in rows if r.config.startswith("cells:")]
    if cell_rows:
        out.append("\nEvery cell type, train tokens/s, reference scan vs fused (same step):\n")
        out.append("| config | cell | scan tokens/s | fused tokens/s | fused / scan |")
        out.append("|---|---|--:|--:|--:|")
        for r in cell_rows:
            if r.impl != "fused":
                continue
            ref = next(
                o for o in cell_rows if (o.config, o.cell, o.impl) == (r.config, r.cell, "scan")
            )
            out.append(
                f"| {r.config.split(':')[1]} | {r.cell} | {ref.tokens_per_s:,.0f} | "
                f"{r.tokens_per_s:,.0f} | {r.tokens_per_s / ref.tokens_per_s:.2f}x |"
            )
    if notes:
        out.append("\n" + "\n".join(f"- {n}" for n in notes))
    return "\n".join(out)


def _loadavg() -> list[str]:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return ["n/a"]


def machine_notes(args: argparse.Namespace) -> list[str]:
    notes = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__} on {jax.default_backend()}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; allocator: {args.malloc} "
        f"(PyTorch train rows: {', '.join(args.torch_malloc)})",
        f"{args.warmup} warm-up steps, {args.rounds} rounds x {args.steps} timed steps; "
        f"XLA compiler options: {args.compiler_options or 'defaults'}",
        f"load average at the end: {' '.join(_loadavg())} (other processes share the cores)",
    ]
    if not torch_python():
        notes.append("PyTorch column skipped: LSTM_JAX_TORCH_PYTHON is not set.")
    return notes


def _parse_option(text: str) -> tuple[str, Any]:
    """ "name=value" -> (name, bool | int | str); an empty value stays ""."""
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--xla_option wants NAME=VALUE, got {text!r}")
    lowered = value.lower()
    if lowered in ("true", "false"):
        return name, lowered == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lstm_jax.bench", description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=",".join(ALL_CONFIGS), help=f"from {ALL_CONFIGS}")
    default_impls = [*OUR_IMPLS, *(["onednn"] if onednn.installed() else [])]
    p.add_argument(
        "--impls",
        default=",".join(default_impls),
        help="our layer implementations (default adds 'onednn' where oneDNN is installed)",
    )
    p.add_argument("--peers", default=",".join(PEERS), help=f"from {PEERS}; '' for none")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds cycling through the rows")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument("--long_steps", type=int, default=3, help="timed steps per long_seq row")
    p.add_argument(
        "--threads",
        default="2",
        help="torch.set_num_threads, comma-separated for several torch rows (e.g. 2,1)",
    )
    p.add_argument(
        "--xla_option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an XLA compiler option for every JAX row (repeatable), e.g. "
        "xla_cpu_experimental_ynn_fusion_type= ; applied per compile, not process-wide",
    )
    p.add_argument(
        "--cpu_devices",
        type=int,
        default=0,
        help="also run each --impls row with the batch split over this many CPU devices "
        "(parallel.use_cpu_devices; the rows are named e.g. fused@2cpu); 0 = no such rows",
    )
    p.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default="retain",
        help="this process's allocator: 'retain' = host.retain_freed_memory() (as "
        "python -m lstm_jax.train does), 'default' = glibc's defaults",
    )
    p.add_argument(
        "--torch_malloc",
        default=",".join(MALLOC_MODES),
        help="PyTorch train rows with each of these allocator settings (comma-separated); "
        "'vs PyTorch (best row)' is against the fastest of all, 'vs PyTorch as shipped' "
        "against the fastest with glibc's defaults",
    )
    p.add_argument(
        "--cpu_dots",
        default="",
        help="also run each --impls row with these XLA:CPU dot libraries (comma-separated "
        "names in host.CPU_DOT_LIBRARIES, as train.cpu_dots; rows named e.g. fused+onednn)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per row, no table")
    args = p.parse_args(argv)
    for field, valid in (("configs", ALL_CONFIGS), ("peers", PEERS)):
        chosen = [c for c in getattr(args, field).split(",") if c]
        bad = sorted(set(chosen) - set(valid))
        if bad:
            p.error(f"unknown {field} {bad}; valid: {list(valid)}")
        setattr(args, field, chosen)
    from lstm_jax import recurrent  # the registry of layer implementations

    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.torch_malloc = [m for m in args.torch_malloc.split(",") if m]
    bad = sorted(set(args.torch_malloc) - set(MALLOC_MODES))
    if bad or not args.torch_malloc:
        p.error(f"--torch_malloc: unknown {bad}; choose from {list(MALLOC_MODES)}")
    args.compiler_options = dict(_parse_option(o) for o in args.xla_option) or None
    args.impls = [i for i in args.impls.split(",") if i]
    bad = sorted(set(args.impls) - set(recurrent.LAYER_IMPLS))
    if bad:
        p.error(f"unknown impls {bad}; valid: {sorted(recurrent.LAYER_IMPLS)}")
    if "onednn" in args.impls and not onednn.installed():
        p.error(f"--impls onednn: oneDNN is not installed; {onednn.INSTALL_HINT}")
    if args.cpu_devices < 0:
        p.error(f"--cpu_devices must be >= 0, got {args.cpu_devices}")
    dots = [d for d in args.cpu_dots.split(",") if d and d != "default"]
    bad = sorted(set(dots) - set(host.CPU_DOT_LIBRARIES))
    if bad:
        p.error(f"unknown cpu_dots {bad}; valid: {sorted(host.CPU_DOT_LIBRARIES)}")
    args.impls += [f"{impl}+{d}" for d in dots for impl in args.impls]
    if args.cpu_devices > 1:
        args.impls += [f"{impl}@{args.cpu_devices}cpu" for impl in args.impls]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.malloc == "retain":
        host.retain_freed_memory()  # before JAX starts its threads
    if args.cpu_devices > 1:
        parallel.use_cpu_devices(args.cpu_devices)  # before the first JAX computation
    rows: list[Row] = []
    gflops = matmul_gflops()
    for name in args.configs:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        if name in TRAIN_CONFIGS:
            rows += bench_train(name, TRAIN_CONFIGS[name], args.impls, args.peers, args)
        elif name == "sample":
            rows += bench_sample(args.peers, args)
        elif name == "long_seq":
            rows += bench_long_seq(args)
        elif name == "cells":
            rows += bench_cells(args)
        gflops = max(gflops, matmul_gflops())
    if args.json:
        for r in rows:
            print(json.dumps(r.as_json(gflops, ratios(r, rows))))
    else:
        print(markdown(rows, gflops, machine_notes(args)))


if __name__ == "__main__":
    main()
