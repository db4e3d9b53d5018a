"""Throughput and memory of our layers, side by side with the peers (not a test).

    python -m benchmarks.throughput                                  # the backend's configs
    python -m benchmarks.throughput --configs course_project,sample --steps 20
    python -m benchmarks.throughput --configs long_seq               # memory vs T, remat on/off
    python -m benchmarks.throughput --json                           # JSON lines on stdout
    python -m benchmarks.throughput --json rows.jsonl --budget_s 300 # to a file, 5 min at most
    python -m benchmarks.throughput --threads 2,1                    # torch, 2 and 1 threads
    python -m benchmarks.throughput --impls scan,fused,fused_bf16    # names in LAYER_IMPLS

What is measured, and how each column is computed: docs/performance.md,
"The benchmark".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
from absl import app, flags

from benchmarks.configs import (
    ALL_CONFIGS,
    CONFIG_ALIASES,
    CPU_CONFIGS,
    GPU_CONFIGS,
    GPU_IMPLS,
    MALLOC_MODES,
    OUR_IMPLS,
    PEERS,
    TORCH_PEER_MODES,
    Options,
    expand_impls,
    resolve_defaults,
)
from benchmarks.peers import TorchPeer, choose_torch_peer, torch_importable
from benchmarks.suites import run_bench
from benchmarks.tables import RowSink, machine_notes, markdown
from benchmarks.timing import Budget
from lstm_jax import host, parallel
from lstm_jax.layers import LAYER_IMPLS, onednn

FLAGS = flags.FLAGS
PROGRAM = "python -m benchmarks.throughput"


def _names_in(
    valid: Sequence[str], what: str, aliases: dict[str, str] | None = None
) -> Callable[[list[str] | None], bool]:
    """A validator: every name given (`aliases` resolved) is one of `valid`."""

    def check(names: list[str] | None) -> bool:
        bad = sorted({(aliases or {}).get(n, n) for n in names or [] if n} - set(valid))
        if bad:
            raise flags.ValidationError(f"unknown {what} {bad}; valid: {list(valid)}")
        return True

    return check


def _check_impls(impls: list[str] | None) -> bool:
    _names_in(sorted(LAYER_IMPLS), "impls")(impls)
    if "onednn" in (impls or []) and not onednn.installed():
        raise flags.ValidationError(f"oneDNN is not installed; {onednn.INSTALL_HINT}")
    return True


def _check_torch_malloc(modes: list[str]) -> bool:
    if not [m for m in modes if m]:
        raise flags.ValidationError(f"choose from {list(MALLOC_MODES)}")
    return _names_in(MALLOC_MODES, "allocator settings")(modes)


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
    """The CLI's flags on `fv`: absl's global FLAGS when run as a program, a
    fresh FlagValues in `parse_args`. The defaults are `Options()`'s."""
    d = Options()
    flags.DEFINE_list(
        "configs",
        None,
        f"From {ALL_CONFIGS}; default: {GPU_CONFIGS} on a GPU, {CPU_CONFIGS} elsewhere.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "impls",
        None,
        f"Our layer implementations; default: {GPU_IMPLS} on a GPU, {OUR_IMPLS} elsewhere "
        "(adding 'onednn' where oneDNN is installed).",
        flag_values=fv,
    )
    flags.DEFINE_list("peers", d.peers, f"From {PEERS}; '' for none.", flag_values=fv)
    flags.DEFINE_integer("steps", d.steps, "Timed steps per round.", flag_values=fv)
    flags.DEFINE_integer("rounds", d.rounds, "Rounds cycling through the rows.", flag_values=fv)
    flags.DEFINE_integer("warmup", d.warmup, "Untimed steps after compiling.", flag_values=fv)
    flags.DEFINE_integer(
        "long_steps", d.long_steps, "Timed steps per long_seq row.", flag_values=fv
    )
    flags.DEFINE_list(
        "threads",
        [str(t) for t in d.threads],
        "torch.set_num_threads; several (e.g. 2,1) for one torch row each.",
        flag_values=fv,
    )
    flags.DEFINE_multi_string(
        "xla_option",
        [],
        "NAME=VALUE: an XLA compiler option for every JAX row (repeatable), e.g. "
        "xla_cpu_experimental_ynn_fusion_type= ; applied per compile, not process-wide.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "cpu_devices",
        d.cpu_devices,
        "Also run each --impls row with the batch split over this many CPU devices "
        "(parallel.use_cpu_devices; the rows are named e.g. fused@2cpu); 0 = no such rows.",
        lower_bound=0,
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "malloc",
        d.malloc,
        MALLOC_MODES,
        "This process's allocator: 'retain' = host.retain_freed_memory() (as "
        "python -m lstm_jax.train does), 'default' = glibc's defaults.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "torch_malloc",
        d.torch_malloc,
        "PyTorch train rows with each of these allocator settings; 'vs PyTorch (best row)' "
        "is against the fastest of all, 'vs PyTorch as shipped' against the fastest with "
        "glibc's defaults.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "cpu_dots",
        d.cpu_dots,
        "Also run each --impls row with these XLA:CPU dot libraries (names in "
        "host.CPU_DOT_LIBRARIES, as train.cpu_dots; rows named e.g. fused+onednn).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "json",
        d.json,
        "Write one JSON line per row as it is measured: to PATH, or with '-' or no value "
        "to stdout (the table rows then go to stderr).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "budget_s",
        d.budget_s,
        "Cap on the whole run's seconds: once spent, no further config, row or round "
        "starts, and the notes name what was skipped.",
        lower_bound=0.0,
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "torch_peer",
        d.torch_peer,
        TORCH_PEER_MODES,
        "Where PyTorch runs: 'auto' = in this interpreter if torch imports here (on JAX's "
        "GPU when torch sees it), else LSTM_JAX_TORCH_PYTHON on the CPU.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "sample_tokens",
        d.sample_tokens,
        "Tokens generated per stream in the sampling rows.",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "matmul_n",
        d.matmul_n,
        "Size of the roofline's n^3 matmul (default: 2048 on a CPU, 8192 on an accelerator).",
        lower_bound=1,
        flag_values=fv,
    )
    checks: dict[str, Callable[[Any], bool]] = {
        "configs": _names_in(ALL_CONFIGS, "configs", CONFIG_ALIASES),
        "impls": _check_impls,
        "peers": _names_in(PEERS, "peers"),
        "threads": lambda ts: all(t.isdigit() and int(t) > 0 for t in ts if t),
        "xla_option": lambda options: all("=" in o for o in options),
        "torch_malloc": _check_torch_malloc,
        "cpu_dots": _names_in(sorted(host.CPU_DOT_LIBRARIES), "cpu_dots"),
    }
    messages = {
        "threads": "thread counts are positive integers",
        "xla_option": "an --xla_option is NAME=VALUE",
    }
    for name, check in checks.items():
        flags.register_validator(name, check, messages.get(name, "invalid value"), flag_values=fv)


def _bare_json(argv: Sequence[str]) -> list[str]:
    """`--json` with no PATH (last, or before the next flag) -> `--json=-`: stdout."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--json" and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out[i] = "--json=-"
    return out


def _parse_option(text: str) -> tuple[str, Any]:
    """ "name=value" -> (name, bool | int | str); an empty value stays ""."""
    name, _, value = text.partition("=")
    lowered = value.lower()
    if lowered in ("true", "false"):
        return name, lowered == "true"
    return name, int(value) if value.lstrip("-").isdigit() else value


def options(fv: flags.FlagValues) -> Options:
    """The run's settings from parsed flags: older config names resolved, thread
    counts as numbers, --impls expanded with --cpu_dots and --cpu_devices."""
    cpu_dots = [c for c in fv.cpu_dots if c and c != "default"]
    impls = None
    if fv.impls is not None:
        impls = expand_impls([i for i in fv.impls if i], cpu_dots, fv.cpu_devices)
    return Options(
        configs=None if fv.configs is None else [CONFIG_ALIASES.get(c, c) for c in fv.configs if c],
        impls=impls,
        peers=[p for p in fv.peers if p],
        steps=fv.steps,
        rounds=fv.rounds,
        warmup=fv.warmup,
        long_steps=fv.long_steps,
        threads=[int(t) for t in fv.threads if t],
        compiler_options=dict(_parse_option(o) for o in fv.xla_option) or None,
        cpu_devices=fv.cpu_devices,
        malloc=fv.malloc,
        torch_malloc=[m for m in fv.torch_malloc if m],
        cpu_dots=cpu_dots,
        json=fv.json,
        budget_s=fv.budget_s,
        torch_peer=fv.torch_peer,
        sample_tokens=fv.sample_tokens,
        matmul_n=fv.matmul_n,
    )


def parse_args(argv: Sequence[str]) -> Options:
    """The options of a command line (without the program name), parsed on a
    fresh FlagValues; a bad option raises SystemExit with absl's message."""
    fv = flags.FlagValues()
    define_flags(fv)
    try:
        rest = fv([PROGRAM, *_bare_json(argv)])
    except flags.Error as e:
        raise SystemExit(f"{PROGRAM}: {e}") from e
    if len(rest) > 1:
        raise SystemExit(f"{PROGRAM}: unexpected arguments: {' '.join(rest[1:])}")
    return options(fv)


def run(args: Options) -> None:
    """The whole benchmark: rows streamed as measured, the summary tables last."""
    budget = Budget(args.budget_s)
    if args.malloc == "retain":
        host.retain_freed_memory()  # before JAX starts its threads
    if args.cpu_devices > 1:
        parallel.use_cpu_devices(args.cpu_devices)  # before the first JAX computation
    if "torch" in args.peers and args.torch_peer != "subprocess" and torch_importable():
        # JAX takes 75% of a GPU's memory when its backend starts; leave half
        # of it to the in-process PyTorch peer (read at that start, so here).
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    backend = jax.default_backend()
    resolve_defaults(args, backend)
    peer = choose_torch_peer(args.torch_peer, backend) if "torch" in args.peers else None
    peer = peer or TorchPeer("none")
    sink = RowSink(args.json)
    try:
        rows, rates = run_bench(args, peer, budget, sink.emit)
    finally:
        sink.close()
    notes = machine_notes(args, peer)
    if budget.note():
        notes.append(budget.note())
    print("\n" + markdown(rows, rates, notes), file=sink.table, flush=True)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    run(options(FLAGS))


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=lambda argv: app.parse_flags_with_usage(_bare_json(argv)))
