"""The functional layer API: a stack of recurrent layers as two pure functions.

    params = init_layers(key, cell, in_features, hidden, num_layers)
    carries, ys = apply_layers(cell, params, xs, seq_lengths=..., reverse=..., impl="auto")

`cell` is a cell of `lstm_jax.cells` (`make_cell("lstm")`); `params` is a list
of per-layer dicts {"w_x" [D, G*H], "w_h" [H, G*H], "b" [G*H]}, gates in
the order `cells.LSTM_GATES` (i, f, g, o). Inputs are batch-major [B, T, D]
(or [T, B, D] with `time_major=True`); the carries are the cells' own
(`cells.LSTMCarry(h, c)` for the LSTM), one per layer.

The options, with Flax's `nn.RNN` semantics (docs/library.md):

  initial_carry  one carry per layer; default zeros
  seq_lengths    [B] real steps per row: outputs past a row's length are zero
                 and padding never changes its carry (layers/lengths.py)
  reverse        each row runs backwards within its length; `keep_order`
                 (default True here) returns the outputs in input order
  impl           a name in `lstm_jax.layers.LAYER_IMPLS`, or "auto"
                 (`layers.resolve_impl`): every one exact against "scan"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax import layers
from lstm_jax.cells import Cell, Params
from lstm_jax.layers import lengths

Array = jax.Array
Carry = Any


def init_layers(
    key: Array,
    cell: Cell,
    in_features: int,
    hidden: int,
    num_layers: int = 1,
    dtype: Any = jnp.float32,
) -> list[Params]:
    """Parameters of `num_layers` layers; layer 0 reads `in_features`."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    keys = jax.random.split(key, num_layers)
    return [
        cell.init(k, in_features if i == 0 else hidden, hidden, dtype) for i, k in enumerate(keys)
    ]


def apply_layer(
    cell: Cell,
    params: Params,
    xs: Array,  # [T, B, D], time-major
    carry: Carry | None = None,
    *,
    seq_lengths: Array | None = None,
    reverse: bool = False,
    keep_order: bool = True,
    impl: str = layers.AUTO,
    unroll: int = 1,
) -> tuple[Carry, Array]:
    """One layer over time-major `xs`; returns (final carry, hs [T, B, H])."""
    name = layers.resolve_impl(impl, seq_lengths=seq_lengths is not None, cell=cell, dtype=xs.dtype)
    layer = layers.get_layer_impl(name)
    if reverse:
        xs = lengths.flip_within_lengths(xs, seq_lengths)
    if seq_lengths is None:
        if carry is None:
            carry = cell.zero_carry(xs.shape[1], params["w_h"].shape[0], xs.dtype)
        carry, hs = layer(cell, params, xs, carry, None, unroll=unroll)
    else:
        carry, hs = lengths.layer_with_lengths(
            name, layer, cell, params, xs, carry, seq_lengths, unroll=unroll
        )
    if reverse and keep_order:
        hs = lengths.flip_within_lengths(hs, seq_lengths)
    return carry, hs


def apply_layers(
    cell: Cell,
    params: Sequence[Params],
    inputs: Array,
    *,
    initial_carry: Sequence[Carry] | None = None,
    seq_lengths: Array | None = None,
    reverse: bool = False,
    keep_order: bool = True,
    time_major: bool = False,
    impl: str = layers.AUTO,
    unroll: int = 1,
) -> tuple[tuple[Carry, ...], Array]:
    """The stack over `inputs` ([B, T, D], or [T, B, D] if `time_major`);
    returns (one final carry per layer, the last layer's outputs in the
    input's layout). Every layer runs in the same direction."""
    xs = inputs if time_major else jnp.swapaxes(inputs, 0, 1)
    if initial_carry is not None and len(initial_carry) != len(params):
        raise ValueError(f"initial_carry has {len(initial_carry)} carries for {len(params)} layers")
    carries = []
    for i, p in enumerate(params):
        carry, xs = apply_layer(
            cell,
            p,
            xs,
            None if initial_carry is None else initial_carry[i],
            seq_lengths=seq_lengths,
            reverse=reverse,
            keep_order=True,  # the next layer reads the outputs in input order
            impl=impl,
            unroll=unroll,
        )
        carries.append(carry)
    if reverse and not keep_order:
        xs = lengths.flip_within_lengths(xs, seq_lengths)
    return tuple(carries), xs if time_major else jnp.swapaxes(xs, 0, 1)
