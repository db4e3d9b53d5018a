"""The lecture examples: each runs end to end and shows its slide's fact."""

import pytest

from lstm_jax.tutorials import childrens_book, dinner, weights


def test_dinner_rnn_is_perfect_and_the_feedforward_net_sits_at_its_ceiling(tmp_path):
    r = dinner.run(tmp_path, weeks=32, days=24, steps=600)
    assert r["RNN"]["accuracy"] == 1.0 and r["RNN"]["accuracy_new_days"] == 1.0
    ff = r["feed-forward"]["accuracy"]
    assert r["ceiling"] - 0.02 <= ff <= r["ceiling"] + 1e-9  # today's weather alone
    assert r["ceiling"] < 0.5
    assert (tmp_path / "dinner.png").stat().st_size > 0


def test_weight_counts_are_the_slides():
    r = weights.run()
    assert r["slide"]["MLP"] == {"W_xh": 8, "W_hy": 4, "b_h": 4, "b_y": 1}
    assert r["slide"]["RNN"] == {"W_xh": 8, "W_hh": 16, "W_hy": 4, "b_h": 4, "b_y": 1}
    assert all(c["closed_form"] == c["tree"] for c in r["checks"])
    assert {c["net"] for c in r["checks"]} == {"MLP", "RNN", "GRU", "LSTM"}


@pytest.mark.parametrize(
    "story,mistake",
    [
        ("Doug saw Doug.", "sees itself"),
        ("Jane saw Spot saw Doug saw Jane.", "run-on"),
        ("Spot. Doug. Jane.", "missing verb"),
    ],
)
def test_the_checker_finds_exactly_the_slides_mistakes(story, mistake):
    counts = childrens_book.find_mistakes(story)
    found = {k: v for k, v in counts.items() if k != "sentences" and v}
    expected = 3 if mistake == "missing verb" else 1
    assert found == {mistake: expected}


def test_a_correct_story_has_no_mistake():
    counts = childrens_book.find_mistakes("Doug saw Jane. Jane saw Spot. Spot saw Doug.")
    assert counts["sentences"] == 3
    assert sum(v for k, v in counts.items() if k != "sentences") == 0


@pytest.mark.slow
def test_childrens_book_runs_end_to_end(tmp_path):
    results = childrens_book.main(["--outdir", str(tmp_path)])
    assert (tmp_path / "lstm_gates.png").stat().st_size > 0
    assert results


def test_spell_school_classifier_learns_from_the_descriptions():
    """The NNX example (lstm_jax.tutorials.spell_school): a bidirectional
    LSTM of the library's layers over variable-length descriptions beats the
    majority class by far, as the bag-of-words baseline does."""
    from lstm_jax.tutorials import spell_school

    result = spell_school.run(spell_school.parse_args([]))
    assert result["test_spells"] == 68 and result["train_spells"] == 271
    assert result["bilstm_accuracy"] > 2 * result["majority_accuracy"], result
    assert result["bag_of_words_accuracy"] > 2 * result["majority_accuracy"], result
