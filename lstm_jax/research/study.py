"""The course project's hyperparameter study on the D&D spells, rerun with this codebase.

    python -m lstm_jax.research.study --config configs/ablations/course_project_study.py \\
        --workdir DIR

The 2018 course project (Myers & Collart) compared, on their word-level D&D spell
model (`configs/dnd.py`: 3 LSTM layers of 512, 15-word windows, RMSProp 1e-3):

  optimizer     plain SGD at lr 0.1, 0.01, 0.001, 0.0005 vs RMSProp vs Adam
  window        3 vs 5 vs 15 words per training window
  depth         2 vs 3 layers of 512

Each axis changes one thing from that baseline (the baseline run is shared by
the three axes). Every variant is an ordinary training run,
`lstm_jax.train.train_and_evaluate(config, workdir/runs/<variant>)`, so it uses
the project's data pipeline, model, optax chain and evaluation unchanged; its
`metrics.jsonl` gives the loss curves.

Budget. All variants see the same number of training tokens
(`train_tokens`): a run with 3-word windows takes 5x the steps of one with
15-word windows (the fair comparison when an epoch is a fixed amount of text;
equal steps would give the short windows a fifth of the data). The default
budget is short (about two epochs of the ~46k training words), far from
convergence: the table ranks early training, not final quality.

Outputs: `table.csv` / `table.md` (final validation loss and perplexity per
variant), `curves.csv` (training and validation loss per logged step, tidy),
`study.png` (loss curves overlaid per axis), `results.json`. A variant whose
`runs/<name>/summary.json` matches the current settings is reused, and an
interrupted variant (SIGINT/SIGTERM: `lstm_jax.train` saves a checkpoint and the
study exits) resumes from its checkpoint, so rerunning the same command
continues where the study stopped.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import shutil
from typing import Any

import ml_collections

from lstm_jax import config as config_lib
from lstm_jax.metrics import read_jsonl
from lstm_jax.research import common

AXES = ("optimizer", "seq_len", "num_layers")
AXIS_TITLES = {
    "optimizer": "optimizer (lr)",
    "seq_len": "window length (words)",
    "num_layers": "layers of 512",
}


def parse_optimizer(spec: str) -> tuple[str, float]:
    """`"sgd:0.1"` -> ("sgd", 0.1); the name must be in lstm_jax.optim.OPTIMIZERS."""
    from lstm_jax import optim

    name, sep, lr = spec.partition(":")
    if not sep:
        raise ValueError(f"optimizer spec {spec!r} must be NAME:LEARNING_RATE, e.g. 'sgd:0.1'")
    if name not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {sorted(optim.OPTIMIZERS)}")
    rate = float(lr)
    if not rate > 0:
        raise ValueError(f"learning rate must be > 0 in {spec!r}")
    return name, rate


def load_base(spec: str) -> ml_collections.ConfigDict:
    """Loads the training config `path.py[:arg]`; a relative path is tried from
    the working directory, then from the repository root."""
    path, sep, arg = spec.partition(":")
    candidates = [pathlib.Path(path), pathlib.Path(__file__).resolve().parents[2] / path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"base config {path!r} not found (tried {candidates})")
    return common.load_config(f"{found}{sep}{arg}")


def variants(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The runs of the study: the baseline plus one run per axis value that
    differs from it. Each is {name, axes: [(axis, value), ...], config}."""
    base = load_base(config.base)
    base_opt = f"{base.optim.name}:{base.optim.learning_rate:g}"
    base_values = {
        "optimizer": base_opt,
        "seq_len": base.train.seq_len,
        "num_layers": base.model.num_layers,
    }
    axis_values = {
        "optimizer": [f"{n}:{lr:g}" for n, lr in map(parse_optimizer, config.optimizers)],
        "seq_len": [int(v) for v in config.seq_lens],
        "num_layers": [int(v) for v in config.num_layers],
    }
    runs: dict[str, dict[str, Any]] = {}
    baseline_name = "baseline"
    for axis in AXES:
        for value in axis_values[axis]:
            name = baseline_name if value == base_values[axis] else f"{axis}={value}"
            run = runs.setdefault(name, {"name": name, "axes": [], "overrides": {}})
            run["axes"].append((axis, value))
            if name != baseline_name:
                run["overrides"] = {axis: value}
    for axis in AXES:  # every axis shows the baseline, even if not listed
        if not any(a == axis for a, _ in runs.get(baseline_name, {"axes": []})["axes"]):
            runs.setdefault(baseline_name, {"name": baseline_name, "axes": [], "overrides": {}})
            runs[baseline_name]["axes"].append((axis, base_values[axis]))
    out = []
    for run in sorted(runs.values(), key=lambda r: r["name"] != baseline_name):
        run["config"] = variant_config(base, run["overrides"], config)
        out.append(run)
    return out


def variant_config(
    base: ml_collections.ConfigDict, overrides: dict[str, Any], study: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """The base training config with one axis changed and the study's budget."""
    c = copy.deepcopy(base)
    if "optimizer" in overrides:
        c.optim.name, c.optim.learning_rate = parse_optimizer(overrides["optimizer"])
        if c.optim.name == "sgd":
            c.optim.momentum = 0.0  # plain SGD, as the course project ran it
    if "seq_len" in overrides:
        c.train.seq_len = int(overrides["seq_len"])
    if "num_layers" in overrides:
        c.model.num_layers = int(overrides["num_layers"])
    if study.batching is not None:
        c.data.batching = study.batching
    t = c.train
    t.num_steps = max(1, round(study.train_tokens / (t.batch_size * t.seq_len)))
    evals = max(1, study.evals_per_run)
    t.eval_every = max(1, t.num_steps // evals)
    t.log_every = max(1, t.num_steps // study.log_points)
    t.checkpoint_every = 0  # only at evaluations and the end
    t.keep_checkpoints = 1
    t.sample_length = 0  # no samples: the study compares losses
    t.progress = False
    c.seed = study.seed
    config_lib.validate(c)
    return c


def _finished(run_dir: pathlib.Path, cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    current = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as saved
    return saved if saved.get("config") == current else None


def train_variant(run: dict[str, Any], out: pathlib.Path, keep_checkpoints: bool) -> dict:
    """Trains one variant (or reuses its finished run); returns its summary."""
    from lstm_jax import train

    run_dir = out / "runs" / run["name"].replace(":", "_").replace("=", "_")
    cfg = run["config"]
    done = _finished(run_dir, cfg)
    if done is not None:
        done["reused"] = True
        return done
    watch = common.Stopwatch()
    summary = train.train_and_evaluate(cfg, str(run_dir))
    seconds = watch.elapsed()
    if "interrupted_at" in summary:  # SIGINT/SIGTERM: the run saved a checkpoint
        raise SystemExit(
            f"study interrupted during {run['name']} at step {summary['interrupted_at']}; "
            "rerun the same command to resume"
        )
    rows = read_jsonl(run_dir / "metrics.jsonl")
    val = [r for r in rows if r.get("val_loss") is not None]
    summary = {
        "name": run["name"],
        "dir": str(run_dir),
        "seconds": seconds,
        "final_val_loss": val[-1]["val_loss"] if val else None,
        "num_params": summary.get("num_params"),
        "unigram_val_loss": summary.get("unigram_val_loss"),
        "curve": [
            {k: r.get(k) for k in ("step", "train_loss", "val_loss", "tokens_per_s")} for r in rows
        ],
        "config": cfg.to_dict(),
    }
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    common.write_json(run_dir / "summary.json", summary)
    summary["reused"] = False
    return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains every variant, then writes the table, the curves and the figure."""
    watch = common.Stopwatch()
    runs = variants(config)  # loads and validates every config before any compute
    out = common.prepare_workdir(workdir, config)
    summaries = {}
    for i, r in enumerate(runs):
        c = r["config"]
        if config.progress:
            print(
                f"[{i + 1}/{len(runs)}] {r['name']}: {c.model.num_layers}x{c.model.hidden_size} "
                f"{c.optim.name} lr {c.optim.learning_rate:g}, window {c.train.seq_len}, "
                f"{c.train.num_steps} steps",
                flush=True,
            )
        summaries[r["name"]] = s = train_variant(r, out, config.keep_checkpoints)
        if config.progress:
            val = s["final_val_loss"]
            ppl = math.exp(val) if val is not None else float("nan")
            print(f"    val {val:.4f} nats/word, perplexity {ppl:.1f}, {s['seconds']:.0f} s")

    table, curves = [], []
    for r in runs:
        s, c = summaries[r["name"]], r["config"]
        val = s["final_val_loss"]
        train_losses = [p["train_loss"] for p in s["curve"] if p.get("train_loss") is not None]
        tail = train_losses[-3:]
        for axis, value in r["axes"]:
            table.append(
                {
                    "axis": axis,
                    "value": value,
                    "variant": r["name"],
                    "optimizer": c.optim.name,
                    "learning_rate": c.optim.learning_rate,
                    "seq_len": c.train.seq_len,
                    "num_layers": c.model.num_layers,
                    "hidden_size": c.model.hidden_size,
                    "steps": c.train.num_steps,
                    "train_tokens": c.train.num_steps * c.train.batch_size * c.train.seq_len,
                    "final_train_loss": sum(tail) / len(tail) if tail else None,
                    "val_loss": val,
                    "val_perplexity": math.exp(val) if val is not None else None,
                    "unigram_val_perplexity": _exp(s.get("unigram_val_loss")),
                    "seconds": s["seconds"],
                }
            )
        for p in s["curve"]:
            curves.append(
                {
                    "variant": r["name"],
                    "step": p["step"],
                    "tokens": p["step"] * c.train.batch_size * c.train.seq_len,
                    "train_loss": p.get("train_loss"),
                    "val_loss": p.get("val_loss"),
                }
            )
    common.write_csv(out / "table.csv", table)
    common.write_csv(out / "curves.csv", curves)
    markdown = to_markdown(table)
    (out / "table.md").write_text(markdown + "\n")
    plot(runs, summaries, out / "study.png")
    results = {
        "table": table,
        "variants": [r["name"] for r in runs],
        "reused": [n for n, s in summaries.items() if s.get("reused")],
        "train_seconds": sum(s["seconds"] for s in summaries.values()),
        "seconds": watch.elapsed(),
    }
    common.write_json(out / "results.json", results)
    if config.progress:
        print("\n" + markdown + f"\n\ntotal {results['seconds']:.0f} s; results in {out}")
    return results


def _exp(x: float | None) -> float | None:
    return None if x is None else math.exp(x)


def to_markdown(table: list[dict[str, Any]]) -> str:
    head = "| axis | value | steps | tokens | train loss | val loss | val perplexity | seconds |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(
            f"| {AXIS_TITLES[r['axis']]} | {r['value']}"
            + (" (baseline)" if r["variant"] == "baseline" else "")
            + f" | {r['steps']} | {r['train_tokens']} | {_f(r['final_train_loss'], 3)} "
            f"| {_f(r['val_loss'], 3)} | {_f(r['val_perplexity'], 1)} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def _f(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def plot(runs, summaries, path) -> None:
    """One panel per axis: training loss (lines) and validation loss (markers)
    against training tokens, one colour per value."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(AXES), figsize=(13, 3.8), layout="constrained")
    for ax, axis in zip(axes, AXES, strict=True):
        members = [(r, v) for r in runs for a, v in r["axes"] if a == axis]
        for i, (r, value) in enumerate(members):
            c, s = r["config"], summaries[r["name"]]
            per_step = c.train.batch_size * c.train.seq_len
            color = plt.cm.tab10(i % 10)
            pts = [p for p in s["curve"] if p.get("train_loss") is not None]
            label = f"{value}" + (" (base)" if r["name"] == "baseline" else "")
            ax.plot(
                [p["step"] * per_step for p in pts],
                [p["train_loss"] for p in pts],
                color=color,
                lw=1.0,
                alpha=0.85,
                label=label,
            )
            vals = [p for p in s["curve"] if p.get("val_loss") is not None]
            ax.plot(
                [p["step"] * per_step for p in vals],
                [p["val_loss"] for p in vals],
                "o",
                color=color,
                ms=4,
            )
        ax.set_title(AXIS_TITLES[axis], fontsize=10)
        ax.set_xlabel("training tokens")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("nats / word (lines: train, dots: validation)")
    common.save_figure(fig, path)


def main(argv: list[str]) -> None:
    """CLI entry. The study drives `lstm_jax.train`, whose command line (train_cli.py) defines the
    `--config`/`--workdir` flags on import, so it reuses those flags instead of
    defining its own (`common.cli` would define them a second time)."""
    from absl import app, flags, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    results = run(flags.FLAGS.config, flags.FLAGS.workdir)
    print(json.dumps(common.summarize_for_print(results), indent=2))


if __name__ == "__main__":
    from absl import app, flags

    from lstm_jax import train_cli  # noqa: F401  (defines --config, --workdir)

    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
