"""The AWD-LSTM regularizers on the D&D spells, one at a time, several seeds
(lstm_jax.research.ablation).

    python -m lstm_jax.research.ablation --config configs/ablations/regularizers.py --workdir DIR
    #   :smoke  the test's tiny variant (configs/dnd.py:smoke, 3 steps per run)

Every variant adds one change to the headline config (configs/dnd.py: 3x512
LSTM, 15-word windows, RMSProp 1e-3, dropout 0.2) and trains the headline's
1500 steps (the same tokens). The values are AWD-LSTM's for PTB (Merity et al.
2017, sec. 5), except where a note says why.
"""

import ml_collections

VARIANTS = ("dropout 0.5: model.dropout=0.5",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.base = "configs/dnd.py"  # the training config every variant starts from (path[:arg])
    c.variants = VARIANTS  # "NAME: key=value, ..." (lstm_jax.research.ablation)
    c.cumulative = False  # True: each variant keeps the changes listed before it
    c.seeds = (0, 1)  # every variant runs with each seed
    c.num_steps = 1500  # the headline's steps (tokens = steps x batch x window)
    c.evals_per_run = 3  # validations per run, the last at the end
    c.log_points = 30  # training-loss points per run
    c.progress = True
    if arg == "smoke":
        c.base = "configs/dnd.py:smoke"
        c.variants = ("dropout 0.5: model.dropout=0.5", "adam: optim.name='adam'")
        c.num_steps = 3
        c.evals_per_run = 1
        c.log_points = 3
        c.progress = False
    c.lock()
    return c
