"""The PyTorch peer of `python -m benchmarks.throughput`.

Two ways in, one job format:
- where torch is importable in the benchmark's own interpreter (a GPU image
  ships torch and jax in one `python3`), benchmarks/peers.py calls `run_job`
  directly, on the same accelerator as JAX when torch sees it;
- otherwise (torch's CPU build exists for a different Python than the
  project's) it runs this file with `LSTM_JAX_TORCH_PYTHON` in a subprocess,
  on the CPU, one job at a time, never beside a JAX measurement:

    python bench_torch.py '{"kind": "train", "vocab": 65, ...}'   -> one JSON line

It imports only torch and the standard library.

kind "train": nn.Embedding -> nn.LSTM(num_layers, batch_first) -> nn.Linear,
  mean cross-entropy, loss.backward(), clip_grad_norm_(5.0), Adam(2e-3): the
  same step, shapes and optimizer as the JAX rows. Reports each timed step.
  "device": "cpu" | "cuda" (cuDNN's LSTM); "autocast": "bf16" runs the forward
  under torch.autocast(bfloat16), the usual mixed-precision recipe.
kind "sample": the usual step-by-step generation loop (one token per call,
  softmax + multinomial under no_grad) for `batch` streams.

Every timed call ends with `torch.cuda.synchronize()` on a GPU (CUDA kernels
run asynchronously; the JAX rows wait with `block_until_ready`).
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


def _sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, n: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of n calls of fn, each waited for on `device`."""
    wall, cpu = [], []
    for _ in range(n):
        c0, t0 = _cpu_s(), time.perf_counter()
        fn()
        _sync(device)
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


def _device(job: dict) -> torch.device:
    name = job.get("device", "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("job asks for device 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def make_train_step(job: dict):
    """The benchmark's PyTorch train step on a fixed random batch: embedding,
    nn.LSTM, readout, mean cross-entropy, backward, clip_grad_norm_(5), Adam."""
    v, b, t = job["vocab"], job["batch"], job["seq"]
    device = _device(job)
    bf16 = job.get("autocast") == "bf16"
    model = LM(v, job["embed"], job["hidden"], job["layers"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, v, (b, t), generator=gen).to(device)
    y = torch.roll(x, -1, dims=1)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(x)
            loss = loss_fn(logits.reshape(-1, v), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return step


def _reset_peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    return _reset_peak_rss()


def _peak_mib(device: torch.device, base: float) -> float:
    """Peak memory since `_reset_peak`: CUDA's allocator peak, or RSS growth."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_mib("VmHWM") - base


def train(job: dict) -> dict:
    step, device = make_train_step(job), _device(job)
    base = _reset_peak(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(job["warmup"] - 1):
        step()
    _sync(device)
    times, cpu = _timed(step, job["steps"], device)
    peak = _peak_mib(device, base)
    return {"times": times, "cpu": cpu, "first_step_s": first, "peak_mib": peak}


@torch.no_grad()
def sample(job: dict) -> dict:
    v, s, n = job["vocab"], job["batch"], job["seq"]
    device = _device(job)
    model = LM(v, job["embed"], job["hidden"], job["layers"]).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)

    def run(length: int) -> None:
        token = torch.zeros((s, 1), dtype=torch.long, device=device)
        state = None
        for _ in range(length):
            logits, state = model(token, state)
            probs = torch.softmax(logits[:, -1], dim=-1)
            token = torch.multinomial(probs, 1, generator=gen)

    run(min(n, 20))  # warm-up
    _sync(device)
    times, cpu = _timed(lambda: run(n), job["steps"], device)
    return {"times": times, "cpu": cpu, "first_step_s": 0.0, "peak_mib": 0.0}


def precision_note(device: str) -> str:
    """torch's fp32 matmul settings on `device` (TF32 is off for matmuls and on
    for cuDNN by default), so a row says what "fp32" meant."""
    if device != "cuda":
        return "fp32"
    return (
        f"matmul allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
        f"cudnn allow_tf32={torch.backends.cudnn.allow_tf32}"
    )


def run_job(job: dict) -> dict:
    """One train or sample job (the JSON format above) in this interpreter."""
    torch.manual_seed(0)
    if job.get("device", "cpu") == "cpu":
        torch.set_num_threads(job.get("threads", 2))
    result = {"train": train, "sample": sample}[job["kind"]](job)
    result["torch_version"] = torch.__version__
    result["precision"] = precision_note(job.get("device", "cpu"))
    return result


def main() -> None:
    print(json.dumps(run_job(json.loads(sys.argv[1]))))


if __name__ == "__main__":
    main()
