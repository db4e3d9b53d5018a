"""What the throughput benchmark runs: model shapes, the named configs, the
implementations and peers set side by side on each backend, and the settings
of one run (`Options`, the parsed flags of `python -m benchmarks.throughput`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lstm_jax.layers import onednn


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
MALLOC_MODES = ("default", "retain")  # glibc's defaults, or host.retain_freed_memory()


@dataclasses.dataclass
class Options:
    """The settings of one run, as the flags of `python -m benchmarks.throughput`
    give them (their help says what each one means). `configs` and `impls`
    None: the backend's defaults, filled in by `resolve_defaults`."""

    configs: list[str] | None = None
    impls: list[str] | None = None  # expanded: "fused", "fused+onednn", "fused@2cpu", ...
    peers: list[str] = dataclasses.field(default_factory=lambda: list(PEERS))
    steps: int = 10
    rounds: int = 3
    warmup: int = 3
    long_steps: int = 3
    threads: list[int] = dataclasses.field(default_factory=lambda: [2])
    compiler_options: dict[str, Any] | None = None  # from --xla_option
    cpu_devices: int = 0
    malloc: str = "retain"
    torch_malloc: list[str] = dataclasses.field(default_factory=lambda: list(MALLOC_MODES))
    cpu_dots: list[str] = dataclasses.field(default_factory=list)
    json: str | None = None  # a path, "-" for stdout, or None
    budget_s: float | None = None
    torch_peer: str = "auto"
    sample_tokens: int = SAMPLE_SHAPE.seq
    matmul_n: int | None = None


def split_impl(impl: str) -> tuple[str, int, str]:
    """ "fused+onednn@2cpu" -> ("fused", 2, "onednn"): a layer implementation run
    with the batch split over 2 CPU devices (`--cpu_devices`) and XLA:CPU's dots
    from host.CPU_DOT_LIBRARIES (`--cpu_dots`); "fused" -> ("fused", 1, "default")."""
    name, _, devices = impl.partition("@")
    name, _, dots = name.partition("+")
    return name, int(devices.removesuffix("cpu")) if devices else 1, dots or "default"


def expand_impls(impls: list[str], cpu_dots: list[str], cpu_devices: int) -> list[str]:
    """Each implementation, then each again with every --cpu_dots library, then
    all of those again split over --cpu_devices devices."""
    impls = impls + [f"{impl}+{d}" for d in cpu_dots for impl in impls]
    if cpu_devices > 1:
        impls += [f"{impl}@{cpu_devices}cpu" for impl in impls]
    return impls


def resolve_defaults(args: Options, backend: str) -> Options:
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
