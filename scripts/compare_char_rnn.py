"""Side by side: configs/shakespeare_char.py (ours) vs char-rnn's defaults in
PyTorch nn.LSTM, same token ids, same machine, one after the other.

    LSTM_JAX_TORCH_PYTHON=.venv-torch/bin/python .venv/bin/python \
        scripts/compare_char_rnn.py --path ../shared/data/tinyshakespeare.txt --steps 4000

Prints a markdown table: validation loss (nats/char) after STEPS steps, and
training tokens/s (ours: the median of the logged windows; torch: median step).
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import tempfile

import numpy as np

from lstm_jax import train
from lstm_jax.metrics import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config():
    namespace: dict = {}
    src = ROOT / "configs" / "shakespeare_char.py"
    exec(compile(src.read_text(), str(src), "exec"), namespace)
    return namespace["get_config"]()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True, help="tinyshakespeare.txt")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    torch_python = os.environ.get("LSTM_JAX_TORCH_PYTHON")

    config = load_config()
    config.data.path = args.path
    config.train.num_steps = args.steps
    config.train.eval_every = args.steps
    config.train.checkpoint_every = args.steps
    config.train.sample_length = 0
    config.train.progress = False
    workdir = args.workdir or tempfile.mkdtemp(prefix="charrnn_")
    ours = train.train_and_evaluate(config, workdir)
    rows = read_jsonl(pathlib.Path(workdir) / "metrics.jsonl")
    ours_tps = statistics.median(r["tokens_per_s"] for r in rows[1:])  # first window compiles
    results = [{"impl": "lstm_jax (scan)", "val_loss": ours["val_loss"], "tokens_per_s": ours_tps}]

    if torch_python:
        data = train.load_data(config)
        with tempfile.TemporaryDirectory() as tmp:
            npz = pathlib.Path(tmp) / "ids.npz"
            np.savez(
                npz,
                train=data.splits["train"],
                valid=data.splits["valid"],
                vocab_size=data.tokenizer.vocab_size,
            )
            out = subprocess.run(
                [
                    torch_python,
                    str(ROOT / "scripts" / "torch_char_rnn.py"),
                    str(npz),
                    str(args.steps),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"| impl | val loss after {args.steps} steps (nats/char) | train tokens/s |")
    print("| --- | --- | --- |")
    for r in results:
        print(f"| {r['impl']} | {r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
