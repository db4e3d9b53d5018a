"""Weight layouts shared with PyTorch's nn.LSTM / nn.GRU / nn.RNN.

PyTorch stores per layer `weight_ih [G*H, D]`, `weight_hh [G*H, H]`,
`bias_ih [G*H]`, `bias_hh [G*H]` with the same gate order as ours
(LSTM i, f, g, o; GRU r, z, n). Ours are transposed and carry one bias,
because b_ih + b_hh enter every gate as a sum, except the GRU's candidate
recurrent bias b_hn, which sits inside the reset product and stays apart.
NumPy only, so the conversion runs without torch installed.
"""

from __future__ import annotations

import numpy as np


def from_torch_layer(cell: str, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One PyTorch layer's weights (keys weight_ih, weight_hh, bias_ih, bias_hh)
    -> our layer params."""
    params = {"w_x": w["weight_ih"].T, "w_h": w["weight_hh"].T}
    if cell == "gru":
        h = w["bias_hh"].shape[0] // 3
        recurrent_rz = np.concatenate([w["bias_hh"][: 2 * h], np.zeros(h, w["bias_hh"].dtype)])
        params["b"] = w["bias_ih"] + recurrent_rz
        params["b_hn"] = w["bias_hh"][2 * h :]
    else:
        params["b"] = w["bias_ih"] + w["bias_hh"]
    return params


def to_torch_layer(cell: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our layer params -> PyTorch's layout (all recurrent biases but b_hn zero)."""
    w = {
        "weight_ih": np.asarray(params["w_x"]).T,
        "weight_hh": np.asarray(params["w_h"]).T,
        "bias_ih": np.asarray(params["b"]),
    }
    bias_hh = np.zeros_like(w["bias_ih"])
    if cell == "gru":
        h = bias_hh.shape[0] // 3
        bias_hh[2 * h :] = np.asarray(params["b_hn"])
    w["bias_hh"] = bias_hh
    return w
