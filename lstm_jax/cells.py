"""Recurrent cells as pure functions over plain pytrees.

A cell is a small frozen dataclass of *static* choices (its name, activation,
init scheme) with pure methods:

    params          = cell.init(key, in_dim, hidden)
    carry           = cell.zero_carry(batch, hidden)
    x_proj          = cell.project(params, x)          # [..., D] -> [..., G*H]
    carry, h        = cell.recur(params, carry, x_proj)  # one time step
    carry, h        = cell.step(params, carry, x)        # = recur(project(x))

`project` is split from `recur` so that a layer can compute the input
projection of all T steps as one large matmul before the time loop
(see `lstm_jax.recurrent`); only `h @ w_h` stays inside the loop.

Parameters of every cell are a dict with a fused input kernel
`w_x [D, G*H]`, a fused recurrent kernel `w_h [H, G*H]` and a bias `b [G*H]`
(G gates). The gate order inside the fused axis is written down once, per cell,
in `LSTM_GATES` / `GRU_GATES`; it is PyTorch's order, so weights copy across
with a transpose and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax import initializers

Array = jax.Array
Params = dict[str, Array]

# Gate order of the fused kernels (PyTorch's nn.LSTM / nn.GRU order).
LSTM_GATES = ("input", "forget", "cell", "output")  # i, f, g, o
GRU_GATES = ("reset", "update", "new")  # r, z, n


class LSTMCarry(NamedTuple):
    """The LSTM state: hidden `h [B, H]` and memory cell `c [B, H]`."""

    h: Array
    c: Array


def _split_gates(z: Array, num_gates: int) -> list[Array]:
    return jnp.split(z, num_gates, axis=-1)


@dataclasses.dataclass(frozen=True)
class _CellBase:
    """Shared parameter layout and initialisation of the fused-gate cells.

    Attributes:
      kernel_init: initializer name for the input kernel `w_x` (see
        `lstm_jax.initializers.INITIALIZERS`).
      recurrent_init: initializer name for the recurrent kernel `w_h`; applied
        per gate block ([H, H] each), so "orthogonal" and "identity" mean an
        orthogonal / scaled-identity matrix for every gate.
      init_scale: the scale handed to both initializers (uniform bound a,
        normal std, identity scale; ignored by glorot/lecun/orthogonal gain 1).
      recurrent_scale: scale for the recurrent initializer if it should differ
        (None = init_scale). IRNN (Le et al. 2015) uses identity with scale 1.
    """

    kernel_init: str = "uniform"
    recurrent_init: str = "uniform"
    init_scale: float = 0.08  # char-rnn's uniform(-0.08, 0.08)
    recurrent_scale: float | None = None

    num_gates = 1
    name = "base"

    def init(self, key: Array, in_dim: int, hidden: int, dtype: Any = jnp.float32) -> Params:
        k_x, k_h = jax.random.split(key)
        g = self.num_gates
        w_x = initializers.get(self.kernel_init, self.init_scale)(k_x, (in_dim, g * hidden), dtype)
        rscale = self.init_scale if self.recurrent_scale is None else self.recurrent_scale
        rec = initializers.get(self.recurrent_init, rscale)
        blocks = [rec(k, (hidden, hidden), dtype) for k in jax.random.split(k_h, g)]
        params = {
            "w_x": w_x,
            "w_h": jnp.concatenate(blocks, axis=1),
            "b": self.init_bias(hidden, dtype),
        }
        return params

    def init_bias(self, hidden: int, dtype: Any) -> Array:
        return jnp.zeros((self.num_gates * hidden,), dtype)

    def project(self, params: Params, x: Array) -> Array:
        """Input projection `x @ w_x + b`: [..., D] -> [..., G*H]."""
        return x @ params["w_x"] + params["b"]

    def step(self, params: Params, carry: Any, x: Array) -> tuple[Any, Array]:
        """One time step from the raw input `x [B, D]`."""
        return self.recur(params, carry, self.project(params, x))

    def recur(self, params: Params, carry: Any, x_proj: Array) -> tuple[Any, Array]:
        raise NotImplementedError

    def zero_carry(self, batch: int, hidden: int, dtype: Any = jnp.float32) -> Any:
        return jnp.zeros((batch, hidden), dtype)

    @staticmethod
    def output(carry: Any) -> Array:
        """The hidden state `h` a layer passes upward."""
        return carry

    def param_count(self, in_dim: int, hidden: int) -> int:
        """Closed form: G*H*(D + H + 1)."""
        return self.num_gates * hidden * (in_dim + hidden + 1)


@dataclasses.dataclass(frozen=True)
class LSTM(_CellBase):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget
    gate of Gers et al. 2000), the course project's equations, gates fused as (i, f, g, o):

        i = s(W_i [h, x] + b_i)      f = s(W_f [h, x] + b_f)
        g = tanh(W_g [h, x] + b_g)   o = s(W_o [h, x] + b_o)
        c = f * c_prev + i * g       h = o * tanh(c)

    forget_bias: initial value of b_f. 0 as in Flax/PyTorch; 1 as in char-rnn,
      Keras and Haiku (Jozefowicz et al. 2015 found 1 helps long memories).
    input_bias: initial value of b_i. 0 by default; negative biases the input
      gate towards closed, Hochreiter & Schmidhuber's 1997 cure for "internal
      state drift" on long lags (sec. 5.4, "state drift versus initial bias"):
      a closed gate keeps the T unmarked inputs of the adding problem out of c.
    """

    forget_bias: float = 0.0
    input_bias: float = 0.0
    num_gates = 4
    name = "lstm"

    def init_bias(self, hidden: int, dtype: Any) -> Array:
        b = jnp.zeros((4, hidden), dtype)
        b = b.at[LSTM_GATES.index("forget")].set(self.forget_bias)
        return b.at[LSTM_GATES.index("input")].set(self.input_bias).reshape(-1)

    def recur(self, params: Params, carry: LSTMCarry, x_proj: Array) -> tuple[LSTMCarry, Array]:
        z = x_proj + carry.h @ params["w_h"]  # [B, 4H]
        i, f, g, o = _split_gates(z, 4)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMCarry(h, c), h

    def zero_carry(self, batch: int, hidden: int, dtype: Any = jnp.float32) -> LSTMCarry:
        # two buffers, not one shared: a donated train state may not alias itself
        return LSTMCarry(jnp.zeros((batch, hidden), dtype), jnp.zeros((batch, hidden), dtype))

    @staticmethod
    def output(carry: LSTMCarry) -> Array:
        return carry.h


@dataclasses.dataclass(frozen=True)
class GRU(_CellBase):
    """Gated recurrent unit (Cho et al. 2014) in the PyTorch/cuDNN variant,
    gates fused as (r, z, n):

        r = s(W_ir x + W_hr h + b_r)     z = s(W_iz x + W_hz h + b_z)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h = (1 - z) * n + z * h_prev

    The reset gate multiplies the recurrent term *after* the matmul (cuDNN's
    choice, `reset_after=True` in Keras), which keeps `h @ w_h` one fused matmul
    per step. That needs a second bias `b_hn [H]` inside the reset product;
    PyTorch's other recurrent biases fold into `b`.
    """

    num_gates = 3
    name = "gru"

    def init(self, key: Array, in_dim: int, hidden: int, dtype: Any = jnp.float32) -> Params:
        params = super().init(key, in_dim, hidden, dtype)
        params["b_hn"] = jnp.zeros((hidden,), dtype)
        return params

    def recur(self, params: Params, carry: Array, x_proj: Array) -> tuple[Array, Array]:
        xr, xz, xn = _split_gates(x_proj, 3)
        hr, hz, hn = _split_gates(carry @ params["w_h"], 3)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * (hn + params["b_hn"]))
        h = (1.0 - z) * n + z * carry
        return h, h

    def param_count(self, in_dim: int, hidden: int) -> int:
        """3H(D + H + 1) plus the second candidate bias b_hn (H)."""
        return super().param_count(in_dim, hidden) + hidden


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"tanh": jnp.tanh, "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class SimpleRNN(_CellBase):
    """Vanilla (Elman) RNN: `h = g(W_x x + W_h h_prev + b)`, g = tanh or relu.

    With `recurrent_init="identity"`, `recurrent_scale=1` and relu this is the
    IRNN of Le, Jaitly & Hinton 2015.
    """

    activation: str = "tanh"
    name = "rnn"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown RNN activation {self.activation!r}; valid: {sorted(ACTIVATIONS)}"
            )

    def recur(self, params: Params, carry: Array, x_proj: Array) -> tuple[Array, Array]:
        h = ACTIVATIONS[self.activation](x_proj + carry @ params["w_h"])
        return h, h


Cell = LSTM | GRU | SimpleRNN

# The one place a cell is chosen by name. Each entry fixes what the name means;
# the remaining options (init, scales, forget bias) come from the config.
CELLS: dict[str, Callable[..., Cell]] = {
    "lstm": LSTM,
    "gru": GRU,
    "rnn_tanh": lambda **kw: SimpleRNN(activation="tanh", **kw),
    "rnn_relu": lambda **kw: SimpleRNN(activation="relu", **kw),
    # IRNN (Le et al. 2015): relu, identity recurrent kernel, small normal inputs.
    "irnn": lambda **kw: SimpleRNN(
        **{
            "activation": "relu",
            "recurrent_init": "identity",
            "recurrent_scale": 1.0,
            "kernel_init": "normal",
            "init_scale": 0.001,
            **kw,
        }
    ),
}


# Options only the LSTM takes; make_cell drops them for the other cells.
LSTM_ONLY_OPTIONS = ("forget_bias", "input_bias")


def make_cell(name: str, **options: Any) -> Cell:
    """Look a cell up by name. Options a cell does not take raise TypeError
    naming them; the LSTM's gate biases (`LSTM_ONLY_OPTIONS`) are accepted (and
    ignored) by other cells so that one config can switch cells freely."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; valid cells: {sorted(CELLS)}")
    if name != "lstm":
        options = {k: v for k, v in options.items() if k not in LSTM_ONLY_OPTIONS}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return CELLS[name](**options)
    except TypeError as e:
        raise TypeError(f"bad option for cell {name!r}: {e}") from None
