"""The long-range table (lstm_jax.research.long_range): tanh RNN, IRNN, GRU and LSTM on
the adding problem at T = 50, 100, 200, 400 (Hochreiter & Schmidhuber 1997's
criterion), seeds trained together in one program per (cell, T).

    python -m lstm_jax.research.long_range --config configs/ablations/long_range.py --workdir DIR
    # the copy task (gap 50) instead:
    python -m lstm_jax.research.long_range \\
        --config configs/ablations/long_range.py:copy --workdir DIR

Budget: sized for a shared 2-core CPU (hidden 32, batch 32, 3 seeds, a cap of
3000 steps); raise `model.hidden_size`, `train.num_steps` and `sweep.seeds` on a
real machine. Every field is documented
in lstm_jax/research/long_range.py:base_config.
"""

import ml_collections

from lstm_jax.research.long_range import base_config, config_args, smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_args(arg, ("copy", "smoke"), "configs/ablations/long_range.py")
    c = base_config()
    c.task.name = "adding_hochreiter"
    c.task.options.tolerance = 0.04  # [HS97]: |error| < 0.04 counts as correct
    c.task.options.solve_accuracy = 0.99  # solved: 99% of 512 held-out sequences correct

    c.model.hidden_size = 32  # every cell; Hochreiter's 1997 nets were smaller still
    c.model.forget_bias = 3.0  # LSTM only: a memory open at init (configs/ablations/adding.py)
    # other inits are each cell's default: uniform(+-0.08) for tanh RNN / GRU / LSTM;
    # IRNN = relu, identity recurrent kernel, N(0, 0.001) inputs (Le et al. 2015)

    c.optim.name = "adam"  # one optimizer for every cell
    c.optim.learning_rate = 3e-3
    c.optim.clip_value = 1.0  # global-norm clipping (keeps the IRNN from blowing up)

    c.train.num_steps = 3000  # cap per member (the CPU budget); members stop when solved
    c.train.eval_every = 100

    c.sweep.seeds = (0, 1, 2)  # members of one program
    # On this shared 2-core CPU XLA's batched matmuls made "vmap" 1.0-1.8x slower than
    # "map" (docs/research_tasks.md); both train the same members in one compiled
    # program and give the same parameters. Use "vmap" on a GPU/TPU.
    c.sweep.vectorize = "map"
    c.sweep.cells = ("rnn_tanh", "irnn", "gru", "lstm")  # looped
    c.sweep.task_option = "seq_len"  # looped
    c.sweep.task_values = (50, 100, 200, 400)

    if "copy" in args:
        c.task.name = "copy"
        c.task.options = ml_collections.ConfigDict()
        c.task.options.copy_len = 10  # k symbols [ASB16]
        c.task.options.n_symbols = 8  # alphabet [ASB16]
        c.task.options.solve_accuracy = 0.99  # solved: 99% of recalled symbols right
        c.sweep.task_option = "gap"
        c.sweep.task_values = (50,)  # T = gap + 2k = 70 steps
    if "smoke" in args:
        smoke(c)  # two points per variant: the cell loop, then the task-option loop
        if "copy" in args:
            c.task.options.copy_len = 3
            c.task.options.n_symbols = 4
            c.sweep.cells = ("rnn_tanh",)
            c.sweep.task_values = (5, 6)
        else:
            c.sweep.cells = ("rnn_tanh", "lstm")
            c.sweep.task_values = (24,)
    c.lock()
    return c
