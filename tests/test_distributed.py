"""Data parallelism, for real: 8 host devices in one process, and two processes
on JAX's multi-process runtime (gloo collectives over loopback), each checked
against one device with the same global batch.

A device count must be fixed before JAX starts, so those runs are
subprocesses; the one-device reference runs in the test process.
"""

from __future__ import annotations

import json
import pathlib
import sys
import textwrap
import time

import helpers
import jax
import numpy as np
import pytest
from helpers import (
    HALF,
    STEPS,
    assert_same_run,
    cli_overrides,
    run_local,
    run_python,
    smoke_config,
)

from lstm_jax import parallel, train

# Every test here starts processes or trains end to end: the slow tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pathlib.Path:
    """STEPS steps on the one CPU device of the test process."""
    assert jax.device_count() == 1, "run pytest without a forced XLA_FLAGS device count"
    wd = tmp_path_factory.mktemp("reference") / "wd"
    train.train_and_evaluate(smoke_config(), str(wd))
    return wd


# ---------------------------------------------------------------------------
# One process, 8 devices.

EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax
    sys.path.insert(0, "tests")
    from helpers import smoke_config
    from lstm_jax import optim, parallel, train

    out = {"devices": jax.device_count()}
    # global batch 8 given directly, optimizer state replicated
    train.train_and_evaluate(smoke_config(), sys.argv[1] + "/replicated")
    # the same global batch given per device (1 x 8), optimizer state sharded
    c = smoke_config(**{"train.batch_size": 999, "parallel.per_device_batch_size": 1,
                        "parallel.shard_optimizer_state": True})
    train.train_and_evaluate(c, sys.argv[1] + "/sharded")
    # which optimizer-state leaves the sharded run split
    mesh = parallel.data_mesh()
    c.train.batch_size = 8
    data = train.load_data(c)
    model = train.build_model(c, data.tokenizer.vocab_size)
    opt = optim.make_optimizer(c.optim, 10)
    abstract = jax.eval_shape(lambda: train.init_state(c, model, opt, 8))
    shardings = train.state_sharding(mesh, abstract, True)
    out["opt_specs"] = [list(s.spec) for s in jax.tree.leaves(shardings.opt_state)]
    out["carry_specs"] = [list(s.spec) for s in jax.tree.leaves(shardings.carry)]
    print("RESULT " + json.dumps(out))
    """
)


def test_eight_devices_equal_one_device(reference, tmp_path):
    out = run_python(
        ["-c", EIGHT_DEVICES, str(tmp_path)],
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["devices"] == 8
    assert all(s == ["data"] for s in result["carry_specs"])  # carry split by rows
    assert [None, "data"] in result["opt_specs"]  # moments split (kernels on columns) ...
    assert [] in result["opt_specs"]  # ... but not the step counts

    assert_same_run(tmp_path / "replicated", reference, range(1, STEPS + 1))
    assert_same_run(tmp_path / "sharded", reference, range(1, STEPS + 1))
    saved = json.loads((tmp_path / "sharded" / "config.json").read_text())
    assert saved["train"]["batch_size"] == 8  # 1 per device x 8 devices, recorded


# ---------------------------------------------------------------------------
# One process, 2 CPU devices from parallel.use_cpu_devices: the recurrence split
# by rows (recurrent.run_stack with a mesh) against the same stack on one device.

ROWS_PER_DEVICE = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from lstm_jax import parallel, recurrent
    from lstm_jax.cells import make_cell

    parallel.use_cpu_devices(2)
    jax.config.update("jax_enable_x64", True)  # compare the math, not fp32 rounding
    mesh = parallel.data_mesh()
    out = {"devices": jax.device_count(), "diffs": {}}
    T, B, D, H = 7, 4, 3, 5
    k = jax.random.split(jax.random.key(0), 6)
    xs = jax.random.normal(k[0], (B, T, D), jnp.float64)
    reset = jax.random.bernoulli(k[1], 0.3, (B, T))
    for name in ("lstm", "gru", "rnn_tanh"):
        cell = make_cell(name)
        layers = jax.tree.map(
            lambda a: a.astype(jnp.float64), recurrent.init_stack(k[2], cell, D, H, 3)
        )
        carries = jax.tree.map(  # a carried (non-zero) state into every layer
            lambda c: jax.random.normal(k[3], c.shape, jnp.float64),
            recurrent.zero_stack_carry(cell, 3, B, H),
        )
        cot = jax.random.normal(k[4], (B, T, H), jnp.float64)
        for impl in ("scan", "fused"):
            def loss(layers, xs, carries, mesh):
                c, hs = recurrent.run_stack(cell, layers, xs, carries, reset, dropout_rate=0.3,
                                            rng=k[5], impl=impl, mesh=mesh)
                return jnp.sum(hs * cot) + sum(jnp.sum(x) for x in jax.tree.leaves(c)), hs
            grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
            (l1, h1), g1 = jax.jit(lambda *a: grad(*a, None))(layers, xs, carries)
            (l2, h2), g2 = jax.jit(lambda *a: grad(*a, mesh))(layers, xs, carries)
            diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
                jax.tree.leaves((l1, h1, g1)), jax.tree.leaves((l2, h2, g2)), strict=True)]
            out["diffs"][f"{name}/{impl}"] = max(diffs)
    print("RESULT " + json.dumps(out))
    """
)


def test_rows_per_device_equals_one_device():
    """3 layers, resets, carried state, dropout: values and every gradient."""
    out = run_python(["-c", ROWS_PER_DEVICE])
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["devices"] == 2
    assert set(result["diffs"]) == {
        f"{c}/{i}" for c in ("lstm", "gru", "rnn_tanh") for i in ("scan", "fused")
    }
    for case, diff in result["diffs"].items():
        assert diff < 1e-10, f"{case}: 2 devices differ from 1 by {diff}"


def test_cpu_devices_config_splits_the_batch(reference, tmp_path):
    """`--config.parallel.cpu_devices=2`: a 2-device mesh in one process, same run."""
    wd = tmp_path / "wd"
    out = run_python(
        ["-m", "lstm_jax.train", "--config", "configs/dnd.py:smoke", "--workdir", str(wd)]
        + cli_overrides(**{"parallel.cpu_devices": 2})
    )
    assert "1 process(es) x 2 cpu device(s) = 2" in out.stdout + out.stderr
    assert_same_run(wd, reference, range(1, STEPS + 1))


def test_cpu_devices_must_not_be_negative():
    with pytest.raises(ValueError, match="parallel.cpu_devices must be >= 0"):
        train.config_lib.validate(smoke_config(**{"parallel.cpu_devices": -1}))


# ---------------------------------------------------------------------------
# Two processes (2 CPU devices each) on the real jax.distributed runtime.


def test_two_processes_equal_one_and_resume_on_one(reference, tmp_path):
    wd = tmp_path / "wd"
    command = helpers.train_cli(
        wd,
        *cli_overrides(**{"train.num_steps": HALF}),
    )
    code, out = run_local(2, command, 240, launcher_args=["--cpu_devices_per_process", "2"])
    assert code == 0, out[-4000:]
    assert "2 process(es) x 2 cpu device(s) = 4" in out
    # only process 0 reports (process 1's lines carry the "[1] " prefix)
    assert f"step {HALF}: train" in out and "[1] step" not in out
    assert out.count('"final_step"') == 1
    assert_same_run(wd, reference, range(1, HALF + 1))

    # the 4-device checkpoint resumes on this process's single device
    summary = train.train_and_evaluate(smoke_config(), str(wd))
    assert summary["final_step"] == STEPS
    assert_same_run(wd, reference, range(1, STEPS + 1))


def test_launcher_stops_everyone_when_one_process_fails():
    code = "import sys, time; sys.exit(3) if '--process_id=1' in sys.argv else time.sleep(120)"
    start = time.monotonic()
    status, out = run_local(2, [sys.executable, "-c", code], 100)
    assert status == 3, out
    assert "process 1 exited with 3" in out
    assert time.monotonic() - start < 60


# ---------------------------------------------------------------------------
# The pieces, on the test process's single device.


def test_global_batch_size():
    assert parallel.global_batch_size(32, 0, 8) == 32
    assert parallel.global_batch_size(999, 4, 8) == 32  # per-device wins
    with pytest.raises(ValueError, match=r"batch_size 30 .* 8 devices.*multiple of 8"):
        parallel.global_batch_size(30, 0, 8)
    with pytest.raises(ValueError, match="per_device_batch_size must be >= 0"):
        parallel.global_batch_size(32, -1, 8)


def test_shard_dim_picks_the_largest_divisible_dimension():
    assert parallel.shard_dim((1914, 32), 8) == 1  # 1914 is not a multiple of 8
    assert parallel.shard_dim((256, 512), 8) == 1
    assert parallel.shard_dim((), 8) is None  # a step count: replicated
    assert parallel.shard_dim((6,), 8) is None
    assert parallel.shard_dim((512,), 1) is None  # one device: nothing to split


def test_single_process_layout():
    mesh = parallel.data_mesh()
    assert mesh.axis_names == ("data",)
    assert parallel.process_rows(mesh) == (0, 1)
    batch = {"x": np.zeros((4, 3))}
    assert parallel.to_global(batch, mesh, 4) is batch  # jit's in_shardings does the rest
    assert parallel.any_process(True) and not parallel.any_process(False)


def test_initialize_arguments():
    assert parallel.initialize("off") is False
    with pytest.raises(ValueError, match="go together"):
        parallel.initialize("auto", coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match="unknown --distributed mode"):
        parallel.initialize("maybe")
