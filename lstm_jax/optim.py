"""Config -> optax chain: clipping, then the optimizer driven by a schedule.

    chain(clip(mode, value), optimizer(learning_rate=schedule)[, reduce_on_plateau])

Optimizers, schedules and clip modes are each looked up by name in one dict
below; a bad name lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax
from optax import contrib

Schedule = Callable[[Any], Any]


def _epoch_decay_staircase(c, steps_per_epoch: int) -> Schedule:
    """Zaremba et al. 2014: constant for `decay_after_epochs` epochs, then the
    rate is multiplied by `decay_rate` at the start of every later epoch
    (small config: lr 1, halved each epoch after epoch 4)."""
    k = c.decay_after_epochs

    def schedule(step):
        epoch = step // steps_per_epoch
        return c.learning_rate * c.decay_rate ** jnp.maximum(0, epoch - k + 1)

    return schedule


def _epoch_decay_exponential(c, steps_per_epoch: int) -> Schedule:
    """char-rnn: x`decay_rate` per epoch once `decay_after_epochs` are done
    (0.97 after epoch 10), applied smoothly per step."""
    return optax.exponential_decay(
        c.learning_rate,
        transition_steps=steps_per_epoch,
        decay_rate=c.decay_rate,
        transition_begin=c.decay_after_epochs * steps_per_epoch,
    )


def _warmup_cosine(c, steps_per_epoch: int) -> Schedule:
    del steps_per_epoch
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c.learning_rate,
        warmup_steps=c.warmup_steps,
        decay_steps=max(c.decay_steps, c.warmup_steps + 1),
        end_value=c.learning_rate * c.end_fraction,
    )


SCHEDULES: dict[str, Callable[[Any, int], Schedule]] = {
    "constant": lambda c, spe: optax.constant_schedule(c.learning_rate),
    "step": _epoch_decay_staircase,
    "exponential": _epoch_decay_exponential,
    "warmup_cosine": _warmup_cosine,
    # the learning rate is constant; optax.contrib.reduce_on_plateau scales the
    # updates down when the (training) loss stops improving.
    "reduce_on_plateau": lambda c, spe: optax.constant_schedule(c.learning_rate),
}

OPTIMIZERS: dict[str, Callable[[Any, Schedule], optax.GradientTransformation]] = {
    "sgd": lambda c, lr: optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov),
    # char-rnn's RMSProp: decay 0.95; the seeds used Keras's rho 0.9. Where eps
    # sits is `eps_in_sqrt` (see config.py): char-rnn, PyTorch and Keras divide by
    # sqrt(v) + eps, optax's default by sqrt(v + eps).
    "rmsprop": lambda c, lr: optax.rmsprop(
        lr, decay=c.decay, eps=c.eps, eps_in_sqrt=c.eps_in_sqrt, momentum=c.momentum or None
    ),
    "adam": lambda c, lr: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps),
    "adamw": lambda c, lr: optax.adamw(
        lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay
    ),
    # min-char-rnn's Adagrad: zero-initialised accumulator, eps 1e-8.
    "adagrad": lambda c, lr: optax.adagrad(lr, initial_accumulator_value=0.0, eps=c.eps),
}

CLIP_MODES: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "global_norm": optax.clip_by_global_norm,  # Pascanu et al. 2013, Zaremba et al. 2014
    "element": optax.clip,  # per element to [-v, v], char-rnn's grad_clip
    "none": lambda v: optax.identity(),
}


def _lookup(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {sorted(table)}")
    return table[name]


def validate(c) -> None:
    """Check names and values of `config.optim` before any compute."""
    _lookup(OPTIMIZERS, "optimizer", c.name)
    _lookup(SCHEDULES, "schedule", c.schedule)
    _lookup(CLIP_MODES, "clip mode", c.clip_mode)
    if not c.learning_rate > 0:
        raise ValueError(f"optim.learning_rate must be > 0, got {c.learning_rate}")
    if c.clip_mode != "none" and not c.clip_value > 0:
        raise ValueError(f"optim.clip_value must be > 0 with clip_mode={c.clip_mode!r}")
    if not 0 < c.decay_rate <= 1:
        raise ValueError(f"optim.decay_rate must be in (0, 1], got {c.decay_rate}")


def make_schedule(c, steps_per_epoch: int) -> Schedule:
    return _lookup(SCHEDULES, "schedule", c.schedule)(c, max(1, steps_per_epoch))


def make_optimizer(c, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
    """The optax chain for `config.optim`. Its `update` accepts `value=loss`
    (needed by reduce_on_plateau, ignored otherwise)."""
    validate(c)
    parts = [
        _lookup(CLIP_MODES, "clip mode", c.clip_mode)(c.clip_value),
        _lookup(OPTIMIZERS, "optimizer", c.name)(c, make_schedule(c, steps_per_epoch)),
    ]
    if c.schedule == "reduce_on_plateau":
        parts.append(
            contrib.reduce_on_plateau(
                factor=c.decay_rate, patience=c.plateau_patience, accumulation_size=steps_per_epoch
            )
        )
    return optax.chain(*parts)


def current_learning_rate(c, schedule: Schedule, step, opt_state) -> Any:
    """The effective learning rate at `step`, including a plateau scale."""
    lr = schedule(step)
    if c.schedule == "reduce_on_plateau":
        lr = lr * optax.tree_utils.tree_get(opt_state, "scale")
    return lr
