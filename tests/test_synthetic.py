"""Tests for lstm_jax.research.synthetic: each task's definition, re-derived with NumPy
from the sampled inputs, plus loss/metrics/solved, determinism, jit/vmap and the
registry's errors."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.research import synthetic as T
from lstm_jax.research.synthetic import TASKS, TaskBatch, make_task

KEY = jax.random.key(0)

# Small instances for the generic (parametrized) tests.
SMALL = {
    "adding_hochreiter": {"seq_len": 24},
    "adding_le": {"seq_len": 12},
    "copy": {"copy_len": 3, "n_symbols": 4, "gap": 5},
    "temporal_order": {"seq_len": 20},
    "timer": {"seq_len": 16},
}


@pytest.fixture(autouse=True, scope="module")
def _cheap_compiles():
    """These tests check what the samplers compute, not how fast: skipping most
    XLA optimisations halves the file's (compile-bound) CPU time. Restored after."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# Eager JAX compiles every primitive separately (about 1 s per new task and
# shape on a small CPU), so the tests sample and score through cached jitted
# functions; `test_eager_matches_jit` checks that eager and jitted calls agree.
@functools.cache
def _sampler(task: T.Task, batch_size: int):
    return jax.jit(functools.partial(task.sample, batch_size=batch_size))


def sample(task: T.Task, key: jax.Array, batch_size: int) -> TaskBatch:
    return _sampler(task, batch_size)(key)


@functools.cache
def _jit_metrics(task: T.Task):
    return jax.jit(task.metrics)


def metrics(task: T.Task, outputs: jax.Array, batch: TaskBatch) -> dict[str, jax.Array]:
    return _jit_metrics(task)(outputs, batch)


def _np(batch: TaskBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(batch.inputs), np.asarray(batch.targets), np.asarray(batch.mask)


def _perfect_outputs(task: T.Task, batch: TaskBatch) -> jax.Array:
    """Outputs a perfect model would give, in the shape `loss` expects."""
    if task.kind == "regression":
        return batch.targets
    return 20.0 * jax.nn.one_hot(batch.targets, task.output_dim)


# ----------------------------------------------------------------------------
# Shapes and registry
# ----------------------------------------------------------------------------


def test_registry_holds_the_five_tasks():
    assert sorted(TASKS) == ["adding_hochreiter", "adding_le", "copy", "temporal_order", "timer"]
    for name, cls in TASKS.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_and_dtypes(name):
    task = make_task(name, **SMALL[name])
    b, t = 8, task.seq_len
    batch = sample(task, KEY, b)
    assert batch.inputs.shape == (b, t, task.input_dim)
    assert batch.inputs.dtype == jnp.float32
    assert batch.mask.dtype == jnp.float32
    last = task.output_mode == "last"
    assert task.output_mode in ("last", "all")
    assert batch.mask.shape == ((b,) if last else (b, t))
    if task.kind == "regression":
        assert batch.targets.dtype == jnp.float32
        assert batch.targets.shape == ((b, task.output_dim) if last else (b, t, task.output_dim))
    else:
        assert batch.targets.dtype == jnp.int32
        assert batch.targets.shape == ((b,) if last else (b, t))
        assert int(batch.targets.min()) >= 0 and int(batch.targets.max()) < task.output_dim
    assert task.criterion in metrics(task, _perfect_outputs(task, batch), batch)
    assert isinstance(task.baseline, float) and task.baseline > 0
    assert isinstance(task.baseline_text, str) and task.baseline_text


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="unknown task 'adding'") as err:
        make_task("adding")
    for name in TASKS:
        assert name in str(err.value)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="unknown option") as err:
        make_task("copy", seq_len=100, gap=10)
    msg = str(err.value)
    assert "seq_len" in msg.split("valid options")[0]
    for option in ("copy_len", "n_symbols", "gap", "score_blanks", "solve_accuracy"):
        assert option in msg.split("valid options")[1]


@pytest.mark.parametrize(
    "name, options, pattern",
    [
        ("adding_hochreiter", {"seq_len": 21}, "seq_len must be >= 22"),
        ("adding_hochreiter", {"seq_len": "100"}, "seq_len must be an int"),
        ("adding_hochreiter", {"paper_layout": 1}, "paper_layout must be a bool"),
        ("adding_le", {"seq_len": 1}, "seq_len must be >= 2"),
        ("adding_le", {"solve_mse": 0}, "solve_mse must be a positive"),
        ("copy", {"gap": 0}, "gap must be >= 1"),
        ("copy", {"solve_accuracy": 1.5}, "solve_accuracy must be a number"),
        ("temporal_order", {"seq_len": 9}, "seq_len must be >= 10"),
        ("timer", {"seq_len": 10, "max_duration": 11}, "max_duration .* must be <= seq_len"),
        ("timer", {"max_duration": 2.5}, "max_duration must be an int"),
    ],
)
def test_bad_option_values(name, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_task(name, **options)


def test_tasks_are_hashable_values():
    assert make_task("timer", seq_len=40) == make_task("timer", seq_len=40, max_duration=20)
    assert hash(make_task("copy")) == hash(make_task("copy"))
    assert make_task("adding_le").options() == {"seq_len": 150, "solve_mse": 0.01}


# ----------------------------------------------------------------------------
# Determinism, jit and vmap
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_deterministic_per_key_and_different_across_keys(name):
    task = make_task(name, **SMALL[name])
    a, b = sample(task, KEY, 8), sample(task, KEY, 8)
    c = sample(task, jax.random.key(1), 8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_jit_and_vmap(name):
    task = make_task(name, **SMALL[name])
    batch = sample(task, KEY, 8)  # jax.jit(functools.partial(task.sample, batch_size=8))
    keys = jax.random.split(KEY, 3)
    stacked = jax.jit(jax.vmap(lambda k: task.sample(k, 8)))(keys)  # leaves [3, 8, ...]
    for i in range(3):
        one = sample(task, keys[i], 8)
        for x, y in zip(one, stacked, strict=True):
            np.testing.assert_array_equal(x, y[i])

    jit_metrics = metrics(task, _perfect_outputs(task, batch), batch)
    assert task.solved(jit_metrics)


# Eager dispatch compiles each primitive on first use (several seconds per task on
# a loaded 2-core machine), so eager == jit is checked on the two samplers with
# the most branches only.
@pytest.mark.parametrize(
    "name, options",
    [("adding_hochreiter", {"seq_len": 24, "paper_layout": True}), ("temporal_order", {})],
)
def test_eager_matches_jit(name, options):
    task = make_task(name, **options)
    eager = task.sample(KEY, 8)
    jitted = jax.jit(task.sample, static_argnums=1)(KEY, 8)
    for x, y in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["adding_hochreiter", "adding_le", "temporal_order"])
def test_last_step_tasks_accept_full_output_sequence(name):
    task = make_task(name, **SMALL[name])
    batch = sample(task, KEY, 8)
    seq = jax.random.normal(jax.random.key(3), (8, task.seq_len, task.output_dim))
    loss = jax.jit(task.loss)
    np.testing.assert_allclose(loss(seq, batch), loss(seq[:, -1], batch), rtol=1e-6)


# ----------------------------------------------------------------------------
# 1. adding_hochreiter
# ----------------------------------------------------------------------------


def _two_marks(markers: np.ndarray) -> np.ndarray:
    """`[B, T]` markers -> `[B, 2]` sorted positions of the 1.0 marks (two per row)."""
    is_mark = markers == 1.0
    np.testing.assert_array_equal(is_mark.sum(axis=1), 2)
    return np.nonzero(is_mark)[1].reshape(-1, 2)


def test_adding_hochreiter_definition():
    task = make_task("adding_hochreiter", seq_len=40)  # p1 in [0, 10), p2 in [10, 20)
    x, y, mask = _np(sample(task, KEY, 4096))
    values, markers = x[..., 0], x[..., 1]  # [B, T]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert np.all((values >= -1) & (values <= 1))
    np.testing.assert_array_equal(mask, 1.0)
    p1, p2 = _two_marks(markers).T
    assert set(p1) == set(range(10)) and set(p2) == set(range(10, 20))
    rows = np.arange(len(x))
    expected = 0.5 + (values[rows, p1] + values[rows, p2]) / 4.0
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-6)


def test_adding_hochreiter_paper_layout():
    task = make_task("adding_hochreiter", seq_len=30, paper_layout=True)  # T/2 = 15
    x, y, _ = _np(sample(task, KEY, 1024))
    values, markers = x[..., 0], x[..., 1]
    pos = _two_marks(markers)
    assert np.all(pos[:, 0] < 10) and np.all(pos[:, 1] < 15)  # one of the first ten; [0, T/2)
    assert np.any(pos[:, 1] < 10)  # the second mark may fall among the first ten too
    first_marked = pos[:, 0] == 0
    assert np.any(first_marked)
    np.testing.assert_array_equal(markers[:, 0], np.where(first_marked, 1.0, -1.0))
    np.testing.assert_array_equal(markers[:, -1], -1.0)
    interior = markers[:, 1:-1]
    assert np.all(interior[interior != 1.0] == 0.0)
    np.testing.assert_array_equal(values[first_marked, 0], 0.0)  # marked first pair zeroed
    rows = np.arange(len(x))
    expected = 0.5 + (values[rows, pos[:, 0]] + values[rows, pos[:, 1]]) / 4.0
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-6)
    assert task.baseline < make_task("adding_hochreiter", seq_len=30).baseline


def test_adding_hochreiter_metrics():
    task = make_task("adding_hochreiter", seq_len=40)
    batch = sample(task, KEY, 4096)
    perfect = metrics(task, batch.targets, batch)
    assert float(perfect["accuracy"]) == 1.0 and task.solved(perfect)
    assert float(perfect["loss"]) == 0.0
    within = metrics(task, batch.targets + 0.03, batch)  # |error| 0.03 < 0.04: correct
    assert float(within["accuracy"]) == 1.0
    np.testing.assert_allclose(within["mean_abs_error"], 0.03, rtol=1e-4)
    outside = metrics(task, batch.targets - 0.05, batch)
    assert float(outside["accuracy"]) == 0.0 and not task.solved(outside)

    constant = metrics(task, jnp.full_like(batch.targets, 0.5), batch)
    assert task.baseline == pytest.approx(1 / 24)
    assert float(constant["mse"]) == pytest.approx(1 / 24, abs=0.003)
    assert float(constant["loss"]) == pytest.approx(float(constant["mse"]))
    assert 0.1 < float(constant["accuracy"]) < 0.25  # P(|X1 + X2| < 0.16) ~ 0.16
    assert not task.solved(constant)


# ----------------------------------------------------------------------------
# 2. adding_le
# ----------------------------------------------------------------------------


def test_adding_le_definition():
    task = make_task("adding_le", seq_len=31)  # halves [0, 15) and [15, 31)
    x, y, _ = _np(sample(task, KEY, 8192))
    values, markers = x[..., 0], x[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert np.all((values >= 0) & (values <= 1))
    p1, p2 = _two_marks(markers).T
    assert set(p1) == set(range(15)) and set(p2) == set(range(15, 31))
    rows = np.arange(len(x))
    np.testing.assert_allclose(y[:, 0], values[rows, p1] + values[rows, p2], rtol=1e-6)


def test_adding_le_constant_guess_and_perfect():
    task = make_task("adding_le", seq_len=31)
    batch = sample(task, KEY, 8192)
    assert task.baseline == pytest.approx(1 / 6)
    constant = metrics(task, jnp.ones_like(batch.targets), batch)
    assert abs(float(constant["mse"]) - 1 / 6) < 0.02
    assert not task.solved(constant)
    perfect = metrics(task, batch.targets, batch)
    assert float(perfect["mse"]) == 0.0 and task.solved(perfect)


# ----------------------------------------------------------------------------
# 3. copy
# ----------------------------------------------------------------------------

K, N, GAP = SMALL["copy"]["copy_len"], SMALL["copy"]["n_symbols"], SMALL["copy"]["gap"]


def test_copy_definition():
    task = make_task("copy", **SMALL["copy"])
    assert task.seq_len == GAP + 2 * K == 11
    assert (task.input_dim, task.output_dim) == (N + 2, N + 1)
    x, y, mask = _np(sample(task, KEY, 64))
    np.testing.assert_array_equal(x.sum(-1), 1.0)  # one-hot
    ids = x.argmax(-1)  # [B, T]
    symbols = ids[:, :K]
    assert set(np.unique(symbols)) == set(range(1, N + 1))
    assert np.all(ids[:, K : K + GAP - 1] == 0)  # gap - 1 blanks
    assert np.all(ids[:, K + GAP - 1] == N + 1)  # the delimiter
    assert np.all(ids[:, K + GAP :] == 0)  # blanks while recalling
    np.testing.assert_array_equal(y[:, -K:], symbols)  # recall the symbols in order
    assert np.all(y[:, :-K] == 0)
    np.testing.assert_array_equal(mask, np.broadcast_to(np.arange(11) >= 11 - K, mask.shape))


@pytest.mark.parametrize("score_blanks", [False, True])
def test_copy_memoryless_baseline_and_perfect(score_blanks):
    task = make_task("copy", **SMALL["copy"], score_blanks=score_blanks)
    batch = sample(task, KEY, 64)
    t = task.seq_len
    # Memoryless: sure blank before the recall; during it, blank ruled out and the
    # symbols uniform.
    blank = jnp.array([30.0] + [0.0] * N)
    uniform_symbols = jnp.array([-1e9] + [0.0] * N)
    steps = jnp.where((jnp.arange(t) >= t - K)[:, None], uniform_symbols, blank)  # [T, C]
    memoryless = jnp.broadcast_to(steps, (64, t, N + 1))
    expected = K * math.log(N) / t if score_blanks else math.log(N)
    assert task.baseline == pytest.approx(expected)
    m = metrics(task, memoryless, batch)
    assert float(m["loss"]) == pytest.approx(expected, rel=1e-4)
    assert not task.solved(m)

    perfect = metrics(task, _perfect_outputs(task, batch), batch)
    assert float(perfect["accuracy"]) == 1.0 and float(perfect["sequence_accuracy"]) == 1.0
    assert float(perfect["loss"]) < 1e-6 and task.solved(perfect)


def test_copy_accuracy_counts_symbols():
    task = make_task("copy", **SMALL["copy"])
    batch = sample(task, KEY, 8)
    targets = np.asarray(batch.targets).copy()
    targets[0, -1] = targets[0, -1] % N + 1  # one wrong symbol out of 8 * 3
    outputs = 20.0 * jax.nn.one_hot(targets, task.output_dim)
    m = metrics(task, outputs, batch)
    assert float(m["accuracy"]) == pytest.approx(23 / 24)
    assert float(m["sequence_accuracy"]) == pytest.approx(7 / 8)
    assert not task.solved(m)


# ----------------------------------------------------------------------------
# 4. temporal_order
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seq_len, windows", [(100, ((10, 20), (50, 60))), (37, ((3, 7), (18, 22)))]
)
def test_temporal_order_definition(seq_len, windows):
    task = make_task("temporal_order", seq_len=seq_len)
    assert task.windows == windows
    (lo1, hi1), (lo2, hi2) = windows
    x, y, _ = _np(sample(task, KEY, 512))
    np.testing.assert_array_equal(x.sum(-1), 1.0)  # one-hot
    symbols = np.array(T.TemporalOrder.SYMBOLS)[x.argmax(-1)]  # [B, T] of letters
    assert np.all(symbols[:, 0] == "E") and np.all(symbols[:, -1] == "B")
    is_xy = np.isin(symbols, ["X", "Y"])
    np.testing.assert_array_equal(is_xy.sum(axis=1), 2)
    t1, t2 = np.nonzero(is_xy)[1].reshape(-1, 2).T
    assert set(t1) == set(range(lo1, hi1 + 1)) and set(t2) == set(range(lo2, hi2 + 1))
    interior = symbols[:, 1:-1][~is_xy[:, 1:-1]]
    assert set(np.unique(interior)) == {"a", "b", "c", "d"}
    rows = np.arange(len(x))
    order = np.char.add(symbols[rows, t1], symbols[rows, t2])  # e.g. "XY"
    np.testing.assert_array_equal(np.array(T.TemporalOrder.CLASSES)[y], order)
    assert set(y.tolist()) == {0, 1, 2, 3}


def test_temporal_order_metrics():
    task = make_task("temporal_order", seq_len=100)
    batch = sample(task, KEY, 512)
    perfect = metrics(task, _perfect_outputs(task, batch), batch)
    assert float(perfect["accuracy"]) == 1.0 and float(perfect["paper_accuracy"]) == 1.0
    assert task.solved(perfect)

    constant = metrics(task, jnp.zeros((512, 4)), batch)
    assert float(constant["loss"]) == pytest.approx(math.log(4), rel=1e-6) == task.baseline
    assert float(constant["paper_accuracy"]) == 0.0 and not task.solved(constant)

    # Right argmax but p(correct) = 0.6 < 0.7: correct by argmax, not by the
    # paper's "all output errors below 0.3".
    p = jnp.where(jax.nn.one_hot(batch.targets, 4) > 0, 0.6, 0.4 / 3)
    hesitant = metrics(task, jnp.log(p), batch)
    assert float(hesitant["accuracy"]) == 1.0 and float(hesitant["paper_accuracy"]) == 0.0


# ----------------------------------------------------------------------------
# 5. timer
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"seq_len": 40}, {"seq_len": 40, "max_duration": 25}])
def test_timer_definition(options):
    task = make_task("timer", **options)
    max_d = options.get("max_duration", options["seq_len"] // 2)
    assert task.max_duration == max_d
    x, y, mask = _np(sample(task, KEY, 512))
    np.testing.assert_array_equal(mask, 1.0)
    pulse, cue = x[..., 0], x[..., 1]  # [B, T]
    np.testing.assert_array_equal((pulse == 1.0).sum(axis=1), 1)
    assert set(np.unique(pulse)) == {0.0, 1.0}
    start = pulse.argmax(axis=1)  # [B]
    rows = np.arange(len(x))
    np.testing.assert_array_equal(cue * (1 - pulse), 0.0)  # the cue only at the pulse
    level = np.rint(cue[rows, start] * 10)
    np.testing.assert_allclose(cue[rows, start], level / 10, rtol=1e-6)
    assert set(level) == set(range(1, 11))
    duration = np.floor(level * max_d / 10 + 0.5).astype(int)  # round half up
    assert set(duration) == set(task.durations)
    assert np.all(start + duration <= task.seq_len)  # the pulse ends inside
    t = np.arange(task.seq_len)
    inside = (t >= start[:, None]) & (t < (start + duration)[:, None])
    np.testing.assert_array_equal(y[..., 0], np.where(inside, 0.5, 0.0))


def test_timer_metrics():
    task = make_task("timer", seq_len=40)
    batch = sample(task, KEY, 512)
    perfect = metrics(task, batch.targets, batch)
    assert float(perfect["mse"]) == 0.0 and task.solved(perfect)
    p = np.mean(task.durations) / task.seq_len
    assert task.baseline == pytest.approx(0.25 * p * (1 - p))
    constant = metrics(task, jnp.full_like(batch.targets, 0.5 * p), batch)
    assert float(constant["mse"]) == pytest.approx(task.baseline, rel=0.05)
    assert not task.solved(constant)
    assert float(metrics(task, jnp.zeros_like(batch.targets), batch)["max_abs_error"]) == 0.5
