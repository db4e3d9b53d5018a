"""karpathy/char-rnn's defaults in PyTorch nn.LSTM, for a side-by-side run.

Runs in the torch interpreter (LSTM_JAX_TORCH_PYTHON). Reads the token ids and
the validation batches our pipeline produced (an .npz written by
scripts/compare_char_rnn.py), so both sides train on identical streams and are
scored on identical tokens. Trains the way char-rnn does: one-hot input, 2x128
LSTM, B=50 contiguous streams x T=50 with the state carried across windows and
reset at each epoch, RMSprop lr 2e-3 alpha 0.95 eps 1e-8 (outside the square
root), per-element clip 5, uniform(+-0.08) init, forget-gate bias 1.

Prints one JSON line: the train loss every `log_every` steps, the validation
loss (nats/char) every `eval_every` steps, training tokens/s.

usage: python torch_char_rnn.py DATA.npz STEPS SEED EVAL_EVERY LOG_EVERY [INIT.npz]

INIT.npz (optional): start from these weights (torch names) instead of
char-rnn's init, e.g. ours converted by lstm_jax.interop, to separate the
initial distribution from the training.
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
    """B contiguous streams of inputs and targets, the tail dropped (as ours)."""
    n = (len(ids) - 1) // b // T * T
    x = ids[: b * n].reshape(b, n)
    y = ids[1 : b * n + 1].reshape(b, n)
    return torch.from_numpy(x).long(), torch.from_numpy(y).long(), n // T


@torch.no_grad()
def evaluate(net, d) -> float:
    """Mean loss over our eval batches [W, B, T]: the carry passed window to
    window, padding masked out, every validation target scored once."""
    total, count, state = 0.0, 0.0, None
    for x, y, m in zip(d["val_inputs"], d["val_targets"], d["val_mask"], strict=True):
        logits, state = net(torch.from_numpy(x).long(), state)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, net.vocab), torch.from_numpy(y).long().reshape(-1), reduction="none"
        )
        mask = torch.from_numpy(m).reshape(-1)
        total += float((nll * mask).sum())
        count += float(mask.sum())
    return total / count


def main(path: str, steps: int, seed: int, eval_every: int, log_every: int, init=None) -> None:
    torch.manual_seed(seed)
    d = np.load(path, allow_pickle=False)
    vocab = int(d["vocab_size"])
    net = CharRNN(vocab)
    if init:
        weights = np.load(init, allow_pickle=False)
        net.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    opt = torch.optim.RMSprop(net.parameters(), lr=2e-3, alpha=0.95, eps=1e-8)
    x, y, per_epoch = streams(d["train"], B)
    state, times, train_curve, val_curve = None, [], [], []
    for step in range(1, steps + 1):
        w = (step - 1) % per_epoch
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
        if step % log_every == 0:
            train_curve.append([step, loss.item()])
        if step % eval_every == 0 or step == steps:
            val_curve.append([step, evaluate(net, d)])
    median = float(np.median(times[10:])) if len(times) > 10 else float(np.median(times))
    print(
        json.dumps(
            {
                "impl": "pytorch nn.LSTM" + (" (our init)" if init else ""),
                "steps": steps,
                "seed": seed,
                "val_loss": val_curve[-1][1],
                "tokens_per_s": B * T / median,
                "train_curve": train_curve,
                "val_curve": val_curve,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:6]), *sys.argv[6:7])
