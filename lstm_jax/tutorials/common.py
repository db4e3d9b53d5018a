"""What the tutorials share: the command line, the table printer, and the
feed-forward net written as the project's RNN with its recurrence removed.

A feed-forward net with one hidden layer, `y = W_hy tanh(W_xh x + b_h) + b_y`,
is exactly a vanilla RNN, `h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)`, whose
recurrent kernel W_hh is zero and stays zero. So the tutorials build both nets
from the same `rnn_tanh` cell and model, and the only difference between them
is the one the slides draw: the arrow from yesterday's hidden state.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

DEFAULT_ROOT = pathlib.Path("workdirs/tutorials")


def parse_args(
    name: str, doc: str, argv: Sequence[str] | None, add_options: Any = None
) -> argparse.Namespace:
    """`--outdir` (figures and results; default workdirs/tutorials/<name>),
    `--seed`, and whatever `add_options(parser)` adds."""
    parser = argparse.ArgumentParser(
        prog=f"python -m lstm_jax.tutorials.{name}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--outdir", type=pathlib.Path, default=DEFAULT_ROOT / name, help="figures go here"
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for data and init")
    if add_options is not None:
        add_options(parser)
    return parser.parse_args(argv)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (it reads as plain text too, and pastes into docs)."""

    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [header, ["---"] * len(header), *[[cell(v) for v in r] for r in rows]]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "| " + " | ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    )


def without_recurrence(params: Any) -> Any:
    """The same parameter tree with every recurrent kernel `w_h` set to zero."""
    return _map_recurrent_kernels(params, jnp.zeros_like, lambda x: x)


def recurrent_kernel_mask(params: Any) -> Any:
    """True at every recurrent kernel `w_h`, False elsewhere."""
    return _map_recurrent_kernels(params, lambda _: True, lambda _: False)


def _map_recurrent_kernels(params: Any, on_w_h: Any, elsewhere: Any) -> Any:
    def visit(path, leaf):
        is_w_h = any(getattr(k, "key", None) == "w_h" for k in path)
        return on_w_h(leaf) if is_w_h else elsewhere(leaf)

    return jax.tree_util.tree_map_with_path(visit, params)


def adam(
    learning_rate: float | optax.Schedule, params: Any, feedforward: bool
) -> optax.GradientTransformationExtraArgs:
    """Adam; for the feed-forward net, the recurrent kernels' updates are
    zeroed, so W_hh stays exactly at the zero it started from. Accepts the
    extra `value=loss` argument that the project's train step passes."""
    parts = [optax.adam(learning_rate)]
    if feedforward:
        parts.append(optax.masked(optax.set_to_zero(), recurrent_kernel_mask(params)))
    return optax.chain(*parts)


def feedforward_weight_count(params: Any) -> int:
    """Scalars of a feed-forward net built as an RNN: all but the (zero) `w_h`."""
    sizes = _map_recurrent_kernels(params, lambda _: 0, lambda x: x.size)
    return int(sum(jax.tree.leaves(sizes)))
