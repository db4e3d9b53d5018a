"""Research ablations I: gradient flow, the Pascanu cliff, the LSTM
memory cell, clipping. Each tool's `:smoke` config runs end to end, and the
tests check the physics, not only that files appear."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import recurrent
from lstm_jax.cells import LSTMCarry
from lstm_jax.research import clipping, common, gradient_flow, memory_cell, pascanu

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "ablations"


def smoke(name: str):
    return common.load_config(f"{CONFIGS / name}.py:smoke")


# ---------------------------------------------------------------------------
# Gradient flow
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lstm_fb1", "gru"])
def test_perturbation_trick_equals_suffix_gradient(variant):
    """dL_T/deps_k from the zero-perturbation trick equals the gradient of the
    loss w.r.t. the carry at step k, computed by restarting the scan from it
    (for the LSTM both dL/dh_k and dL/dc_k). k = 0 (the initial carry) is
    covered by the explicit Jacobian product below."""
    cfg = common.load_config(f"{CONFIGS / 'gradient_flow.py'}")
    cfg.unlock()
    cfg.model.hidden_size = 5
    model = gradient_flow.make_model(cfg, variant)
    params = model.init(jax.random.key(3))
    inputs, targets = gradient_flow.adding_sampler(7)(jax.random.key(4), 2)  # [2, 7, 2]
    norms_h, norms_c = gradient_flow.state_gradient_norms(model, params, inputs, targets)
    assert norms_h.shape == (8, 2)

    cell, layer = model.cell, params["layers"][0]
    k = 3  # the carry after step k, reached by a prefix scan; the suffix restarts from it
    carry_k, _ = recurrent.run_layer(cell, layer, inputs[:, :k], cell.zero_carry(2, 5))

    def suffix_loss(carry):
        _, hs = recurrent.run_layer(cell, layer, inputs[:, k:], carry)
        y = hs[:, -1] @ params["head"]["w"] + params["head"]["b"]
        return jnp.sum(jnp.square(y - targets))

    g = jax.grad(suffix_loss)(carry_k)
    g_h = g.h if isinstance(g, LSTMCarry) else g
    np.testing.assert_allclose(norms_h[k], np.linalg.norm(g_h, axis=-1), rtol=1e-4, atol=1e-8)
    if norms_c is not None:
        np.testing.assert_allclose(norms_c[k], np.linalg.norm(g.c, axis=-1), rtol=1e-4, atol=1e-8)


def test_tanh_rnn_gradient_is_a_product_of_jacobians():
    """For a tanh RNN, dL/dh_k = dL/dh_T prod_t W_h diag(1 - h_t^2) (row-vector
    convention of h @ W_h): the measured norms match the explicit product."""
    cfg = common.load_config(f"{CONFIGS / 'gradient_flow.py'}")
    cfg.unlock()
    cfg.model.hidden_size = 4
    model = gradient_flow.make_model(cfg, "rnn_tanh")
    params = model.init(jax.random.key(0))
    inputs, targets = gradient_flow.adding_sampler(6)(jax.random.key(1), 1)
    norms, _ = gradient_flow.state_gradient_norms(model, params, inputs, targets)
    layer = params["layers"][0]
    _, hs = recurrent.run_layer(model.cell, layer, inputs, model.cell.zero_carry(1, 4))
    hs = np.asarray(hs[0], np.float64)  # [T, H]
    w_h, w_o, b_o = (np.asarray(a, np.float64) for a in (layer["w_h"], *params["head"].values()))
    g = 2 * (hs[-1] @ w_o + b_o - np.asarray(targets[0])) @ w_o.T  # dL/dh_T  [H]
    expected = [np.linalg.norm(g)]
    for t in range(len(hs) - 1, -1, -1):  # h_t = tanh(a_t), a_t = ... + h_{t-1} @ W_h
        g = (g * (1 - hs[t] ** 2)) @ w_h.T
        expected.append(np.linalg.norm(g))
    np.testing.assert_allclose(np.asarray(norms[::-1, 0]), expected, rtol=1e-4)


@pytest.mark.slow
def test_gradient_flow_smoke_tanh_vanishes_lstm_keeps(tmp_path):
    res = gradient_flow.run(smoke("gradient_flow"), str(tmp_path))
    tanh = res["cells"]["rnn_tanh"]["init"]
    lstm = res["cells"]["lstm_fb1"]["init"]
    # at distance 100, the tanh RNN's gradient is orders of magnitude below the LSTM's
    assert lstm["rel_at_100"] > 0 and tanh["rel_at_100"] > 0  # resolved, not underflowed
    assert tanh["rel_at_100"] < 1e-6 * lstm["rel_at_100"]
    assert tanh["decay_log10_per_step"] < lstm["decay_log10_per_step"] < 0
    assert tanh["distance_below_1e-6"] < lstm["distance_below_1e-6"]
    # Pascanu's quantity: sigma_max(W_h) * gamma, reported for vanilla RNNs only
    assert 0 < tanh["pascanu_sigma_gamma"] < 1 and tanh["pascanu_vanishing_condition"]
    assert "pascanu_sigma_gamma" not in lstm
    assert "trained" in res["cells"]["lstm_fb1"]
    for f in ("gradient_flow.csv", "summary.csv", "results.json", "gradient_flow.png"):
        assert (tmp_path / f).stat().st_size > 0
    rows = common.read_csv(tmp_path / "gradient_flow.csv")
    seq_len = smoke("gradient_flow").probe.seq_len
    assert len(rows) == 2 * 2 * (seq_len + 1)  # phases x cells x distances 0..T
    assert json.loads((tmp_path / "results.json").read_text())["probe_seq_len"] == seq_len


def test_unknown_variant_and_locked_config():
    cfg = smoke("gradient_flow")
    with pytest.raises(AttributeError):
        cfg.probe.seq_lenn = 3  # a typo'd field errors: the config is locked
    with pytest.raises(ValueError, match="valid"):
        gradient_flow.check_variants(["lstm_fb2"])
    with pytest.raises(ValueError, match="valid"):
        common.load_config(f"{CONFIGS / 'gradient_flow.py'}:tiny")


# ---------------------------------------------------------------------------
# Pascanu cliff
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_pascanu_wall_and_clipping(tmp_path):
    cfg = smoke("pascanu")
    res = pascanu.run(cfg, str(tmp_path))
    # the surface has a wall: a gradient norm above 1e3 on the standard grid
    assert res["grid_max_grad_norm"] > 1e3 and not res["nan"]
    # a clipped step never exceeds lr * threshold (Algorithm 1)
    d = cfg.descent
    rows = common.read_csv(tmp_path / "trajectories.csv")
    clipped = [float(r["step_length"]) for r in rows if r["method"] == "clipped"]
    assert max(clipped) <= d.learning_rate * d.clip_threshold * (1 + 1e-5)
    assert res["clipped_max_step"] <= d.learning_rate * d.clip_threshold * (1 + 1e-9)
    # the unclipped run is thrown by the wall: one step far longer than any clipped one
    assert res["unclipped_jump"] > 10 * res["clipped_max_step"]
    assert res["unclipped_jump_grad_norm"] > d.clip_threshold
    assert res["final"]["clipped"]["loss"] < res["final"]["unclipped"]["loss"]
    assert (tmp_path / "pascanu.png").stat().st_size > 0


def test_pascanu_wall_line():
    """Across b = x0 - w sigmoid(x0) the state falls to different attractors:
    the loss jumps, and on the line the gradient is (w sigmoid'(x0))^50-large."""
    w = 6.0
    b = pascanu.wall_b(w, 0.5)
    with jax.enable_x64(True):
        pts = jnp.asarray([[w, b - 1e-3], [w, b + 1e-3], [w, b]], jnp.float64)
        loss, gnorm = map(np.asarray, pascanu.surface(pts, num_steps=50, x0=0.5, target=0.7))
    assert loss[0] > 0.4 and loss[1] < 0.1  # low vs high attractor
    s = 1 / (1 + math.exp(-0.5))
    lam = w * s * (1 - s)  # the map's slope at its fixed point x0 = 0.5
    assert gnorm[2] > 0.01 * lam**50 > 1e5


# ---------------------------------------------------------------------------
# LSTM memory cell
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_cell_keeps_gradient_rnn_loses_it(tmp_path):
    cfg = smoke("memory_cell")
    res = memory_cell.run(cfg, str(tmp_path))
    table = {row["N"]: row for row in res["table"]}
    assert set(table) == {10, 100}
    sig = 1 / (1 + math.exp(-cfg.gate_gain))
    for n, row in table.items():
        assert abs(row["lstm_grad"] - 1) < 0.01  # within 1% of 1 over 100 steps
        assert row["lstm_grad"] == pytest.approx(sig ** (n + 3), rel=1e-6)  # prod of gates
        assert row["lstm_read"] == pytest.approx(cfg.value, rel=0.01)  # it reads 4.2
        assert abs(row["lstm_cell_after_clear"]) < 1e-4  # and clears it
    assert res["lstm_grad_max_deviation"] < 0.01  # the dense curve too (N <= 100)
    for w in cfg.rnn_weights:  # every vanilla tanh unit forgets
        g10, g100 = abs(table[10][f"rnn_w{w:g}_grad"]), abs(table[100][f"rnn_w{w:g}_grad"])
        assert g100 < 0.1 * g10 and g100 < 0.01
    # the step-by-step trace: write 4.2, keep it, read it, clear it
    trace = common.read_csv(tmp_path / "trace.csv")
    by_phase = {r["phase"]: r for r in trace}
    assert float(by_phase["read"]["h"]) == pytest.approx(4.2, rel=1e-3)
    assert abs(float(by_phase["clear"]["c"])) < 1e-4
    assert float(by_phase["keep"]["h"]) < 1e-4  # the output gate hides the cell while keeping


# ---------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_clipping_smoke_bounds_updates(tmp_path):
    cfg = smoke("clipping")
    res = clipping.run(cfg, str(tmp_path))
    runs = {(r["mode"], r["learning_rate"]): r for r in res["runs"]}
    lr = cfg.train.learning_rates[0]
    none, glob, value = (runs[(m, lr)] for m in ("none", "global_norm", "value"))
    t = cfg.train
    assert glob["update_norm_max"] <= lr * t.clip_norm * (1 + 1e-5)
    assert value["update_max_abs"] <= lr * t.clip_value * (1 + 1e-5)
    # without clipping, the update is the raw gradient times lr
    assert none["update_norm_max"] == pytest.approx(lr * none["grad_norm_max"], rel=1e-5)
    assert none["grad_norm_max"] > t.clip_norm  # the threshold binds in this setting
    assert all(math.isfinite(r["val_loss"]) for r in res["runs"])
    assert len(res["summary"]) == 3 and res["summary"][0]["seeds"] == cfg.num_seeds
    curves = common.read_csv(tmp_path / "curves.csv")
    assert len(curves) == 3 * t.num_steps
    assert (tmp_path / "clipping.png").stat().st_size > 0


def test_clip_grads_matches_definitions():
    g = {"a": jnp.asarray([3.0, -4.0]), "b": jnp.asarray([12.0])}  # global norm 13
    same = clipping.clip_grads("none", g, 1.0, 1.0)
    np.testing.assert_allclose(same["b"], [12.0])
    glob = clipping.clip_grads("global_norm", g, 6.5, 1.0)  # halves every element
    np.testing.assert_allclose(glob["a"], [1.5, -2.0], rtol=1e-6)
    np.testing.assert_allclose(glob["b"], [6.0], rtol=1e-6)
    val = clipping.clip_grads("value", g, 1.0, 3.5)
    np.testing.assert_allclose(val["a"], [3.0, -3.5])
    np.testing.assert_allclose(val["b"], [3.5])
    with pytest.raises(ValueError, match="valid"):
        clipping.check_modes(["sometimes"])


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_flags_override_and_unknown_key(tmp_path):
    """The CLI's flags in-process: an override reaches `run`; a typo'd key is
    refused while parsing, i.e. before any compute."""
    from absl import flags

    cfg = f"{CONFIGS / 'pascanu.py'}:smoke"
    argv = ["prog", f"--config={cfg}", f"--workdir={tmp_path}", "--config.descent.num_steps=7"]
    fv = flags.FlagValues()
    config_flag, workdir_flag = common.define_flags("test", fv, argv)
    fv(argv)
    assert config_flag.value.descent.num_steps == 7
    res = pascanu.run(config_flag.value, workdir_flag.value)
    assert len(common.read_csv(tmp_path / "trajectories.csv")) == 2 * 7
    assert res["grid_max_grad_norm"] > 1e3
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["descent"]["num_steps"] == 7

    argv = ["prog", f"--config={cfg}", f"--workdir={tmp_path}", "--config.descent.stepz=3"]
    fv2 = flags.FlagValues()
    common.define_flags("test", fv2, argv)
    with pytest.raises((flags.Error, AttributeError), match="stepz"):
        fv2(argv)


@pytest.mark.slow
def test_cli_entry_point_rejects_unknown_key(tmp_path):
    """`python -m lstm_jax.research.<tool>` is wired to absl: a bad key fails
    with a message naming it, and nothing is written."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lstm_jax.research.memory_cell",
            f"--config={CONFIGS / 'memory_cell.py'}:smoke",
            f"--workdir={tmp_path / 'w'}",
            "--config.gate_gian=3",
        ],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "gate_gian" in out.stderr
    assert not (tmp_path / "w").exists()
