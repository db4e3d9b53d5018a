"""scripts/plot_runs.py: the table it prints and the figure it writes."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "plot_runs.py"


def _plot_runs(monkeypatch, *argv: str) -> None:
    spec = importlib.util.spec_from_file_location("plot_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["plot_runs.py", *argv])
    module.main()


def _run_dir(path: Path, evals: list[tuple[int, float, float]]) -> Path:
    """A workdir whose metrics.jsonl holds these (step, step seconds, val loss)."""
    path.mkdir()
    rows = [{"step": 5, "train_loss": 3.0, "tokens_per_s": 100.0}]
    for step, seconds, loss in evals:
        rows.append({"step": step, "val_loss": loss, "time/startup": 2.0, "time/steps": seconds})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_reports_best_and_last_at_wall_time(tmp_path, monkeypatch, capsys):
    a = _run_dir(tmp_path / "a", [(10, 58.0, 2.0), (20, 118.0, 1.5), (30, 178.0, 1.7)])
    b = _run_dir(tmp_path / "b", [(100, 298.0, 1.6)])
    out = tmp_path / "fig" / "curves.png"
    _plot_runs(monkeypatch, "--out", str(out), "--target", "1.5", f"T=50 run={a}", f"other={b}")
    lines = capsys.readouterr().out.splitlines()
    # wall time = the sum of the time/ phases: 2 + 118 s = 2.0 min at the best point
    assert lines[2] == "| T=50 run | 1.5000 | 20 | 2.0 | 1.7000 | 30 | 3.0 |"
    assert lines[3] == "| other | 1.6000 | 100 | 5.0 | 1.6000 | 100 | 5.0 |"
    assert out.stat().st_size > 1000


def test_a_run_without_evaluations_is_named(tmp_path, monkeypatch):
    empty = _run_dir(tmp_path / "empty", [])
    with pytest.raises(SystemExit, match="has no evaluation"):
        _plot_runs(monkeypatch, "--out", str(tmp_path / "x.png"), f"e={empty}")
