"""Flax NNX: `LSTM`, with `nnx.RNN(nnx.OptimizedLSTMCell(...))`'s state and options.

    from flax import nnx
    from lstm_jax import nnx as ljx

    layer = ljx.LSTM(16, 64, rngs=nnx.Rngs(0))          # impl="auto"
    ys = layer(x, seq_lengths=lengths)                  # x [B, T, 16]
    ours = ljx.LSTM.from_rnn(flax_rnn)                  # from nnx.RNN(OptimizedLSTMCell | LSTMCell)
    bi = nnx.Bidirectional(ljx.LSTM(16, 64, rngs=r), ljx.LSTM(16, 64, rngs=r))

The parameters live in `layer.cell`, an `nnx.OptimizedLSTMCell` (`dense_i`
[D, 4H], `dense_h` [H, 4H] + bias, gates i, f, g, o), built with the same
arguments and so the same initial values as Flax's. The recurrence is
`lstm_jax.api.apply_layer`, the function the training CLI runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lstm_jax import api, layers
from lstm_jax.cells import LSTMCarry, make_cell

Array = jax.Array
# nnx.OptimizedLSTMCell's defaults
KERNEL_INIT = nnx.initializers.lecun_normal()
RECURRENT_KERNEL_INIT = nnx.initializers.orthogonal()
BIAS_INIT = nnx.initializers.zeros_init()


class LSTM(nnx.Module):
    """An LSTM layer over [B, T, D] (or [T, B, D]); carry `(c, h)` as Flax's.

    `impl`: a name in `lstm_jax.layers.LAYER_IMPLS`, or "auto". The other
    options are `nnx.RNN`'s; the initializers and `param_dtype` are
    `nnx.OptimizedLSTMCell`'s. Outputs past a row's `seq_lengths` are zero.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        rngs: nnx.Rngs,
        impl: str = layers.AUTO,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        kernel_init: Any = KERNEL_INIT,
        recurrent_kernel_init: Any = RECURRENT_KERNEL_INIT,
        bias_init: Any = BIAS_INIT,
        param_dtype: Any = jnp.float32,
        cell: nnx.OptimizedLSTMCell | None = None,
    ):
        self.cell = cell or nnx.OptimizedLSTMCell(
            in_features,
            hidden_features,
            kernel_init=kernel_init,
            recurrent_kernel_init=recurrent_kernel_init,
            bias_init=bias_init,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        layers.get_layer_impl(impl)  # an unknown name fails here, listing the valid ones
        self.impl, self.unroll = impl, unroll
        self.time_major, self.return_carry = time_major, return_carry
        self.reverse, self.keep_order = reverse, keep_order

    @classmethod
    def from_rnn(cls, rnn: nnx.RNN, *, impl: str = layers.AUTO) -> LSTM:
        """Ours, from `nnx.RNN(nnx.OptimizedLSTMCell(...))` (sharing its cell)
        or `nnx.RNN(nnx.LSTMCell(...))` (its eight kernels concatenated), with
        the RNN's options."""
        cell = rnn.cell
        if isinstance(cell, nnx.LSTMCell):
            cell = _optimized_from_lstm_cell(cell)
        if not isinstance(cell, nnx.OptimizedLSTMCell):
            raise TypeError(
                f"from_rnn takes an nnx.RNN of nnx.OptimizedLSTMCell or nnx.LSTMCell, not "
                f"{type(cell).__name__}"
            )
        return cls(
            cell.in_features,
            cell.hidden_features,
            rngs=nnx.Rngs(0),  # unused: the cell is given
            impl=impl,
            time_major=rnn.time_major,
            return_carry=rnn.return_carry,
            reverse=rnn.reverse,
            keep_order=rnn.keep_order,
            unroll=rnn.unroll,
            cell=cell,
        )

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: tuple[Array, Array] | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: Any = None,
    ):
        del rngs  # the carry starts at zero, as Flax's default carry_init
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order
        params = {
            "w_x": self.cell.dense_i.kernel[...],
            "w_h": self.cell.dense_h.kernel[...],
            "b": self.cell.dense_h.bias[...],
        }
        carry = None
        if initial_carry is not None:
            c, h = initial_carry
            carry = (LSTMCarry(h=h, c=c),)
        (final,), ys = api.apply_layers(
            make_cell("lstm"),
            [params],
            inputs,
            initial_carry=carry,
            seq_lengths=seq_lengths,
            reverse=reverse,
            keep_order=keep_order,
            time_major=time_major,
            impl=self.impl,
            unroll=self.unroll,
        )
        return ((final.c, final.h), ys) if return_carry else ys


def _optimized_from_lstm_cell(cell: nnx.LSTMCell) -> nnx.OptimizedLSTMCell:
    """`nnx.LSTMCell`'s eight Linear layers (ii, if_, ig, io; hi, hf, hg, ho)
    as one `nnx.OptimizedLSTMCell` with the same values."""
    hidden = cell.hidden_features
    out = nnx.OptimizedLSTMCell(
        cell.in_features, hidden, param_dtype=cell.param_dtype, rngs=nnx.Rngs(0)
    )
    gates_i = (cell.ii, cell.if_, cell.ig, cell.io)
    gates_h = (cell.hi, cell.hf, cell.hg, cell.ho)
    out.dense_i.kernel[...] = jnp.concatenate([g.kernel[...] for g in gates_i], axis=-1)
    out.dense_h.kernel[...] = jnp.concatenate([g.kernel[...] for g in gates_h], axis=-1)
    out.dense_h.bias[...] = jnp.concatenate([g.bias[...] for g in gates_h], axis=-1)
    return out
