"""karpathy/char-rnn's defaults in PyTorch nn.LSTM, for a side-by-side run.

Runs in the torch interpreter (LSTM_JAX_TORCH_PYTHON). Reads the token ids our
pipeline produced (an .npz with `train`, `valid`, `vocab_size`), so both sides
see identical data, and trains the way char-rnn does: one-hot input, 2x128
LSTM, B=50 contiguous streams x T=50 with the state carried across windows,
RMSprop lr 2e-3 alpha 0.95, per-element clip 5, uniform(+-0.08) init.
Prints one JSON line: val loss (nats/char) over the whole validation split,
training tokens/s.

usage: python torch_char_rnn.py DATA.npz STEPS [SEED]
"""

import json
import sys
import time

import numpy as np
import torch

torch.set_num_threads(2)
B, T, H, L = 50, 50, 128, 2


class CharRNN(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.lstm = torch.nn.LSTM(vocab, H, L, batch_first=True)
        self.out = torch.nn.Linear(H, vocab)
        for p in self.parameters():
            torch.nn.init.uniform_(p, -0.08, 0.08)
        with torch.no_grad():  # forget-gate bias 1, as char-rnn (and our config)
            for k in range(L):
                getattr(self.lstm, f"bias_ih_l{k}")[H : 2 * H] = 1.0
                getattr(self.lstm, f"bias_hh_l{k}")[H : 2 * H] = 0.0

    def forward(self, x, state):
        y, state = self.lstm(torch.nn.functional.one_hot(x, self.vocab).float(), state)
        return self.out(y), state


def streams(ids: np.ndarray, b: int):
    """B contiguous streams of inputs and targets, the tail dropped."""
    n = (len(ids) - 1) // b // T * T
    x = ids[: b * n].reshape(b, n)
    y = ids[1 : b * n + 1].reshape(b, n)
    return torch.from_numpy(x).long(), torch.from_numpy(y).long(), n // T


def main(path: str, steps: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    d = np.load(path, allow_pickle=False)
    vocab = int(d["vocab_size"])
    net = CharRNN(vocab)
    opt = torch.optim.RMSprop(net.parameters(), lr=2e-3, alpha=0.95, eps=1e-8)
    x, y, per_epoch = streams(d["train"], B)
    state, times = None, []
    for step in range(steps):
        w = step % per_epoch
        if w == 0:
            state = None  # a new epoch starts every stream afresh
        t0 = time.perf_counter()
        logits, state = net(x[:, w * T : (w + 1) * T], state)
        state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab), y[:, w * T : (w + 1) * T].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        for p in net.parameters():
            p.grad.clamp_(-5.0, 5.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    vx, vy, vwin = streams(d["valid"], min(B, max(1, (len(d["valid"]) - 1) // T)))
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for w in range(vwin):
            logits, state = net(vx[:, w * T : (w + 1) * T], state)
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, vocab), vy[:, w * T : (w + 1) * T].reshape(-1), reduction="sum"
            ).item()
            count += vy[:, w * T : (w + 1) * T].numel()
    median = float(np.median(times[10:])) if len(times) > 10 else float(np.median(times))
    print(
        json.dumps(
            {
                "impl": "pytorch nn.LSTM",
                "steps": steps,
                "seed": seed,
                "val_loss": total / count,
                "tokens_per_s": B * T / median,
                "train_loss_last": loss.item(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
