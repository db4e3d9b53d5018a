"""A timer task after Jaeger 2012 (lstm_jax.research.long_range): a start pulse and a
one-step duration cue; the output must hold 0.5 for the cued number of steps
(up to 50 of a 100-step sequence), then drop to 0.

    python -m lstm_jax.research.long_range --config configs/ablations/timer.py --workdir DIR

Every field is documented in lstm_jax/research/long_range.py:base_config.
"""

import ml_collections

from lstm_jax.research.long_range import base_config, config_args, lstm_task_setup, smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_args(arg, ("smoke",), "configs/ablations/timer.py")
    c = base_config()
    c.task.name = "timer"
    c.task.options.seq_len = 100  # T
    c.task.options.max_duration = 50  # pulse length for the cue 1.0 (cue L/10 -> 5L steps)
    # solved: per-step MSE < 0.002. The task's default 0.01 is met without reading the
    # cue well: a net that only counts from the pulse, ignoring the duration cue, can
    # score 0.25 * mean_d p_d (1 - p_d) ~ 0.021 (p_d = P(duration > d)); ours reached
    # 0.008 within 100 steps. 0.002 is 10x below that cue-blind optimum.
    c.task.options.solve_mse = 0.002

    lstm_task_setup(c)

    if "smoke" in args:
        smoke(c)
        c.task.options.seq_len = 16
        c.task.options.max_duration = 8
        c.sweep.init_scales = (0.05, 0.2)  # 2 seeds x 2 init scales = 4 members
    c.lock()
    return c
