"""Malformed workdir files give one clear error naming the file (the CLI turns
CheckpointError into one line and exit 2), and restore_fallback falls back past
any unreadable newest step."""

from __future__ import annotations

import json
import pathlib
import shutil

import helpers
import pytest

from lstm_jax import config as config_lib
from lstm_jax import sample, train
from lstm_jax import workdir as workdir_lib
from lstm_jax.checkpoint import CheckpointError, DamagedCheckpointError

BASE = {
    "train.progress": False,
    "train.eval_every": 0,
    "train.checkpoint_every": 2,
    "train.num_steps": 4,
    "train.keep_checkpoints": 3,
}


def smoke(**overrides):
    return helpers.smoke(**{**BASE, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    wd = tmp_path_factory.mktemp("trained") / "wd"
    train.train_and_evaluate(smoke(), str(wd))
    return wd


@pytest.fixture
def workdir(trained, tmp_path) -> pathlib.Path:
    wd = tmp_path / "wd"
    shutil.copytree(trained, wd)
    return wd


@pytest.mark.parametrize("text", ["[]", '"str"', "null", '{"model": 5}', '{"seed": "x"}', "{}"])
def test_a_config_json_of_the_wrong_shape_is_named(workdir, text):
    (workdir / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"config\.json is not an lstm_jax config") as e:
        train.train_and_evaluate(smoke(**{"train.num_steps": 6}), str(workdir))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["[]", "{}", '{"step": "x", "config": 5}'])
def test_a_malformed_meta_is_damage_with_a_fix_that_works(workdir, text):
    (workdir / "checkpoints" / "4" / "meta" / "metadata").write_text(text)
    with pytest.raises(DamagedCheckpointError, match="restore_fallback=True") as e:
        train.train_and_evaluate(smoke(**{"train.num_steps": 6}), str(workdir))
    assert "checkpoints/4" in str(e.value)
    # the advice, followed: resumes from step 2, sets 4 aside, and finishes
    summary = train.train_and_evaluate(
        smoke(**{"train.num_steps": 6, "train.restore_fallback": True}), str(workdir)
    )
    assert summary["start_step"] == 2 and summary["final_step"] == 6
    assert (workdir / "checkpoints-damaged" / "4").is_dir()


def test_fallback_passes_an_empty_newest_step_directory(workdir):
    (workdir / "checkpoints" / "9").mkdir()
    summary = train.train_and_evaluate(
        smoke(**{"train.num_steps": 12, "train.restore_fallback": True}), str(workdir)
    )
    assert summary["start_step"] == 4 and summary["final_step"] == 12


def test_meta_fields_are_checked(workdir):
    path = workdir / "checkpoints" / "4" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    del meta["data_state"]
    path.write_text(json.dumps(meta))
    with pytest.raises(DamagedCheckpointError, match="malformed: data_state"):
        train.train_and_evaluate(smoke(**{"train.num_steps": 6}), str(workdir))


def test_a_dangling_workdir_link_is_named(tmp_path):
    link = tmp_path / "wd"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(NotADirectoryError, match="symbolic link to .*gone, which does not exist"):
        workdir_lib.check_workdir(link)
    with pytest.raises(CheckpointError, match="symbolic link to .*gone, which does not exist"):
        sample.restore(link)


@pytest.mark.parametrize(
    "field, value",
    [
        ("eval_every", -5),
        ("checkpoint_every", -1),
        ("keep_checkpoints", -1),
        ("keep_checkpoints", 0),
        ("max_eval_batches", -1),
        ("sample_length", -3),
        ("watchdog_s", -1),
    ],
)
def test_counts_and_intervals_refuse_bad_values(field, value):
    c = smoke(**{f"train.{field}": value})
    with pytest.raises(ValueError, match=f"train.{field} must be >= "):
        config_lib.validate(c)
