"""Where the "fused" LSTM's time goes on CPU: per loop step, and per train step.

    .venv/bin/python scripts/profile_fused_loop.py                 # the course-project size
    .venv/bin/python scripts/profile_fused_loop.py --shape 50,50,64,128,2
    taskset -c 0 .venv/bin/python scripts/profile_fused_loop.py    # one core
    .venv/bin/python scripts/profile_fused_loop.py --alternatives  # + layouts, overlap

Prints, per time step of one layer, the bare recurrent matmul in a loop
(forward h @ W_h, backward dz @ W_h^T) against the forward and backward loops
of `lstm_jax.layers.fused` (matmul + gate math + buffer reads and stores): the
difference is the loop's non-matmul work. Then the benchmark's whole train
step (embedding, stack, readout, cross-entropy, clip, Adam; vocab 65) against
the recurrent stack alone (forward + backward of sum(outputs)), the same pair
that scripts/torch_lstm_backends.py times for PyTorch. `--alternatives` adds
two measured-and-dropped ideas (docs/performance.md): the loop's matmuls in a
state-major layout (W^T [4H, H] @ h^T [H, B]), and whether XLA:CPU overlaps a
layer's forward loop with an independent large GEMM in the same program.

Every figure is the median over --rounds rounds that call each measured
function once in turn, so a change in the machine's load hits all of them
alike. Freed memory is retained, as in `python -m lstm_jax.train`.
"""

import argparse
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import host, recurrent
from lstm_jax.cells import make_cell
from lstm_jax.layers import fused

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repository root
from benchmarks.configs import Shape  # noqa: E402  (beside the package, not installed)
from benchmarks.timing import ours_trainer  # noqa: E402


def interleaved_medians(fns: dict[str, Callable], rounds: int) -> dict[str, float]:
    """Median seconds of each fn, timed one after the other in every round."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile and warm up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_loop(t: int, state_major: bool = False):
    """t dependent [B, K] @ [K, N] products, as a recurrence issues them
    (state_major: [N, K] @ [K, B] products, the same FLOPs transposed)."""

    def run(x, w):
        def body(_, carry):
            out = w @ carry if state_major else carry @ w
            # fold a sliver back in, so each product waits for the last
            k0, k1 = (min(o, c) for o, c in zip(out.shape, carry.shape, strict=True))
            return carry.at[:k0, :k1].add(1e-9 * out[:k0, :k1])

        return jax.lax.fori_loop(0, t, body, x)

    return jax.jit(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="100,64,64,512,2", help="T,B,E,H,layers")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--alternatives", action="store_true", help="also time dropped ideas")
    args = p.parse_args()
    host.retain_freed_memory()
    t, b, e, h, layers = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)

    def normal(*shape, scale=0.05):
        return jnp.asarray(rng.standard_normal(shape, np.float32) * scale)

    # One layer's loops, with the forward's residuals fed to the backward.
    rec = {"w_h": normal(h, 4 * h), "b": jnp.zeros(4 * h)}
    x_proj = normal(t, b, 4 * h, scale=1.0)
    carry = (jnp.zeros((b, h)), jnp.zeros((b, h)))
    fwd = jax.jit(lambda rec, xp, c: fused._lstm_fwd(rec, xp, c, None, 1, None))
    final, hs, res = fwd(rec, x_proj, carry)
    d_hs = normal(t, b, h, scale=1.0)
    bwd = jax.jit(lambda rec, c, res, d, dhs: fused._lstm_bwd(rec, c, None, res, d, dhs, 1, None))
    dw_h = jax.jit(lambda hp, dz: fused._weight_grad(hp, dz, None))
    mm_loop, w_ht = matmul_loop(t), rec["w_h"].T
    m = interleaved_medians(
        {
            "mm_f": lambda: mm_loop(jnp.ones((b, h)), rec["w_h"]),
            "loop_f": lambda: fwd(rec, x_proj, carry),
            "mm_b": lambda: mm_loop(jnp.ones((b, 4 * h)), w_ht),
            "loop_b": lambda: bwd(rec, carry, res, final, d_hs),
            "dw_h": lambda: dw_h(hs, res[2]),
        },
        args.rounds,
    )
    us, gflop = 1e6 / t, 2 * b * h * 4 * h * t / 1e9
    loop_b = m["loop_b"] - m["dw_h"]
    print(f"one layer, B={b} H={h} T={t}, per step (us):")
    print(
        f"  forward : matmul {m['mm_f'] * us:5.0f} ({gflop / m['mm_f']:.0f} GFLOP/s), "
        f"loop {m['loop_f'] * us:5.0f}, non-matmul {(m['loop_f'] - m['mm_f']) * us:4.0f}"
    )
    print(
        f"  backward: matmul {m['mm_b'] * us:5.0f} ({gflop / m['mm_b']:.0f} GFLOP/s), "
        f"loop {loop_b * us:5.0f}, non-matmul {(loop_b - m['mm_b']) * us:4.0f}; "
        f"then dW_h {m['dw_h'] * 1e3:.1f} ms ({gflop / m['dw_h']:.0f} GFLOP/s)"
    )

    if args.alternatives:
        time_alternatives(rec, x_proj, carry, args.rounds)

    # The whole stack alone, and the benchmark's train step around it.
    cell = make_cell("lstm")
    params = recurrent.init_stack(jax.random.key(0), cell, e, h, layers)
    carries = recurrent.zero_stack_carry(cell, layers, b, h)
    xs = normal(t, b, e, scale=1.0)

    def stack_sum(params, xs):
        _, hs = recurrent.run_stack(cell, params, xs, carries, time_major=True, impl="fused")
        return jnp.sum(hs)

    grad = jax.jit(jax.grad(stack_sum, argnums=(0, 1)))
    trainer = ours_trainer(Shape(65, e, h, layers, b, t), "fused")
    m = interleaved_medians(
        {"step": lambda: trainer.run(1), "stack": lambda: grad(params, xs)}, args.rounds
    )
    print(
        f"T,B,E,H,L={args.shape}: train step {m['step'] * 1e3:.0f} ms, "
        f"stack fwd+bwd {m['stack'] * 1e3:.0f} ms"
    )


def time_alternatives(rec: dict, x_proj: jax.Array, carry: tuple, rounds: int) -> None:
    """Two ideas measured and dropped (docs/performance_log.md, run 5)."""
    t, b, g = x_proj.shape
    h = g // 4
    w, w_t = rec["w_h"], rec["w_h"].T
    mm_bm, mm_sm = matmul_loop(t), matmul_loop(t, state_major=True)
    m = interleaved_medians(
        {
            "fwd_bm": lambda: mm_bm(jnp.ones((b, h)), w),
            "fwd_sm": lambda: mm_sm(jnp.ones((h, b)), w_t),
            "bwd_bm": lambda: mm_bm(jnp.ones((b, g)), w_t),
            "bwd_sm": lambda: mm_sm(jnp.ones((g, b)), w),
        },
        rounds,
    )
    print("recurrent matmul per step (us): batch-major [B,K] @ [K,N], state-major [N,K] @ [K,B]")
    for d in ("fwd", "bwd"):
        bm, sm = m[f"{d}_bm"] * 1e6 / t, m[f"{d}_sm"] * 1e6 / t
        print(f"  {d}: batch-major {bm:5.0f}, state-major {sm:5.0f} ({bm / sm:.2f}x)")

    # A forward loop and an independent [T*B, H] @ [H, 4H] GEMM: in one
    # program, does XLA:CPU run them side by side (both < sum) or in turn?
    xs = jnp.ones((t * b, h))
    loop = jax.jit(lambda rec, xp, c: fused._lstm_fwd(rec, xp, c, None, 1, None)[1])
    gemm = jax.jit(lambda x, w: x @ w)
    both = jax.jit(lambda rec, xp, c, x, w: (loop(rec, xp, c), gemm(x, w)))
    m = interleaved_medians(
        {
            "loop": lambda: loop(rec, x_proj, carry),
            "gemm": lambda: gemm(xs, w),
            "both": lambda: both(rec, x_proj, carry, xs, w),
        },
        rounds,
    )
    ms = {k: v * 1e3 for k, v in m.items()}
    print(
        f"forward loop {ms['loop']:.1f} ms + independent GEMM {ms['gemm']:.1f} ms "
        f"= {ms['loop'] + ms['gemm']:.1f} ms; both in one program {ms['both']:.1f} ms"
    )


if __name__ == "__main__":
    main()
