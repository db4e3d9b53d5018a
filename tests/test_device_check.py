"""scripts/device_check_report.py: the train summary read back from the train
CLI's output, and the closing table built from a results folder."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "device_check_report", ROOT / "scripts" / "device_check_report.py"
)
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_extract_summary_finds_the_last_top_level_object():
    summary = {"final_step": 1500, "val_perplexity": 63.5, "time_s": {"steps": 4.0, "evals": 1.5}}
    text = "\n".join(
        [
            "W1128 some absl warning {not json}",
            json.dumps({"final_step": 10}, indent=2),  # an earlier object is not the summary
            "train: 100%|#####| 1500/1500",
            json.dumps(summary, indent=2),
            "",
        ]
    )
    assert report.extract_summary(text) == summary
    assert report.extract_summary("Traceback (most recent call last):\n  ...\n") is None


def _row(config, impl, tokens_per_s, batch=32):
    return {"config": config, "impl": impl, "tokens_per_s": tokens_per_s, "batch": batch}


def test_report_table(tmp_path):
    (tmp_path / "phases.txt").write_text(
        "# gpu: NVIDIA H100 80GB HBM3\ngpu_tests\t0\t41.2\ntrain\t0\t52.0\nsample\t124\t60.0\n"
    )
    (tmp_path / "pytest.txt").write_text("....\n===== 60 passed in 40.1s =====\n")
    summary = {
        "final_step": 1500,
        "val_perplexity": 63.51,
        "outside_step_fraction": 0.075,
        "time_s": {"steps": 30.0, "compile_train": 9.5, "evals": 2.0},
    }
    train_log = "train: 100%|#####| 1500/1500\n" + json.dumps(summary, indent=2) + "\n"
    (tmp_path / "train.txt").write_text(train_log)
    (tmp_path / "flax_layer.md").write_text(
        "jax 0.11.2 on gpu (NVIDIA H100 80GB HBM3)\n"
        "| shape (V, E, HxL, B, T) | our impl | Flax nn.RNN tok/s | ours tok/s | ours / Flax |\n"
        "|---|---|--:|--:|--:|\n"
        "| course_project (65, 64, 512x2, 64, 100) | cudnn | 100,000 | 400,000 | 4.00x |\n"
    )
    rows = [
        _row("course_project", "fused", 900_000.0),
        _row("course_project", "torch", 300_000.0),
        _row("course_project", "fused_bf16", 1_200_000.0),
        _row("course_project", "torch_bf16", 400_000.0),
        _row("sample", "generate", 50_000.0, batch=64),
        _row("sample", "torch", 5_000.0, batch=64),
    ]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = report.report(tmp_path)
    lines = table.splitlines()
    assert "| env | gpu: NVIDIA H100 80GB HBM3 |" in lines
    assert "| gpu tests | 41.2 s wall, ok: 60 passed in 40.1s |" in lines
    assert "| train final step | 1500, val_perplexity 63.51 |" in lines
    assert "| time outside the train step | 7.5% |" in lines
    assert "| train time (s) | steps 30.0, compile_train 9.5, evals 2.0 |" in lines
    assert "| sample CLI | 60.0 s wall, timed out |" in lines
    course_project = next(line for line in lines if line.startswith("| course_project |"))
    assert course_project.endswith("| 3.00x | 3.00x |")  # fused / torch, bf16 / torch bf16
    assert "| 64 streams | 50.0k | 5,000 | 10.00x |" in lines
    flax_row = "| course_project (65, 64, 512x2, 64, 100) | cudnn | 100,000 | 400,000 | 4.00x |"
    assert flax_row in lines
    assert "| flax layer | not run |" in lines  # phases.txt has no flax_layer line


def test_report_of_an_empty_folder(tmp_path):
    table = report.report(tmp_path)
    assert "| gpu tests | not run: no output |" in table
    assert "| train summary | none printed (see train.txt) |" in table


@pytest.mark.parametrize("rc, text", [(5, "none collected"), (1, "exit 1"), (137, "timed out")])
def test_phase_status(rc, text):
    assert report._phase({"gpu_tests": (rc, 3.0)}, "gpu_tests") == f"3.0 s wall, {text}"
