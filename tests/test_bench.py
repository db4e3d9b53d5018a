"""The benchmark's accelerator plumbing, on the CPU: rows stream as they are
measured, --budget_s stops the run, the PyTorch peer's device choice, and the
roofline's matmul rate comes from the backend the rows run on.

No figure here is a speed claim: the configs are the tiny "smoke" shape and
every assertion is about order, counts and which rate was used."""

import json
import os
import subprocess
import sys

import jax
import pytest
from helpers import ROOT

from benchmarks import configs, peers, suites, tables, throughput, timing

TORCH_PYTHON = os.environ.get("LSTM_JAX_TORCH_PYTHON")
TINY = ["--impls", "scan,fused", "--peers", "", "--steps", "1", "--warmup", "1"]
TINY += ["--matmul_n", "64", "--sample_tokens", "5"]


class ManualClock:
    """A time source the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "jax_backend, torch_cuda, expected",
    [
        ("gpu", True, "cuda"),
        ("cuda", True, "cuda"),
        ("gpu", False, "cpu"),  # torch without CUDA: its CPU build beside JAX's GPU
        ("cpu", True, "cpu"),  # JAX on the CPU: the peer stays there too
        ("cpu", False, "cpu"),
        ("tpu", False, "cpu"),
    ],
)
def test_peer_device(jax_backend, torch_cuda, expected):
    assert peers.peer_device(jax_backend, torch_cuda) == expected


def test_choose_torch_peer(monkeypatch):
    monkeypatch.setenv("LSTM_JAX_TORCH_PYTHON", "/some/python")
    sub = peers.choose_torch_peer("subprocess", "gpu")
    assert sub == peers.TorchPeer("subprocess", "cpu")
    monkeypatch.delenv("LSTM_JAX_TORCH_PYTHON")
    if peers.torch_importable():
        assert peers.choose_torch_peer("auto", "cpu") == peers.TorchPeer("inprocess", "cpu")
    else:
        assert peers.choose_torch_peer("auto", "cpu").where == "none"
        with pytest.raises(SystemExit, match="not importable in this interpreter"):
            peers.choose_torch_peer("inprocess", "cpu")
    with pytest.raises(SystemExit, match="LSTM_JAX_TORCH_PYTHON"):
        peers.choose_torch_peer("subprocess", "cpu")


def test_torch_rows_per_device():
    """On CUDA: cuDNN fp32 and bf16 autocast rows (one sampling row); on the
    CPU: one row per thread count (and allocator, for the subprocess)."""
    args = throughput.parse_args(["--threads", "2,1", "--torch_malloc", "default,retain"])
    cuda = peers.torch_runs(peers.TorchPeer("inprocess", "cuda"), args, "train")
    assert [(r.key, r.job) for r in cuda] == [
        ("torch", {"device": "cuda"}),
        ("torch_bf16", {"device": "cuda", "autocast": "bf16"}),
    ]
    assert [r.key for r in peers.torch_runs(peers.TorchPeer("inprocess", "cuda"), args, "sample")]
    here = peers.torch_runs(peers.TorchPeer("inprocess", "cpu"), args, "train")
    assert [r.key for r in here] == ["torch", "torch_1t"]
    sub = peers.torch_runs(peers.TorchPeer("subprocess", "cpu"), args, "train")
    assert [r.key for r in sub] == ["torch", "torch_1t", "torch_retain", "torch_1t_retain"]
    assert peers.torch_runs(peers.TorchPeer("none"), args, "train") == []
    bf16 = timing.Row(
        "course_project", "torch_bf16", configs.TRAIN_CONFIGS["course_project"], times=[1.0]
    )
    assert bf16.compute_dtype == "bfloat16"


def _torch_job(kind, device="cpu"):
    shape = {"vocab": 11, "embed": 4, "hidden": 8, "layers": 2, "batch": 3, "seq": 5}
    return {"kind": kind, **shape, "device": device, "threads": 1, "warmup": 1, "steps": 2}


@pytest.mark.skipif(not peers.torch_importable(), reason="torch is not importable here")
def test_inprocess_peer_runs_on_cpu():
    peer = peers.TorchPeer("inprocess", "cpu")
    for kind in ("train", "sample"):
        res = peers.run_torch(peer, _torch_job(kind))
        assert len(res["times"]) == 2 and all(t > 0 for t in res["times"])


@pytest.mark.skipif(not TORCH_PYTHON, reason="set LSTM_JAX_TORCH_PYTHON (make torch-env)")
def test_subprocess_peer_runs_on_cpu():
    peer = peers.TorchPeer("subprocess", "cpu")
    for kind in ("train", "sample"):
        res = peers.run_torch(peer, _torch_job(kind))
        assert len(res["times"]) == 2 and all(t > 0 for t in res["times"])
        assert res["precision"] == "fp32"


def test_roofline_uses_the_backends_rate():
    rates = timing.measure_matmul_rates("cpu", ("float32",), n=64, reps=2)
    assert rates.platform == "cpu" and rates.gflops["float32"] > 0
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(RuntimeError, match="no JAX backend 'gpu'"):
            timing.measure_matmul_rates("gpu", n=64, reps=1)
    # Each row against its own dtype's rate: 1e6 tokens/s x ~20 MFLOP/token.
    course_project = configs.TRAIN_CONFIGS["course_project"]
    flops = 1e6 * course_project.train_flops_per_token
    steps = [course_project.batch * course_project.seq / 1e6] * 3  # 1e6 tokens/s
    rates = timing.MatmulRates("gpu", "test", {"float32": 50_000.0, "bfloat16": 800_000.0})
    fp32 = timing.Row("course_project", "fused", course_project, times=steps)
    bf16 = timing.Row("course_project", "fused_bf16", course_project, times=steps)
    assert timing.roofline_fraction(fp32, rates) == pytest.approx(flops / 50_000e9)
    assert timing.roofline_fraction(bf16, rates) == pytest.approx(flops / 800_000e9)
    row = bf16.as_json(rates, {})
    assert row["matmul_gflops"] == 800_000.0 and row["matmul_platform"] == "gpu"


def test_bf16_rows_compare_with_torch_bf16():
    course_project = configs.TRAIN_CONFIGS["course_project"]
    ours = timing.Row("course_project", "fused_bf16", course_project, times=[1.0])
    fp32 = timing.Row("course_project", "fused", course_project, times=[1.0])
    t32 = timing.Row("course_project", "torch", course_project, times=[4.0])
    t16 = timing.Row("course_project", "torch_bf16", course_project, times=[2.0])
    assert tables.ratios(ours, [ours, t32, t16])["vs_torch_best"] == pytest.approx(2.0)
    assert tables.ratios(fp32, [fp32, t32, t16])["vs_torch_best"] == pytest.approx(4.0)


def test_budget_counts_from_its_start():
    clock = ManualClock()
    clock.now = 100.0
    budget = timing.Budget(10.0, clock)
    assert budget.fits() and budget.fits(9.0) and not budget.fits(10.5)
    clock.now = 110.5
    assert not budget.fits()
    budget.skip("course_project")
    assert budget.note() == "--budget_s 10 spent; skipped: course_project"
    assert timing.Budget(None, clock).fits(1e9) and timing.Budget(None).note() is None


def test_a_round_that_cannot_finish_does_not_start():
    clock = ManualClock()
    budget = timing.Budget(1.0, clock)
    calls = []

    def one_round():
        calls.append(clock.now)
        clock.now += 0.6  # 0.4 s left after the first: a second would overrun

    suites._run_rounds("course_project", budget, 3, one_round)
    assert calls == [0.0]
    assert budget.skipped == ["course_project: rounds 2-3 of 3"]


def test_rows_stream_and_budget_stops_the_run():
    """Each config's rows reach `emit` as soon as measured; once the budget is
    spent (here: the clock jumps when the first rows arrive) the next config
    never starts."""
    args = configs.resolve_defaults(
        throughput.parse_args(["--configs", "smoke,char_rnn", "--rounds", "2", *TINY]), "cpu"
    )
    clock = ManualClock()
    budget = timing.Budget(50.0, clock)
    emitted = []

    def emit(row, ratios, rates):
        emitted.append((row.config, row.impl, len(row.times), clock.now))
        clock.now += 100.0

    rows, rates = suites.run_bench(args, peers.TorchPeer("none"), budget, emit)
    assert [(c, i, n) for c, i, n, _ in emitted] == [("smoke", "scan", 2), ("smoke", "fused", 2)]
    assert [r.impl for r in rows] == ["scan", "fused"]
    assert budget.skipped == ["char_rnn"]
    assert rates.platform == jax.default_backend()


@pytest.mark.slow
def test_cli_streams_json_lines_before_the_next_config():
    """Through the CLI: the smoke rows' JSON lines come out (flushed) before
    the sampling config starts, and the summary table comes last."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--configs", "smoke,sample", *TINY]
    out = subprocess.run(
        [*cmd, "--rounds", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
        check=True,
    ).stdout.splitlines()
    json_at = [i for i, line in enumerate(out) if line.startswith("{")]
    rows = [json.loads(out[i]) for i in json_at]
    assert [(r["config"], r["impl"]) for r in rows] == [
        ("smoke", "scan"),
        ("smoke", "fused"),
        ("sample", "generate"),
        ("sample", "generate"),
    ]
    sample_start = out.index("[bench] sample ...")
    assert json_at[1] < sample_start < json_at[2]
    assert json_at[-1] < next(i for i, line in enumerate(out) if line.startswith("Train step"))
    assert rows[0]["matmul_platform"] == "cpu"


def test_cli_options():
    for bad in (["--budget_s", "-1"], ["--sample_tokens", "0"], ["--torch_peer", "gpu"]):
        with pytest.raises(SystemExit):
            throughput.parse_args(bad)
    gpu = configs.resolve_defaults(throughput.parse_args([]), "gpu")
    assert gpu.configs == list(configs.GPU_CONFIGS) and gpu.impls == list(configs.GPU_IMPLS)
    assert {"gpu_2x650", "gpu_2x1024", "course_project", "dnd_word", "char_rnn"} <= set(gpu.configs)
    cpu = configs.resolve_defaults(throughput.parse_args([]), "cpu")
    assert cpu.configs == list(configs.CPU_CONFIGS) and "gpu_2x1024" not in cpu.configs
    assert configs.TRAIN_CONFIGS["gpu_2x650"] == configs.Shape(10000, 650, 650, 2, 128, 35)
    assert configs.TRAIN_CONFIGS["gpu_2x1024"] == configs.Shape(10000, 1024, 1024, 2, 256, 64)
    explicit = configs.resolve_defaults(
        throughput.parse_args(["--configs", "course_project"]), "gpu"
    )
    assert explicit.configs == ["course_project"]
