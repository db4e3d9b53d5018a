"""The headline run: a word-level 3x512 LSTM on the 339 D&D 5e SRD spells.

The course project's "suitable results" setup (Myers & Collart, 2018): word-level,
3 LSTM layers of 512, 15-word windows, RMSProp at lr 1e-3.

    python -m lstm_jax.train --config configs/dnd.py            # word-level
    python -m lstm_jax.train --config configs/dnd.py:char       # char-level variant
    python -m lstm_jax.train --config configs/dnd.py:tuned      # + AWD-LSTM's regularizers
    python -m lstm_jax.train --config configs/dnd.py:smoke      # seconds, for tests
Arguments combine with commas, e.g. `configs/dnd.py:char,smoke`.
Every field is documented in lstm_jax/config.py.
"""

from lstm_jax.config import base_config


def get_config(arg: str | None = None):
    args = set(filter(None, (arg or "").split(",")))
    unknown = args - {"char", "smoke", "tuned"}
    if unknown:
        raise ValueError(
            f"unknown configs/dnd.py argument(s) {sorted(unknown)}; valid: char, smoke, tuned"
        )
    c = base_config()
    c.data.corpus = "dnd_spells"
    c.data.tokenizer = "word"
    c.data.lowercase = True
    c.data.min_count = 2  # words seen once become <unk> (a third of the vocabulary)
    c.data.val_fraction = 0.1  # the last ~34 spells are held out

    c.model.cell = "lstm"
    c.model.num_layers = 3
    c.model.hidden_size = 512
    c.model.embed_dim = 256
    c.model.dropout = 0.2  # a 150k-word corpus overfits a 3x512 LSTM quickly
    c.model.forget_bias = 1.0

    c.train.batch_size = 32
    c.train.seq_len = 15  # the course project's 15-word windows
    c.train.num_steps = 1500  # ~16 epochs; the best checkpoint by val loss is kept
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.log_every = 20
    c.train.sample_length = 60
    c.train.sample_prime = "spell"

    c.optim.name = "rmsprop"
    c.optim.learning_rate = 1e-3
    c.optim.decay = 0.9  # Keras's RMSprop rho, as the course project used
    c.optim.eps = 1e-7  # Keras's epsilon, added outside the square root
    c.optim.eps_in_sqrt = False
    c.optim.clip_mode = "global_norm"
    c.optim.clip_value = 5.0

    if "tuned" in args:
        # The same model, steps and tokens with the regularizers of AWD-LSTM
        # (Merity et al. 2017), the last row of configs/ablations/regularizers.py
        # (docs/language_models.md): locked dropout instead of per-step dropout,
        # embedding dropout, DropConnect on the recurrent kernels, tied
        # input/output embeddings through a 512->256 projection (Press & Wolf
        # 2017), and activation / temporal activation regularization.
        c.model.dropout = 0.0
        c.model.dropout_input = 0.4
        c.model.dropout_hidden = 0.25
        c.model.dropout_output = 0.4
        c.model.dropout_embedding = 0.1
        c.model.weight_drop = 0.4
        c.model.tie_embeddings = True
        c.train.activation_reg = 2.0
        c.train.temporal_activation_reg = 1.0
    if "char" in args:
        c.data.tokenizer = "char"
        c.model.embed_dim = 0  # one-hot characters
        c.train.seq_len = 100
        c.train.sample_length = 300
    if "smoke" in args:
        c.model.num_layers = 2
        c.model.hidden_size = 32
        c.model.embed_dim = 0 if "char" in args else 16
        c.train.batch_size = 8
        c.train.seq_len = 10
        c.train.num_steps = 20
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.log_every = 5
        c.train.max_eval_batches = 3
        c.train.sample_length = 10
        c.train.progress = False
    return c
