"""Where PyTorch's CPU nn.LSTM gets its speed: oneDNN's fused RNN primitive
(torch.backends.mkldnn, on by default) against PyTorch's own per-step loop.

Runs in the torch interpreter (LSTM_JAX_TORCH_PYTHON), one setting per process:

    .venv-torch/bin/python scripts/torch_lstm_backends.py --mkldnn 1
    .venv-torch/bin/python scripts/torch_lstm_backends.py --mkldnn 0

Prints the per-step matmuls alone through torch.mm (MKL), then the benchmark's
whole train step (`benchmarks/bench_torch.py`'s model: embedding, nn.LSTM,
readout, cross-entropy, clip, Adam; vocab 65) against the recurrent stack
alone (forward + backward of sum(outputs)): the same figures that
scripts/profile_fused_loop.py prints for ours. Medians over --rounds rounds
that call each measured function once in turn. Shape defaults to the
benchmark's "course_project" config (T=100, B=64, E=64, H=512, 2 layers). Give it the
allocator settings of `lstm_jax.host.malloc_env()` through the environment to
compare with ours:

    env MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 \
        MALLOC_TRIM_THRESHOLD_=2147483647 .venv-torch/bin/python scripts/...
"""

import argparse
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_torch  # noqa: E402  (torch-only module, imported without the package)


def interleaved_medians(fns: dict[str, Callable], rounds: int) -> dict[str, float]:
    """Median seconds of each fn, timed one after the other in every round."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mkldnn", type=int, choices=(0, 1), default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", default="100,64,64,512,2", help="T,B,E,H,layers")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = bool(args.mkldnn)
    t, b, e, h, layers = (int(v) for v in args.shape.split(","))
    torch.manual_seed(0)

    # The loop's matmuls: forward h @ W_hh^T [B, H] x [H, 4H], backward dz @ W_hh.
    w = torch.randn(4 * h, h)
    hb, dz = torch.randn(b, h), torch.randn(b, 4 * h)
    m = interleaved_medians(
        {
            "mm_f": lambda: [torch.mm(hb, w.t()) for _ in range(t)],
            "mm_b": lambda: [torch.mm(dz, w) for _ in range(t)],
        },
        args.rounds,
    )
    gflop = 2 * b * h * 4 * h * t / 1e9
    print(
        f"torch.mm per step (us): forward {m['mm_f'] / t * 1e6:.0f} ({gflop / m['mm_f']:.0f} "
        f"GFLOP/s), backward {m['mm_b'] / t * 1e6:.0f} ({gflop / m['mm_b']:.0f} GFLOP/s)"
    )

    shape = {"vocab": 65, "embed": e, "hidden": h, "layers": layers, "batch": b, "seq": t}
    train_step = bench_torch.make_train_step(shape)

    lstm = torch.nn.LSTM(e, h, layers, batch_first=True)
    xs = torch.randn(b, t, e, requires_grad=True)

    def stack():
        y, _ = lstm(xs)
        y.sum().backward()

    m = interleaved_medians({"step": train_step, "stack": stack}, args.rounds)
    print(
        f"torch {torch.__version__}, {args.threads} threads, mkldnn={bool(args.mkldnn)}, "
        f"T,B,E,H,L={args.shape}: train step {m['step'] * 1e3:.0f} ms, "
        f"stack fwd+bwd {m['stack'] * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
