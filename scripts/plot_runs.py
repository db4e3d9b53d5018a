"""Validation loss against wall time for several training runs, in one figure.

    python scripts/plot_runs.py --out curves.png "char-rnn recipe=runs/a" ":large=runs/b"

Reads each WORKDIR/metrics.jsonl that `python -m lstm_jax.train` wrote. The
wall time of an evaluation is the sum of the run's `time/...` phases logged with
it (start-up, compiles, steps, evaluations, checkpoints so far), so runs of
different speeds compare at equal time on the machine they ran on. Prints a
markdown table: each run's best validation loss and when it got there, and its
last one.
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lstm_jax.metrics import read_jsonl  # noqa: E402


def eval_curve(workdir: pathlib.Path) -> list[tuple[int, float, float]]:
    """(step, wall seconds, val loss) of every evaluation logged in `workdir`."""
    curve = []
    for row in read_jsonl(workdir / "metrics.jsonl"):
        if "val_loss" in row:
            seconds = sum(v for k, v in row.items() if k.startswith("time/"))
            curve.append((int(row["step"]), seconds, float(row["val_loss"])))
    if not curve:
        raise SystemExit(f"{workdir}/metrics.jsonl has no evaluation")
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=WORKDIR")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the figure (.png)")
    parser.add_argument("--target", type=float, help="draw a horizontal line at this loss")
    args = parser.parse_args()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    print("| run | best val (nats/token) | at step | at minute | last val | last step | minutes |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for spec in args.runs:
        label, sep, path = spec.rpartition("=")  # labels may hold "="
        if not sep:
            raise SystemExit(f"expected LABEL=WORKDIR, got {spec!r}")
        curve = eval_curve(pathlib.Path(path))
        steps, seconds, losses = zip(*curve, strict=True)
        ax.plot([s / 60 for s in seconds], losses, marker="o", label=label)
        best = min(curve, key=lambda c: c[2])
        last = curve[-1]
        print(
            f"| {label} | {best[2]:.4f} | {best[0]} | {best[1] / 60:.1f} | "
            f"{last[2]:.4f} | {last[0]} | {last[1] / 60:.1f} |"
        )
    if args.target is not None:
        ax.axhline(args.target, color="grey", linestyle="--", label=f"goal {args.target}")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
