"""The PyTorch peer of `python -m lstm_jax.bench`, run in torch's own interpreter.

torch's CPU build exists for a different Python than the project's, so
`lstm_jax.bench` runs this file with `LSTM_JAX_TORCH_PYTHON` in a subprocess
(one at a time, never beside a JAX measurement). It imports only torch, numpy
and the standard library.

    python bench_torch.py '{"kind": "train", "vocab": 65, ...}'   -> one JSON line

kind "train": nn.Embedding -> nn.LSTM(num_layers, batch_first) -> nn.Linear,
  mean cross-entropy, loss.backward(), clip_grad_norm_(5.0), Adam(2e-3): the
  same step, shapes and optimizer as the JAX rows. Reports each timed step.
kind "sample": the usual step-by-step generation loop (one token per call,
  softmax + multinomial under no_grad) for `batch` streams.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch
from torch import nn


def _status_mib(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in MiB; Linux only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak_rss() -> float:
    """Reset the peak RSS (VmHWM) to the current RSS and return the latter, so
    that a later VmHWM measures only what the training loop added."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mib("VmRSS")


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) used by this process so far."""
    t = os.times()
    return t.user + t.system


def _timed(fn, n: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of n calls of fn."""
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = _cpu_s(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
    return wall, cpu


class LM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        y, state = self.lstm(self.embed(tokens), state)
        return self.out(y), state


def make_train_step(job: dict):
    """The benchmark's PyTorch train step on a fixed random batch: embedding,
    nn.LSTM, readout, mean cross-entropy, backward, clip_grad_norm_(5), Adam."""
    v, b, t = job["vocab"], job["batch"], job["seq"]
    model = LM(v, job["embed"], job["hidden"], job["layers"])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, v, (b, t), generator=gen)
    y = torch.roll(x, -1, dims=1)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits, _ = model(x)
        loss = loss_fn(logits.reshape(-1, v), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.item()  # syncs, like block_until_ready on the JAX side

    return step


def train(job: dict) -> dict:
    step = make_train_step(job)
    rss0 = _reset_peak_rss()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    for _ in range(job["warmup"] - 1):
        step()
    times, cpu = _timed(step, job["steps"])
    peak = _status_mib("VmHWM") - rss0
    return {"times": times, "cpu": cpu, "first_step_s": first, "peak_mib": peak}


@torch.no_grad()
def sample(job: dict) -> dict:
    v, s, n = job["vocab"], job["batch"], job["seq"]
    model = LM(v, job["embed"], job["hidden"], job["layers"]).eval()
    gen = torch.Generator().manual_seed(0)

    def run(length: int) -> None:
        token = torch.zeros((s, 1), dtype=torch.long)
        state = None
        for _ in range(length):
            logits, state = model(token, state)
            probs = torch.softmax(logits[:, -1], dim=-1)
            token = torch.multinomial(probs, 1, generator=gen)

    run(min(n, 20))  # warm-up
    times, cpu = _timed(lambda: run(n), job["steps"])
    return {"times": times, "cpu": cpu, "first_step_s": 0.0, "peak_mib": 0.0}


def main() -> None:
    job = json.loads(sys.argv[1])
    torch.manual_seed(0)
    torch.set_num_threads(job.get("threads", 2))
    result = {"train": train, "sample": sample}[job["kind"]](job)
    result["torch_version"] = torch.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
