"""Tests for the task runner (lstm_jax.research.long_range), the vmapped sweeps
(lstm_jax.research.sweep) and the course project's study (lstm_jax.research.study).

The central check: K members trained in one vmapped program end with the same
parameters as K separate ordinary runs with the same seeds, learning rates and
init scales. Then every `:smoke` config runs end to end and writes its files.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from lstm_jax.config import base_config as lm_base_config
from lstm_jax.research import common, long_range, study, sweep
from lstm_jax.research.synthetic import make_task


@pytest.fixture(autouse=True, scope="module")
def _cheap_compiles():
    """These tests check what is computed, not how fast: skipping most XLA
    optimisations cuts the (compile-bound) CPU time. Restored after."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _optim(lr: float) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(lm_base_config().optim.to_dict())
    c.name, c.learning_rate, c.clip_value = "adam", lr, 1.0
    return c


TASK = make_task("adding_hochreiter", seq_len=24)
MODEL = ml_collections.ConfigDict({"cell": "lstm", "hidden_size": 8, "forget_bias": 1.0})
# the members differ in seed, learning rate and init scale
MEMBERS = [
    sweep.Member(seed=0, learning_rate=1e-2, init_scale=0.08),
    sweep.Member(seed=1, learning_rate=3e-2, init_scale=0.3),
]
STEPS, BATCH = 4, 4


@pytest.fixture(scope="module")
def separate_runs():
    """The K members as K ordinary runs: own config, own optimizer, own loop."""
    cfg = sweep.seq_config(TASK, MODEL)
    return [
        sweep.train_single(TASK, cfg, _optim(1e-2), m, num_steps=STEPS, batch_size=BATCH)
        for m in MEMBERS
    ]


# float32 after a few Adam steps: batched and separate programs may sum in a
# different order (XLA's CPU thread pool splits work by load), which moves a
# value by ~1e-5 relative; a wrong seed, rate or init scale moves it by 1e-2+.
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("vectorize", ["vmap", "map"])
def test_sweep_equals_separate_runs(separate_runs, vectorize):
    cfg = sweep.seq_config(TASK, MODEL)
    res = sweep.train_sweep(
        TASK,
        cfg,
        _optim(1e-2),  # the base rate; member 3 runs at 3x through the update scale
        MEMBERS,
        num_steps=STEPS,
        batch_size=BATCH,
        eval_every=2,
        eval_batch_size=8,
        stop_when_solved=False,
        vectorize=vectorize,
    )
    assert res.steps_run == STEPS and res.eval_steps.tolist() == [2, 4]
    assert res.train["loss"].shape == (len(MEMBERS), STEPS)
    for i, (params, losses) in enumerate(separate_runs):
        np.testing.assert_allclose(res.train["loss"][i], losses, **TOL)
        mine = sweep.member_params(res.params, i)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(a, b, **TOL)
    assert not np.allclose(res.train["loss"][0], res.train["loss"][1])


def test_a_fixed_training_set_is_fixed():
    """train_set_size N: every batch's rows are among N sequences, the same N at
    every step, and each is the sequence its index gives (Arjovsky et al.'s
    100k fixed sequences)."""
    task = make_task("copy", gap=5, copy_len=3, n_symbols=4)
    _, data_key = sweep.member_keys(0)
    rows = {
        tuple(np.asarray(x).ravel())
        for s in range(20)
        for x in sweep.sample_batch(task, data_key, s, 8, train_set_size=3).inputs
    }
    assert len(rows) == 3  # 160 rows drawn, 3 distinct sequences
    fresh = {
        tuple(np.asarray(x).ravel())
        for s in range(4)
        for x in sweep.sample_batch(task, data_key, s, 8).inputs
    }
    assert len(fresh) > 20
    other_seed = sweep.sample_batch(task, sweep.member_keys(1)[1], 0, 8, train_set_size=3)
    assert not {tuple(np.asarray(x).ravel()) for x in other_seed.inputs} <= rows


@pytest.mark.slow
def test_a_fixed_set_sweep_equals_separate_runs():
    cfg = sweep.seq_config(TASK, MODEL)
    kw = dict(num_steps=STEPS, batch_size=BATCH, train_set_size=16)
    res = sweep.train_sweep(
        TASK,
        cfg,
        _optim(1e-2),
        MEMBERS[:1],
        eval_every=2,
        eval_batch_size=8,
        stop_when_solved=False,
        **kw,
    )
    params, losses = sweep.train_single(TASK, cfg, _optim(1e-2), MEMBERS[0], **kw)
    np.testing.assert_allclose(res.train["loss"][0], losses, **TOL)
    fresh, _ = sweep.train_single(TASK, cfg, _optim(1e-2), MEMBERS[0], STEPS, BATCH)
    assert not np.allclose(
        jax.tree.leaves(fresh)[0], jax.tree.leaves(sweep.member_params(res.params, 0))[0]
    )


@pytest.mark.slow
def test_solved_member_stops_and_program_ends():
    """A member that meets its criterion stops updating at that evaluation; the
    program ends when all have stopped, long before the step cap."""
    task = make_task("adding_le", seq_len=12, solve_mse=10.0)  # solved at once
    cfg = sweep.seq_config(task, MODEL)
    members = sweep.grid([0, 1], [1e-2])
    res = sweep.train_sweep(
        task,
        cfg,
        _optim(1e-2),
        members,
        num_steps=20,
        batch_size=BATCH,
        eval_every=2,
        eval_batch_size=8,
    )
    assert res.solved_step == [2, 2] and res.stop_step == [2, 2] and res.steps_run == 2
    params, _ = sweep.train_single(task, cfg, _optim(1e-2), members[1], 2, BATCH)
    for a, b in zip(
        jax.tree.leaves(sweep.member_params(res.params, 1)), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_allclose(a, b, **TOL)


def test_grid_and_errors():
    g = sweep.grid([0, 1], [1e-3, 1e-2], [0.1, 0.2])
    assert (
        len(g) == 8 and g[0] == sweep.Member(0, 1e-3, 0.1) and g[-1] == sweep.Member(1, 1e-2, 0.2)
    )
    assert sweep.grid([3], [1e-3], [])[0].init_scale is None
    with pytest.raises(ValueError, match="learning rates"):
        sweep.grid([0], [0.0])
    with pytest.raises(ValueError, match="init scales"):
        sweep.grid([0], [1e-3], [None, 0.1])
    with pytest.raises(ValueError, match="vectorize"):
        sweep.check_vectorize("pmap")


SMOKE_CONFIGS = [
    "adding.py:smoke",
    "adding.py:le,smoke",
    "copy.py:smoke",
    "temporal_order.py:smoke",
    "timer.py:smoke",
    "long_range.py:smoke",
    "long_range.py:copy,smoke",
]


@pytest.mark.slow
@pytest.mark.parametrize("spec", SMOKE_CONFIGS)
def test_smoke_configs_run_end_to_end(spec, tmp_path):
    config = common.load_config(f"configs/ablations/{spec}")
    pts, members = long_range.validate(config)
    results = long_range.run(config, str(tmp_path))
    k, p = len(members), len(pts)
    # one table row per point and (learning rate, init scale): seeds are aggregated
    assert len(results["members"]) == k * p
    assert len(results["table"]) == p * k // len(config.sweep.seeds)
    for name in ("members.csv", "curves.csv", "table.csv", "table.md", "results.json"):
        assert (tmp_path / name).is_file(), name
    png = tmp_path / "curves.png"
    assert png.is_file() and png.stat().st_size < 200_000
    rows = common.read_csv(tmp_path / "members.csv")
    assert {
        "cell",
        "seed",
        "solved",
        "steps_to_solve",
        "final_criterion",
        "loss_over_baseline",
    } <= (set(rows[0]))
    crit = pts[0].task.criterion
    for r in results["members"]:
        assert r["criterion"] == crit and math.isfinite(r["final_loss"])
        assert r["stop_step"] == config.train.num_steps or r["solved"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == config.task.name
    curves = common.read_csv(tmp_path / "curves.csv")
    assert f"eval_{crit}" in curves[0] and "train_loss" in curves[0]
    swept = len(config.sweep.learning_rates) > 1 or len(config.sweep.init_scales) > 1
    assert ("sweep.png" in results["figures"]) == swept
    if swept:  # adding (learning rates) and timer (init scales): the sweep figure
        assert (tmp_path / "sweep.png").stat().st_size < 200_000


@pytest.mark.parametrize(
    "override, match",
    [
        ({"task.options.seq_len": 5}, "seq_len must be >= 22"),
        ({"model.cell": "lstmm"}, "unknown cell"),
        ({"optim.name": "sgdd"}, "unknown optimizer"),
        ({"train.num_steps": 5}, "multiple of"),
        ({"sweep.vectorize": "pmap"}, "vectorize"),
        ({"sweep.task_option": "seq_len"}, "go together"),
    ],
)
def test_bad_configs_fail_before_compute(override, match, tmp_path):
    config = common.load_config("configs/ablations/adding.py:smoke")
    with config.unlocked():
        for key, value in override.items():
            section, _, field = key.rpartition(".")
            target = config
            for part in section.split("."):
                target = target[part]
            target[field] = value
    with pytest.raises(ValueError, match=match):
        long_range.run(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # refused before the workdir is made


def test_unknown_task_option_and_config_argument():
    config = common.load_config("configs/ablations/copy.py:smoke")
    with config.unlocked():
        config.task.options.gapp = 3
    with pytest.raises(ValueError, match="unknown option"):
        long_range.validate(config)
    with pytest.raises(ValueError, match="valid"):
        common.load_config("configs/ablations/long_range.py:fast")
    with pytest.raises(AttributeError):  # locked: a typo in an override fails
        config = common.load_config("configs/ablations/timer.py")
        config.train.num_step = 3


def test_study_variants_share_the_baseline():
    config = common.load_config("configs/ablations/course_project_study.py")
    runs = study.variants(config)
    names = [r["name"] for r in runs]
    # 6 optimizers + 3 windows + 2 depths, the baseline (rmsprop 1e-3, 15, 3) shared
    assert len(runs) == 9 and names[0] == "baseline"
    assert sorted(a for a, _ in runs[0]["axes"]) == sorted(study.AXES)
    by_name = {r["name"]: r["config"] for r in runs}
    assert by_name["optimizer=sgd:0.1"].optim.name == "sgd"
    assert by_name["optimizer=sgd:0.1"].optim.momentum == 0.0
    assert by_name["num_layers=2"].model.num_layers == 2
    for r in runs:  # same training words for every variant
        t = r["config"].train
        assert (
            abs(t.num_steps * t.batch_size * t.seq_len - config.train_tokens)
            <= t.batch_size * t.seq_len
        )
    assert by_name["seq_len=3"].train.num_steps == 5 * by_name["baseline"].train.num_steps
    with pytest.raises(ValueError, match="NAME:LEARNING_RATE"):
        study.parse_optimizer("sgd")


@pytest.mark.slow
def test_study_smoke_runs_and_reuses(tmp_path):
    config = common.load_config("configs/ablations/course_project_study.py:smoke")
    results = study.run(config, str(tmp_path))
    assert results["variants"] == ["baseline"]
    assert sorted(r["axis"] for r in results["table"]) == sorted(study.AXES)
    for r in results["table"]:
        assert math.isfinite(r["val_loss"]) and r["val_perplexity"] == pytest.approx(
            math.exp(r["val_loss"])
        )
    assert (tmp_path / "study.png").stat().st_size < 200_000
    assert not (tmp_path / "runs" / "baseline" / "checkpoints").exists()
    again = study.run(config, str(tmp_path))  # finished runs are reused, not retrained
    assert sorted(again["reused"]) == sorted(results["variants"])
    assert again["table"][0]["val_loss"] == results["table"][0]["val_loss"]


@pytest.mark.slow
def test_clis(tmp_path):
    """Both command lines parse their flags (the study shares lstm_jax.train's
    --config/--workdir); the task runner runs a smoke config end to end."""
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # cheap compiles
    done = subprocess.run(
        [
            sys.executable, "-m", "lstm_jax.research.long_range",
            "--config", "configs/ablations/timer.py:smoke", "--workdir", str(tmp_path / "t"),
            "--config.sweep.init_scales=()", "--config.train.num_steps=2",
        ],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["task"] == "timer" and (tmp_path / "t" / "table.md").is_file()
    bad = subprocess.run(
        [
            sys.executable, "-m", "lstm_jax.research.study",
            "--config", "configs/ablations/course_project_study.py:smoke",
            "--workdir", str(tmp_path / "s"),
            "--config.nope=1",
        ],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "nope" in bad.stderr and "DuplicateFlag" not in bad.stderr
    assert not (tmp_path / "s").exists()  # refused while parsing, before any compute
