"""Weight initializers, chosen by name.

Each entry maps a name to a factory `scale -> init(key, shape, dtype)`.
The scale means what the literature means for that scheme:

- uniform(+-a):  char-rnn uses a = 0.08; Zaremba et al. 2014 use 0.1 (small),
                 0.05 (medium), 0.04 (large).
- normal(std):   min-char-rnn uses randn * 0.01; IRNN inputs use std 0.001.
- orthogonal:    Saxe et al. 2014; `scale` is the gain.
- identity:      scale * I, the IRNN recurrent kernel (Le et al. 2015, scale 1).
- glorot_uniform, lecun_normal: fan-based (Glorot & Bengio 2010; LeCun 1998);
                 `scale` multiplies the variance-preserving default of 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Init = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def _uniform(scale: float) -> Init:
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -scale, scale)


def _normal(scale: float) -> Init:
    return lambda key, shape, dtype: scale * jax.random.normal(key, shape, dtype)


def _identity(scale: float) -> Init:
    def init(key, shape, dtype):
        del key
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"identity init needs a square matrix, got shape {shape}")
        return scale * jnp.eye(shape[0], dtype=dtype)

    return init


def _variance_scaling(mode: str, distribution: str) -> Callable[[float], Init]:
    return lambda scale: jax.nn.initializers.variance_scaling(scale, mode, distribution)


INITIALIZERS: dict[str, Callable[[float], Init]] = {
    "uniform": _uniform,
    "normal": _normal,
    "orthogonal": lambda scale: jax.nn.initializers.orthogonal(scale),
    "identity": _identity,
    "glorot_uniform": _variance_scaling("fan_avg", "uniform"),
    "lecun_normal": _variance_scaling("fan_in", "truncated_normal"),
}

# Scales for the fan-based schemes are gains on the default, so "1" is natural;
# these names ignore a caller's absolute scale such as char-rnn's 0.08.
_RELATIVE = ("orthogonal", "glorot_uniform", "lecun_normal")


def get(name: str, scale: float) -> Init:
    """Return `init(key, shape, dtype)` for the named scheme."""
    if name not in INITIALIZERS:
        raise ValueError(
            f"unknown initializer {name!r}; valid initializers: {sorted(INITIALIZERS)}"
        )
    return INITIALIZERS[name](1.0 if name in _RELATIVE else scale)
