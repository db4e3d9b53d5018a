"""The reference layer: a cell run over a sequence with `jax.lax.scan`.

Data flow (time-major; `lstm_jax.recurrent` converts the layout once, at its
public entry points):

    xs [T, B, D] --(one matmul: cell.project)--> x_proj [T, B, G*H]
    scan over t:  carry = reset_t ? zero : carry
                  carry, h_t = cell.recur(params, carry, x_proj[t])
    -> carry (final), hs [T, B, H]

Carries go in and come out, so a long sequence cut into windows with the carry
passed along equals one scan over the whole sequence (truncated BPTT is exact
in the forward pass). `reset[t, b] = True` zeroes stream b's carry *before*
step t, so a new document can start in the middle of a window.

Every other layer implementation in `lstm_jax.layers` is tested against this
one. It is a leaf: it imports only the cells and jax, so any layer may fall
back to it without an import cycle.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.cells import Cell, Params

Array = jax.Array
Carry = Any  # a cell's carry pytree: Array or LSTMCarry


def _apply_reset(carry: Carry, reset_t: Array | None) -> Carry:
    """Zero the carry of the streams that restart at this step (reset_t [B])."""
    if reset_t is None:
        return carry
    return jax.tree.map(lambda c: jnp.where(reset_t[:, None], jnp.zeros_like(c), c), carry)


def scan_layer_time_major(
    cell: Cell,
    params: Params,
    xs: Array,  # [T, B, D]
    carry: Carry,
    reset: Array | None = None,  # [T, B] bool
    *,
    unroll: int = 1,
) -> tuple[Carry, Array]:
    """Hoisted input projection + `lax.scan` of `cell.recur`."""
    x_proj = cell.project(params, xs)  # [T, B, G*H], one matmul for all steps

    def body(carry, inp):
        xp_t, reset_t = inp
        return cell.recur(params, _apply_reset(carry, reset_t), xp_t)

    return jax.lax.scan(body, carry, (x_proj, reset), unroll=unroll)
