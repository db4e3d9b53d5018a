"""karpathy's min-char-rnn.py: a vanilla tanh RNN, hidden 100, seq 25,
Adagrad lr 0.1, per-element clip 5, weights randn * 0.01, one stream.

    python -m lstm_jax.train --config configs/min_char_rnn.py --config.data.path=input.txt
"""

from lstm_jax.config import base_config


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown configs/min_char_rnn.py argument {arg!r}; valid: smoke")
    c = base_config()
    c.data.corpus = "tiny_shakespeare"  # min-char-rnn reads any input.txt
    c.data.tokenizer = "char"
    c.data.val_fraction = 0.05

    c.model.cell = "rnn_tanh"
    c.model.num_layers = 1
    c.model.hidden_size = 100
    c.model.embed_dim = 0
    c.model.kernel_init = "normal"
    c.model.recurrent_init = "normal"
    c.model.init_scale = 0.01  # np.random.randn(...) * 0.01

    c.train.batch_size = 1
    c.train.seq_len = 25
    c.train.num_steps = 20000
    c.train.log_every = 100
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.train.max_eval_batches = 200
    c.train.sample_length = 200

    c.optim.name = "adagrad"
    c.optim.learning_rate = 0.1
    c.optim.clip_mode = "element"
    c.optim.clip_value = 5.0

    if arg == "smoke":
        c.train.num_steps = 20
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.log_every = 5
        c.train.max_eval_batches = 3
        c.train.sample_length = 20
        c.train.progress = False
    return c
