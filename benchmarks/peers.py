"""The peers set beside our layers: Flax's `nn.RNN` LSTMs, compiled and timed
like ours, and PyTorch's `nn.LSTM` (benchmarks/bench_torch.py) in this
interpreter or in torch's own (LSTM_JAX_TORCH_PYTHON); which PyTorch rows a
config gets, and what they are named."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
from typing import Any

import jax

from benchmarks.configs import TORCH_PEER_MODES, Options, Shape
from benchmarks.timing import JaxTrainer, random_tokens, xent
from lstm_jax import host

TORCH_SCRIPT = pathlib.Path(__file__).with_name("bench_torch.py")


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
    tokens = random_tokens(shape)
    params = net.init(jax.random.key(0), tokens)

    def loss_fn(params, tokens, targets):
        return xent(net.apply(params, tokens), targets)

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


def torch_runs(peer: TorchPeer, args: Options, kind: str) -> list[TorchRun]:
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


def torch_impl(threads: int, all_threads: list[int], malloc: str = "default") -> str:
    """Row name of the torch peer: "torch" for the first --threads value (2 by
    default, as specified), "torch_<n>t" for any other thread count; with
    "_retain" appended when run with `host.malloc_env()`."""
    name = "torch" if threads == all_threads[0] else f"torch_{threads}t"
    return name if malloc == "default" else f"{name}_retain"


def run_torch(peer: TorchPeer, job: dict[str, Any], malloc: str = "default") -> dict[str, Any]:
    """One bench_torch job: here (`run_job`), or in torch's interpreter with
    glibc's default allocator settings or ("retain") those of
    `host.retain_freed_memory`; returns its JSON result."""
    if peer.where == "inprocess":
        from benchmarks import bench_torch  # noqa: PLC0415  (imports torch)

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
