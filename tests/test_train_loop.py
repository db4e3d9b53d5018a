"""The train loop as an accelerator needs it: where the wall time goes, no
device read inside the step loop, the persistent compilation cache, profiler
traces, the splits checked before compute, and the CLI's exit codes and errors."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest
from helpers import ROOT, smoke

from lstm_jax import checkpoint, host, metrics, train
from lstm_jax import config as config_lib
from lstm_jax import workdir as workdir_lib

PHASES = {"data", "setup", "init", "compile_train", "compile_eval", "compile_sample"}
PHASES |= {"evals", "samples", "checkpoints", "logging", "steps", "other", "total"}


def test_summary_breaks_the_wall_time_down_by_phase(tmp_path):
    c = smoke("dnd:smoke", train__num_steps=30)  # evaluates and samples at 10, 20, 30
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"), startup_seconds=1.5)
    times = summary["time_s"]
    assert PHASES | {"startup"} <= set(times), sorted(times)
    assert times["startup"] == 1.5
    assert all(v >= 0 for v in times.values())
    parts = sum(v for k, v in times.items() if k != "total")
    assert parts == pytest.approx(times["total"], rel=0.02, abs=0.05)
    assert 0 < summary["outside_step_fraction"] < 1
    assert summary["steps_per_s"] > 0
    # every eval row carries the breakdown so far
    rows = metrics.read_jsonl(tmp_path / "wd" / "metrics.jsonl")
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all("time/steps" in r and "outside_step_fraction" in r for r in evals)
    assert evals[0]["time/evals"] <= evals[-1]["time/evals"]


@pytest.fixture
def transfer_guard_on_cpu(monkeypatch):
    """jax's transfer guard ignores the CPU backend (its arrays already live on
    the host); emulate it there: reading an array's value (float(), int(),
    jax.device_get, np.asarray through __array__) inside a block guarded with
    "disallow_explicit" raises, as it does on a GPU or TPU."""
    from jax._src import array as jax_array
    from jax._src import config as jax_config

    value = jax_array.ArrayImpl._value

    def guarded(self):
        if jax_config.transfer_guard_device_to_host.value == "disallow_explicit":
            raise RuntimeError("Disallowed device-to-host transfer (emulated on CPU)")
        return value.fget(self)

    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(guarded))


def test_the_step_loop_never_reads_the_device(tmp_path, monkeypatch, transfer_guard_on_cpu):
    """The loop's per-step block runs under a transfer guard, so training
    passing proves it reads the device only at log, eval and checkpoint steps;
    and a read slipped into the per-step code (here: the progress bar) is caught."""
    c = smoke("dnd:smoke", train__num_steps=12, train__log_every=4, train__eval_every=12)
    summary = train.train_and_evaluate(c, str(tmp_path / "ok"))
    assert summary["final_step"] == 12

    def reads_the_device(self, n, **postfix):
        float(jnp.ones(()) + n)

    monkeypatch.setattr(metrics.Progress, "update", reads_the_device)
    with pytest.raises(RuntimeError, match="(?i)disallowed device-to-host transfer"):
        train.train_and_evaluate(c, str(tmp_path / "caught"))


@pytest.mark.slow
def test_non_finite_loss_names_the_steps_read_together(tmp_path):
    c = smoke(
        "dnd:smoke",
        model__cell="rnn_relu",
        optim__name="sgd",
        optim__learning_rate=1e12,
        optim__clip_mode="none",
        train__log_every=5,
        train__eval_every=0,
        train__checkpoint_every=0,
        train__num_steps=50,
    )
    with pytest.raises(train.NonFiniteLossError, match=r"the first bad one of steps (\d+)-(\d+)"):
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not workdir_lib.has_checkpoint(tmp_path / "wd")  # nothing non-finite was saved


@pytest.mark.slow
def test_profiler_trace_for_a_range_of_steps(tmp_path):
    c = smoke("dnd:smoke", train__num_steps=6, train__eval_every=0, train__sample_length=0)
    c.train.profile_start_step = 2
    c.train.profile_num_steps = 2
    train.train_and_evaluate(c, str(tmp_path / "wd"))
    traces = list((tmp_path / "wd" / "tb" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.slow
def test_empty_validation_split_is_refused_before_compute(tmp_path, story):
    c = smoke("min_char_rnn:smoke")
    c.data.path = str(story)
    c.data.val_fraction = 0.0
    with pytest.raises(ValueError, match=r"validation split has 0 token.*train.evaluate=False"):
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()
    c.train.evaluate = False  # or turn evaluation off explicitly
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert summary["final_step"] == c.train.num_steps and summary["val_loss"] is None
    assert checkpoint.Checkpointer(tmp_path / "wd" / "checkpoints").all_steps()


def test_corpus_too_small_leaves_no_checkpoint_dir(tmp_path):
    (tmp_path / "tiny.txt").write_text("a spell of fire and ice " * 5)
    c = smoke("short_story:smoke", train__batch_size=64, train__seq_len=16)
    c.data.path = str(tmp_path / "tiny.txt")
    with pytest.raises(ValueError, match="too few for one batch"):
        train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow
def test_the_same_file_under_another_spelling_resumes(tmp_path, story, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = smoke("short_story:smoke", train__num_steps=10)
    c.data.path = str(story.relative_to(tmp_path))
    train.train_and_evaluate(c, "wd")
    c = smoke("short_story:smoke", train__num_steps=20)
    (tmp_path / "sub").mkdir()
    c.data.path = f"./sub/../{story.name}"
    assert train.train_and_evaluate(c, "wd")["start_step"] == 10
    c.data.path = str(story)  # absolute
    assert train.train_and_evaluate(c, "wd")["start_step"] == 20


def test_complete_fills_fields_an_older_config_lacks():
    old = config_lib.base_config().to_dict()
    del old["parallel"]
    del old["train"]["cpu_dots"]
    full = config_lib.complete(old)
    assert full.parallel.cpu_devices == 0 and full.train.cpu_dots == "default"
    old["train"]["batch_size"] = 7
    assert config_lib.complete(old).train.batch_size == 7


def test_compile_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(host.COMPILE_CACHE_ENV, str(tmp_path / "cc"))
    assert host.compile_cache_dir() == tmp_path / "cc"
    for off in ("off", "0", ""):
        monkeypatch.setenv(host.COMPILE_CACHE_ENV, off)
        assert host.compile_cache_dir() is None
    monkeypatch.delenv(host.COMPILE_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert host.compile_cache_dir() == tmp_path / "xdg" / "lstm_jax" / "jax"


# ---------------------------------------------------------------------------
# The command line (subprocesses: slow tier).


def run_cli(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "lstm_jax.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
    )


@pytest.mark.slow
def test_a_second_run_loads_its_compiled_steps_from_the_cache(tmp_path):
    env = {host.COMPILE_CACHE_ENV: str(tmp_path / "cache")}
    args = ["--config", "configs/dnd.py:smoke", "--config.train.num_steps=10"]
    first = run_cli(tmp_path, *args, "--workdir", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = set(os.listdir(tmp_path / "cache"))
    assert any(e.startswith("jit_train_step") for e in entries), sorted(entries)
    second = run_cli(tmp_path, *args, "--workdir", str(tmp_path / "b"), env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert set(os.listdir(tmp_path / "cache")) == entries  # every compile was a hit
    summary = json.loads(second.stdout[second.stdout.index("{") :])
    assert summary["time_s"]["startup"] > 0 and "compile_train" in summary["time_s"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.train.num_step=5"], 'Did you mean "num_steps" instead of "num_step"'),
        (["--config.model.hidden_size=abc"], "invalid literal for int()"),
        (["--config.model.cell=lstmm"], "unknown cell 'lstmm'; valid cells"),
        (
            ["--config.data.corpus=text", "--config.data.path=/nonexistent/x.txt"],
            "data path '/nonexistent/x.txt' does not exist",
        ),
        (["--workdir=README.md"], "is a file, not a directory"),
    ],
)
def test_user_errors_are_one_clean_line_and_exit_2(tmp_path, args, message):
    if not any(a.startswith("--workdir") for a in args):
        args = [*args, "--workdir", str(tmp_path / "wd")]
    out = run_cli(tmp_path, "--config", "configs/dnd.py:smoke", *args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3
    verbose = run_cli(tmp_path, "--config", "configs/dnd.py:smoke", *args, "--verbose")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
