"""Variable-length rows (`seq_lengths`) and reversed rows for every layer.

Row b of `xs [T, B, D]` holds `seq_lengths[b]` real steps, then padding. What
every RNN library promises (Flax's `nn.RNN`, PyTorch's packed sequences):

  - the outputs at the real steps depend on the real steps only;
  - the returned carry is the state after row b's last real step: padding
    never changes it;
  - `reverse` runs each row backwards *within its length* (padding stays at
    the end, as `flax.linen.recurrent.flip_sequences` does).

Three exact ways, all tested equal to Flax's layer (tests/test_library.py):

  held gates (`held_layer`, the LSTM): the rows stay as they are, and one added
  input feature saturates the forget gate to 1 and the input gate to 0 at
  padded steps, so that c is held there. Exact for any initial carry, and the
  way for a layer without a reset mask (oneDNN), and for the fused layers when
  an initial carry is given.

  right-aligned (`aligned_layer`, any implementation with a reset mask: scan,
  fused): each row is shifted so that its real steps end at step T-1 and the
  padding comes first; a reset at the first real step zeroes the state the
  padding built, so the final carry is the state after the last real step.
  Exact when the initial carry is zero (the default).

  masked scan (`masked_scan_layer`, the reference): the carry is held, not
  updated, at padded steps. Exact for any initial carry and cell; a fast
  layer hands it a GRU or RNN call with a given initial carry, saying so once.

Outputs at padded positions are zero (PyTorch's `pad_packed_sequence`; Flax's
layer leaves there whatever its scan computed past the end).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.cells import LSTM, LSTM_GATES, Cell, LSTMCarry, Params
from lstm_jax.layers import fused, onednn
from lstm_jax.layers.fallback import warn_fallback

Array = jax.Array
Carry = Any


def valid_mask(seq_lengths: Array, steps: int) -> Array:
    """[T, B] True where step t < seq_lengths[b]."""
    return jnp.arange(steps)[:, None] < seq_lengths[None, :]


def flip_within_lengths(xs: Array, seq_lengths: Array | None) -> Array:
    """Reverse each row's first seq_lengths[b] steps, padding left at the end
    (time-major [T, B, ...]); the full reverse when `seq_lengths` is None."""
    if seq_lengths is None:
        return jnp.flip(xs, axis=0)
    steps = xs.shape[0]
    t = jnp.arange(steps)[:, None]  # [T, 1]
    source = jnp.where(t < seq_lengths[None, :], seq_lengths[None, :] - 1 - t, t)  # [T, B]
    return _gather_time(xs, source)


def _gather_time(xs: Array, source: Array) -> Array:
    """out[t, b] = xs[source[t, b], b] for xs [T, B, ...]."""
    index = source.reshape(source.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, index, axis=0)


def _shift(xs: Array, shift: Array) -> Array:
    """out[t, b] = xs[t - shift[b], b], zero where t - shift[b] is out of range."""
    steps = xs.shape[0]
    source = jnp.arange(steps)[:, None] - shift[None, :]  # [T, B]
    inside = (source >= 0) & (source < steps)
    out = _gather_time(xs, jnp.clip(source, 0, steps - 1))
    return jnp.where(inside.reshape(inside.shape + (1,) * (xs.ndim - 2)), out, 0)


def aligned_layer(
    layer, cell: Cell, params: Params, xs: Array, seq_lengths: Array, *, unroll: int = 1
) -> tuple[Carry, Array]:
    """`layer` (a registry function) over rows of `seq_lengths` real steps,
    from a zero carry; padded outputs are zero."""
    steps, batch = xs.shape[:2]
    hidden = params["w_h"].shape[0]
    pad = steps - seq_lengths  # [B] padding steps moved to the front
    reset = jnp.arange(steps)[:, None] == pad[None, :]  # [T, B]: the first real step
    carry0 = cell.zero_carry(batch, hidden, xs.dtype)
    carry, hs = layer(cell, params, _shift(xs, pad), carry0, reset, unroll=unroll)
    hs = _shift(hs, -pad)  # back to the left; the padding's outputs become zero
    empty = seq_lengths == 0  # a row with no real step keeps the zero carry
    carry = jax.tree.map(lambda c: jnp.where(empty[:, None], jnp.zeros_like(c), c), carry)
    return carry, hs


def masked_scan_layer(
    cell: Cell, params: Params, xs: Array, carry: Carry, seq_lengths: Array, *, unroll: int = 1
) -> tuple[Carry, Array]:
    """The reference: `lax.scan` of the cell that holds the carry at padded
    steps (any initial carry); padded outputs are zero."""
    x_proj = cell.project(params, xs)  # [T, B, G*H]

    def body(carry, inp):
        xp_t, valid_t = inp
        new, h = cell.recur(params, carry, xp_t)
        held = jax.tree.map(lambda n, o: jnp.where(valid_t[:, None], n, o), new, carry)
        return held, jnp.where(valid_t[:, None], h, jnp.zeros_like(h))

    return jax.lax.scan(body, carry, (x_proj, valid_mask(seq_lengths, xs.shape[0])), unroll=unroll)


# sigmoid(z) is exactly 1 for z >= 1024 and exactly 0 for z <= -1024 in
# float32 and float64 (exp(-1024) underflows to 0, exp(1024) overflows to
# inf), whichever way a library evaluates it.
HOLD_MARGIN = 1024.0


def held_layer(
    layer, cell: Cell, params: Params, xs: Array, carry: LSTMCarry, seq_lengths: Array, *,
    unroll: int = 1,
) -> tuple[LSTMCarry, Array]:  # fmt: skip
    """An LSTM `layer` without a reset mask over variable-length rows, exact for
    any initial carry: every padded step holds c.

    Padded inputs are zeroed and one input feature is added, 1 at padded steps
    and 0 at real ones, with weight +R on the forget gate and -R on the input
    gate, where R = max |W_h h + b| over |h| <= 1, plus HOLD_MARGIN. At a
    padded step f = 1 and i = 0 exactly, so c_t = c_{t-1}; their derivatives
    f(1 - f) and i(1 - i) are 0 there, so no gradient enters the padding and
    dc passes through it unchanged. h is read at each row's last real step,
    and the outputs past it are zeroed."""
    steps, batch = xs.shape[:2]
    hidden = params["w_h"].shape[0]
    valid = valid_mask(seq_lengths, steps)  # [T, B]
    padded = (~valid).astype(xs.dtype)[..., None]
    xs = jnp.concatenate([jnp.where(valid[..., None], xs, 0), padded], axis=-1)
    reach = jnp.abs(params["w_h"]).sum(0) + jnp.abs(params["b"]) + HOLD_MARGIN  # [4H]
    gate = jnp.repeat(jnp.arange(len(LSTM_GATES)), hidden)
    hold = jnp.where(gate == LSTM_GATES.index("forget"), reach, 0.0)
    hold = jnp.where(gate == LSTM_GATES.index("input"), -reach, hold)
    w_x = jnp.concatenate([params["w_x"], jax.lax.stop_gradient(hold)[None]], axis=0)
    last, hs = layer(cell, {**params, "w_x": w_x}, xs, carry, None, unroll=unroll)
    hs = jnp.where(valid[..., None], hs, 0)
    at_last = hs[jnp.clip(seq_lengths - 1, 0, steps - 1), jnp.arange(batch)]
    h = jnp.where((seq_lengths > 0)[:, None], at_last, carry.h)
    return LSTMCarry(h=h, c=last.c), hs


HELD_GATE_LAYERS = ("onednn",)  # no reset mask: every call with lengths takes held gates


def holds_gates(name: str, cell: Cell, params: Params, xs: Array, carry: Carry | None) -> bool:
    """Whether implementation `name` runs this LSTM call over variable lengths
    by `held_layer`: oneDNN where its primitive computes the call (float32 on
    the CPU), and the fused layers when an initial carry is given."""
    if not isinstance(cell, LSTM):
        return False
    if name in HELD_GATE_LAYERS:
        return onednn.computes(cell, params, xs)
    return name in fused.LAYER_IMPLS and carry is not None


def layer_with_lengths(
    name: str,
    layer,
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry | None,
    seq_lengths: Array,
    *,
    unroll: int = 1,
) -> tuple[Carry, Array]:
    """Implementation `name` (`layer`) over variable-length rows: held gates
    where `holds_gates`, else right-aligned from a zero carry (`carry` None),
    else the masked scan, with a warning when `name` is not "scan"."""
    seq_lengths = jnp.asarray(seq_lengths, jnp.int32)
    if holds_gates(name, cell, params, xs, carry):
        if carry is None:
            carry = cell.zero_carry(xs.shape[1], params["w_h"].shape[0], xs.dtype)
        return held_layer(layer, cell, params, xs, carry, seq_lengths, unroll=unroll)
    if carry is None:
        return aligned_layer(layer, cell, params, xs, seq_lengths, unroll=unroll)
    if name != "scan":
        warn_fallback(
            name,
            "scan",
            f"seq_lengths with a given initial carry runs the masked scan for the {cell.name} "
            "(the fast layers hold only the LSTM's carry through padding)",
        )
    return masked_scan_layer(cell, params, xs, carry, seq_lengths, unroll=unroll)
