"""lstm_jax.research.ablation: variants, seeds, equal tokens, resume, table."""

import json
import math

import pytest

from lstm_jax.metrics import read_jsonl
from lstm_jax.research import ablation, common


def test_parse_variant():
    assert ablation.parse_variant("wd: model.dropout=0.5, optim.name=adam, x.y=True") == (
        "wd",
        {"model.dropout": 0.5, "optim.name": "adam", "x.y": True},
    )
    with pytest.raises(ValueError, match="NAME: key=value"):
        ablation.parse_variant("model.dropout=0.5")
    with pytest.raises(ValueError, match="not key=value"):
        ablation.parse_variant("a: model.dropout")


def test_variants_budget_seeds_and_cumulative():
    config = common.load_config("configs/ablations/regularizers.py:smoke")
    runs = ablation.variants(config)
    assert [r["name"] for r in runs] == [
        "baseline@seed0", "dropout 0.5@seed0", "adam@seed0",
        "baseline@seed1", "dropout 0.5@seed1", "adam@seed1",
    ]  # fmt: skip
    assert {r["config"].train.num_steps for r in runs} == {3}
    assert runs[2]["config"].model.dropout == runs[0]["config"].model.dropout  # alone
    assert runs[2]["config"].optim.name == "adam"
    assert runs[5]["config"].seed == 1
    config.unlock()
    config.cumulative = True
    config.variants = ("window 5: train.seq_len=5", "adam: optim.name='adam'")
    stacked = ablation.variants(config)
    # the shorter window gets twice the steps: equal tokens (8 x 10 x 3 = 8 x 5 x 6)
    assert stacked[1]["config"].train.num_steps == 6
    assert stacked[2]["config"].train.seq_len == 5  # kept from the variant above
    assert stacked[2]["config"].optim.name == "adam"
    config.variants = ("typo: model.dropuot=0.5",)
    with pytest.raises(KeyError, match="dropuot"):
        ablation.variants(config)


@pytest.mark.slow
def test_ablation_runs_tabulates_and_reuses(tmp_path):
    config = common.load_config("configs/ablations/regularizers.py:smoke")
    results = ablation.run(config, str(tmp_path))
    by_variant = {r["variant"]: r for r in results["table"]}
    assert list(by_variant) == ["baseline", "dropout 0.5", "adam"]
    for variant, row in by_variant.items():
        ppl = []
        for seed in (0, 1):
            run_dir = tmp_path / "runs" / f"{variant}@seed{seed}"
            val = [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
            ppl.append(math.exp(val[-1]))
        assert row["val_perplexity_by_seed"] == pytest.approx(ppl)
        assert row["val_perplexity_mean"] == pytest.approx(sum(ppl) / 2)
    assert by_variant["baseline"]["val_perplexity_sd"] > 0  # the seeds differ
    assert (tmp_path / "ablation.png").stat().st_size > 0
    assert "dropout 0.5" in (tmp_path / "table.md").read_text()
    # a rerun reuses every finished run: nothing trains again
    again = ablation.run(config, str(tmp_path))
    assert json.dumps(again["table"]) == json.dumps(results["table"])


def test_dnd_tuned_is_the_last_row_of_the_regularizer_ablation():
    """configs/dnd.py:tuned is what the ablation measured, not a drifted copy."""
    config = common.load_config("configs/ablations/regularizers.py")
    last = ablation.variants(config)[len(config.variants)]  # seed 0, the last row
    tuned = common.load_config("configs/dnd.py:tuned")
    expected = common.load_config("configs/dnd.py")
    ablation.apply_overrides(expected, last["overrides"])
    assert tuned.to_dict() == expected.to_dict()
    assert tuned.model.weight_drop > 0 and tuned.model.tie_embeddings
