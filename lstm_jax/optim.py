"""Config -> optax chain: clipping, then the optimizer driven by a schedule.

    chain(clip(mode, value), optimizer(learning_rate=schedule)[, reduce_on_plateau])

Optimizers, schedules and clip modes are each looked up by name in one dict
below; a bad name lists the valid ones.

NT-ASGD (`optim.name = "nt_asgd"`, Merity, Keskar & Socher 2017, Algorithm 1)
is SGD whose chain is wrapped in `nt_average`: the wrapper keeps the running
mean of the iterates once averaging has started. When it starts is decided on
the host at each evaluation (`NTTrigger`, from the validation-loss history),
which then sets the flag in the optimizer state (`start_averaging`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
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
    # Merity et al. 2017 (AWD-LSTM): SGD at a constant rate, then the average of
    # the iterates from a trigger on (`nt_average`; AWD: lr 30, clip 0.25, n 5).
    "nt_asgd": lambda c, lr: optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov),
    # char-rnn's RMSProp: decay 0.95; the course project used Keras's rho 0.9. Where eps
    # sits is `eps_in_sqrt` (see config.py): char-rnn, PyTorch and Keras divide by
    # sqrt(v) + eps, optax's default by sqrt(v + eps).
    "rmsprop": lambda c, lr: optax.rmsprop(
        lr,
        decay=c.decay,
        eps=c.eps,
        eps_in_sqrt=c.eps_in_sqrt,
        initial_scale=c.get("initial_scale", 0.0),
        momentum=c.momentum or None,
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
    if c.name == "nt_asgd" and not c.nt_asgd_interval >= 1:
        raise ValueError(
            f"optim.nt_asgd_interval must be >= 1 (evaluations; AWD: 5), got {c.nt_asgd_interval}"
        )


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
    chain = optax.chain(*parts)
    return nt_average(chain) if c.name == "nt_asgd" else chain


def current_learning_rate(c, schedule: Schedule, step, opt_state) -> Any:
    """The effective learning rate at `step`, including a plateau scale."""
    lr = schedule(step)
    if c.schedule == "reduce_on_plateau":
        lr = lr * optax.tree_utils.tree_get(opt_state, "scale")
    return lr


# ----------------------------------------------------------------------------
# NT-ASGD: non-monotonically triggered averaged SGD (Merity et al. 2017).


class NTAverageState(NamedTuple):
    """`nt_average`'s state. The names are unique in the state tree, so
    `optax.tree_utils.tree_get/tree_set` find them wherever the wrapper sits."""

    inner_state: Any  # the wrapped chain's state
    averaging: jax.Array  # bool scalar: the trigger has fired (set by `start_averaging`)
    num_averaged: jax.Array  # int32 scalar: iterates in the average (1 until averaging)
    averaged_params: Any  # mean of the iterates since the trigger; the iterate until then


def nt_average(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps `inner` (SGD) to keep the running mean of the iterates once
    `averaging` is set. The updates are `inner`'s, unchanged: training goes on
    with the raw iterates, the average is only read (for evaluation).

    Until the trigger `averaged_params` is the current iterate w_k (and
    `num_averaged` 1). Set at the evaluation after step T, `averaging` makes
    each later step k fold w_k into the mean, so the average is
    (w_T + ... + w_k) / (k - T + 1), Algorithm 1's returned value. (PyTorch's
    ASGD with t0=0, which awd-lstm-lm switches to, copies the iterate on its
    first two steps: its mean starts at w_{T+2}.)
    No Python branching: the flag selects with `jnp.where` inside the step.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return NTAverageState(
            inner_state=inner.init(params),
            averaging=jnp.zeros((), jnp.bool_),
            num_averaged=jnp.ones((), jnp.int32),
            averaged_params=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("nt_average needs the params to average the iterates")
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        new_params = optax.apply_updates(params, updates)  # as the train step applies them
        on = state.averaging
        n = jnp.where(on, state.num_averaged + 1, 1)

        def fold(avg, w):  # running mean: avg_n = avg_{n-1} + (w - avg_{n-1}) / n
            mean = avg + (w - avg) / n.astype(avg.dtype)
            return jnp.where(on, mean, w).astype(avg.dtype)

        averaged = jax.tree.map(fold, state.averaged_params, new_params)
        return updates, NTAverageState(inner_state, on, n, averaged)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def start_averaging(opt_state: Any) -> Any:
    """`opt_state` with NT-ASGD's averaging switched on (the trigger fired)."""
    return optax.tree_utils.tree_set(opt_state, averaging=jnp.ones((), jnp.bool_))


def averaged_params(opt_state: Any) -> Any:
    """The running average NT-ASGD keeps in `opt_state`."""
    return optax.tree_utils.tree_get(opt_state, "averaged_params")


def nt_trigger(val_losses: Sequence[float], val_loss: float, interval: int) -> bool:
    """NT-ASGD's non-monotone trigger: does `val_loss`, the newest validation
    loss, start averaging, given the earlier ones (`val_losses`, oldest first,
    the newest not yet appended)?

    Algorithm 1, line 6: `t > n and v > min(logs[0 .. t-n-1])` with t =
    len(logs); awd-lstm-lm's main.py, before appending the loss:
    `len(best_val_loss) > args.nonmono and val_loss > min(best_val_loss[:-args.nonmono])`.
    So the loss is compared with the best of those at least n+1 evaluations
    old, and the earliest trigger is the (n+2)-th evaluation.
    """
    t = len(val_losses)
    return t > interval and val_loss > min(val_losses[: t - interval])


@dataclasses.dataclass
class NTTrigger:
    """The host's side of NT-ASGD: the validation-loss history and the step at
    which averaging started; saved in each checkpoint's JSON meta (`to_json`)."""

    interval: int  # n, the non-monotone interval (evaluations)
    val_losses: list[float] = dataclasses.field(default_factory=list)
    trigger_step: int | None = None  # T: averaging from the iterate after step T

    @property
    def averaging(self) -> bool:
        return self.trigger_step is not None

    def observe(self, step: int, val_loss: float) -> bool:
        """Records the evaluation after `step`; True if averaging starts now."""
        start = not self.averaging and nt_trigger(self.val_losses, val_loss, self.interval)
        if start:
            self.trigger_step = step
        self.val_losses.append(float(val_loss))
        return start

    def to_json(self) -> dict:
        return {"val_losses": list(self.val_losses), "trigger_step": self.trigger_step}

    @classmethod
    def from_config(cls, c, meta: dict | None) -> NTTrigger | None:
        """For `config.optim` (None unless nt_asgd), with the history saved in
        a checkpoint's `meta` (None: a fresh run)."""
        if c.name != "nt_asgd":
            return None
        saved = (meta or {}).get("nt_asgd") or {}
        return cls(c.nt_asgd_interval, list(saved.get("val_losses", [])), saved.get("trigger_step"))
