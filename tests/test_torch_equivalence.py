"""Our layers against PyTorch's nn.LSTM / nn.GRU / nn.RNN with copied weights.

torch runs in its own interpreter (LSTM_JAX_TORCH_PYTHON; `make test` sets it
up from the CPU wheel), because its CPU build exists for Python 3.11 only.
The tests skip cleanly when no such interpreter is configured.
"""

import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import cells, interop, recurrent

TORCH_PYTHON = os.environ.get("LSTM_JAX_TORCH_PYTHON")
pytestmark = pytest.mark.skipif(
    not TORCH_PYTHON, reason="set LSTM_JAX_TORCH_PYTHON to a python with torch (make torch-env)"
)
SCRIPT = pathlib.Path(__file__).with_name("torch_reference.py")
B, T, D, H, L = 3, 6, 4, 5, 2


def torch_layers(cell_name, rng):
    """Random weights in PyTorch's layout, with non-zero biases everywhere."""
    g = {"lstm": 4, "gru": 3}.get(cell_name, 1)
    return [
        {
            "weight_ih": rng.uniform(-0.5, 0.5, (g * H, D if k == 0 else H)),
            "weight_hh": rng.uniform(-0.5, 0.5, (g * H, H)),
            "bias_ih": rng.uniform(-0.5, 0.5, g * H),
            "bias_hh": rng.uniform(-0.5, 0.5, g * H),
        }
        for k in range(L)
    ]


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_matches_torch(name, tmp_path):
    rng = np.random.default_rng(0)
    weights = torch_layers(name, rng)
    x = rng.normal(size=(B, T, D))
    h0, c0 = rng.normal(size=(L, B, H)), rng.normal(size=(L, B, H))
    blob = {"cell": np.array(name), "num_layers": np.array(L), "x": x, "h0": h0, "c0": c0}
    for k, w in enumerate(weights):
        blob.update({f"l{k}_{n}": v for n, v in w.items()})
    np.savez(tmp_path / "in.npz", **blob)
    subprocess.run(
        [TORCH_PYTHON, str(SCRIPT), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        check=True,
        timeout=120,
    )
    ref = np.load(tmp_path / "out.npz", allow_pickle=False)

    with jax.enable_x64(True):
        cell = cells.make_cell(name)
        layers = [jax.tree.map(jnp.asarray, interop.from_torch_layer(name, w)) for w in weights]
        if name == "lstm":
            carries = tuple(
                cells.LSTMCarry(jnp.asarray(h0[k]), jnp.asarray(c0[k])) for k in range(L)
            )
        else:
            carries = tuple(jnp.asarray(h0[k]) for k in range(L))
        final, y = recurrent.run_stack(cell, layers, jnp.asarray(x), carries)
        np.testing.assert_allclose(y, ref["y"], atol=1e-5)
        h_final = np.stack([cells.LSTM.output(c) if name == "lstm" else c for c in final])
        np.testing.assert_allclose(h_final, ref["h"], atol=1e-5)
        if name == "lstm":
            np.testing.assert_allclose(np.stack([c.c for c in final]), ref["c"], atol=1e-5)
        # the layout conversion round-trips (torch's split recurrent biases fold into one)
        back = interop.to_torch_layer(name, interop.from_torch_layer(name, weights[0]))
        np.testing.assert_allclose(
            interop.from_torch_layer(name, back)["b"], layers[0]["b"], atol=1e-12
        )
