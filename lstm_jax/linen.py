"""Flax linen: `LSTM`, a drop-in for `nn.RNN(nn.OptimizedLSTMCell(features))`.

    import flax.linen as nn
    from lstm_jax import linen as lj

    layer = lj.LSTM(64)                                 # impl="auto": cuDNN / oneDNN / fused
    variables = layer.init(key, x)                      # x [B, T, D]
    ys = layer.apply(variables, x, seq_lengths=lengths)
    bi = nn.Bidirectional(lj.LSTM(64), lj.LSTM(64))     # Flax's own wrapper takes ours

Same variables as Flax's layer: {"params": {"cell": {"ii", "if", "ig", "io"
(kernel [D, H]), "hi", "hf", "hg", "ho" (kernel [H, H], bias [H])}}}, the same
initializers (lecun_normal, orthogonal, zeros), the same carry `(c, h)` and
the same call options (`initial_carry`, `seq_lengths`, `return_carry`,
`time_major`, `reverse`, `keep_order`), so `apply` with the variables of
`nn.RNN(nn.OptimizedLSTMCell(H))` gives Flax's outputs and carry
(tests/test_library.py). With `num_layers` > 1 the layers are
`layers_0/cell`, `layers_1/cell`, ..., as in `nn.Sequential` of `nn.RNN`s.

The module only holds parameters: the recurrence is `lstm_jax.api.apply_layer`
with the fused kernels built from them, the function the training CLI runs.
Outputs past a row's `seq_lengths` are zero here (Flax leaves there what its
scan computed past the end of the row).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams

from lstm_jax import api, layers
from lstm_jax.cells import LSTM_GATES, LSTMCarry, make_cell

Array = jax.Array
_GATES = ("i", "f", "g", "o")  # Flax's names for LSTM_GATES, in that order
assert len(_GATES) == len(LSTM_GATES)


class _OptimizedLSTMParams(nn.Module):
    """The parameters of `nn.OptimizedLSTMCell`, under its names, as one fused
    kernel dict {w_x [D, 4H], w_h [H, 4H], b [4H]} for `lstm_jax.cells.LSTM`."""

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    recurrent_kernel_init: Any = nn.initializers.orthogonal()
    bias_init: Any = nn.initializers.zeros_init()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, in_features: int) -> dict[str, Array]:
        x = jnp.zeros((1, in_features), self.param_dtype)  # shapes only
        h = jnp.zeros((1, self.features), self.param_dtype)
        w_x, w_h, b = [], [], []
        for gate in _GATES:
            k, _ = DenseParams(
                self.features,
                use_bias=False,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                name=f"i{gate}",
            )(x)
            kh, bh = DenseParams(
                self.features,
                use_bias=True,
                param_dtype=self.param_dtype,
                kernel_init=self.recurrent_kernel_init,
                bias_init=self.bias_init,
                name=f"h{gate}",
            )(h)
            w_x.append(k)
            w_h.append(kh)
            b.append(bh)
        return {
            "w_x": jnp.concatenate(w_x, axis=-1),
            "w_h": jnp.concatenate(w_h, axis=-1),
            "b": jnp.concatenate(b, axis=-1),
        }


def _to_ours(carry: tuple[Array, Array]) -> LSTMCarry:
    c, h = carry
    return LSTMCarry(h=h, c=c)


def _to_flax(carry: LSTMCarry) -> tuple[Array, Array]:
    return carry.c, carry.h


class LSTM(nn.Module):
    """An LSTM layer (or `num_layers` stacked) over [B, T, D] (or [T, B, D]).

    Attributes as `nn.RNN` + `nn.OptimizedLSTMCell`: `features`, `time_major`,
    `return_carry`, `reverse`, `keep_order`, `unroll`, the initializers and
    `param_dtype`; plus `impl` (a name in `lstm_jax.layers.LAYER_IMPLS` or
    "auto") and `num_layers`. The carry is Flax's `(c, h)`; with `num_layers`
    > 1, a tuple of one such carry per layer.
    """

    features: int
    num_layers: int = 1
    impl: str = layers.AUTO
    time_major: bool = False
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = False
    unroll: int = 1
    kernel_init: Any = nn.initializers.lecun_normal()
    recurrent_kernel_init: Any = nn.initializers.orthogonal()
    bias_init: Any = nn.initializers.zeros_init()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        init_key: Array | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ):
        del init_key  # the carry starts at zero, as Flax's zeros carry_init
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order

        def params_module(i: int) -> nn.Module:
            options = dict(
                kernel_init=self.kernel_init,
                recurrent_kernel_init=self.recurrent_kernel_init,
                bias_init=self.bias_init,
                param_dtype=self.param_dtype,
            )
            if self.num_layers == 1:
                return _OptimizedLSTMParams(self.features, name="cell", **options)
            return _Layer(self.features, options, name=f"layers_{i}")

        in_features = inputs.shape[-1]
        params = []
        for i in range(self.num_layers):
            params.append(params_module(i)(in_features if i == 0 else self.features))
        carries = None
        if initial_carry is not None:
            given = (initial_carry,) if self.num_layers == 1 else tuple(initial_carry)
            carries = [_to_ours(c) for c in given]
        carry, ys = api.apply_layers(
            make_cell("lstm"),
            params,
            inputs,
            initial_carry=carries,
            seq_lengths=seq_lengths,
            reverse=reverse,
            keep_order=keep_order,
            time_major=time_major,
            impl=self.impl,
            unroll=self.unroll,
        )
        out_carry = tuple(_to_flax(c) for c in carry)
        if self.num_layers == 1:
            out_carry = out_carry[0]
        return (out_carry, ys) if return_carry else ys


class _Layer(nn.Module):
    """`layers_i` of a stack: holds `cell`, as an `nn.RNN` in `nn.Sequential` does."""

    features: int
    options: dict

    def setup(self):
        self.cell = _OptimizedLSTMParams(self.features, **self.options)

    def __call__(self, in_features: int) -> dict[str, Array]:
        return self.cell(in_features)
