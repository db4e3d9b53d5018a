"""One recurrent layer over time, several implementations, one registry.

Every implementation has the same interface,

    f(cell, params, xs [T, B, D], carry, reset [T, B] | None, *, unroll)
        -> (final carry, hs [T, B, H])

and is exact against the reference "scan" (tests/test_fused.py, test_onednn.py,
and on a GPU test_layers_gpu.py). `LAYER_IMPLS` below is the one place a layer
is chosen by name (`model.impl` in a config):

  "scan"         scan.py: the reference, hoisted projection + `lax.scan` (a leaf module)
  "fused"        fused.py: custom VJP, one dW matmul after the loop ("auto" for other cells)
  "fused_remat"  fused.py: + checkpointed chunks of ceil(sqrt(T)) steps (long sequences)
  "fused_bf16"   fused.py: + bf16 matmul operands, fp32 accumulation and state
  "cudnn"        cudnn.py: cuDNN's LSTM on a CUDA GPU; elsewhere "fused"
  "onednn"       onednn.py: oneDNN's LSTM primitive on CPU (optional `.[onednn]`);
                 elsewhere "fused"
  "auto"         the default everywhere, resolved per call by `resolve_impl`: for an
                 fp32 LSTM "cudnn" on a CUDA GPU, "onednn" on the CPU where it is
                 installed, else "fused" ("scan" for a cell without a fused path)

Variable-length rows (`seq_lengths`) and reversed rows run through
lengths.py on top of any of these (oneDNN's LSTM by held gates, no reset).

A fast path that cannot compute a layer exactly runs another exact one and says
so once per reason (a `fallback.LayerFallbackWarning`): onednn -> fused,
cudnn -> fused, fused -> scan (a cell without a hand-written backward pass).

Imports run one way: scan <- fused <- {cudnn, onednn} <- lengths <- this registry
<- recurrent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from lstm_jax.cells import LSTM, Cell
from lstm_jax.layers import cudnn, fused, lengths, onednn, scan
from lstm_jax.layers.fallback import LayerFallbackWarning

LayerFn = Callable[..., tuple[Any, Any]]

LAYER_IMPLS: dict[str, LayerFn] = {
    "scan": scan.scan_layer_time_major,
    **fused.LAYER_IMPLS,
    "cudnn": cudnn.cudnn_layer_time_major,
    "onednn": onednn.onednn_layer_time_major,
}


AUTO = "auto"
_resolved: dict[str, str] = {}  # backend -> what "auto" means there for an fp32 LSTM


def resolve_impl(
    name: str,
    *,
    reset_mask: bool = False,
    seq_lengths: bool = False,
    cell: Cell | None = None,
    dtype: Any = None,
) -> str:
    """`name`, or for "auto" the fastest exact layer for this call: for an
    LSTM in float32, "cudnn" on a CUDA GPU, "onednn" on the CPU where its
    wheels are installed and its extension builds, else "fused"; "fused" for
    the other cells, for other dtypes, wherever the call needs a mid-sequence
    `reset_mask`, which neither vendor primitive has, and for `seq_lengths`
    on a layer that does not take them by held gates (cuDNN here;
    `lengths.HELD_GATE_LAYERS`); "scan" for a cell that "fused" has no
    backward pass for. The one place "auto" is decided, so that it never
    lands on a fallback; the backend's choice is logged once."""
    if name != AUTO:
        get_layer_impl(name)  # an unknown name lists the valid ones
        return name
    if cell is not None and fused.cell_kind(cell) is None:
        return "scan"
    lstm = cell is None or isinstance(cell, LSTM)
    if reset_mask or not lstm or (dtype is not None and jnp.dtype(dtype) != jnp.float32):
        return "fused"
    backend = jax.default_backend()
    if backend not in _resolved:
        _resolved[backend] = _fastest_lstm_layer(backend)
        logging.info('layer impl "auto" is "%s" on %s', _resolved[backend], backend)
    if seq_lengths and _resolved[backend] not in lengths.HELD_GATE_LAYERS:
        return "fused"
    return _resolved[backend]


def _fastest_lstm_layer(backend: str) -> str:
    if cudnn.cudnn_available():
        return "cudnn"
    if backend == "cpu" and onednn.installed():
        try:
            onednn.load()  # builds the extension once (cached); a failed build is not fatal here
        except onednn.OnednnUnavailable as e:
            logging.warning('layer impl "auto": oneDNN is installed but unusable (%s); "fused"', e)
            return "fused"
        return "onednn"
    return "fused"


def get_layer_impl(name: str) -> LayerFn:
    """The layer implementation called `name` ("auto": `resolve_impl`); an
    unknown name lists the valid ones."""
    if name == AUTO:
        name = resolve_impl(name)
    if name not in LAYER_IMPLS:
        raise ValueError(
            f"unknown layer implementation {name!r}; valid: {sorted([*LAYER_IMPLS, AUTO])}"
        )
    return LAYER_IMPLS[name]


__all__ = [
    "AUTO",
    "LAYER_IMPLS",
    "LayerFallbackWarning",
    "LayerFn",
    "get_layer_impl",
    "resolve_impl",
]
