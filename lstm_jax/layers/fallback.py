"""One warning per reason when a fast layer hands a call to another layer.

A fast path that cannot compute a layer exactly (cuDNN without a GPU, oneDNN
with a reset mask, the fused loops with an unknown cell) runs a slower exact
layer instead. That is correct but can cost speed, so it is said once, with
the reason, rather than silently or once per trace.
"""

from __future__ import annotations

import warnings


class LayerFallbackWarning(UserWarning):
    """A requested layer implementation ran as another (exact) one.

    Silence it with `warnings.filterwarnings("ignore", category=LayerFallbackWarning)`."""


_warned: set[str] = set()  # the messages already given, so each reason is said once


def warn_fallback(requested: str, used: str, reason: str) -> None:
    """Warn, once per distinct (requested, used, reason), that `requested` ran as `used`."""
    message = f'layer "{requested}" runs as "{used}": {reason}'
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, LayerFallbackWarning, stacklevel=3)
