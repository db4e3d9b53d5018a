"""Models around the recurrent core: a token language model and a sequence
regressor/classifier for real-valued inputs (the research tasks).

    LanguageModel.apply:  tokens [B, T] -> embed (or one-hot) [B, T, E]
                          -> stacked recurrent layers [B, T, H]
                          -> readout [B, T, V] logits
    SequenceModel.apply:  inputs [B, T, D] -> stacked recurrent layers
                          -> linear head on the last step [B, O] or every step [B, T, O]

Parameters are plain dicts of arrays; models are frozen dataclasses of static
choices, so they can be closed over by `jax.jit` without being traced.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lstm_jax import initializers, layers, recurrent
from lstm_jax.cells import Cell, make_cell

Array = jax.Array

# `model.matmul_precision`: the precision of every matmul in the model's forward
# and backward pass, through `jax.default_matmul_precision`.
#   "default"  JAX's default: full fp32 on CPUs; on GPUs TF32 (about 10 mantissa
#              bits) for fp32 matmuls on Ampere and newer, and on TPUs one bf16
#              pass; the fastest.
#   "high"     TF32 on GPUs; three bf16 passes (close to fp32) on TPUs.
#   "highest"  full fp32 everywhere (six bf16 passes on TPUs); the exactness
#              tests run here.
MATMUL_PRECISIONS = ("default", "high", "highest")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecurrentCoreConfig:
    """Static choices of the recurrent stack, shared by both models."""

    hidden_size: int = 128  # H, units per layer
    num_layers: int = 2  # L, stacked layers
    cell: str = "lstm"  # a name in lstm_jax.cells.CELLS
    forget_bias: float = 0.0  # LSTM only: initial b_f (1 = char-rnn/Keras)
    input_bias: float = 0.0  # LSTM only: initial b_i (< 0: a closed input gate, HS97)
    kernel_init: str | None = None  # input kernels; None = the cell's default
    recurrent_init: str | None = None  # recurrent kernels; None = the cell's default
    init_scale: float | None = None  # uniform bound / normal std; None = cell default
    dropout: float = 0.0  # between layers (and around the stack in the LM)
    unroll: int = 1  # lax.scan unroll factor
    impl: str = layers.AUTO  # a name in lstm_jax.layers.LAYER_IMPLS, or "auto" (resolve_impl)
    matmul_precision: str = "default"  # one of MATMUL_PRECISIONS (above)

    def __post_init__(self):
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {self.unroll}")
        layers.get_layer_impl(self.impl)  # fails early, listing the valid names
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ValueError(
                f"matmul_precision must be one of {MATMUL_PRECISIONS}, "
                f"got {self.matmul_precision!r}"
            )
        self.make_cell()

    def make_cell(self) -> Cell:
        return make_cell(
            self.cell,
            forget_bias=self.forget_bias,
            input_bias=self.input_bias,
            kernel_init=self.kernel_init,
            recurrent_init=self.recurrent_init,
            init_scale=self.init_scale,
        )

    @property
    def init_scale_or_default(self) -> float:
        """Scale for the non-recurrent weights (embedding, readout)."""
        return self.make_cell().init_scale


class _RecurrentModel:
    """What both models share: the cell, the stack, the carry."""

    config: RecurrentCoreConfig

    def __init__(self, config: RecurrentCoreConfig):
        self.config = config
        self.cell = config.make_cell()

    def matmul_precision(self) -> contextlib.AbstractContextManager:
        """The context every forward pass runs in; "default" leaves JAX's setting
        as it is (which a user may also set with the jax_default_matmul_precision
        flag)."""
        p = self.config.matmul_precision
        return contextlib.nullcontext() if p == "default" else jax.default_matmul_precision(p)

    def init_carry(self, batch_size: int) -> tuple[Any, ...]:
        """Zero carries, one per layer (LSTMCarry(h, c) for LSTM, h otherwise)."""
        c = self.config
        return recurrent.zero_stack_carry(self.cell, c.num_layers, batch_size, c.hidden_size)

    def _stack(self, params, xs, carry, reset, rng, mesh=None, layers=None, locked_rate=0.0):
        c = self.config
        return recurrent.run_stack(
            self.cell,
            params["layers"] if layers is None else layers,
            xs,
            carry,
            reset,
            dropout_rate=c.dropout,
            rng=rng,
            locked_dropout_rate=locked_rate,
            unroll=c.unroll,
            impl=c.impl,
            mesh=mesh,
        )

    def _stack_param_count(self, in_dim: int) -> int:
        c = self.config
        h = c.hidden_size
        return sum(self.cell.param_count(in_dim if i == 0 else h, h) for i in range(c.num_layers))


# The LM's regularizers beyond `dropout`, all off at 0 (lstm_jax/config.py says
# which paper each comes from; docs/regularization.md).
REGULARIZER_FIELDS = (
    "dropout_input",
    "dropout_hidden",
    "dropout_output",
    "dropout_embedding",
    "weight_drop",
)


def _check_rng(config: RecurrentCoreConfig, train: bool, rng: Array | None) -> Array | None:
    if not train:
        return None
    for name in ("dropout", *REGULARIZER_FIELDS):
        if getattr(config, name, 0.0) > 0 and rng is None:
            raise ValueError(f"train=True with {name} > 0 needs an rng")
    return rng


_REG_KEYS = ("embedding", "input", "output", "weight")
# The regularizers' keys branch off the step key at this index. `dropout` uses
# split(rng, 3), and fold_in(rng, i) equals split(rng, n)[i] with JAX's
# partitionable threefry, so an index below 3 would reuse dropout's masks.
_REG_STREAM = 0x415744  # "AWD"


def _reg_key(rng: Array | None, name: str) -> Array | None:
    """The key of one regularizer, folded out of the step key apart from the
    keys `dropout` uses, so turning one on leaves the others' masks as they were
    and no two masks are correlated."""
    if rng is None:
        return None
    return jax.random.fold_in(jax.random.fold_in(rng, _REG_STREAM), _REG_KEYS.index(name))


def embedding_dropout(table: Array, rate: float, rng: Array | None) -> Array:
    """Embedding dropout (Gal & Ghahramani 2016, sec. 4; AWD-LSTM's dropoute):
    drop whole rows (words) of the [V, E] table, one mask per batch, kept rows
    scaled by 1 / (1 - rate): every occurrence of a dropped word embeds to zero."""
    keep = recurrent.dropout_keep(rate, rng, (table.shape[0], 1))
    return recurrent.apply_keep(table, keep, rate)


def drop_recurrent_weights(layers: list[Any], rate: float, rng: Array | None) -> list[Any]:
    """DropConnect (Wan et al. 2013) on each layer's recurrent kernel `w_h`, as
    AWD-LSTM's WeightDrop: one mask per layer and batch, the same for every row
    and step, kept weights scaled by 1 / (1 - rate). The dropped kernel is
    computed outside the layer and passed in, so any layer implementation (the
    fused one's custom VJP included) runs unchanged and autodiff carries the
    mask into the gradient."""
    if rate == 0.0 or rng is None:
        return layers
    return [
        {**p, "w_h": recurrent.dropout(p["w_h"], rate, jax.random.fold_in(rng, i))}
        for i, p in enumerate(layers)
    ]


class LastHidden(NamedTuple):
    """The last recurrent layer's outputs, for activation regularization."""

    raw: Array  # [B, T, H] as the layer returned them (TAR reads these)
    dropped: Array  # [B, T, H] after the output dropouts, as the readout sees them (AR)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMConfig(RecurrentCoreConfig):
    """The language model's settings. Its defaults are the training config's
    (lstm_jax/config.py, `c.model`), so a model built in Python is the one the
    CLI trains; tests/test_model.py checks that they agree."""

    vocab_size: int  # V
    forget_bias: float = 1.0  # as config.py: char-rnn/Keras
    kernel_init: str | None = "uniform"  # as config.py: char-rnn's uniform(+-0.08)
    recurrent_init: str | None = "uniform"
    init_scale: float | None = 0.08
    impl: str = layers.AUTO  # as config.py
    embed_dim: int = 0  # E; 0 = one-hot inputs as in char-rnn (E = V, no table)
    # readout = embedding^T (Press & Wolf 2017; Inan et al. 2017); with E != H through
    # a learned [H, E] projection, params["readout"]["proj"]
    tie_embeddings: bool = False
    # AWD-LSTM's regularizers (Merity, Keskar & Socher 2017), all off at 0; see
    # lstm_jax/config.py for each one's paper.
    dropout_input: float = 0.0  # locked dropout on the embedded inputs (dropouti)
    dropout_hidden: float = 0.0  # locked dropout between layers (dropouth)
    dropout_output: float = 0.0  # locked dropout on the last layer's outputs (dropout)
    dropout_embedding: float = 0.0  # drop whole vocabulary rows of the embedding (dropoute)
    weight_drop: float = 0.0  # DropConnect on each recurrent kernel w_h (wdrop)

    def __post_init__(self):
        super().__post_init__()
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.embed_dim < 0:
            raise ValueError(f"embed_dim must be >= 0 (0 = one-hot), got {self.embed_dim}")
        if self.tie_embeddings and self.embed_dim == 0:
            raise ValueError(
                "tie_embeddings needs an embedding table (embed_dim > 0), got embed_dim=0"
            )
        for name in REGULARIZER_FIELDS:
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {rate}")
        if self.dropout_embedding > 0 and self.embed_dim == 0:
            raise ValueError(
                "model.dropout_embedding drops rows of the embedding table; it needs "
                "embed_dim > 0, got embed_dim=0 (one-hot inputs)"
            )

    @property
    def tie_projection(self) -> bool:
        """A tied readout through a learned [H, E] projection, when E != H."""
        return self.tie_embeddings and self.embed_dim != self.hidden_size


class LanguageModel(_RecurrentModel):
    """embed -> stacked recurrent layers -> vocabulary logits."""

    config: LMConfig

    def init(self, key: Array) -> dict[str, Any]:
        c = self.config
        k_embed, k_layers, k_out = jax.random.split(key, 3)
        uniform = initializers.get("uniform", c.init_scale_or_default)
        in_dim = c.embed_dim or c.vocab_size
        params: dict[str, Any] = {
            "layers": recurrent.init_stack(k_layers, self.cell, in_dim, c.hidden_size, c.num_layers)
        }
        if c.embed_dim:
            params["embed"] = uniform(k_embed, (c.vocab_size, c.embed_dim), jnp.float32)
        readout = {"b": jnp.zeros((c.vocab_size,), jnp.float32)}
        if not c.tie_embeddings:
            readout["w"] = uniform(k_out, (c.hidden_size, c.vocab_size), jnp.float32)
        elif c.tie_projection:
            readout["proj"] = uniform(k_out, (c.hidden_size, c.embed_dim), jnp.float32)
        params["readout"] = readout
        return params

    def embed(self, params: dict[str, Any], tokens: Array) -> Array:
        """tokens [B, T] int -> [B, T, E] (one-hot [B, T, V] when embed_dim == 0)."""
        if self.config.embed_dim:
            return jnp.take(params["embed"], tokens, axis=0)
        return jax.nn.one_hot(tokens, self.config.vocab_size, dtype=jnp.float32)

    def readout(self, params: dict[str, Any], hs: Array) -> Array:
        """hidden [..., H] -> logits [..., V]; tied: h @ E^T, or h @ P @ E^T
        with the projection P [H, E] when E != H (Press & Wolf 2017)."""
        if not self.config.tie_embeddings:
            return hs @ params["readout"]["w"] + params["readout"]["b"]
        if self.config.tie_projection:
            hs = hs @ params["readout"]["proj"]  # [..., E]
        return hs @ params["embed"].T + params["readout"]["b"]

    def apply(
        self,
        params: dict[str, Any],
        tokens: Array,  # [B, T] int32
        carry: tuple[Any, ...],
        *,
        reset: Array | None = None,  # [B, T] bool: zero the carry before step t
        start: Array | None = None,  # [B] bool: zero the carry before step 0 only
        train: bool = False,
        rng: Array | None = None,
        mesh: Mesh | None = None,  # split the recurrence's rows over its "data" axis
        return_hidden: bool = False,
    ) -> tuple[Array, tuple[Any, ...]] | tuple[Array, tuple[Any, ...], LastHidden]:
        """Returns (logits [B, T, V], final carry), and with `return_hidden` the
        last layer's outputs before and after the output dropouts (`LastHidden`,
        for AWD-LSTM's activation regularization).

        With `train=True` and an `rng`, the regularizers of the config act:
        `dropout` (a fresh mask per element and step) and AWD-LSTM's locked
        dropouts, embedding dropout and weight drop; eval is deterministic.

        `start` is `reset` for batches whose streams restart only at step 0 (the
        batchers' and `eval_batches`'): it zeroes those rows of `carry` up
        front, so that every layer implementation can run, where a `reset`
        mask sends the `onednn` and `cudnn` layers to `fused`."""
        c = self.config
        if start is not None:
            carry = recurrent.restart_rows(carry, start)
        rng = _check_rng(c, train, rng)
        keys = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
        with self.matmul_precision():
            embed_params = params
            if c.dropout_embedding > 0 and rng is not None:
                table = embedding_dropout(
                    params["embed"], c.dropout_embedding, _reg_key(rng, "embedding")
                )
                embed_params = {**params, "embed": table}
            xs = recurrent.dropout(self.embed(embed_params, tokens), c.dropout, keys[0])
            xs = recurrent.locked_dropout(xs, c.dropout_input, _reg_key(rng, "input"))
            layers = drop_recurrent_weights(
                params["layers"], c.weight_drop, _reg_key(rng, "weight")
            )
            carry, raw = self._stack(
                params, xs, carry, reset, keys[1], mesh, layers, c.dropout_hidden
            )
            hs = recurrent.dropout(raw, c.dropout, keys[2])
            hs = recurrent.locked_dropout(hs, c.dropout_output, _reg_key(rng, "output"))
            logits = self.readout(params, hs)
        if return_hidden:
            return logits, carry, LastHidden(raw=raw, dropped=hs)
        return logits, carry

    def param_count(self) -> int:
        """Closed form: embedding V*E + per-layer cell counts + readout H*V + V
        (tied: V, plus the projection H*E when E != H)."""
        c = self.config
        embed = c.vocab_size * c.embed_dim
        readout = c.vocab_size + (0 if c.tie_embeddings else c.hidden_size * c.vocab_size)
        if c.tie_projection:
            readout += c.hidden_size * c.embed_dim
        return embed + self._stack_param_count(c.embed_dim or c.vocab_size) + readout


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeqConfig(RecurrentCoreConfig):
    input_dim: int  # D, features per step
    output_dim: int  # O, regression targets or class logits
    output_mode: str = "last"  # "last": head on the final step; "all": every step

    def __post_init__(self):
        super().__post_init__()
        if self.output_mode not in ("last", "all"):
            raise ValueError(f"output_mode must be 'last' or 'all', got {self.output_mode!r}")
        if self.input_dim < 1 or self.output_dim < 1:
            raise ValueError("input_dim and output_dim must be >= 1")


class SequenceModel(_RecurrentModel):
    """Real-valued inputs -> stacked recurrent layers -> linear head."""

    config: SeqConfig

    def init(self, key: Array) -> dict[str, Any]:
        c = self.config
        k_layers, k_out = jax.random.split(key)
        return {
            "layers": recurrent.init_stack(
                k_layers, self.cell, c.input_dim, c.hidden_size, c.num_layers
            ),
            "head": {
                "w": initializers.get("glorot_uniform", 1.0)(
                    k_out, (c.hidden_size, c.output_dim), jnp.float32
                ),
                "b": jnp.zeros((c.output_dim,), jnp.float32),
            },
        }

    def apply(
        self,
        params: dict[str, Any],
        inputs: Array,  # [B, T, D]
        carry: tuple[Any, ...] | None = None,
        *,
        reset: Array | None = None,
        train: bool = False,
        rng: Array | None = None,
    ) -> tuple[Array, tuple[Any, ...]]:
        """Returns (outputs [B, O] or [B, T, O], final carry)."""
        if carry is None:
            carry = self.init_carry(inputs.shape[0])
        rng = _check_rng(self.config, train, rng)
        with self.matmul_precision():
            carry, hs = self._stack(params, inputs, carry, reset, rng)
            if self.config.output_mode == "last":
                hs = hs[:, -1]
            return hs @ params["head"]["w"] + params["head"]["b"], carry

    def param_count(self) -> int:
        c = self.config
        return self._stack_param_count(c.input_dim) + c.hidden_size * c.output_dim + c.output_dim


def build_model(model_config: Mapping[str, Any], vocab_size: int) -> LanguageModel:
    """The language model a config's `model` section describes, for a vocabulary
    of `vocab_size`: the one place train, sample and the scripts build it."""
    return LanguageModel(LMConfig(vocab_size=vocab_size, **dict(model_config)))


def count_params(params: Any) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(x.size for x in jax.tree.leaves(params))
