"""The temporal order problem (lstm_jax.research.long_range), Hochreiter & Schmidhuber 1997,
task 6a: classify the order (XX, XY, YX, YY) of two symbols hidden among
distractors at steps ~[10, 20] and ~[50, 60] of a 100-step sequence.

    python -m lstm_jax.research.long_range \\
        --config configs/ablations/temporal_order.py --workdir DIR

Every field is documented in lstm_jax/research/long_range.py:base_config.
"""

import ml_collections

from lstm_jax.research.long_range import base_config, config_args, lstm_task_setup, smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_args(arg, ("smoke",), "configs/ablations/temporal_order.py")
    c = base_config()
    c.task.name = "temporal_order"
    c.task.options.seq_len = 100  # T: the paper's lengths are 100-110
    c.task.options.solve_accuracy = 0.99  # solved: 99% of held-out sequences classified

    lstm_task_setup(c)

    if "smoke" in args:
        smoke(c)
        c.task.options.seq_len = 20
    c.lock()
    return c
