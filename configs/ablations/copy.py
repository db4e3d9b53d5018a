"""The copying memory problem (lstm_jax.research.long_range), Arjovsky, Shah & Bengio 2016.

Ten symbols from an alphabet of 8, then `gap` blanks with a delimiter at the
end, then the ten symbols must be reproduced.

    python -m lstm_jax.research.long_range --config configs/ablations/copy.py --workdir DIR

Every field is documented in lstm_jax/research/long_range.py:base_config.
"""

import ml_collections

from lstm_jax.research.long_range import base_config, config_args, lstm_task_setup, smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_args(arg, ("smoke",), "configs/ablations/copy.py")
    c = base_config()
    c.task.name = "copy"
    c.task.options.copy_len = 10  # k symbols to remember [ASB16]
    c.task.options.n_symbols = 8  # alphabet size [ASB16]
    c.task.options.gap = 50  # steps between the last symbol and the recall ([ASB16]: 100-500)
    c.task.options.score_blanks = False  # loss on the k recalled symbols only
    c.task.options.solve_accuracy = 0.99  # solved: 99% of recalled symbols right

    lstm_task_setup(c)

    if "smoke" in args:
        smoke(c)
        c.task.options.copy_len = 3
        c.task.options.n_symbols = 4
        c.task.options.gap = 5
    c.lock()
    return c
