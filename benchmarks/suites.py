"""What each kind of config measures, and the run over the configs: a train
config's rows (ours and the peers) compiled, then timed in rounds; sampling;
long sequences; every cell type. Each group of rows is handed on as soon as
it is measured, within the run's `--budget_s`."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from benchmarks.configs import (
    BF16_IMPLS,
    CELL_TYPES,
    CELLS_SHAPES,
    LONG_SEQ_SHAPE,
    LONG_SEQ_T,
    SAMPLE_SHAPE,
    SAMPLE_STREAMS,
    TRAIN_CONFIGS,
    Options,
    Shape,
    split_impl,
)
from benchmarks.peers import TorchPeer, flax_trainer, run_torch, torch_runs
from benchmarks.tables import ratios
from benchmarks.timing import (
    Budget,
    JaxTrainer,
    MatmulRates,
    Row,
    cpu_seconds,
    measure_matmul_rates,
    ours_trainer,
    shape_model,
)


def _run_rounds(name: str, budget: Budget, rounds: int, one_round: Callable[[], None]) -> None:
    """`rounds` calls of `one_round`; the first always runs (so that what was
    compiled reports), a later one only if the previous one's duration fits
    in what is left of the budget."""
    last = 0.0
    for i in range(rounds):
        if i and not budget.fits(last):
            budget.skip(f"{name}: rounds {i + 1}-{rounds} of {rounds}")
            return
        t0 = budget.clock()
        one_round()
        last = budget.clock() - t0


def bench_train(
    name: str,
    shape: Shape,
    impls: list[str],
    peer: TorchPeer,
    args: Options,
    budget: Budget,
) -> Iterator[list[Row]]:
    """One train config: compile every row, then cycle rounds through them;
    yields the config's rows once, when its last round is done."""
    opts = args.compiler_options
    makers: dict[str, Callable[[], JaxTrainer]] = {
        impl: (lambda impl=impl: ours_trainer(shape, impl, opts)) for impl in impls
    }
    for flax_peer, optimized in (("flax_lstm", False), ("flax_optimized", True)):
        if flax_peer in args.peers:
            makers[flax_peer] = lambda o=optimized: flax_trainer(shape, o, compiler_options=opts)
    rows: dict[str, Row] = {}
    trainers: dict[str, JaxTrainer] = {}
    for key, make in makers.items():
        if not budget.fits():
            budget.skip(f"{name}: {key}")
            continue
        trainers[key] = trainer = make()
        trainer.run(args.warmup)
        rows[key] = Row(name, key, shape, compile_s=trainer.compile_s, peak_mib=trainer.peak_mib)
    runs = []
    for run in torch_runs(peer, args, "train"):
        if not budget.fits():
            budget.skip(f"{name}: {run.key}")
            continue
        runs.append(run)
        rows[run.key] = Row(name, run.key, shape, peak_mib=0.0, note=run.note)

    def one_round() -> None:  # cycle, so that load spikes hit every row
        for key, trainer in trainers.items():
            trainer.run(1)  # re-warm caches after the previous row
            times, cpu = trainer.run(args.steps)
            rows[key].times += times
            rows[key].cpu += cpu
        for run in runs:
            job = {"kind": "train", **dataclasses.asdict(shape), **run.job}
            res = run_torch(peer, {**job, "warmup": args.warmup, "steps": args.steps}, run.malloc)
            r = rows[run.key]
            r.times += res["times"]
            r.cpu += res["cpu"]
            r.compile_s = res["first_step_s"]
            r.peak_mib = max(r.peak_mib, res["peak_mib"])
            if peer.device == "cuda":
                r.note = f"{run.note}; {res['precision']}"

    if rows:
        _run_rounds(name, budget, args.rounds, one_round)
    trainers.clear()  # free the device memory before the rows are reported
    yield [r for r in rows.values() if r.times]


def _our_sampler(shape: Shape) -> Callable[[jax.Array], Any]:
    """`lstm_jax.sample.generate` on a fresh model (random weights: speed only)."""
    from lstm_jax import sample  # noqa: PLC0415  (CLI-only dependency)

    model = shape_model(shape)
    params = model.init(jax.random.key(0))
    prime = np.zeros((1,), np.int32)

    def run(key):
        return sample.generate(
            model, params, prime, key, length=shape.seq, num_samples=shape.batch
        ).tokens

    return run


def bench_sample(peer: TorchPeer, args: Options, budget: Budget) -> Iterator[list[Row]]:
    """Generation speed for each stream count: ours against the torch loop on
    the torch rows' device; yields each stream count's rows when measured."""
    for streams in SAMPLE_STREAMS:
        if not budget.fits():
            budget.skip(f"sample: {streams} streams")
            continue
        shape = dataclasses.replace(SAMPLE_SHAPE, batch=streams, seq=args.sample_tokens)
        run = _our_sampler(shape)
        t0 = time.perf_counter()
        run(jax.random.key(0)).block_until_ready()
        ours = Row("sample", "generate", shape, compile_s=time.perf_counter() - t0)
        ours.note = "lstm_jax.sample.generate (one compiled loop)"
        runs = torch_runs(peer, args, "sample")
        torch_rows = {r.key: Row("sample", r.key, shape, note=r.note) for r in runs}
        calls = max(3, args.steps // 3)

        def one_round(
            ours=ours, run=run, shape=shape, runs=runs, torch_rows=torch_rows, calls=calls
        ):
            for i in range(calls):
                c0, t0 = cpu_seconds(), time.perf_counter()
                run(jax.random.key(1 + len(ours.times) + i)).block_until_ready()
                ours.times.append(time.perf_counter() - t0)
                ours.cpu.append(cpu_seconds() - c0)
            for r in runs:
                job = {"kind": "sample", **dataclasses.asdict(shape), **r.job, "steps": calls}
                res = run_torch(peer, job, r.malloc)
                torch_rows[r.key].times += res["times"]
                torch_rows[r.key].cpu += res["cpu"]

        _run_rounds(f"sample: {streams} streams", budget, args.rounds, one_round)
        yield [ours, *torch_rows.values()]


def bench_cells(args: Options, budget: Budget) -> Iterator[list[Row]]:
    """Train tokens/s of "scan" and "fused" for each cell type (no peers)."""
    for shape_name in CELLS_SHAPES:
        shape = TRAIN_CONFIGS[shape_name]
        trainers, rows = {}, {}
        for cell in CELL_TYPES:
            for impl in ("scan", "fused"):
                if not budget.fits():
                    budget.skip(f"cells:{shape_name}: {cell} {impl}")
                    continue
                t = ours_trainer(shape, impl, args.compiler_options, cell=cell)
                t.run(args.warmup)
                trainers[(cell, impl)] = t
                rows[(cell, impl)] = Row(
                    f"cells:{shape_name}", impl, shape, compile_s=t.compile_s, cell=cell
                )
                rows[(cell, impl)].peak_mib = t.peak_mib

        def one_round(trainers=trainers, rows=rows):
            for key, t in trainers.items():
                times, cpu = t.run(max(2, args.steps // 2))
                rows[key].times += times
                rows[key].cpu += cpu

        if trainers:
            _run_rounds(f"cells:{shape_name}", budget, args.rounds, one_round)
        trainers.clear()
        yield [r for r in rows.values() if r.times]


def bench_long_seq(args: Options, budget: Budget) -> Iterator[list[Row]]:
    for t in LONG_SEQ_T:
        shape = dataclasses.replace(LONG_SEQ_SHAPE, seq=t)
        for impl in ("scan", "fused", "fused_remat"):
            if not budget.fits():
                budget.skip(f"long_seq: T={t} {impl}")
                continue
            trainer = ours_trainer(shape, impl, args.compiler_options)
            row = Row("long_seq", impl, shape, compile_s=trainer.compile_s)
            row.peak_mib = trainer.peak_mib
            trainer.run(1)
            row.times, row.cpu = trainer.run(args.long_steps)
            del trainer
            yield [row]


def _config_groups(
    name: str, args: Options, peer: TorchPeer, budget: Budget
) -> Iterator[list[Row]]:
    if name in TRAIN_CONFIGS:
        return bench_train(name, TRAIN_CONFIGS[name], args.impls, peer, args, budget)
    if name == "sample":
        return bench_sample(peer, args, budget)
    if name == "long_seq":
        return bench_long_seq(args, budget)
    return bench_cells(args, budget)


def run_bench(
    args: Options,
    peer: TorchPeer,
    budget: Budget,
    emit: Callable[[Row, dict[str, float], MatmulRates], None],
) -> tuple[list[Row], MatmulRates]:
    """Every config in turn, `emit`-ting each group of rows as soon as it is
    measured (with its ratios against the peers measured beside it)."""
    bf16 = any(split_impl(i)[0] in BF16_IMPLS for i in args.impls) or peer.device == "cuda"
    dtypes = ("float32", "bfloat16") if bf16 else ("float32",)
    rates = measure_matmul_rates(None, dtypes, args.matmul_n)
    rows: list[Row] = []
    for name in args.configs:
        if not budget.fits():
            budget.skip(name)
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        for group in _config_groups(name, args, peer, budget):
            rows += group
            for r in group:
                emit(r, ratios(r, rows), rates)
        rates.update(
            measure_matmul_rates(None, dtypes, args.matmul_n)
        )  # the best of the run (load varies)
    return rows, rates
