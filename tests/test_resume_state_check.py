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
