"""Throughput and memory benchmark, side by side with the peers (not a test).

    python -m lstm_jax.bench                                  # the backend's configs
    python -m lstm_jax.bench --configs course_project,sample --steps 20
    python -m lstm_jax.bench --configs long_seq               # memory vs T, remat on/off
    python -m lstm_jax.bench --json                           # JSON lines on stdout
    python -m lstm_jax.bench --json rows.jsonl --budget_s 300 # JSON lines to a file, 5 min
    python -m lstm_jax.bench --threads 2,1                    # torch with 2 and 1 threads
    python -m lstm_jax.bench --impls scan,fused,fused_bf16    # any names in LAYER_IMPLS

Rows stream: each config's rows are written as soon as they are measured (a
JSON line and a table row, flushed), and a summary table follows at the end.
`--budget_s` caps the whole run: once spent, no further config, row or round
starts (a round starts only if the previous one's duration still fits), and
the notes name what was skipped. Without --configs/--impls a GPU runs
GPU_CONFIGS with GPU_IMPLS, a CPU CPU_CONFIGS with our CPU layers.

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
  PyTorch `nn.LSTM` with the same shapes, step and optimizer. Where torch
  is importable in this interpreter it runs here (`--torch_peer`), on the
  same accelerator as JAX when torch sees one (`peer_device`): rows "torch"
  (cuDNN, fp32) and "torch_bf16" (cuDNN under bf16 autocast) on a GPU.
  Otherwise it runs on the CPU in the interpreter named by
  LSTM_JAX_TORCH_PYTHON, with `torch.set_num_threads` = --threads (the
  column is skipped, and the table says so, when neither is there).
  With several thread counts, "vs PyTorch" is against the fastest torch row
  of the same compute dtype: on a machine shared with other jobs, 2 OpenMP
  threads can be far slower than 1.
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
  scratchpad, ~27 MB at the course project's size, and per-call weight reorders).
- roofline: train FLOPs per token (3x the forward matmul FLOPs: the LSTM's
  input and recurrent matmuls and the readout) x tokens/s, as a fraction of
  the best n^3 matmul rate of JAX's default device measured in this run, at
  JAX's default matmul precision (n = 2048 on a CPU, 8192 on an accelerator),
  in the row's compute dtype (bf16 rows against the bf16 rate).
- sample: characters/s of generation with the char-rnn model for 1 and 64
  streams, `lstm_jax.sample.generate` (one compiled loop) against PyTorch's
  step-by-step Python loop, on the same device as the torch train rows.
- long_seq: the char-rnn model at T = 1,000 and 10,000 with "scan", "fused"
  and "fused_remat": peak memory and tokens/s.
- cells: "scan" vs "fused" train tokens/s for LSTM, GRU and tanh-RNN at the
  char_rnn and course_project shapes (no peers).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
    "course_project": Shape(65, 64, 512, 2, 64, 100),  # the course project's char model size
    "zaremba_small": Shape(10000, 200, 200, 2, 20, 20),  # Zaremba et al. 2014, small
    "dnd_word": Shape(1914, 256, 512, 3, 32, 15),  # the headline word-level run
    # GPU sizes: Zaremba et al. 2014's medium model (2x650, PTB's 10k words,
    # 35 steps) at batch 128, and a 2x1024 model at batch 256 x 64 steps.
    "gpu_2x650": Shape(10000, 650, 650, 2, 128, 35),
    "gpu_2x1024": Shape(10000, 1024, 1024, 2, 256, 64),
    "smoke": Shape(32, 8, 16, 1, 4, 8),  # seconds on a CPU: tests and device_check's smoke mode
}
SAMPLE_SHAPE = Shape(65, 64, 128, 2, 1, 1000)  # char-rnn model; batch = streams
SAMPLE_STREAMS = (1, 64)
LONG_SEQ_SHAPE = Shape(65, 64, 128, 2, 50, 0)  # char-rnn model; seq from LONG_SEQ_T
LONG_SEQ_T = (1000, 10000)
CELLS_SHAPES = ("char_rnn", "course_project")  # "cells": scan vs fused for every cell type
CELL_TYPES = ("lstm", "gru", "rnn_tanh")
ALL_CONFIGS = (*TRAIN_CONFIGS, "sample", "long_seq", "cells")
# Older names, still accepted (results files and commands in docs/performance_log.md use them).
CONFIG_ALIASES = {"seeds": "course_project"}
# Default sets per backend: a GPU runs the sizes the accelerator goals are
# stated at (the headline ones first, so that a --budget_s cut drops the rest);
# a CPU runs the CPU sizes and studies.
GPU_CONFIGS = ("course_project", "dnd_word", "gpu_2x1024", "char_rnn", "gpu_2x650", "sample")
CPU_CONFIGS = (
    "char_rnn",
    "course_project",
    "zaremba_small",
    "dnd_word",
    "sample",
    "long_seq",
    "cells",
)
GPU_IMPLS = ("fused", "cudnn", "fused_bf16")
OUR_IMPLS = ("scan", "fused")
BF16_IMPLS = ("fused_bf16", "torch_bf16")  # rows whose matmuls run in bf16
TORCH_PEER_MODES = ("auto", "inprocess", "subprocess")
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
    "torch_bf16": "PyTorch nn.LSTM, bf16 autocast",
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
    def compute_dtype(self) -> str:
        """ "bfloat16" for rows whose matmuls run in bf16, else "float32"."""
        return "bfloat16" if split_impl(self.impl)[0] in BF16_IMPLS else "float32"

    @property
    def spread(self) -> float:
        """Interquartile range of the step time, relative to the median."""
        q1, q2, q3 = np.percentile(self.times, [25, 50, 75])
        return float((q3 - q1) / q2)

    def as_json(self, rates: MatmulRates, ratios: dict[str, float]) -> dict[str, Any]:
        """The row as strict JSON (a figure that was not measured is null, not NaN)."""
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
            "note": self.note,
        }
        if self.config != "sample":
            out["roofline_fraction"] = round(roofline_fraction(self, rates), 4)
            out["matmul_gflops"] = round(rates.rate(self.compute_dtype), 1)
            out["matmul_dtype"] = self.compute_dtype
            out["matmul_platform"] = rates.platform
        return {
            k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in out.items()
        }


# ---------------------------------------------------------------------------
# Timing helpers


@dataclasses.dataclass
class MatmulRates:
    """The best matmul rate of one JAX backend's first device, per dtype (GFLOP/s)."""

    platform: str  # jax.Device.platform: "cpu", "gpu", "tpu"
    device_kind: str
    gflops: dict[str, float]

    def rate(self, dtype: str) -> float:
        """The rate for `dtype`, else the fp32 one (a row whose dtype was not measured)."""
        return self.gflops.get(dtype, self.gflops["float32"])

    def update(self, other: MatmulRates) -> None:
        """Keep the best of both measurements (load on a shared machine only slows)."""
        for dtype, g in other.gflops.items():
            self.gflops[dtype] = max(g, self.gflops.get(dtype, 0.0))


def matmul_gflops(
    device: jax.Device, dtype: str = "float32", n: int | None = None, reps: int = 8
) -> float:
    """Best n^3 matmul rate of `device` right now, at JAX's default precision
    (the precision the model's own matmuls get); n = 2048 on a CPU, 8192 on an
    accelerator, where a smaller product is too short to time."""
    n = n or (2048 if device.platform == "cpu" else 8192)
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure_matmul_rates(
    backend: str | None = None,
    dtypes: tuple[str, ...] = ("float32",),
    n: int | None = None,
    reps: int = 8,
) -> MatmulRates:
    """The roofline's rates on `backend` (None: JAX's default backend, the one
    every row runs on), so that an accelerator's rows are set against the
    accelerator's matmul rate and not the host CPU's."""
    try:
        device = jax.devices(backend)[0]
    except RuntimeError as e:
        raise RuntimeError(
            f"no JAX backend {backend!r} to measure the matmul rate on "
            f"(available: {jax.default_backend()!r}): {e}"
        ) from e
    gflops = {d: matmul_gflops(device, d, n, reps) for d in dict.fromkeys(("float32", *dtypes))}
    return MatmulRates(device.platform, device.device_kind, gflops)


def roofline_fraction(row: Row, rates: MatmulRates) -> float:
    """The row's train FLOP rate over the matmul rate of its compute dtype."""
    flops = row.tokens_per_s * row.shape.train_flops_per_token
    return flops / (rates.rate(row.compute_dtype) * 1e9)


class Budget:
    """A cap on the whole run's wall time; `None` is no cap. `clock` is the
    time source (seconds), injectable so that the cut-off can be tested."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = seconds, clock
        self.start = clock()
        self.skipped: list[str] = []

    def left(self) -> float:
        if self.seconds is None:
            return float("inf")
        return self.seconds - (self.clock() - self.start)

    def fits(self, estimate_s: float = 0.0) -> bool:
        """True if something expected to take `estimate_s` can still finish."""
        return self.left() > estimate_s

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def note(self) -> str | None:
        if not self.skipped:
            return None
        return f"--budget_s {self.seconds:g} spent; skipped: " + "; ".join(self.skipped)


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


def torch_importable() -> bool:
    """Whether torch can be imported in this interpreter (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def peer_device(jax_backend: str, torch_cuda_available: bool) -> str:
    """Where the PyTorch peer runs: on the GPU when JAX runs on one and torch
    sees it, else on the CPU (JAX on a TPU has no torch peer of its own)."""
    return "cuda" if jax_backend in ("gpu", "cuda", "rocm") and torch_cuda_available else "cpu"


@dataclasses.dataclass(frozen=True)
class TorchPeer:
    """How the PyTorch rows run: "inprocess" (bench_torch.run_job here),
    "subprocess" (LSTM_JAX_TORCH_PYTHON, CPU) or "none"; and on which device."""

    where: str
    device: str = "cpu"

    def describe(self) -> str:
        if self.where == "none":
            return (
                "PyTorch column skipped: torch is not importable here and "
                "LSTM_JAX_TORCH_PYTHON is not set."
            )
        how = "in this interpreter" if self.where == "inprocess" else "in LSTM_JAX_TORCH_PYTHON"
        return f"PyTorch peer: {how}, on {self.device}"


def choose_torch_peer(mode: str, jax_backend: str) -> TorchPeer:
    """The peer for `--torch_peer` = "auto" (here if torch imports, else the
    subprocess if LSTM_JAX_TORCH_PYTHON is set), "inprocess" or "subprocess"."""
    if mode not in TORCH_PEER_MODES:
        raise ValueError(f"torch peer mode {mode!r}; valid: {TORCH_PEER_MODES}")
    if mode != "subprocess" and torch_importable():
        import torch  # noqa: PLC0415  (a peer, imported only when measured)

        return TorchPeer("inprocess", peer_device(jax_backend, torch.cuda.is_available()))
    if mode == "inprocess":
        raise SystemExit(
            "--torch_peer inprocess: torch is not importable in this interpreter; "
            "install torch here or use --torch_peer subprocess with LSTM_JAX_TORCH_PYTHON"
        )
    if torch_python():
        return TorchPeer("subprocess", "cpu")
    if mode == "subprocess":
        raise SystemExit(
            "--torch_peer subprocess: set LSTM_JAX_TORCH_PYTHON to a python with torch "
            "(make torch-env)"
        )
    return TorchPeer("none")


@dataclasses.dataclass(frozen=True)
class TorchRun:
    """One PyTorch row: its name, the job fields it adds, its note, the allocator."""

    key: str
    job: dict[str, Any]
    note: str
    malloc: str = "default"


def torch_runs(peer: TorchPeer, args: argparse.Namespace, kind: str) -> list[TorchRun]:
    """The torch rows of a "train" or "sample" config for this peer."""
    if peer.where == "none" or "torch" not in args.peers:
        return []
    if peer.device == "cuda":
        runs = [TorchRun("torch", {"device": "cuda"}, "cuDNN fp32")]
        if kind == "train":
            runs.append(
                TorchRun(
                    "torch_bf16", {"device": "cuda", "autocast": "bf16"}, "cuDNN, bf16 autocast"
                )
            )
        return runs
    threads = args.threads
    if peer.where == "inprocess":  # this process's allocator, whatever --malloc set
        return [
            TorchRun(torch_impl(th, threads), {"device": "cpu", "threads": th}, f"{th} threads")
            for th in threads
        ]
    mallocs = args.torch_malloc if kind == "train" else ["default"]
    return [
        TorchRun(
            torch_impl(th, threads, m),
            {"device": "cpu", "threads": th},
            f"{th} threads" + (", freed memory retained" if m == "retain" else ""),
            m,
        )
        for m in mallocs
        for th in threads
    ]


def run_torch(peer: TorchPeer, job: dict[str, Any], malloc: str = "default") -> dict[str, Any]:
    """One bench_torch job: here (`run_job`), or in torch's interpreter with
    glibc's default allocator settings or ("retain") those of
    `host.retain_freed_memory`; returns its JSON result."""
    if peer.where == "inprocess":
        from lstm_jax import bench_torch  # noqa: PLC0415  (imports torch)

        return bench_torch.run_job(job)
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


def _run_rounds(name: str, budget: Budget, rounds: int, one_round: Callable[[], None]) -> None:
    """`rounds` calls of `one_round`; the first always runs (so that what was
    compiled reports), a later one only if the previous one's duration fits
    in what is left of the budget."""
    last = 0.0
    for i in range(rounds):
        if i and not budget.fits(last):
            budget.skip(f"{name}: rounds {i + 1}-{rounds} of {rounds}")
            return
        t0 = budget.clock()
        one_round()
        last = budget.clock() - t0


def bench_train(
    name: str,
    shape: Shape,
    impls: list[str],
    peer: TorchPeer,
    args: argparse.Namespace,
    budget: Budget,
) -> Iterator[list[Row]]:
    """One train config: compile every row, then cycle rounds through them;
    yields the config's rows once, when its last round is done."""
    opts = args.compiler_options
    makers: dict[str, Callable[[], JaxTrainer]] = {
        impl: (lambda impl=impl: ours_trainer(shape, impl, opts)) for impl in impls
    }
    for flax_peer, optimized in (("flax_lstm", False), ("flax_optimized", True)):
        if flax_peer in args.peers:
            makers[flax_peer] = lambda o=optimized: flax_trainer(shape, o, compiler_options=opts)
    rows: dict[str, Row] = {}
    trainers: dict[str, JaxTrainer] = {}
    for key, make in makers.items():
        if not budget.fits():
            budget.skip(f"{name}: {key}")
            continue
        trainers[key] = trainer = make()
        trainer.run(args.warmup)
        rows[key] = Row(name, key, shape, compile_s=trainer.compile_s, peak_mib=trainer.peak_mib)
    runs = []
    for run in torch_runs(peer, args, "train"):
        if not budget.fits():
            budget.skip(f"{name}: {run.key}")
            continue
        runs.append(run)
        rows[run.key] = Row(name, run.key, shape, peak_mib=0.0, note=run.note)

    def one_round() -> None:  # cycle, so that load spikes hit every row
        for key, trainer in trainers.items():
            trainer.run(1)  # re-warm caches after the previous row
            times, cpu = trainer.run(args.steps)
            rows[key].times += times
            rows[key].cpu += cpu
        for run in runs:
            job = {"kind": "train", **dataclasses.asdict(shape), **run.job}
            res = run_torch(peer, {**job, "warmup": args.warmup, "steps": args.steps}, run.malloc)
            r = rows[run.key]
            r.times += res["times"]
            r.cpu += res["cpu"]
            r.compile_s = res["first_step_s"]
            r.peak_mib = max(r.peak_mib, res["peak_mib"])
            if peer.device == "cuda":
                r.note = f"{run.note}; {res['precision']}"

    if rows:
        _run_rounds(name, budget, args.rounds, one_round)
    trainers.clear()  # free the device memory before the rows are reported
    yield [r for r in rows.values() if r.times]


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


def bench_sample(peer: TorchPeer, args: argparse.Namespace, budget: Budget) -> Iterator[list[Row]]:
    """Generation speed for each stream count: ours against the torch loop on
    the torch rows' device; yields each stream count's rows when measured."""
    for streams in SAMPLE_STREAMS:
        if not budget.fits():
            budget.skip(f"sample: {streams} streams")
            continue
        shape = dataclasses.replace(SAMPLE_SHAPE, batch=streams, seq=args.sample_tokens)
        run = _our_sampler(shape)
        t0 = time.perf_counter()
        run(jax.random.key(0)).block_until_ready()
        ours = Row("sample", "generate", shape, compile_s=time.perf_counter() - t0)
        ours.note = "lstm_jax.sample.generate (one compiled loop)"
        runs = torch_runs(peer, args, "sample")
        torch_rows = {r.key: Row("sample", r.key, shape, note=r.note) for r in runs}
        calls = max(3, args.steps // 3)

        def one_round(
            ours=ours, run=run, shape=shape, runs=runs, torch_rows=torch_rows, calls=calls
        ):
            for i in range(calls):
                c0, t0 = cpu_seconds(), time.perf_counter()
                run(jax.random.key(1 + len(ours.times) + i)).block_until_ready()
                ours.times.append(time.perf_counter() - t0)
                ours.cpu.append(cpu_seconds() - c0)
            for r in runs:
                job = {"kind": "sample", **dataclasses.asdict(shape), **r.job, "steps": calls}
                res = run_torch(peer, job, r.malloc)
                torch_rows[r.key].times += res["times"]
                torch_rows[r.key].cpu += res["cpu"]

        _run_rounds(f"sample: {streams} streams", budget, args.rounds, one_round)
        yield [ours, *torch_rows.values()]


def bench_cells(args: argparse.Namespace, budget: Budget) -> Iterator[list[Row]]:
    """Train tokens/s of "scan" and "fused" for each cell type (no peers)."""
    for shape_name in CELLS_SHAPES:
        shape = TRAIN_CONFIGS[shape_name]
        trainers, rows = {}, {}
        for cell in CELL_TYPES:
            for impl in ("scan", "fused"):
                if not budget.fits():
                    budget.skip(f"cells:{shape_name}: {cell} {impl}")
                    continue
                t = ours_trainer(shape, impl, args.compiler_options, cell=cell)
                t.run(args.warmup)
                trainers[(cell, impl)] = t
                rows[(cell, impl)] = Row(
                    f"cells:{shape_name}", impl, shape, compile_s=t.compile_s, cell=cell
                )
                rows[(cell, impl)].peak_mib = t.peak_mib

        def one_round(trainers=trainers, rows=rows):
            for key, t in trainers.items():
                times, cpu = t.run(max(2, args.steps // 2))
                rows[key].times += times
                rows[key].cpu += cpu

        if trainers:
            _run_rounds(f"cells:{shape_name}", budget, args.rounds, one_round)
        trainers.clear()
        yield [r for r in rows.values() if r.times]


def bench_long_seq(args: argparse.Namespace, budget: Budget) -> Iterator[list[Row]]:
    for t in LONG_SEQ_T:
        shape = dataclasses.replace(LONG_SEQ_SHAPE, seq=t)
        for impl in ("scan", "fused", "fused_remat"):
            if not budget.fits():
                budget.skip(f"long_seq: T={t} {impl}")
                continue
            trainer = ours_trainer(shape, impl, args.compiler_options)
            row = Row("long_seq", impl, shape, compile_s=trainer.compile_s)
            row.peak_mib = trainer.peak_mib
            trainer.run(1)
            row.times, row.cpu = trainer.run(args.long_steps)
            del trainer
            yield [row]


# ---------------------------------------------------------------------------
# Reporting


def is_peer(impl: str) -> bool:
    return impl in PEERS or impl.startswith("torch_")


def ratios(row: Row, rows: list[Row]) -> dict[str, float]:
    """This row's tokens/s over each peer's, measured in the same run;
    "vs_torch_best" is over the fastest torch row (any thread count, either
    allocator setting) of the row's compute dtype where there is one (a bf16
    row against torch's bf16 autocast, an fp32 row against fp32), else of any;
    "vs_torch_as_shipped" likewise over those run with glibc's default
    allocator settings."""
    out = {}
    torch_rows = []
    for other in rows:
        same = other.config == row.config and other.shape == row.shape
        if same and is_peer(other.impl) and other.impl != row.impl:
            out[f"vs_{other.impl}"] = row.tokens_per_s / other.tokens_per_s
            if other.impl.startswith("torch"):
                torch_rows.append(other)
    same_dtype = [o for o in torch_rows if o.compute_dtype == row.compute_dtype]
    torch_rates = {o.impl: o.tokens_per_s for o in same_dtype or torch_rows}
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


def rates_text(rates: MatmulRates) -> str:
    """ "fp32 51,000 / bf16 740,000 GFLOP/s on gpu (NVIDIA H100 80GB HBM3)"."""
    short = {"float32": "fp32", "bfloat16": "bf16"}
    each = " / ".join(f"{short.get(d, d)} {g:,.0f}" for d, g in rates.gflops.items())
    return f"{each} GFLOP/s on {rates.platform} ({rates.device_kind})"


def markdown(rows: list[Row], rates: MatmulRates, notes: list[str]) -> str:
    out = []
    train = [r for r in rows if r.config in TRAIN_CONFIGS]
    if train:
        out.append(
            f"Train step (fwd + bwd + clip + Adam; fp32 unless the row says bf16), tokens/s, "
            f"median of the timed steps; roofline = the best matmul of the row's dtype in "
            f"this run at JAX's default precision, {rates_text(rates)}.\n"
        )
        out.append(
            "| config (V, E, H, L, B, T) | implementation | tokens/s | IQR | "
            "vs PyTorch as shipped | vs PyTorch (best row) | vs flax LSTMCell | "
            "vs flax Optimized | roofline | tokens/CPU-s | compile s | peak MiB |"
        )
        out.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in train:
            s, q = r.shape, ratios(r, rows)
            frac = roofline_fraction(r, rates)
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
            f"{sample[0].shape.seq} tokens per stream:\n"
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
            base = next((o for o in longs if o.shape == r.shape and o.impl == "scan"), None)
            rel = f"{r.peak_mib / base.peak_mib:.2f}" if base else ""
            out.append(
                f"| {r.shape.seq:,} | {label(r)} | {r.peak_mib:,.0f} | "
                f"{rel} | {r.tokens_per_s:,.0f} | "
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
                (o for o in cell_rows if (o.config, o.cell, o.impl) == (r.config, r.cell, "scan")),
                None,
            )
            if ref is None:  # its scan row was cut by --budget_s
                continue
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


def machine_notes(args: argparse.Namespace, peer: TorchPeer) -> list[str]:
    device = jax.devices()[0]
    notes = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__} on {jax.default_backend()} ({device.device_kind}), "
        f"default matmul precision {jax.config.jax_default_matmul_precision or 'default'}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; allocator: {args.malloc}"
        + (
            f" (PyTorch train rows: {', '.join(args.torch_malloc)})"
            if peer.where == "subprocess"
            else ""
        ),
        f"{args.warmup} warm-up steps, {args.rounds} rounds x {args.steps} timed steps; "
        f"XLA compiler options: {args.compiler_options or 'defaults'}",
        f"load average at the end: {' '.join(_loadavg())} (other processes share the cores)",
    ]
    if "torch" in args.peers:
        notes.append(peer.describe())
    return notes


STREAM_HEADER = (
    "| config (V, E, H, L, B, T) | implementation | tokens/s | IQR | vs PyTorch (best row) "
    "| roofline | compile s | peak MiB |\n|---|---|--:|--:|--:|--:|--:|--:|"
)


def stream_line(row: Row, ratios: dict[str, float], rates: MatmulRates) -> str:
    """One table row, written as soon as the row is measured (tokens/s are
    characters/s for sampling rows, which have no roofline)."""
    s = row.shape
    roof = "" if row.config == "sample" else f"{100 * roofline_fraction(row, rates):.0f}%"
    name = "ours: sample.generate" if row.impl == "generate" else label(row)
    cell = "" if row.cell == "lstm" else f" [{row.cell}]"
    return (
        f"| {row.config}{cell} ({s.vocab}, {s.embed}, {s.hidden}, {s.layers}, {s.batch}, "
        f"{s.seq}) | {name} | {row.tokens_per_s:,.0f} | {100 * row.spread:.0f}% | "
        f"{_fmt_ratio(ratios.get('vs_torch_best'))} | {roof} | {row.compile_s:.1f} | "
        f"{row.peak_mib:,.0f} |"
    )


class RowSink:
    """Writes each row as soon as it is measured, both flushed: a JSON line to
    `json_path` ("-": stdout; None: none) and a table row to stdout, or to
    stderr when stdout carries the JSON lines."""

    def __init__(self, json_path: str | None):
        self.table = sys.stderr if json_path == "-" else sys.stdout
        self._json = sys.stdout if json_path == "-" else None
        self._own = None
        if json_path and json_path != "-":
            self._json = self._own = open(json_path, "w")  # noqa: SIM115  (closed in close())
        self._header = False

    def emit(self, row: Row, ratios: dict[str, float], rates: MatmulRates) -> None:
        if self._json is not None:
            self._json.write(json.dumps(row.as_json(rates, ratios)) + "\n")
            self._json.flush()
        if not self._header:
            print(STREAM_HEADER, file=self.table)
            self._header = True
        print(stream_line(row, ratios, rates), file=self.table, flush=True)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()


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
    p.add_argument(
        "--configs",
        default=None,
        help=f"from {ALL_CONFIGS}; default: {GPU_CONFIGS} on a GPU, {CPU_CONFIGS} elsewhere",
    )
    p.add_argument(
        "--impls",
        default=None,
        help=f"our layer implementations; default: {GPU_IMPLS} on a GPU, {OUR_IMPLS} "
        "elsewhere (adding 'onednn' where oneDNN is installed)",
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
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write one JSON line per row as it is measured: to PATH, or with no PATH to "
        "stdout (the table rows then go to stderr)",
    )
    p.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help="cap on the whole run's seconds: once spent, no further config, row or round "
        "starts, and the notes name what was skipped",
    )
    p.add_argument(
        "--torch_peer",
        choices=TORCH_PEER_MODES,
        default="auto",
        help="where PyTorch runs: 'auto' = in this interpreter if torch imports here (on "
        "JAX's GPU when torch sees it), else LSTM_JAX_TORCH_PYTHON on the CPU",
    )
    p.add_argument(
        "--sample_tokens",
        type=int,
        default=SAMPLE_SHAPE.seq,
        help="tokens generated per stream in the sampling rows",
    )
    p.add_argument(
        "--matmul_n",
        type=int,
        default=None,
        help="size of the roofline's n^3 matmul (default: 2048 on a CPU, 8192 on an accelerator)",
    )
    args = p.parse_args(argv)
    if args.matmul_n is not None and args.matmul_n < 1:
        p.error(f"--matmul_n must be >= 1, got {args.matmul_n}")
    if args.budget_s is not None and args.budget_s < 0:
        p.error(f"--budget_s must be >= 0, got {args.budget_s}")
    if args.sample_tokens < 1:
        p.error(f"--sample_tokens must be >= 1, got {args.sample_tokens}")
    for field, valid in (("configs", ALL_CONFIGS), ("peers", PEERS)):
        value = getattr(args, field)
        if value is None:
            continue  # the backend's default, set by resolve_defaults
        chosen = [CONFIG_ALIASES.get(c, c) for c in value.split(",") if c]
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
    if args.cpu_devices < 0:
        p.error(f"--cpu_devices must be >= 0, got {args.cpu_devices}")
    args.cpu_dots = [d for d in args.cpu_dots.split(",") if d and d != "default"]
    bad = sorted(set(args.cpu_dots) - set(host.CPU_DOT_LIBRARIES))
    if bad:
        p.error(f"unknown cpu_dots {bad}; valid: {sorted(host.CPU_DOT_LIBRARIES)}")
    if args.impls is not None:
        args.impls = [i for i in args.impls.split(",") if i]
        bad = sorted(set(args.impls) - set(recurrent.LAYER_IMPLS))
        if bad:
            p.error(f"unknown impls {bad}; valid: {sorted(recurrent.LAYER_IMPLS)}")
        if "onednn" in args.impls and not onednn.installed():
            p.error(f"--impls onednn: oneDNN is not installed; {onednn.INSTALL_HINT}")
        args.impls = expand_impls(args.impls, args.cpu_dots, args.cpu_devices)
    return args


def expand_impls(impls: list[str], cpu_dots: list[str], cpu_devices: int) -> list[str]:
    """Each implementation, then each again with every --cpu_dots library, then
    all of those again split over --cpu_devices devices."""
    impls = impls + [f"{impl}+{d}" for d in cpu_dots for impl in impls]
    if cpu_devices > 1:
        impls += [f"{impl}@{cpu_devices}cpu" for impl in impls]
    return impls


def resolve_defaults(args: argparse.Namespace, backend: str) -> argparse.Namespace:
    """The configs and implementations left unset, for JAX's `backend`."""
    gpu = backend in ("gpu", "cuda", "rocm")
    if args.configs is None:
        args.configs = list(GPU_CONFIGS if gpu else CPU_CONFIGS)
    if args.impls is None:
        impls = (
            list(GPU_IMPLS) if gpu else [*OUR_IMPLS, *(["onednn"] if onednn.installed() else [])]
        )
        args.impls = expand_impls(impls, args.cpu_dots, args.cpu_devices)
    return args


def _config_groups(
    name: str, args: argparse.Namespace, peer: TorchPeer, budget: Budget
) -> Iterator[list[Row]]:
    if name in TRAIN_CONFIGS:
        return bench_train(name, TRAIN_CONFIGS[name], args.impls, peer, args, budget)
    if name == "sample":
        return bench_sample(peer, args, budget)
    if name == "long_seq":
        return bench_long_seq(args, budget)
    return bench_cells(args, budget)


def run_bench(
    args: argparse.Namespace,
    peer: TorchPeer,
    budget: Budget,
    emit: Callable[[Row, dict[str, float], MatmulRates], None],
) -> tuple[list[Row], MatmulRates]:
    """Every config in turn, `emit`-ting each group of rows as soon as it is
    measured (with its ratios against the peers measured beside it)."""
    bf16 = any(split_impl(i)[0] in BF16_IMPLS for i in args.impls) or peer.device == "cuda"
    dtypes = ("float32", "bfloat16") if bf16 else ("float32",)
    rates = measure_matmul_rates(None, dtypes, args.matmul_n)
    rows: list[Row] = []
    for name in args.configs:
        if not budget.fits():
            budget.skip(name)
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        for group in _config_groups(name, args, peer, budget):
            rows += group
            for r in group:
                emit(r, ratios(r, rows), rates)
        rates.update(
            measure_matmul_rates(None, dtypes, args.matmul_n)
        )  # the best of the run (load varies)
    return rows, rates


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    if args.malloc == "retain":
        host.retain_freed_memory()  # before JAX starts its threads
    if args.cpu_devices > 1:
        parallel.use_cpu_devices(args.cpu_devices)  # before the first JAX computation
    if "torch" in args.peers and args.torch_peer != "subprocess" and torch_importable():
        # JAX takes 75% of a GPU's memory when its backend starts; leave half
        # of it to the in-process PyTorch peer (read at that start, so here).
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    backend = jax.default_backend()
    resolve_defaults(args, backend)
    peer = choose_torch_peer(args.torch_peer, backend) if "torch" in args.peers else None
    peer = peer or TorchPeer("none")
    sink = RowSink(args.json)
    try:
        rows, rates = run_bench(args, peer, budget, sink.emit)
    finally:
        sink.close()
    notes = machine_notes(args, peer)
    if budget.note():
        notes.append(budget.note())
    print("\n" + markdown(rows, rates, notes), file=sink.table, flush=True)


if __name__ == "__main__":
    main()
