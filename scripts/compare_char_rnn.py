"""Side by side: configs/shakespeare_char.py (ours) vs char-rnn's defaults in
PyTorch nn.LSTM, on the same token ids, over several seeds, on one machine.

    LSTM_JAX_TORCH_PYTHON=.venv-torch/bin/python .venv/bin/python \
        scripts/compare_char_rnn.py --path ../shared/data/tinyshakespeare.txt \
        --steps 4000 --seeds 0,1,2 --out runs/char_rnn

Both sides train on the same B=50 streams and are scored on the same
validation batches (ours, written to an .npz the torch script reads).
`--set optim.eps_in_sqrt=True` (repeatable) changes our config, e.g. to show
an earlier recipe. `--no_torch` runs ours only; `--torch_only` runs torch only;
`--torch_init ours` starts torch from our initial weights of the same seed.
Writes OUT/results.jsonl (one line per run, with its curves), OUT/curves.png
(train loss and validation loss, the mean over seeds with the min-max band)
and prints a markdown table.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess

import numpy as np

from lstm_jax import config as config_lib
from lstm_jax import train
from lstm_jax.data import batching
from lstm_jax.metrics import read_jsonl
from lstm_jax.research import ablation

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(overrides: list[str]):
    config = config_lib.load(str(ROOT / "configs" / "shakespeare_char.py"))
    if overrides:  # the ablation's key=value parsing (Python literals)
        _, changes = ablation.parse_variant("set: " + ", ".join(overrides))
        ablation.apply_overrides(config, changes)
    return config


def run_ours(config, seed: int, workdir: pathlib.Path) -> dict:
    config.seed = seed
    summary = train.train_and_evaluate(config, str(workdir))
    rows = read_jsonl(workdir / "metrics.jsonl")
    train_rows = [r for r in rows if "train_loss" in r]
    return {
        "impl": "lstm_jax",
        "seed": seed,
        "val_loss": summary["val_loss"],
        # the first window includes the compile (kept when it is the only one)
        "tokens_per_s": statistics.median(
            r["tokens_per_s"] for r in (train_rows[1:] or train_rows) if "tokens_per_s" in r
        ),
        "train_curve": [[r["step"], r["train_loss"]] for r in train_rows],
        "val_curve": [[r["step"], r["val_loss"]] for r in rows if "val_loss" in r],
    }


def write_ids(config, path: pathlib.Path) -> None:
    """The training ids and our validation batches, for the torch side."""
    data = train.load_data(config)
    t = config.train
    val = list(batching.eval_batches(data.splits["valid"], t.batch_size, t.seq_len))
    np.savez(
        path,
        train=data.splits["train"],
        vocab_size=data.tokenizer.vocab_size,
        val_inputs=np.stack([b.inputs for b in val]),
        val_targets=np.stack([b.targets for b in val]),
        val_mask=np.stack([b.mask for b in val]),
    )


def write_our_init(config, seed: int, path: pathlib.Path) -> None:
    """Our initial weights for `seed` (train.init_state's), in torch's names."""
    import jax

    from lstm_jax import interop

    data = train.load_data(config)
    model = train.build_model(config, data.tokenizer.vocab_size)
    params = jax.device_get(model.init(jax.random.fold_in(jax.random.key(seed), 0)))
    weights = {}
    for k, layer in enumerate(params["layers"]):
        for name, value in interop.to_torch_layer("lstm", layer).items():
            weights[f"lstm.{name}_l{k}"] = value
    weights["out.weight"] = params["readout"]["w"].T
    weights["out.bias"] = params["readout"]["b"]
    np.savez(path, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()})


def run_torch(torch_python: str, npz: pathlib.Path, config, seed: int, init=None) -> dict:
    t = config.train
    args = [str(a) for a in (npz, t.num_steps, seed, t.eval_every, t.log_every)]
    if init is not None:
        write_our_init(config, seed, init)
        args.append(str(init))
    out = subprocess.run(
        [torch_python, str(ROOT / "scripts" / "torch_char_rnn.py"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for impl in sorted({r["impl"] for r in results}):
        runs = [r for r in results if r["impl"] == impl]
        for ax, key in zip(axes, ("train_curve", "val_curve"), strict=True):
            steps = np.array([s for s, _ in runs[0][key]])
            values = np.array([[v for _, v in r[key]] for r in runs])
            if key == "train_curve":  # a 10-point moving average of the logged losses
                kernel = np.ones(min(10, len(steps))) / min(10, len(steps))
                values = np.stack([np.convolve(v, kernel, mode="valid") for v in values])
                steps = steps[len(steps) - values.shape[1] :]
            ax.plot(steps, values.mean(0), label=f"{impl} (mean of {len(runs)} seeds)")
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.25)
    axes[0].set(title="train loss (moving average)", xlabel="step", ylabel="nats/char")
    axes[1].set(title="validation loss", xlabel="step", ylabel="nats/char")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True, help="tinyshakespeare.txt")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", required=True, help="directory for results and figure")
    ap.add_argument("--set", action="append", default=[], help="our config: key=value")
    ap.add_argument("--no_torch", action="store_true")
    ap.add_argument("--torch_only", action="store_true")
    ap.add_argument("--torch_init", choices=("char_rnn", "ours"), default="char_rnn")
    args = ap.parse_args()
    torch_python = None if args.no_torch else os.environ.get("LSTM_JAX_TORCH_PYTHON")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    config = load_config(args.set)
    config.data.path = args.path
    config.train.num_steps = args.steps
    config.train.eval_every = min(1000, args.steps)  # char-rnn's eval_val_every
    config.train.checkpoint_every = args.steps
    config.train.log_every = 10
    config.train.sample_length = 0
    config.train.progress = False
    npz = out / "ids.npz"
    if torch_python:
        write_ids(config, npz)

    results = []
    with open(out / "results.jsonl", "a") as log:
        for seed in [int(s) for s in args.seeds.split(",")]:
            runs = [] if args.torch_only else [run_ours(config, seed, out / f"ours_seed{seed}")]
            if torch_python:
                init = out / f"init_seed{seed}.npz" if args.torch_init == "ours" else None
                runs.append(run_torch(torch_python, npz, config, seed, init))
            for r in runs:
                r["overrides"] = args.set
                log.write(json.dumps(r) + "\n")
                log.flush()
                print(f"{r['impl']} seed {seed}: val {r['val_loss']:.4f}", flush=True)
            results += runs
    plot(results, out / "curves.png")

    print(f"\n| impl | seed | val loss after {args.steps} steps (nats/char) | train tokens/s |")
    print("| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['impl']} | {r['seed']} | {r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} |")
    for impl in sorted({r["impl"] for r in results}):
        losses = [r["val_loss"] for r in results if r["impl"] == impl]
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        print(f"| {impl} | mean | {statistics.mean(losses):.4f} ± {spread:.4f} (sd) | |")


if __name__ == "__main__":
    main()
