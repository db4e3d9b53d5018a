"""The AWD-LSTM regularizers on the D&D spells, one at a time, several seeds
(lstm_jax.research.ablation).

    python -m lstm_jax.research.ablation --config configs/ablations/regularizers.py --workdir DIR
    #   :smoke  the test's tiny variant (configs/dnd.py:smoke, 3 steps per run)

Each row adds one regularizer to the rows above it, starting from the headline
config (configs/dnd.py: 3x512 LSTM, 15-word windows, RMSProp 1e-3, dropout
0.2), and trains the headline's 1500 steps (the same tokens). The values are
AWD-LSTM's for PTB (Merity et al. 2017, sec. 5), except where a note says why.
"""

import ml_collections

# Each row adds to the rows above it (cumulative): the last row is
# configs/dnd.py:tuned. Rates are AWD-LSTM's, lowered where a 1,500-step budget
# on a 46k-word corpus cannot afford their slower start (weight drop 0.4, not 0.5;
# input dropout 0.4 on 256-dim embeddings, not 0.65 on 400).
VARIANTS = (
    "locked dropout: model.dropout=0.0, model.dropout_input=0.4, model.dropout_hidden=0.25, "
    "model.dropout_output=0.4, model.dropout_embedding=0.1",
    "weight drop: model.weight_drop=0.4",
    "tied + AR/TAR: model.tie_embeddings=True, train.activation_reg=2.0, "
    "train.temporal_activation_reg=1.0",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.base = "configs/dnd.py"  # the training config every variant starts from (path[:arg])
    c.variants = VARIANTS  # "NAME: key=value, ..." (lstm_jax.research.ablation)
    c.cumulative = True  # each variant keeps the changes listed before it
    c.seeds = (0, 1)  # every variant runs with each seed
    c.num_steps = 1500  # the headline's steps (tokens = steps x batch x window)
    c.evals_per_run = 3  # validations per run, the last at the end
    c.log_points = 30  # training-loss points per run
    c.keep_checkpoints = True  # keep each run's final checkpoint (to sample from)
    c.progress = True
    if arg == "smoke":
        c.base = "configs/dnd.py:smoke"
        c.variants = ("dropout 0.5: model.dropout=0.5", "adam: optim.name='adam'")
        c.cumulative = False
        c.num_steps = 3
        c.evals_per_run = 1
        c.log_points = 3
        c.keep_checkpoints = False
        c.progress = False
    c.lock()
    return c
