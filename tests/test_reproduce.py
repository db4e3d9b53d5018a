"""Tests for the paper reproductions (lstm_jax.research.reproduce and
configs/ablations/papers/): every paper's `:smoke` config runs end to end and
writes its "paper | ours" table and figure; a sweep cut short and resumed from
its orbax checkpoint ends exactly where the uninterrupted sweep ends.
"""

import json

import jax
import numpy as np
import pytest

from lstm_jax.research import common, long_range, reproduce


@pytest.fixture(autouse=True, scope="module")
def _cheap_compiles():
    """What is computed, not how fast: fewer XLA optimisations, less CPU time."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _config(spec: str):
    """`paper[:arg]`, made small: "arjovsky2016:paper" -> its `:paper,smoke`."""
    paper, _, arg = spec.partition(":")
    return common.load_config(f"{reproduce.config_path(paper)}:{arg + ',' if arg else ''}smoke")


@pytest.mark.slow
@pytest.mark.parametrize("spec", [*reproduce.PAPERS, "arjovsky2016:paper", "hochreiter1997:paper"])
def test_smoke_config_runs_end_to_end(spec, tmp_path):
    paper = spec.partition(":")[0]
    config = _config(spec)
    results = reproduce.run(config, str(tmp_path))
    pts, members = long_range.validate(config)
    # one row per (cell, T, learning rate), each with the paper's and our columns
    n_lrs = len({m.learning_rate for m in members})
    assert len(results["table"]) == len(pts) * n_lrs
    for row in results["table"]:
        assert row["ours_solved"].endswith(f"/{len(members) // n_lrs}")
        assert row["budget_sequences"] == config.train.num_steps * config.train.batch_size
    markdown = (tmp_path / "table.md").read_text()
    assert config.paper.citation in markdown
    for note in config.paper.notes:  # every deviation ends up beside the table
        assert note in markdown
    assert json.loads((tmp_path / "table.json").read_text())["paper"] == paper
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_st3_stops_after_a_full_window_of_correct_sequences_with_a_low_mean_error():
    """[HS97]'s ST3(0.01) with batches of 1000: two steps make the 2000 most recent
    sequences. A wrong sequence anywhere in the window, or a mean error of 0.01 or
    more, keeps training; the window carries over chunks."""
    st3 = reproduce.ST3(batch_size=1000)
    assert st3.steps == 2
    # one step is not yet 2000 sequences; the second all-correct one completes the window
    j, window = st3.first_stop([], [1.0], [0.005])
    assert j is None and window == [[1.0, 0.005]]
    j, window = st3.first_stop(window, [1.0, 1.0], [0.005, 0.005])
    assert j == 0 and len(window) == 2
    # a batch with one wrong sequence (accuracy < 1) blocks the next two steps
    j, _ = st3.first_stop([], [1.0, 0.999, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
    assert j == 3
    # all correct, but the mean absolute error is not below 0.01
    j, _ = st3.first_stop([], [1.0, 1.0, 1.0], [0.01, 0.01, 0.02])
    assert j is None
    assert st3.first_stop([], [1.0, 1.0, 1.0], [0.02, 0.0099, 0.0099])[0] == 2


def test_hochreiter_paper_variant_uses_the_papers_layout_and_rule():
    config = _config("hochreiter1997:paper")
    assert config.task.options.paper_layout is True
    assert config.paper.stop_rule == "st3"
    assert "ST3(0.01) on the training sequences" in reproduce.setup_line(config)
    modern = _config("hochreiter1997")
    assert modern.task.options.paper_layout is False and modern.paper.stop_rule == "held_out"


def test_paper_results_name_points_the_config_runs():
    """The paper's rows are keyed `<cell>_T<T>`; a typo would show 'not run'."""
    for paper in reproduce.PAPERS:
        config = common.load_config(reproduce.config_path(paper))
        keys = {f"{p.cell}_T{p.option_value}" for p in long_range.points(config)}
        assert set(config.paper.results) <= keys | {"lstm_T1000"}, paper
        assert keys & set(config.paper.results), paper


def test_table_states_the_setup_as_run():
    """The paper's notes are fixed text; a command-line override (here a wider
    model, another rate and batch) must still show in the table beside them."""
    config = common.load_config(reproduce.config_path("hochreiter1997"))
    config.model.hidden_size = 128
    config.sweep.learning_rates = (1e-3,)
    config.train.batch_size = 8
    config.train.num_steps = 1000
    config.model.forget_bias = 2.0
    config.model.input_bias = -1.5
    line = reproduce.setup_line(config)
    assert "adam, lr 0.001, global_norm clip 1;" in line
    assert "batch 8, 1000 updates (8k sequences) at most; seeds 0, 1;" in line
    assert "LSTM gate biases forget 2, input -1.5;" in line
    row = {
        "cell": "lstm",
        "T": 500,
        "hidden_size": 128,
        "learning_rate": 1e-3,
        "paper": "solved",
        "paper_sequences": 209_000,
        "ours_solved": "0/2",
        "ours_sequences": [None, None],
        "ours_final_loss_over_baseline": 1.03,
        "budget_sequences": 8000,
        "seconds": 12.0,
    }
    markdown = reproduce.to_markdown(config, [row])
    assert "| lstm | 500 | 128 | 0.001 | solved | 209k | 0/2 | - - | 1.03 | 8k | 12 |" in markdown
    assert line in markdown


def test_unknown_paper_is_refused():
    with pytest.raises(ValueError, match="unknown paper 'hochreiter'"):
        reproduce.config_path("hochreiter")


@pytest.mark.slow
def test_resumed_sweep_equals_uninterrupted(tmp_path):
    """Cut after 1 of 3 evaluations, resumed from the checkpoint: the same
    parameters, curves and verdicts as one uninterrupted run. Exact equality:
    the same compiled program on the same machine, and each batch depends only
    on the member's seed and the step number."""
    config = _config("hochreiter1997")
    pts, members = long_range.validate(config)
    point = pts[0]
    whole = reproduce.train_point(config, point, members, tmp_path / "whole")

    cut_dir = tmp_path / "cut"
    first = reproduce.train_point(config, point, members, cut_dir, stop_after_chunks=1)
    assert first["start"] == config.train.eval_every < config.train.num_steps
    resumed = reproduce.train_point(config, point, members, cut_dir)

    assert resumed["eval_steps"] == whole["eval_steps"]
    assert resumed["evals"] == whole["evals"]
    assert resumed["train_loss"] == whole["train_loss"]
    assert resumed["solved_step"] == whole["solved_step"]
    for a, b in zip(
        jax.tree.leaves(resumed["params"]), jax.tree.leaves(whole["params"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # a finished point is not trained again
    again = reproduce.train_point(config, point, members, cut_dir)
    assert again["seconds"] == resumed["seconds"]


@pytest.mark.slow
def test_resume_refuses_another_sweep(tmp_path):
    config = _config("hochreiter1997")
    pts, members = long_range.validate(config)
    reproduce.train_point(config, pts[0], members, tmp_path, stop_after_chunks=1)
    with pytest.raises(ValueError, match="use a new --workdir"):
        reproduce.train_point(config, pts[0], members[:1], tmp_path)
