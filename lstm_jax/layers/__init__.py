"""One recurrent layer over time, several implementations, one registry.

Every implementation has the same interface,

    f(cell, params, xs [T, B, D], carry, reset [T, B] | None, *, unroll)
        -> (final carry, hs [T, B, H])

and is exact against the reference "scan" (tests/test_fused.py, test_onednn.py,
and on a GPU test_layers_gpu.py). `LAYER_IMPLS` below is the one place a layer
is chosen by name (`model.impl` in a config):

  "scan"         scan.py: the reference, hoisted projection + `lax.scan` (a leaf module)
  "fused"        fused.py: custom VJP, one dW matmul after the loop (the fast default)
  "fused_remat"  fused.py: + checkpointed chunks of ceil(sqrt(T)) steps (long sequences)
  "fused_bf16"   fused.py: + bf16 matmul operands, fp32 accumulation and state
  "cudnn"        cudnn.py: cuDNN's LSTM on a CUDA GPU; elsewhere "fused"
  "onednn"       onednn.py: oneDNN's LSTM primitive on CPU (optional `.[onednn]`);
                 elsewhere "fused"

A fast path that cannot compute a layer exactly runs another exact one and says
so once per reason (a `fallback.LayerFallbackWarning`): onednn -> fused,
cudnn -> fused, fused -> scan (a cell without a hand-written backward pass).

Imports run one way: scan <- fused <- {cudnn, onednn} <- this registry <- recurrent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lstm_jax.layers import cudnn, fused, onednn, scan
from lstm_jax.layers.fallback import LayerFallbackWarning

LayerFn = Callable[..., tuple[Any, Any]]

LAYER_IMPLS: dict[str, LayerFn] = {
    "scan": scan.scan_layer_time_major,
    **fused.LAYER_IMPLS,
    "cudnn": cudnn.cudnn_layer_time_major,
    "onednn": onednn.onednn_layer_time_major,
}


def get_layer_impl(name: str) -> LayerFn:
    """The layer implementation called `name`; an unknown name lists the valid ones."""
    if name not in LAYER_IMPLS:
        raise ValueError(f"unknown layer implementation {name!r}; valid: {sorted(LAYER_IMPLS)}")
    return LAYER_IMPLS[name]


__all__ = ["LAYER_IMPLS", "LayerFallbackWarning", "LayerFn", "get_layer_impl"]
