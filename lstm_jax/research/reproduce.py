"""Reproduce the long-range tables of three papers, side by side with them.

    python -m lstm_jax.research.reproduce --config configs/ablations/papers/le2015.py --workdir DIR
    python -m lstm_jax.research.reproduce le2015 --workdir DIR   # the same config by name
    # a run cut short (Ctrl-C, a killed job): the same command continues it

Papers (configs/ablations/papers/): hochreiter1997 (adding problem, Table 7),
le2015 (adding problem, Fig. 2), arjovsky2016 (copying memory, Fig. 1). A paper
config is a task-runner config (lstm_jax.research.long_range.base_config) plus a
`paper` section: the citation, the paper's results per (cell, T), the notes on
every deviation from the paper, and the budget in training sequences.

What runs: every (cell, T) point of the config is one compiled program that
trains all its members (seeds x learning rates) at once, vmapped
(lstm_jax.research.sweep.make_chunk); cells of different shapes cannot share a
program, so they loop. A member stops at its first held-out evaluation that
meets the task's criterion; a point ends when all its members stopped or at the
budget.

Resuming: every `paper.checkpoint_every` evaluations the point's stacked
parameters and optimizer states are saved with orbax (lstm_jax.checkpoint), the
loop's record (active members, steps to solve, curves) as the checkpoint's JSON
metadata. A rerun with the same workdir restores the latest checkpoint of each
point and continues; a finished point is not rerun. Batches depend only on the
member's seed and the step number, so a resumed sweep computes what the
uninterrupted one would have (tests/test_reproduce.py).

Outputs in the workdir: table.md and table.json ("paper | ours" per cell and
T, and the notes), curves.png (held-out loss / baseline against sequences seen),
points/<cell>_T<T>/ (each point's checkpoints).
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from lstm_jax import optim
from lstm_jax.checkpoint import Checkpointer
from lstm_jax.model import SequenceModel
from lstm_jax.research import common, long_range, sweep

PAPERS = ("hochreiter1997", "le2015", "arjovsky2016")
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs" / "ablations" / "papers"


def add_paper_section(
    c: ml_collections.ConfigDict,
    *,
    name: str,
    citation: str,
    results: dict[str, tuple[str, int | None]],
    notes: tuple[str, ...],
    budget_sequences: int,
    stop_rule: str = "held_out",
) -> None:
    """The `paper` section of a paper config: what the paper reports and how we differ.

    `results`: "<cell>_T<T>" -> (the paper's verdict, sequences to solve or None).
    `stop_rule`: when a member counts as solved and stops (STOP_RULES).
    """
    if stop_rule not in STOP_RULES:
        raise ValueError(f"unknown stop_rule {stop_rule!r}; valid: {list(STOP_RULES)}")
    p = ml_collections.ConfigDict()
    p.name = name
    p.citation = citation
    p.results = ml_collections.ConfigDict(
        {k: {"verdict": v, "sequences": n} for k, (v, n) in results.items()}
    )
    p.notes = tuple(notes)
    p.budget_sequences = int(budget_sequences)  # training sequences per member, at most
    p.checkpoint_every = 10  # evaluations between checkpoints
    p.stop_rule = stop_rule
    c.paper = p


# When a member is solved and stops:
#   "held_out"  the task's criterion on the held-out batch, at an evaluation
#               (`Task.solved`, e.g. 99% of 512 held-out sums within 0.04)
#   "st3"       [HS97] sec. 5.4's rule ST3(0.01), on the training sequences:
#               "Training is stopped once the average training error is below
#               0.01, and the 2000 most recent sequences were processed correctly"
#               (`ST3`)
STOP_RULES = ("held_out", "st3")


class ST3:
    """[HS97]'s stopping rule on the training stream, one member: the last
    `sequences` training sequences (whole batches: ceil(2000 / B) steps) were
    all processed correctly (the task's `accuracy` 1 on each of those batches)
    and their average error is below `max_error`. The paper does not say which
    error it averages over which sequences; we read it as the mean absolute
    error over the same window (the stricter reading: the squared error of a
    window of correct sequences is below 0.04**2 anyway)."""

    def __init__(self, batch_size: int, sequences: int = 2000, max_error: float = 0.01):
        self.steps = -(-sequences // batch_size)  # ceil
        self.max_error = max_error

    def first_stop(self, window: list[list[float]], accuracy, error) -> tuple[int | None, list]:
        """Feeds one chunk's per-step (accuracy, mean abs error) into `window`
        (the last `steps` steps, carried over chunks and checkpoints); returns
        the index in the chunk of the first step at which the rule holds (None:
        it never did) and the new window."""
        for j, (acc, err) in enumerate(zip(accuracy, error, strict=True)):
            window = [*window, [float(acc), float(err)]][-self.steps :]
            full = len(window) == self.steps
            if full and all(a >= 1.0 for a, _ in window) and np.mean(window, 0)[1] < self.max_error:
                return j, window
        return None, window


def smoke_paper(c: ml_collections.ConfigDict) -> None:
    """The `:smoke` variant: tiny model and budget, runs in seconds."""
    long_range.smoke(c)
    c.train.num_steps = 6
    c.paper.budget_sequences = c.train.num_steps * c.train.batch_size
    c.paper.checkpoint_every = 1
    c.sweep.seeds = (0, 1)


def config_path(paper: str) -> str:
    if paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}; valid: {list(PAPERS)}")
    return str(CONFIG_DIR / f"{paper}.py")


def point_name(point: long_range.Point) -> str:
    return f"{point.cell}_T{point.option_value if point.option_value is not None else ''}"


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def train_point(
    config: ml_collections.ConfigDict,
    point: long_range.Point,
    members: list[sweep.Member],
    directory: pathlib.Path,
    bar: tqdm | None = None,
    stop_after_chunks: int | None = None,
) -> dict[str, Any]:
    """Trains one point's members in one program, resuming from `directory`.

    Returns the record: per member `solved_step`, `stop_step`, `diverged`, the
    eval curves `{name: [[per eval] per member]}` and `train_loss` (mean per
    chunk), `eval_steps`, `seconds` (summed over resumed runs). With
    `stop_after_chunks` the loop stops early (as a killed run would), after
    checkpointing.
    """
    t, task = config.train, point.task
    seq_cfg = sweep.seq_config(task, config.model, cell=point.cell, hidden_size=point.hidden_size)
    optimizer = optim.make_optimizer(config.optim, t.steps_per_epoch)
    state = sweep.init_sweep(seq_cfg, optimizer, members)
    base_lr = float(config.optim.learning_rate)
    lr_scales = jnp.asarray([m.learning_rate / base_lr for m in members], jnp.float32)
    data_keys = jnp.stack([sweep.member_keys(m.seed)[1] for m in members])
    batch = sweep.eval_batch(task, config.eval_seed, t.eval_batch_size)
    chunk_fn = sweep.make_chunk(
        SequenceModel(seq_cfg),
        task,
        optimizer,
        t.batch_size,
        t.eval_every,
        config.sweep.vectorize,
        t.train_set_size,
        train_metrics=config.paper.stop_rule == "st3",
    )
    st3 = ST3(t.batch_size) if config.paper.stop_rule == "st3" else None
    k = len(members)
    ckpt = Checkpointer(directory, keep=1)
    latest = ckpt.latest_step()
    if latest is not None:
        record = ckpt.restore_meta(latest)
        if record["num_steps"] != t.num_steps or len(record["active"]) != k:
            raise ValueError(
                f"{directory} holds a sweep of {len(record['active'])} members over "
                f"{record['num_steps']} steps, not this config's {k} over {t.num_steps}; "
                "use a new --workdir"
            )
        record.setdefault("st3_window", [[] for _ in range(k)])  # a sweep saved before ST3
        state = ckpt.restore_state(latest, state)
    else:
        record = {
            "num_steps": t.num_steps,
            "start": 0,
            "active": [True] * k,
            "solved_step": [None] * k,
            "stop_step": [t.num_steps] * k,
            "diverged": [False] * k,
            "eval_steps": [],
            "evals": {},
            "train_loss": [[] for _ in range(k)],
            "st3_window": [[] for _ in range(k)],  # ST3: the last steps' [accuracy, error]
            "seconds": 0.0,
        }
    if bar is not None:
        bar.update(record["start"] if any(record["active"]) else t.num_steps)
    chunks = 0
    while record["start"] < t.num_steps and any(record["active"]):
        tc = time.perf_counter()
        active = np.asarray(record["active"])
        state, metrics, evals = chunk_fn(
            state, lr_scales, data_keys, jnp.asarray(active), jnp.int32(record["start"]), batch
        )
        loss = np.asarray(metrics["loss"], np.float64)
        evals = {name: np.asarray(v, np.float64) for name, v in evals.items()}
        record["start"] += t.eval_every
        start = record["start"]
        record["eval_steps"].append(start)
        for name, v in evals.items():
            record["evals"].setdefault(name, [[] for _ in range(k)])
            for i in range(k):
                record["evals"][name][i].append(_finite_or_none(v[i]))
        for i in range(k):
            record["train_loss"][i].append(
                None if np.all(np.isnan(loss[i])) else _finite_or_none(np.nanmean(loss[i]))
            )
            if not active[i]:
                continue
            final = {name: float(v[i]) for name, v in evals.items()}
            if not (math.isfinite(final["loss"]) and np.all(np.isfinite(loss[i]))):
                record["diverged"][i], record["active"][i], record["stop_step"][i] = (
                    True,
                    False,
                    start,
                )
            elif st3 is not None:
                first = start - t.eval_every  # the chunk's first step
                j, record["st3_window"][i] = st3.first_stop(
                    record["st3_window"][i],
                    np.asarray(metrics["train_accuracy"][i]),
                    np.asarray(metrics["train_mean_abs_error"][i]),
                )
                if j is not None:  # solved after step first + j; stops at the chunk's end
                    record["solved_step"][i] = first + j + 1
                    record["active"][i], record["stop_step"][i] = False, start
            elif task.solved(final):
                record["solved_step"][i] = start
                record["active"][i], record["stop_step"][i] = False, start
        record["seconds"] += time.perf_counter() - tc
        chunks += 1
        done = record["start"] >= t.num_steps or not any(record["active"])
        if bar is not None:
            bar.update(t.num_steps - record["start"] + t.eval_every if done else t.eval_every)
            crit = evals[task.criterion]
            bar.set_postfix_str(
                f"{point_name(point)} {task.criterion} "
                + " ".join("-" if np.isnan(v) else f"{v:.3f}" for v in crit)
            )
        interrupted = stop_after_chunks is not None and chunks >= stop_after_chunks
        if done or interrupted or chunks % config.paper.checkpoint_every == 0:
            ckpt.save(start, state, record)
        if interrupted:
            break
    for i in range(k):
        if record["active"][i] and record["start"] >= t.num_steps:
            record["stop_step"][i] = record["start"]
    ckpt.close()
    record["params"] = state.params  # for the tests' comparison; not written to JSON
    return record


def paper_row(config, point: long_range.Point) -> dict[str, Any]:
    key = f"{point.cell}_T{point.option_value}"
    if key in config.paper.results:
        r = config.paper.results[key]
        return {"paper": r.verdict, "paper_sequences": r.sequences}
    return {"paper": "not run", "paper_sequences": None}


def table_rows(config, pts, members, records) -> list[dict[str, Any]]:
    """One row per (cell, T, learning rate): the paper's result beside ours."""
    b = config.train.batch_size
    rows = []
    for p, rec in zip(pts, records, strict=True):
        for lr in dict.fromkeys(m.learning_rate for m in members):
            idx = [i for i, m in enumerate(members) if m.learning_rate == lr]
            solved = [rec["solved_step"][i] for i in idx if rec["solved_step"][i] is not None]
            # a stopped member's later evaluations are NaN (None): its last finite one
            losses = [next((x for x in reversed(rec["evals"]["loss"][i]) if x), None) for i in idx]
            ratio = [x / p.task.baseline for x in losses if x is not None]
            rows.append(
                {
                    "cell": p.cell,
                    "T": p.option_value,
                    "hidden_size": p.hidden_size,
                    "learning_rate": lr,
                    **paper_row(config, p),
                    "ours_solved": f"{len(solved)}/{len(idx)}",
                    "ours_sequences": [
                        None if rec["solved_step"][i] is None else rec["solved_step"][i] * b
                        for i in idx
                    ],
                    "ours_final_loss_over_baseline": float(np.mean(ratio)) if ratio else None,
                    "diverged": sum(rec["diverged"][i] for i in idx),
                    "budget_sequences": config.train.num_steps * b,
                    "seconds": rec["seconds"],
                }
            )
    return rows


def _k(n: int | None) -> str:
    return "-" if n is None else f"{n / 1000:.0f}k" if n >= 1000 else str(n)


def setup_line(config) -> str:
    """The setup as run, read from the config, so that a command-line override
    (a wider model, another optimizer) shows beside the paper's fixed notes."""
    m, o, t = config.model, config.optim, config.train
    lrs = list(config.sweep.learning_rates) or [o.learning_rate]
    clip = "no clipping" if o.clip_mode == "none" else f"{o.clip_mode} clip {o.clip_value:g}"
    return (
        f"As run: {m.num_layers} layer(s), LSTM gate biases forget {m.forget_bias:g},"
        f" input {m.input_bias:g};"
        f" {o.name}, lr {', '.join(f'{lr:g}' for lr in lrs)}, {clip};"
        f" batch {t.batch_size}, {t.num_steps} updates ({_k(t.num_steps * t.batch_size)}"
        f" sequences) at most; seeds {', '.join(str(s) for s in config.sweep.seeds)};"
        f" evaluated every {t.eval_every} updates on {t.eval_batch_size} held-out sequences;"
        f" solved: {STOP_RULE_TEXT[config.paper.get('stop_rule', 'held_out')]}."
    )


STOP_RULE_TEXT = {
    "held_out": "the task's criterion on the held-out sequences",
    "st3": "ST3(0.01) on the training sequences",
}


def to_markdown(config, rows) -> str:
    head = (
        "| cell | T | H | lr | paper | paper: sequences | ours: solved"
        " | ours: sequences (per seed) | loss / baseline | budget | seconds |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ratio = r["ours_final_loss_over_baseline"]
        lines.append(
            f"| {r['cell']} | {r['T']} | {r['hidden_size']} | {r['learning_rate']:g} | "
            f"{r['paper']} | {_k(r['paper_sequences'])} | {r['ours_solved']} | "
            f"{' '.join(_k(s) for s in r['ours_sequences'])} | "
            f"{'-' if ratio is None else f'{ratio:.3g}'} | {_k(r['budget_sequences'])} | "
            f"{r['seconds']:.0f} |"
        )
    notes = [f"{i}. {n}" for i, n in enumerate(config.paper.notes, 1)]
    return "\n".join(
        [
            f"{config.paper.citation}",
            "",
            *lines,
            "",
            setup_line(config),
            "",
            "Deviations from the paper (the config's own settings; the line above is what ran):",
            *notes,
        ]
    )


def plot(config, pts, records, path) -> None:
    """Held-out loss / baseline against training sequences, one column per T."""
    plt = common.pyplot()
    values = list(dict.fromkeys(p.option_value for p in pts))
    fig, axes = plt.subplots(
        1, len(values), figsize=(3.4 * len(values) + 0.8, 3.2), squeeze=False, layout="constrained"
    )
    labelled = set()
    b = config.train.batch_size
    for p, rec in zip(pts, records, strict=True):
        ax = axes[0][values.index(p.option_value)]
        xs = np.asarray(rec["eval_steps"]) * b
        for member_loss in rec["evals"]["loss"]:
            ys = np.asarray([np.nan if v is None else v for v in member_loss], float)
            label = p.cell if (p.cell, p.option_value) not in labelled else None
            labelled.add((p.cell, p.option_value))
            ax.semilogy(
                xs,
                np.maximum(ys / p.task.baseline, 1e-6),
                color=long_range.CELL_COLORS.get(p.cell),
                lw=1.0,
                alpha=0.75,
                label=label,
            )
        ax.set_title(f"{p.task.name}, T={p.option_value}", fontsize=9)
        ax.axhline(1.0, color="gray", ls=":", lw=0.8)
        ax.set_xlabel("training sequences")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("held-out loss / baseline")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(config.paper.citation, fontsize=9)
    common.save_figure(fig, path, dpi=80)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) every point of a paper config; writes the table and figure."""
    if "paper" not in config:
        raise ValueError(
            "a reproduction config needs a `paper` section; use one of "
            f"configs/ablations/papers/ ({', '.join(PAPERS)})"
        )
    pts, members = long_range.validate(config)
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "config.json", config.to_dict())
    total = config.train.num_steps * len(pts)
    records = []
    with tqdm(
        total=total,
        unit="step",
        desc=config.paper.name,
        file=sys.stderr,
        disable=not config.train.progress,
        dynamic_ncols=True,
    ) as bar:
        for p in pts:
            rec = train_point(config, p, members, out / "points" / point_name(p), bar)
            rec.pop("params")
            records.append(rec)
    rows = table_rows(config, pts, members, records)
    markdown = to_markdown(config, rows)
    (out / "table.md").write_text(markdown + "\n")
    results = {
        "paper": config.paper.name,
        "citation": config.paper.citation,
        "notes": list(config.paper.notes),
        "setup": setup_line(config),
        "table": rows,
        "members": [{"seed": m.seed, "learning_rate": m.learning_rate} for m in members],
        "points": {point_name(p): r for p, r in zip(pts, records, strict=True)},
        "machine": {"backend": jax.default_backend(), "devices": str(jax.devices())},
    }
    common.write_json(out / "table.json", results)
    plot(config, pts, records, out / "curves.png")
    if config.train.progress:
        print("\n" + markdown + f"\n\nresults in {out}", flush=True)
    return results


def main() -> None:
    # `reproduce <paper> --workdir DIR` is `--config configs/ablations/papers/<paper>.py`.
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        spec, _, arg = sys.argv.pop(1).partition(":")
        sys.argv.insert(1, "--config=" + config_path(spec) + (f":{arg}" if arg else ""))
    common.cli(run, "Reproduce a paper's long-range table")


if __name__ == "__main__":
    main()
