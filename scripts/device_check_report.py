"""The short table that ends `scripts/device_check.sh`, read from its results folder.

    python scripts/device_check_report.py RESULTS_DIR            # the table
    python scripts/device_check_report.py --extract-summary FILE  # the train CLI's
                                                                  # final JSON summary

Reads phases.txt (environment lines "# ..." and one "name<TAB>exit status<TAB>
seconds" line per step), pytest.txt, train.txt (the train CLI's final JSON
summary), flax_layer.md, bench.jsonl. Standard library only: it runs beside
any interpreter.
"""

from __future__ import annotations

import json
import pathlib
import sys

TRAIN_IMPLS = ("fused", "cudnn", "fused_bf16", "torch", "torch_bf16")


def extract_summary(text: str) -> dict | None:
    """The last top-level JSON object printed (indented) in `text`, which is how
    `python -m lstm_jax.train` ends its stdout; None if there is none."""
    lines = text.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start] != "{":
            continue
        for end in range(start + 1, len(lines)):
            if lines[end] == "}":
                try:
                    return json.loads("\n".join(lines[start : end + 1]))
                except json.JSONDecodeError:
                    break
    return None


def read_phases(results: pathlib.Path) -> tuple[list[str], dict[str, tuple[int, float]]]:
    env, phases = [], {}
    path = results / "phases.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("#"):
            env.append(line.lstrip("# "))
        elif line.count("\t") == 2:
            name, rc, seconds = line.split("\t")
            phases[name] = (int(rc), float(seconds))
    return env, phases


def _phase(phases: dict[str, tuple[int, float]], name: str) -> str:
    if name not in phases:
        return "not run"
    rc, seconds = phases[name]
    status = "ok" if rc == 0 else ("timed out" if rc in (124, 137) else f"exit {rc}")
    if name == "gpu_tests" and rc == 5:
        status = "none collected"  # pytest's exit status when no test is marked gpu
    return f"{seconds:.1f} s wall, {status}"


def _pytest_line(results: pathlib.Path) -> str:
    path = results / "pytest.txt"
    lines = (
        [ln.strip("= ") for ln in path.read_text().splitlines() if ln.strip()]
        if path.exists()
        else []
    )
    return lines[-1] if lines else "no output"


def _train_lines(summary: dict | None) -> list[str]:
    if not summary:
        return ["| train summary | none printed (see train.txt) |"]
    metric = next((k for k in ("val_perplexity", "val_bpc") if k in summary), None)
    out = [
        f"| train final step | {summary.get('final_step')}"
        + (f", {metric} {summary[metric]:.2f}" if metric else "")
        + " |"
    ]
    if "outside_step_fraction" in summary:
        out.append(
            f"| time outside the train step | {100 * summary['outside_step_fraction']:.1f}% |"
        )
    times = summary.get("time_s")
    if isinstance(times, dict) and times:
        top = sorted(
            ((k, v) for k, v in times.items() if isinstance(v, int | float) and k != "total"),
            key=lambda kv: -kv[1],
        )
        out.append("| train time (s) | " + ", ".join(f"{k} {v:.1f}" for k, v in top[:8]) + " |")
    return out


def _rate(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value / 1e3:,.1f}k" if value >= 1e4 else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else ""


def bench_tables(rows: list[dict]) -> list[str]:
    """Train tokens/s per config and implementation; sampling chars/s per stream count."""
    out = []
    train = {}
    for r in rows:
        if r["config"] != "sample":
            train.setdefault(r["config"], {})[r["impl"]] = r["tokens_per_s"]
    if train:
        out += [
            "",
            "| train tokens/s | "
            + " | ".join(TRAIN_IMPLS)
            + " | fused / torch | bf16 / torch bf16 |",
            "|---|" + "--:|" * (len(TRAIN_IMPLS) + 2),
        ]
        for config, rates in train.items():
            cells = [_rate(rates.get(i)) for i in TRAIN_IMPLS]
            out.append(
                f"| {config} | "
                + " | ".join(cells)
                + f" | {_ratio(rates.get('fused'), rates.get('torch'))}"
                + f" | {_ratio(rates.get('fused_bf16'), rates.get('torch_bf16'))} |"
            )
    sample = [r for r in rows if r["config"] == "sample"]
    if sample:
        out += ["", "| sampling chars/s | ours (generate) | torch step loop | ours / torch |"]
        out.append("|---|--:|--:|--:|")
        for streams in dict.fromkeys(r["batch"] for r in sample):
            ours = next(
                (
                    r["tokens_per_s"]
                    for r in sample
                    if r["batch"] == streams and r["impl"] == "generate"
                ),
                None,
            )
            peer = next(
                (
                    r["tokens_per_s"]
                    for r in sample
                    if r["batch"] == streams and r["impl"].startswith("torch")
                ),
                None,
            )
            out.append(
                f"| {streams} streams | {_rate(ours)} | {_rate(peer)} | {_ratio(ours, peer)} |"
            )
    return out


def report(results: pathlib.Path) -> str:
    env, phases = read_phases(results)
    train_log = results / "train.txt"
    summary = extract_summary(train_log.read_text(errors="replace")) if train_log.exists() else None
    bench_path = results / "bench.jsonl"
    rows = (
        [json.loads(ln) for ln in bench_path.read_text().splitlines()]
        if bench_path.exists()
        else []
    )
    out = ["| check | result |", "|---|---|"]
    out += [f"| env | {line} |" for line in env]
    out.append(f"| gpu tests | {_phase(phases, 'gpu_tests')}: {_pytest_line(results)} |")
    out.append(f"| train (headline dnd run) | {_phase(phases, 'train')} |")
    out += _train_lines(summary)
    out.append(f"| sample CLI | {_phase(phases, 'sample')} |")
    out.append(f"| flax layer | {_phase(phases, 'flax_layer')} |")
    out.append(f"| bench | {_phase(phases, 'bench')}, {len(rows)} rows (bench.md has the notes) |")
    return "\n".join(out + flax_table(results) + bench_tables(rows))


def flax_table(results: pathlib.Path) -> list[str]:
    """The table rows `python -m benchmarks.flax_layer` printed (our LSTM
    against Flax's nn.RNN(OptimizedLSTMCell) in the same Flax model)."""
    path = results / "flax_layer.md"
    if not path.exists():
        return []
    table = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith("|")]
    return ["", "Our layer in a Flax model against Flax's own layer:", "", *table] if table else []


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "--extract-summary":
        summary = extract_summary(pathlib.Path(argv[1]).read_text(errors="replace"))
        print(json.dumps(summary, indent=2) if summary is not None else "")
    elif len(argv) == 1:
        print(report(pathlib.Path(argv[0])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
