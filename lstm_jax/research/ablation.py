"""An ablation: named changes to one training config, each tried on its own
(and cumulatively if asked), over several seeds, at equal training tokens.

    python -m lstm_jax.research.ablation --config configs/ablations/regularizers.py --workdir DIR

A variant is a line `NAME: key=value, key=value` (keys are training-config
paths, values Python literals), e.g. `"locked: model.dropout_hidden=0.3"`.
Every variant starts from `config.base` (`path.py[:arg]`) with the same budget
(`num_steps`, so the same tokens when the batch shape is unchanged; a variant
that changes batch_size or seq_len gets the steps that keep the tokens equal).
With `cumulative=True` each variant also keeps every change listed before it,
the way AWD-LSTM's regularizers are usually stacked.

Every run is an ordinary `lstm_jax.train.train_and_evaluate`; a finished run is
reused when its config is unchanged (`study.train_variant`), so rerunning the
command continues an interrupted ablation. Outputs in DIR: `table.md` /
`table.csv` (validation perplexity per variant and seed, the mean and standard
deviation over seeds, the last training loss, the train-validation gap,
seconds), `curves.csv`, `ablation.png`, `results.json`.
"""

from __future__ import annotations

import ast
import copy
import math
import statistics
from typing import Any

import ml_collections

from lstm_jax import config as config_lib
from lstm_jax.research import common, study

BASELINE = "baseline"


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """`"NAME: a.b=1, c.d=True"` -> ("NAME", {"a.b": 1, "c.d": True})."""
    name, sep, body = spec.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"variant {spec!r} must read 'NAME: key=value, ...'")
    overrides: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"in variant {name!r}: {item!r} is not key=value")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()  # a bare string, e.g. adam
    return name, overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            if p not in node:
                raise KeyError(f"unknown config key {key!r}")
            node = node[p]
        if leaf not in node:
            raise KeyError(f"unknown config key {key!r}")
        node[leaf] = value


def variants(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """[{name, overrides, seed, config}] for the baseline and every variant, per
    seed. Validates every config before any compute."""
    base = study.load_base(config.base)
    parsed = [(BASELINE, {})] + [parse_variant(s) for s in config.variants]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    base_tokens = config.num_steps * base.train.batch_size * base.train.seq_len
    changes, stacked = [], {}
    for name, overrides in parsed:
        stacked = {**stacked, **overrides} if config.cumulative else overrides
        changes.append((name, stacked))
    runs = []
    # seed-major: an interrupted ablation has every variant at the first seed
    for seed in config.seeds:
        for name, stacked in changes:
            c = copy.deepcopy(base)
            apply_overrides(c, stacked)
            t = c.train
            t.num_steps = max(1, round(base_tokens / (t.batch_size * t.seq_len)))
            t.eval_every = max(1, t.num_steps // max(1, config.evals_per_run))
            t.log_every = max(1, t.num_steps // config.log_points)
            t.checkpoint_every = 0
            t.keep_checkpoints = 1
            t.sample_length = 0
            t.progress = False
            c.seed = int(seed)
            config_lib.validate(c)
            runs.append(
                {
                    # the run's directory name under DIR/runs/ ("/" would nest it)
                    "name": f"{name}@seed{seed}".replace("/", "_"),
                    "variant": name,
                    "overrides": dict(stacked),
                    "seed": int(seed),
                    "config": c,
                }
            )
    return runs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    watch = common.Stopwatch()
    runs = variants(config)
    out = common.prepare_workdir(workdir, config)
    summaries = {}
    for i, r in enumerate(runs):
        if config.progress:
            print(f"[{i + 1}/{len(runs)}] {r['name']}: {r['overrides'] or '(base)'}", flush=True)
        summaries[r["name"]] = s = study.train_variant(r, out, config.keep_checkpoints)
        if config.progress:
            print(f"    val perplexity {_exp(s['final_val_loss']):.2f}, {s['seconds']:.0f} s")

    per_run, curves = [], []
    for r in runs:
        s = summaries[r["name"]]
        train_losses = [p["train_loss"] for p in s["curve"] if p.get("train_loss") is not None]
        tail = train_losses[-3:]
        train_loss = sum(tail) / len(tail) if tail else None
        val = s["final_val_loss"]
        per_run.append(
            {
                "variant": r["variant"],
                "seed": r["seed"],
                "overrides": r["overrides"],
                "steps": r["config"].train.num_steps,
                "final_train_loss": train_loss,
                "val_loss": val,
                "val_perplexity": _exp(val),
                "gap": None if val is None or train_loss is None else val - train_loss,
                "seconds": s["seconds"],
            }
        )
        curves += [
            {
                "variant": r["variant"],
                "seed": r["seed"],
                "step": p["step"],
                "train_loss": p.get("train_loss"),
                "val_loss": p.get("val_loss"),
            }
            for p in s["curve"]
        ]
    table = summarize(per_run)
    common.write_csv(out / "table.csv", table)
    common.write_csv(out / "runs.csv", per_run)
    common.write_csv(out / "curves.csv", curves)
    markdown = to_markdown(table, config)
    (out / "table.md").write_text(markdown + "\n")
    plot(runs, summaries, out / "ablation.png")
    results = {"table": table, "runs": per_run, "seconds": watch.elapsed()}
    common.write_json(out / "results.json", results)
    if config.progress:
        print("\n" + markdown + f"\n\ntotal {results['seconds']:.0f} s; results in {out}")
    return results


def summarize(per_run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: mean and standard deviation over seeds."""
    table = []
    for variant in dict.fromkeys(r["variant"] for r in per_run):
        rows = [r for r in per_run if r["variant"] == variant]
        ppl = [r["val_perplexity"] for r in rows if r["val_perplexity"] is not None]
        gaps = [r["gap"] for r in rows if r["gap"] is not None]
        table.append(
            {
                "variant": variant,
                "overrides": rows[0]["overrides"],
                "seeds": len(rows),
                "val_perplexity_mean": statistics.mean(ppl) if ppl else None,
                "val_perplexity_sd": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
                "val_perplexity_by_seed": ppl,
                "train_loss_mean": statistics.mean(r["final_train_loss"] for r in rows),
                "gap_mean": statistics.mean(gaps) if gaps else None,
                "seconds_mean": statistics.mean(r["seconds"] for r in rows),
            }
        )
    return table


def to_markdown(table: list[dict[str, Any]], config: ml_collections.ConfigDict) -> str:
    how = "added to everything above" if config.cumulative else "added alone to the base"
    lines = [
        f"| variant ({how}) | val perplexity, mean ± sd ({table[0]['seeds']} seeds) "
        "| by seed | train loss | val - train (nats) | s/run |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        changes = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "configs as given"
        by_seed = " / ".join(f"{p:.1f}" for p in r["val_perplexity_by_seed"])
        lines.append(
            f"| {r['variant']} (`{changes}`) | {r['val_perplexity_mean']:.1f} ± "
            f"{r['val_perplexity_sd']:.1f} | {by_seed} | {r['train_loss_mean']:.3f} "
            f"| {_f(r['gap_mean'])} | {r['seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _exp(x: float | None) -> float | None:
    return None if x is None else math.exp(x)


def plot(runs, summaries, path) -> None:
    """Validation loss per variant against steps (mean over seeds), and the
    training loss as thin lines."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    names = list(dict.fromkeys(r["variant"] for r in runs))
    for i, name in enumerate(names):
        color = plt.cm.tab10(i % 10)
        members = [summaries[r["name"]] for r in runs if r["variant"] == name]
        for j, s in enumerate(members):
            pts = [p for p in s["curve"] if p.get("train_loss") is not None]
            ax.plot(
                [p["step"] for p in pts],
                [p["train_loss"] for p in pts],
                color=color,
                lw=0.6,
                alpha=0.5,
            )
            vals = [p for p in s["curve"] if p.get("val_loss") is not None]
            ax.plot(
                [p["step"] for p in vals],
                [p["val_loss"] for p in vals],
                "o-",
                color=color,
                ms=3,
                lw=1.2,
                label=name if j == 0 else None,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token (thin: train, dots: validation)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    common.save_figure(fig, path)


def main(argv: list[str]) -> None:
    from absl import app, flags, logging

    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    results = run(flags.FLAGS.config, flags.FLAGS.workdir)
    print(f"done in {results['seconds']:.0f} s")


if __name__ == "__main__":
    from absl import app, flags

    from lstm_jax import train_cli  # noqa: F401  (defines --config, --workdir)

    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
