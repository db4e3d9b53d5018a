"""The copying memory problem (lstm_jax.research.long_range), Arjovsky, Shah & Bengio 2016.

Ten symbols from an alphabet of 8, then `gap` blanks with a delimiter at the
end, then the ten symbols must be reproduced.

    python -m lstm_jax.research.long_range --config configs/ablations/copy.py --workdir DIR

Every field is documented in lstm_jax/research/long_range.py:base_config.
"""

import ml_collections

from lstm_jax.research.long_range import base_config, config_args, smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_args(arg, ("smoke",), "configs/ablations/copy.py")
    c = base_config()
    c.task.name = "copy"
    c.task.options.copy_len = 10  # k symbols to remember [ASB16]
    c.task.options.n_symbols = 8  # alphabet size [ASB16]
    c.task.options.gap = 50  # steps between the last symbol and the recall ([ASB16]: 100-500)
    c.task.options.score_blanks = False  # loss on the k recalled symbols only
    c.task.options.solve_accuracy = 0.99  # solved: 99% of recalled symbols right

    c.model.cell = "lstm"
    c.model.hidden_size = 64
    c.model.forget_bias = 3.0  # a memory open at init (see configs/ablations/adding.py)

    c.optim.name = "adam"
    c.optim.learning_rate = 3e-3  # as for the adding problem
    c.optim.clip_value = 1.0  # global-norm clipping

    c.train.num_steps = 3000  # cap; a member stops when solved
    c.train.eval_every = 100

    c.sweep.seeds = (0, 1)  # two independent runs in one program

    if "smoke" in args:
        smoke(c)
        c.task.options.copy_len = 3
        c.task.options.n_symbols = 4
        c.task.options.gap = 5
    c.lock()
    return c
