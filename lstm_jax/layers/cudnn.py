"""The "cudnn" layer: cuDNN's fused LSTM (`jax.experimental.rnn.lstm`) on a CUDA GPU.

cuDNN has no mid-sequence reset, runs only the LSTM here, and computes in fp32;
a layer with a reset mask, another cell, a non-fp32 input or a non-GPU backend
runs as the exact "fused" layer instead (with one warning per reason).

The matmul precision is read when the layer is traced (`jax.default_matmul_precision`,
set by the model's `matmul_precision`) and handed to cuDNN explicitly, so its
backward pass, traced later, uses the same one: "highest" turns TF32 off.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.cells import LSTM, Cell, LSTMCarry, Params
from lstm_jax.layers.fallback import warn_fallback
from lstm_jax.layers.fused import fused_layer_time_major

Array = jax.Array


def to_cudnn_weights(params: Params) -> Array:
    """One LSTM layer's params -> the flat weight vector of
    `jax.experimental.rnn` (cuDNN layout: W_ih [4H, D], W_hh [4H, H], b_ih,
    b_hh, same i, f, g, o gate order as ours; our single bias goes to b_ih)."""
    b = params["b"]
    return jnp.concatenate(
        [params["w_x"].T.reshape(-1), params["w_h"].T.reshape(-1), b, jnp.zeros_like(b)]
    )


def cudnn_available() -> bool:
    """True when the default backend is a CUDA GPU and jax ships the cuDNN RNN."""
    try:
        from jax._src.lib import gpu_rnn  # noqa: F401  (presence check only)
    except ImportError:
        return False
    return jax.default_backend() == "gpu"


def _why_not_cudnn(cell: Cell, params: Params, xs: Array, reset: Array | None) -> str | None:
    """Why cuDNN cannot compute exactly this layer; None when it can."""
    if not isinstance(cell, LSTM):
        return f"cuDNN's RNN is used for the LSTM only, not {cell.name}"
    if reset is not None:
        return "cuDNN's RNN has no mid-sequence reset (a reset mask was given)"
    if not (xs.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in params.values())):
        return f"the cuDNN layer computes in float32, got {xs.dtype} inputs"
    if not cudnn_available():
        return f"cuDNN needs a CUDA GPU and jax's cuDNN RNN (backend: {jax.default_backend()})"
    return None


def cudnn_layer_time_major(
    cell: Cell,
    params: Params,
    xs: Array,  # [T, B, D]
    carry: Any,
    reset: Array | None = None,  # [T, B] bool
    *,
    unroll: int = 1,
) -> tuple[Any, Array]:
    """Drop-in for `scan.scan_layer_time_major` (the "cudnn" layer).

    The weights are packed per call (a concat, negligible next to the layer)."""
    reason = _why_not_cudnn(cell, params, xs, reset)
    if reason is not None:
        warn_fallback("cudnn", "fused", reason)
        return fused_layer_time_major(cell, params, xs, carry, reset, unroll=unroll)
    from jax.experimental import rnn  # imported only where it can run

    t, b, d = xs.shape
    hidden = params["w_h"].shape[0]
    y, h_n, c_n = rnn.lstm(
        jnp.swapaxes(xs, 0, 1),  # cuDNN wrapper is batch-first
        carry.h[None],
        carry.c[None],
        to_cudnn_weights(params),
        jnp.full((b,), t, jnp.int32),
        input_size=d,
        hidden_size=hidden,
        num_layers=1,
        dropout=0.0,
        bidirectional=False,
        precision=jax.config.jax_default_matmul_precision,  # None: JAX's default
    )
    return LSTMCarry(h_n[0], c_n[0]), jnp.swapaxes(y, 0, 1)
