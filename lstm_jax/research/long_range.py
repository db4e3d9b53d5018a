"""The task runner: train any cell on any synthetic long-range task with any
optimizer, several models at once, and report each task's success criterion.

    python -m lstm_jax.research.long_range --config configs/ablations/adding.py --workdir DIR
    python -m lstm_jax.research.long_range --config configs/ablations/adding.py \\
        --config.model.cell=gru --config.optim.name=rmsprop --config.sweep.seeds=(0,1,2)
    python -m lstm_jax.research.long_range --config configs/ablations/long_range.py --workdir DIR

What runs. A config names a task (`lstm_jax.research.synthetic`: adding_hochreiter,
adding_le, copy, temporal_order, timer) with its options, a one-head
`SequenceModel` (`config.model`: cell, hidden size, init), the optax chain of
`lstm_jax.optim` (`config.optim`, the same section as the language-model
configs), and a sweep:

* inner, vectorised axes (`sweep.seeds`, `sweep.learning_rates`,
  `sweep.init_scales`): their product is the K members that one compiled
  program trains at once (`lstm_jax.research.sweep.train_sweep`);
* outer, shape-changing axes (`sweep.cells`, `sweep.hidden_sizes`, and one
  task option such as `seq_len` in `sweep.task_option` / `sweep.task_values`):
  a Python loop, one program per point.

Every `train.eval_every` steps each member is scored on a shared held-out batch;
a member that meets its task's criterion (`task.solved`, e.g. Hochreiter &
Schmidhuber 1997's "absolute error < 0.04" on 99% of sequences for the adding
problem) stops there, and a point ends when all its members stopped or at the
step cap `train.num_steps`.

Outputs in the workdir:
  members.csv   one row per member: its point, seed, lr, init scale, solved,
                steps to solve, final loss, loss / baseline, criterion metric
  curves.csv    one row per member and evaluation (tidy): step, eval metrics,
                mean training loss over the preceding chunk
  table.csv, table.md   members aggregated over seeds per (point, lr, scale)
  results.json  all of the above plus timings
  curves.png    eval loss / constant-guess baseline and the criterion vs step
  sweep.png     final criterion vs learning rate / init scale (when swept)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict

from lstm_jax import cells, optim
from lstm_jax.config import base_config as lm_base_config
from lstm_jax.research import common, sweep
from lstm_jax.research.synthetic import TASKS, Task, make_task

# ----------------------------------------------------------------------------
# Config schema (configs/ablations/{adding,copy,temporal_order,timer,long_range}.py
# start from this and change what their experiment needs).


def base_config() -> ml_collections.ConfigDict:
    """Every field of a task-runner config, its default and meaning (unlocked:
    a config file edits it, then locks it)."""
    c = ml_collections.ConfigDict()
    c.eval_seed = 10_000  # seed of the held-out batch shared by all members

    c.task = ml_collections.ConfigDict()
    c.task.name = "adding_hochreiter"  # a name in lstm_jax.research.synthetic.TASKS
    c.task.options = ml_collections.ConfigDict()  # make_task(name, **options); see each task

    c.model = ml_collections.ConfigDict()
    c.model.cell = "lstm"  # a name in lstm_jax.cells.CELLS
    c.model.hidden_size = 64  # H, units per layer
    c.model.num_layers = 1  # stacked recurrent layers
    c.model.forget_bias = 1.0  # LSTM b_f at init (ignored by other cells)
    c.model.input_bias = 0.0  # LSTM b_i at init (< 0 closes the input gate, HS97; LSTM only)
    c.model.kernel_init = config_dict.placeholder(str)  # input kernels; None = cell default
    c.model.recurrent_init = config_dict.placeholder(str)  # recurrent kernels; None = default
    c.model.init_scale = config_dict.placeholder(float)  # None = cell default (0.08 uniform)
    c.model.impl = "scan"  # layer implementation (lstm_jax.layers.LAYER_IMPLS)
    c.model.unroll = 1  # lax.scan unroll factor

    # The optax chain: the same section (names, validation) as lstm_jax/config.py.
    c.optim = ml_collections.ConfigDict(lm_base_config().optim.to_dict())
    c.optim.name = "adam"  # a name in lstm_jax.optim.OPTIMIZERS
    c.optim.learning_rate = 1e-3  # the rate of a single run; sweep.learning_rates override
    c.optim.clip_mode = "global_norm"  # "global_norm" | "element" | "none"
    c.optim.clip_value = 1.0  # bound for the clip mode

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # fresh sequences per step (tasks are generated on the fly)
    c.train.num_steps = 5000  # step cap per member
    c.train.eval_every = 100  # steps between evaluations (num_steps must be a multiple)
    c.train.eval_batch_size = 512  # held-out sequences the criterion is measured on
    c.train.stop_when_solved = True  # a member stops at its first solved evaluation
    c.train.steps_per_epoch = 100  # "epoch" of the epoch-based lr schedules (no real epochs)
    # > 0: train on a fixed set of this many sequences (rows drawn with replacement),
    # as a paper with a fixed training set; 0: fresh sequences every batch
    c.train.train_set_size = 0
    c.train.progress = True  # print one line per evaluation

    c.sweep = ml_collections.ConfigDict()
    c.sweep.seeds = (0,)  # vectorised: one member per seed (init and batches)
    c.sweep.learning_rates = ()  # vectorised: () = (optim.learning_rate,)
    c.sweep.init_scales = ()  # vectorised: model.init_scale values; () = model.init_scale
    c.sweep.vectorize = "vmap"  # "vmap" (batched members) | "map" (lax.map; see sweep.py)
    c.sweep.cells = ()  # looped: cell names; () = (model.cell,)
    c.sweep.hidden_sizes = ()  # looped: hidden sizes; () = (model.hidden_size,)
    c.sweep.task_option = ""  # looped: a task option (e.g. "seq_len", "gap"); "" = none
    c.sweep.task_values = ()  # the values of sweep.task_option
    return c


def config_args(arg: str | None, valid: tuple[str, ...], path: str) -> set[str]:
    """`"a,b"` -> {"a", "b"}, refusing names not in `valid` (config variants)."""
    args = set(filter(None, (arg or "").split(",")))
    unknown = args - set(valid)
    if unknown:
        raise ValueError(f"unknown {path} argument(s) {sorted(unknown)}; valid: {list(valid)}")
    return args


def lstm_task_setup(c: ml_collections.ConfigDict) -> None:
    """The setup the task ablations (copy, timer, temporal order) share: an
    LSTM of 64 with its memory open at init, Adam 3e-3 with global-norm
    clipping at 1, at most 3000 updates evaluated every 100, two seeds in one
    program."""
    c.model.cell = "lstm"
    c.model.hidden_size = 64
    c.model.forget_bias = 3.0  # a memory open at init (see configs/ablations/adding.py)
    c.optim.name = "adam"
    c.optim.learning_rate = 3e-3  # as for the adding problem
    c.optim.clip_value = 1.0  # global-norm clipping
    c.train.num_steps = 3000  # cap; a member stops when solved
    c.train.eval_every = 100
    c.sweep.seeds = (0, 1)  # two independent runs in one program


def smoke(c: ml_collections.ConfigDict) -> None:
    """The `:smoke` variant's shared part: tiny model, a few steps, quiet."""
    c.model.hidden_size = 8
    c.train.batch_size = 4
    c.train.num_steps = 4
    c.train.eval_every = 2
    c.train.eval_batch_size = 16
    c.train.progress = False


# ----------------------------------------------------------------------------
# The sweep's points and members, validated before any compute.


@dataclasses.dataclass(frozen=True)
class Point:
    """One shape-changing point of the outer loop."""

    cell: str
    hidden_size: int
    option_value: Any  # value of sweep.task_option (None when not swept)
    task: Task


def points(config: ml_collections.ConfigDict) -> list[Point]:
    """The outer loop: cells x task values x hidden sizes (each builds its task)."""
    s = config.sweep
    cell_names = list(s.cells) or [config.model.cell]
    hiddens = list(s.hidden_sizes) or [config.model.hidden_size]
    if bool(s.task_option) != bool(s.task_values):
        raise ValueError("sweep.task_option and sweep.task_values go together (both or neither)")
    values = list(s.task_values) or [None]
    out = []
    for cell, value, hidden in itertools.product(cell_names, values, hiddens):
        options = config.task.options.to_dict()
        if s.task_option:
            options[s.task_option] = value
        out.append(Point(cell, int(hidden), value, make_task(config.task.name, **options)))
    return out


def members(config: ml_collections.ConfigDict) -> list[sweep.Member]:
    s = config.sweep
    return sweep.grid(
        s.seeds,
        list(s.learning_rates) or [config.optim.learning_rate],
        list(s.init_scales) or [config.model.init_scale],
    )


def validate(config: ml_collections.ConfigDict) -> tuple[list[Point], list[sweep.Member]]:
    """Checks every name and value (tasks, cells, models, optimizer, sweep)."""
    if config.task.name not in TASKS:
        raise ValueError(f"unknown task {config.task.name!r}; valid tasks: {sorted(TASKS)}")
    for name in list(config.sweep.cells) or [config.model.cell]:
        if name not in cells.CELLS:
            raise ValueError(f"unknown cell {name!r}; valid cells: {sorted(cells.CELLS)}")
    optim.validate(config.optim)
    if config.optim.name == "nt_asgd":  # its trigger needs lstm_jax.train's evaluations
        raise ValueError(
            "optim.name='nt_asgd' starts averaging from lstm_jax.train's validation losses; "
            "the research tasks do not average: use 'sgd'"
        )
    sweep.check_vectorize(config.sweep.vectorize)
    t = config.train
    if t.eval_every < 1 or t.num_steps < 1 or t.num_steps % t.eval_every:
        raise ValueError(
            f"train.num_steps ({t.num_steps}) must be a positive multiple of "
            f"train.eval_every ({t.eval_every})"
        )
    if t.batch_size < 1 or t.eval_batch_size < 1:
        raise ValueError("train.batch_size and train.eval_batch_size must be >= 1")
    pts = points(config)  # make_task raises on unknown options / bad values
    for p in pts:
        sweep.seq_config(p.task, config.model, cell=p.cell, hidden_size=p.hidden_size)
    return pts, members(config)


# ----------------------------------------------------------------------------
# Running.


def solve_threshold(task: Task) -> float | None:
    """The criterion's threshold (solve_accuracy or solve_mse), for plots."""
    for name in ("solve_accuracy", "solve_mse"):
        if hasattr(task, name):
            return float(getattr(task, name))
    return None


def _point_columns(config, point: Point) -> dict[str, Any]:
    cols = {"task": point.task.name, "cell": point.cell, "hidden_size": point.hidden_size}
    if config.sweep.task_option:
        cols[config.sweep.task_option] = point.option_value
    cols["seq_len"] = point.task.seq_len
    return cols


def _member_columns(m: sweep.Member) -> dict[str, Any]:
    return {"seed": m.seed, "learning_rate": m.learning_rate, "init_scale": m.init_scale}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains every point's members; writes the tables and figures."""
    watch = common.Stopwatch()
    pts, mems = validate(config)
    out = common.prepare_workdir(workdir, config)
    t = config.train
    say = (lambda msg: print(msg, flush=True)) if t.progress else None
    member_rows, curve_rows, per_point = [], [], []
    for p in pts:
        seq_cfg = sweep.seq_config(p.task, config.model, cell=p.cell, hidden_size=p.hidden_size)
        if say:
            say(
                f"{p.task.name} (T={p.task.seq_len}) | {p.cell} H={p.hidden_size} | "
                f"{len(mems)} members | baseline: {p.task.baseline_text}"
            )
        res = sweep.train_sweep(
            p.task,
            seq_cfg,
            config.optim,
            mems,
            num_steps=t.num_steps,
            batch_size=t.batch_size,
            eval_every=t.eval_every,
            eval_batch_size=t.eval_batch_size,
            eval_seed=config.eval_seed,
            steps_per_epoch=t.steps_per_epoch,
            stop_when_solved=t.stop_when_solved,
            vectorize=config.sweep.vectorize,
            train_set_size=t.train_set_size,
            log=say,
        )
        point_cols = _point_columns(config, p)
        crit = p.task.criterion
        rows = []
        for i, m in enumerate(res.members):
            final = res.final[i]
            rows.append(
                {
                    **point_cols,
                    **_member_columns(m),
                    "solved": res.solved_step[i] is not None,
                    "steps_to_solve": res.solved_step[i],
                    "stop_step": res.stop_step[i],
                    "diverged": res.diverged[i],
                    "criterion": crit,
                    "final_criterion": final.get(crit),
                    "final_loss": final.get("loss"),
                    "baseline_loss": p.task.baseline,
                    "loss_over_baseline": _ratio(final.get("loss"), p.task.baseline),
                    "point_seconds": res.seconds,
                }
            )
        member_rows += rows
        per_chunk = t.eval_every
        for i, m in enumerate(res.members):
            for e, step in enumerate(res.eval_steps):
                chunk_loss = res.train["loss"][i, e * per_chunk : (e + 1) * per_chunk]
                if np.all(np.isnan(chunk_loss)):
                    continue  # the member had stopped
                curve_rows.append(
                    {
                        **point_cols,
                        **_member_columns(m),
                        "step": int(step),
                        "train_loss": float(np.nanmean(chunk_loss)),
                        **{f"eval_{k}": float(v[i, e]) for k, v in res.evals.items()},
                    }
                )
        per_point.append(
            {
                **point_cols,
                "steps_run": res.steps_run,
                "seconds": res.seconds,
                "compile_seconds": res.compile_seconds,
                "members": len(res.members),
                "baseline_text": p.task.baseline_text,
            }
        )
        if say:
            solved = sum(r["solved"] for r in rows)
            say(f"  -> solved {solved}/{len(rows)} in {res.seconds:.1f} s")

    table = aggregate(member_rows, config)
    common.write_csv(out / "members.csv", member_rows)
    common.write_csv(out / "curves.csv", curve_rows)
    common.write_csv(out / "table.csv", table)
    markdown = to_markdown(table)
    (out / "table.md").write_text(markdown + "\n")
    plot_curves(curve_rows, pts, config, out / "curves.png")
    has_sweep_figure = plot_sweep(member_rows, config, out / "sweep.png")
    results = {
        "task": config.task.name,
        "criterion": pts[0].task.criterion,
        "table": table,
        "members": member_rows,
        "points": per_point,
        "figures": ["curves.png"] + (["sweep.png"] if has_sweep_figure else []),
        "seconds": watch.elapsed(),
    }
    common.write_json(out / "results.json", results)
    if say:
        say("\n" + markdown + f"\n\ntotal {results['seconds']:.1f} s; results in {out}")
    return results


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _ratio(x: float | None, base: float) -> float | None:
    if x is None or not math.isfinite(x) or base <= 0:
        return None
    return x / base


def replot(workdir: str) -> list[str]:
    """Redraws the figures of a finished run from its config.json and CSVs
    (after editing the plotting code, without retraining)."""
    from pathlib import Path

    out = Path(workdir)
    config = ml_collections.ConfigDict(json.loads((out / "config.json").read_text()))
    pts = points(config)
    plot_curves(load_rows(out / "curves.csv"), pts, config, out / "curves.png")
    has_sweep = plot_sweep(load_rows(out / "members.csv"), config, out / "sweep.png")
    return ["curves.png"] + (["sweep.png"] if has_sweep else [])


def load_rows(path) -> list[dict[str, Any]]:
    """A CSV written by `run`, with numbers, booleans and None restored."""

    def value(v: str) -> Any:
        if v == "":
            return None
        if v in ("True", "False"):
            return v == "True"
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    return [{k: value(v) for k, v in row.items()} for row in common.read_csv(path)]


# ----------------------------------------------------------------------------
# Tables and figures.


def aggregate(member_rows: list[dict[str, Any]], config) -> list[dict[str, Any]]:
    """Members grouped by everything but the seed: solved k/n, steps to solve
    per seed, mean final criterion and loss / baseline (over the members that
    did not diverge; `diverged` counts the others)."""
    key_cols = ["task", "cell", "hidden_size", "seq_len"]
    if config.sweep.task_option and config.sweep.task_option not in key_cols:
        key_cols.append(config.sweep.task_option)
    key_cols += ["learning_rate", "init_scale"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in member_rows:
        groups.setdefault(tuple(r[k] for k in key_cols), []).append(r)
    table = []
    for key, rows in groups.items():
        crit = [r["final_criterion"] for r in rows if _finite(r["final_criterion"])]
        ratio = [r["loss_over_baseline"] for r in rows if _finite(r["loss_over_baseline"])]
        solved = [r["steps_to_solve"] for r in rows if r["solved"]]
        table.append(
            {
                **dict(zip(key_cols, key, strict=True)),
                "seeds": len(rows),
                "solved": f"{len(solved)}/{len(rows)}",
                "steps_to_solve": " ".join(
                    str(r["steps_to_solve"]) if r["solved"] else "-" for r in rows
                ),
                "criterion": rows[0]["criterion"],
                "final_criterion_mean": float(np.mean(crit)) if crit else None,
                "loss_over_baseline_mean": float(np.mean(ratio)) if ratio else None,
                "diverged": sum(r["diverged"] for r in rows),
                "max_steps": max(r["stop_step"] for r in rows),
                "seconds": rows[0]["point_seconds"],
            }
        )
    return table


def to_markdown(table: list[dict[str, Any]]) -> str:
    """A Markdown table of the aggregated rows (for the README)."""
    cols = [
        ("cell", "cell"),
        ("seq_len", "T"),
        ("hidden_size", "H"),
        ("learning_rate", "lr"),
        ("init_scale", "init"),
        ("solved", "solved"),
        ("steps_to_solve", "steps to solve (per seed)"),
        ("final_criterion_mean", "final {crit} (mean)"),
        ("loss_over_baseline_mean", "loss / baseline"),
        ("max_steps", "steps run"),
        ("seconds", "seconds"),
    ]
    if table and all(r["init_scale"] is None for r in table):
        cols = [c for c in cols if c[0] != "init_scale"]
    crit = table[0]["criterion"] if table else "criterion"
    head = [h.format(crit=crit) for _, h in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in table:
        lines.append("| " + " | ".join(_fmt(r[k]) for k, _ in cols) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


CELL_COLORS = {
    "rnn_tanh": "tab:red",
    "rnn_relu": "tab:pink",
    "irnn": "tab:orange",
    "gru": "tab:green",
    "lstm": "tab:blue",
}


def plot_curves(curve_rows, pts: list[Point], config, path) -> None:
    """Per task value (columns): eval loss / baseline (top, log) and the
    criterion (bottom) against steps; one colour per cell, one line per member."""
    plt = common.pyplot()
    opt = config.sweep.task_option
    values = list(dict.fromkeys(p.option_value for p in pts))
    crit = pts[0].task.criterion
    fig, axes = plt.subplots(
        2,
        len(values),
        figsize=(3.4 * len(values) + 0.8, 5.2),
        squeeze=False,
        sharex="col",
        layout="constrained",
    )
    for ax in axes[0][1:]:  # one loss scale for every column: T=400 noise is not a signal
        ax.sharey(axes[0][0])
    labelled = set()
    for p in pts:
        col = values.index(p.option_value)
        rows = [
            r
            for r in curve_rows
            if r["cell"] == p.cell
            and r["hidden_size"] == p.hidden_size
            and (not opt or r[opt] == p.option_value)
        ]
        for member in dict.fromkeys((r["seed"], r["learning_rate"], r["init_scale"]) for r in rows):
            mr = [r for r in rows if (r["seed"], r["learning_rate"], r["init_scale"]) == member]
            steps = [r["step"] for r in mr]
            label = p.cell if (p.cell, col) not in labelled else None
            labelled.add((p.cell, col))
            kw = {"color": CELL_COLORS.get(p.cell), "lw": 1.0, "alpha": 0.75, "label": label}
            ratio = [max(r["eval_loss"] / p.task.baseline, 1e-6) for r in mr]
            axes[0][col].semilogy(steps, ratio, **kw)
            axes[1][col].plot(steps, [r[f"eval_{crit}"] for r in mr], **kw)
    for col, value in enumerate(values):
        task = next(p.task for p in pts if p.option_value == value)
        title = f"{task.name}, T={task.seq_len}"
        if opt and opt != "seq_len":
            title += f" ({opt}={value})"
        axes[0][col].set_title(title, fontsize=9)
        axes[0][col].axhline(1.0, color="gray", ls=":", lw=0.8)
        threshold = solve_threshold(task)
        if threshold is not None:
            axes[1][col].axhline(threshold, color="gray", ls="--", lw=0.8)
        axes[1][col].set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[0][0].set_ylabel("eval loss / baseline")
    axes[1][0].set_ylabel(f"eval {crit} (dashed: solved)")
    common.save_figure(fig, path, dpi=80)


def plot_sweep(member_rows, config, path) -> bool:
    """Final criterion against the swept learning rate or init scale, one line
    per (cell, task value), seeds as points. Returns False (no figure) when
    neither is swept."""
    lrs = sorted({r["learning_rate"] for r in member_rows})
    scales = sorted({r["init_scale"] for r in member_rows if r["init_scale"] is not None})
    axes_to_plot = [("learning_rate", lrs)] if len(lrs) > 1 else []
    if len(scales) > 1:
        axes_to_plot.append(("init_scale", scales))
    if not axes_to_plot:
        return False
    plt = common.pyplot()
    opt = config.sweep.task_option or "seq_len"
    fig, axes = plt.subplots(
        1,
        len(axes_to_plot),
        figsize=(4.5 * len(axes_to_plot), 3.4),
        squeeze=False,
        layout="constrained",
    )
    crit = member_rows[0]["criterion"]
    for ax, (name, values) in zip(axes[0], axes_to_plot, strict=True):
        series = dict.fromkeys((r["cell"], r["hidden_size"], r[opt]) for r in member_rows)
        for cell, hidden, value in series:
            rows = [
                r
                for r in member_rows
                if (r["cell"], r["hidden_size"], r[opt]) == (cell, hidden, value)
            ]
            xs = [r[name] for r in rows]
            ys = [np.nan if r["final_criterion"] is None else r["final_criterion"] for r in rows]
            color = CELL_COLORS.get(cell)
            ax.scatter(xs, ys, s=12, color=color, alpha=0.6)
            mean = [np.nanmean([y for x, y in zip(xs, ys, strict=True) if x == v]) for v in values]
            ax.plot(values, mean, color=color, lw=1.2, label=f"{cell} H={hidden} {opt}={value}")
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"final {crit}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    common.save_figure(fig, path)
    return True


if __name__ == "__main__":
    common.cli(run, "Task runner")
