"""The report: each row's ratios against the peers measured beside it, its
label, the markdown tables (one row at a time as measured, the summary at the
end), the notes on the machine, and `RowSink`, which writes each row (a JSON
line and a table row, flushed) as soon as it is measured."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterable, Sequence

import jax

from benchmarks.configs import PEERS, TRAIN_CONFIGS, Options, Shape, split_impl
from benchmarks.peers import TorchPeer
from benchmarks.timing import MatmulRates, Row, roofline_fraction

DOTS_LABELS = {"onednn": "oneDNN dots"}
LABELS = {
    "scan": "ours: lax.scan (reference)",
    "fused": "ours: fused (custom VJP)",
    "fused_remat": "ours: fused + remat",
    "fused_bf16": "ours: fused, bf16 matmuls",
    "cudnn": "ours: cuDNN backend",
    "onednn": "ours: oneDNN LSTM primitive (FFI)",
    "torch": "PyTorch nn.LSTM",
    "torch_bf16": "PyTorch nn.LSTM, bf16 autocast",
    "flax_lstm": "flax nn.RNN(LSTMCell)",
    "flax_optimized": "flax nn.RNN(OptimizedLSTMCell)",
}


def is_peer(impl: str) -> bool:
    return impl in PEERS or impl.startswith("torch_")


def ratios(row: Row, rows: list[Row]) -> dict[str, float]:
    """This row's tokens/s over each peer's, measured in the same run;
    "vs_torch_best" is over the fastest torch row (any thread count, either
    allocator setting) of the row's compute dtype where there is one (a bf16
    row against torch's bf16 autocast, an fp32 row against fp32), else of any;
    "vs_torch_as_shipped" likewise over those run with glibc's default
    allocator settings."""
    out = {}
    torch_rows = []
    for other in rows:
        same = other.config == row.config and other.shape == row.shape
        if same and is_peer(other.impl) and other.impl != row.impl:
            out[f"vs_{other.impl}"] = row.tokens_per_s / other.tokens_per_s
            if other.impl.startswith("torch"):
                torch_rows.append(other)
    same_dtype = [o for o in torch_rows if o.compute_dtype == row.compute_dtype]
    torch_rates = {o.impl: o.tokens_per_s for o in same_dtype or torch_rows}
    if torch_rates and not row.impl.startswith("torch"):
        out["vs_torch_best"] = row.tokens_per_s / max(torch_rates.values())
        shipped = [rate for name, rate in torch_rates.items() if not name.endswith("_retain")]
        if shipped:
            out["vs_torch_as_shipped"] = row.tokens_per_s / max(shipped)
    return out


def label(r: Row) -> str:
    if r.impl.startswith("torch"):
        return f"PyTorch nn.LSTM ({r.note})" if r.config != "sample" else f"PyTorch ({r.note})"
    impl, devices, dots = split_impl(r.impl)
    text = LABELS.get(impl, impl)
    if dots != "default":
        text += f", {DOTS_LABELS.get(dots, dots)}"
    if devices > 1:
        text += f", rows over {devices} CPU devices"
    return text


def _row_name(r: Row) -> str:
    """The row's label; our sampling rows are "ours: sample.generate"."""
    return "ours: sample.generate" if r.impl == "generate" else label(r)


def _fmt_ratio(r: float | None) -> str:
    return "" if r is None else f"{r:.2f}x"


def _shape_text(config: str, s: Shape) -> str:
    """ "char_rnn (65, 64, 128, 2, 50, 50)": the config and its (V, E, H, L, B, T)."""
    return f"{config} ({s.vocab}, {s.embed}, {s.hidden}, {s.layers}, {s.batch}, {s.seq})"


def rates_text(rates: MatmulRates) -> str:
    """ "fp32 51,000 / bf16 740,000 GFLOP/s on gpu (NVIDIA H100 80GB HBM3)"."""
    short = {"float32": "fp32", "bfloat16": "bf16"}
    each = " / ".join(f"{short.get(d, d)} {g:,.0f}" for d, g in rates.gflops.items())
    return f"{each} GFLOP/s on {rates.platform} ({rates.device_kind})"


# ---------------------------------------------------------------------------
# Markdown tables


def table_row(cells: Sequence[str]) -> str:
    """One markdown table line: "| a | b |"."""
    return "| " + " | ".join(cells) + " |"


def markdown_table(
    header: Sequence[str], align: str, rows: Iterable[Sequence[str]] = ()
) -> list[str]:
    """A markdown table's lines: the header, the alignment line (one letter per
    column of `align`: "l" left, "r" right), then one line per row."""
    if len(align) != len(header):
        raise ValueError(f"{len(header)} columns, {len(align)} alignments")
    rule = "|" + "|".join("--:" if a == "r" else "---" for a in align) + "|"
    return [table_row(header), rule, *map(table_row, rows)]


TRAIN_HEADER = (
    "config (V, E, H, L, B, T)",
    "implementation",
    "tokens/s",
    "IQR",
    "vs PyTorch as shipped",
    "vs PyTorch (best row)",
    "vs flax LSTMCell",
    "vs flax Optimized",
    "roofline",
    "tokens/CPU-s",
    "compile s",
    "peak MiB",
)
SAMPLE_HEADER = (
    "streams",
    "implementation",
    "chars/s",
    "IQR",
    "vs PyTorch (best row)",
    "chars/CPU-s",
)
LONG_SEQ_HEADER = ("T", "implementation", "peak MiB", "vs scan memory", "tokens/s", "compile s")
CELLS_HEADER = ("config", "cell", "scan tokens/s", "fused tokens/s", "fused / scan")
STREAM_HEADER = (
    "config (V, E, H, L, B, T)",
    "implementation",
    "tokens/s",
    "IQR",
    "vs PyTorch (best row)",
    "roofline",
    "compile s",
    "peak MiB",
)


def _train_cells(r: Row, rows: list[Row], rates: MatmulRates) -> list[str]:
    q = ratios(r, rows)
    return [
        _shape_text(r.config, r.shape),
        label(r),
        f"{r.tokens_per_s:,.0f}",
        f"{100 * r.spread:.0f}%",
        _fmt_ratio(q.get("vs_torch_as_shipped")),
        _fmt_ratio(q.get("vs_torch_best")),
        _fmt_ratio(q.get("vs_flax_lstm")),
        _fmt_ratio(q.get("vs_flax_optimized")),
        f"{100 * roofline_fraction(r, rates):.0f}%",
        f"{r.tokens_per_cpu_s:,.0f}",
        f"{r.compile_s:.1f}",
        f"{r.peak_mib:,.0f}",
    ]


def _sample_cells(r: Row, rows: list[Row]) -> list[str]:
    return [
        str(r.shape.batch),
        _row_name(r) + ("" if r.impl == "generate" else " step loop"),
        f"{r.tokens_per_s:,.0f}",
        f"{100 * r.spread:.0f}%",
        _fmt_ratio(ratios(r, rows).get("vs_torch_best")),
        f"{r.tokens_per_cpu_s:,.0f}",
    ]


def _long_seq_cells(r: Row, longs: list[Row]) -> list[str]:
    base = next((o for o in longs if o.shape == r.shape and o.impl == "scan"), None)
    return [
        f"{r.shape.seq:,}",
        label(r),
        f"{r.peak_mib:,.0f}",
        f"{r.peak_mib / base.peak_mib:.2f}" if base else "",
        f"{r.tokens_per_s:,.0f}",
        f"{r.compile_s:.1f}",
    ]


def _cells_rows(cell_rows: list[Row]) -> Iterable[list[str]]:
    """One line per fused row whose scan row was measured (--budget_s may cut it)."""
    for r in cell_rows:
        if r.impl != "fused":
            continue
        ref = next(
            (o for o in cell_rows if (o.config, o.cell, o.impl) == (r.config, r.cell, "scan")),
            None,
        )
        if ref is None:
            continue
        yield [
            r.config.split(":")[1],
            r.cell,
            f"{ref.tokens_per_s:,.0f}",
            f"{r.tokens_per_s:,.0f}",
            f"{r.tokens_per_s / ref.tokens_per_s:.2f}x",
        ]


def markdown(rows: list[Row], rates: MatmulRates, notes: list[str]) -> str:
    """The summary at the end of a run: a table per kind of config, then the notes."""
    out = []
    train = [r for r in rows if r.config in TRAIN_CONFIGS]
    if train:
        out.append(
            f"Train step (fwd + bwd + clip + Adam; fp32 unless the row says bf16), tokens/s, "
            f"median of the timed steps; roofline = the best matmul of the row's dtype in "
            f"this run at JAX's default precision, {rates_text(rates)}.\n"
        )
        out += markdown_table(
            TRAIN_HEADER, "ll" + "r" * 10, (_train_cells(r, rows, rates) for r in train)
        )
    sample = [r for r in rows if r.config == "sample"]
    if sample:
        out.append(
            "\nSampling (char-rnn model, V=65, E=64, 2x128), characters/s, "
            f"{sample[0].shape.seq} tokens per stream:\n"
        )
        out += markdown_table(SAMPLE_HEADER, "rlrrrr", (_sample_cells(r, rows) for r in sample))
    longs = [r for r in rows if r.config == "long_seq"]
    if longs:
        out.append(
            "\nLong sequences (char-rnn model, B=50), train step, XLA peak memory and tokens/s:\n"
        )
        out += markdown_table(LONG_SEQ_HEADER, "rlrrrr", (_long_seq_cells(r, longs) for r in longs))
    cell_rows = [r for r in rows if r.config.startswith("cells:")]
    if cell_rows:
        out.append("\nEvery cell type, train tokens/s, reference scan vs fused (same step):\n")
        out += markdown_table(CELLS_HEADER, "llrrr", _cells_rows(cell_rows))
    if notes:
        out.append("\n" + "\n".join(f"- {n}" for n in notes))
    return "\n".join(out)


def stream_line(row: Row, ratios: dict[str, float], rates: MatmulRates) -> str:
    """One table row, written as soon as the row is measured (tokens/s are
    characters/s for sampling rows, which have no roofline)."""
    roof = "" if row.config == "sample" else f"{100 * roofline_fraction(row, rates):.0f}%"
    cell = "" if row.cell == "lstm" else f" [{row.cell}]"
    return table_row(
        [
            _shape_text(f"{row.config}{cell}", row.shape),
            _row_name(row),
            f"{row.tokens_per_s:,.0f}",
            f"{100 * row.spread:.0f}%",
            _fmt_ratio(ratios.get("vs_torch_best")),
            roof,
            f"{row.compile_s:.1f}",
            f"{row.peak_mib:,.0f}",
        ]
    )


# ---------------------------------------------------------------------------
# Notes and the streamed rows


def _loadavg() -> list[str]:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return ["n/a"]


def machine_notes(args: Options, peer: TorchPeer) -> list[str]:
    device = jax.devices()[0]
    notes = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"jax {jax.__version__} on {jax.default_backend()} ({device.device_kind}), "
        f"default matmul precision {jax.config.jax_default_matmul_precision or 'default'}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; allocator: {args.malloc}"
        + (
            f" (PyTorch train rows: {', '.join(args.torch_malloc)})"
            if peer.where == "subprocess"
            else ""
        ),
        f"{args.warmup} warm-up steps, {args.rounds} rounds x {args.steps} timed steps; "
        f"XLA compiler options: {args.compiler_options or 'defaults'}",
        f"load average at the end: {' '.join(_loadavg())} (other processes share the cores)",
    ]
    if "torch" in args.peers:
        notes.append(peer.describe())
    return notes


class RowSink:
    """Writes each row as soon as it is measured, both flushed: a JSON line to
    `json_path` ("-": stdout; None: none) and a table row to stdout, or to
    stderr when stdout carries the JSON lines."""

    def __init__(self, json_path: str | None):
        self.table = sys.stderr if json_path == "-" else sys.stdout
        self._json = sys.stdout if json_path == "-" else None
        self._own = None
        if json_path and json_path != "-":
            self._json = self._own = open(json_path, "w")  # noqa: SIM115  (closed in close())
        self._header = False

    def emit(self, row: Row, ratios: dict[str, float], rates: MatmulRates) -> None:
        if self._json is not None:
            self._json.write(json.dumps(row.as_json(rates, ratios)) + "\n")
            self._json.flush()
        if not self._header:
            print("\n".join(markdown_table(STREAM_HEADER, "llrrrrrr")), file=self.table)
            self._header = True
        print(stream_line(row, ratios, rates), file=self.table, flush=True)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
