"""Run PyTorch's nn.LSTM / nn.GRU / nn.RNN on weights and inputs from an .npz
file and write outputs and final states to another .npz. Executed by the
tests in a separate interpreter (LSTM_JAX_TORCH_PYTHON), because the CPU
build of torch exists for a different Python than the project's.

usage: python torch_reference.py IN.npz OUT.npz
IN holds: cell (str), num_layers, x [B, T, D], h0 [L, B, H], (c0 for LSTM),
and l{k}_{weight_ih,weight_hh,bias_ih,bias_hh} per layer k.
"""

import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def main(src: str, dst: str) -> None:
    d = np.load(src, allow_pickle=False)
    cell, layers = str(d["cell"]), int(d["num_layers"])
    x = torch.from_numpy(d["x"])
    hidden = d["h0"].shape[-1]
    kwargs = dict(input_size=x.shape[-1], hidden_size=hidden, num_layers=layers, batch_first=True)
    if cell == "lstm":
        net = torch.nn.LSTM(**kwargs)
    elif cell == "gru":
        net = torch.nn.GRU(**kwargs)
    else:
        net = torch.nn.RNN(nonlinearity=cell.removeprefix("rnn_"), **kwargs)
    with torch.no_grad():
        for k in range(layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(net, f"{name}_l{k}").copy_(torch.from_numpy(d[f"l{k}_{name}"]))
        h0 = torch.from_numpy(d["h0"])
        if cell == "lstm":
            y, (h, c) = net(x, (h0, torch.from_numpy(d["c0"])))
            np.savez(dst, y=y.numpy(), h=h.numpy(), c=c.numpy())
        else:
            y, h = net(x, h0)
            np.savez(dst, y=y.numpy(), h=h.numpy())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
