"""A resume whose config builds another training state (an optimizer setting
that adds state) is refused as such, naming the arrays, not called a damaged
checkpoint; the workdir's config.json is left as it was."""

from __future__ import annotations

import helpers
import pytest

from lstm_jax import train
from lstm_jax.checkpoint import CheckpointError, DamagedCheckpointError


def smoke(**overrides):
    base = {"train.num_steps": 4, "train.progress": False, "train.eval_every": 0}
    return helpers.smoke(**{**base, **overrides})


@pytest.mark.parametrize(
    "change", [{"optim.momentum": 0.9}, {"optim.schedule": "reduce_on_plateau"}]
)
def test_an_optimizer_that_adds_state_is_named_not_called_damage(tmp_path, change):
    wd = tmp_path / "wd"
    train.train_and_evaluate(smoke(), str(wd))
    before = (wd / "config.json").read_text()
    with pytest.raises(CheckpointError, match="holds another training state") as info:
        train.train_and_evaluate(smoke(**{"train.num_steps": 8, **change}), str(wd))
    assert not isinstance(info.value, DamagedCheckpointError)
    assert "opt_state/" in str(info.value)
    assert (wd / "config.json").read_text() == before
    # the original settings still resume
    assert train.train_and_evaluate(smoke(**{"train.num_steps": 8}), str(wd))["final_step"] == 8


def test_shape_mismatch_names_each_kind_of_difference():
    from lstm_jax.checkpoint import shape_mismatch

    saved = {"params/a": (2, 3), "params/b": (4,), "opt_state/mu": (4,)}
    assert shape_mismatch(saved, dict(saved)) == ""
    wanted = {"params/a": (2, 5), "params/b": (4,), "opt_state/nu": (4,)}
    assert shape_mismatch(saved, wanted) == (
        "the config adds: opt_state/nu; the checkpoint has, the config not: opt_state/mu; "
        "shapes differ: params/a (saved (2, 3), config (2, 5))"
    )
    many = {f"x/{i}": (1,) for i in range(6)}
    assert shape_mismatch({}, many) == "the config adds: x/0, x/1, x/2, x/3 and 2 more"
