"""Exploding gradients and clipping on a char corpus (lstm_jax.research.clipping).

min-char-rnn's setting (Karpathy 2015) with plain SGD at lr 0.1:

    python -m lstm_jax.research.clipping --config configs/ablations/clipping.py --workdir DIR
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.seed = 0  # base seed: init and batch order (shared by the modes of one seed)
    c.num_seeds = 3  # seeds per (mode, lr): blow-ups are chaotic in the data order
    c.modes = ("none", "global_norm", "value")  # names in lstm_jax.research.clipping.CLIP_MODES
    c.eval_batches = 8  # held-out batches for the final validation loss

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "dnd_spells"  # a name in lstm_jax.data.corpora.CORPORA
    c.data.path = config_dict.placeholder(str)  # file for corpus "text" (e.g. tinyshakespeare)
    c.data.max_chars = 0  # use only the first N characters (0 = all)
    c.data.val_fraction = 0.05  # held-out tail of the text

    c.model = ml_collections.ConfigDict()
    c.model.cell = "rnn_tanh"  # a name in lstm_jax.cells.CELLS
    c.model.hidden_size = 100  # min-char-rnn's 100 units
    c.model.kernel_init = "normal"  # min-char-rnn: randn * 0.01
    c.model.recurrent_init = "normal"  # min-char-rnn: randn * 0.01
    c.model.init_scale = 0.01  # std of the normal init

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1500  # SGD steps per run
    c.train.batch_size = 32  # random windows per step
    c.train.seq_len = 25  # min-char-rnn's unroll length
    c.train.learning_rates = (
        0.01,
        0.03,
        0.1,
    )  # plain SGD step sizes (the course project's lr: 0.1)
    c.train.sum_over_time = True  # loss summed over the T steps (min-char-rnn), mean over B
    c.train.clip_norm = 5.0  # global-norm threshold (Pascanu et al. Algorithm 1)
    c.train.clip_value = 5.0  # per-element bound (min-char-rnn's np.clip(dparam, -5, 5))

    if arg == "smoke":
        c.data.max_chars = 20000
        c.model.hidden_size = 32
        c.train.num_steps = 30
        c.num_seeds = 1
        c.train.batch_size = 8
        c.eval_batches = 2
        c.train.learning_rates = (0.1,)
    c.lock()
    return c
