"""The course project's first experiment: a word-level 2x512 LSTM trained with plain SGD
on a short story, predicting the next word from 3- or 5-word windows.

    python -m lstm_jax.train --config configs/short_story.py --config.data.path=story.txt
    python -m lstm_jax.train --config configs/short_story.py:5 --config.data.path=story.txt
"""

from lstm_jax.config import base_config


def get_config(arg: str | None = None):
    args = set(filter(None, (arg or "").split(",")))
    if args - {"3", "5", "smoke"}:
        raise ValueError(f"unknown configs/short_story.py argument(s) {arg!r}; valid: 3, 5, smoke")
    c = base_config()
    c.data.corpus = "text"
    c.data.tokenizer = "word"
    c.data.val_fraction = 0.1

    c.model.cell = "lstm"
    c.model.num_layers = 2
    c.model.hidden_size = 512
    c.model.embed_dim = 128

    c.train.batch_size = 16
    c.train.seq_len = 5 if "5" in args else 3  # the course project's window of 3 or 5 words
    c.train.num_steps = 2000
    c.train.eval_every = 200
    c.train.checkpoint_every = 500
    c.data.batching = "windows"  # independent windows, as the course project's Keras model saw them

    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.clip_mode = "none"

    if "smoke" in args:
        c.model.hidden_size = 16
        c.model.embed_dim = 8
        c.train.batch_size = 4
        c.train.num_steps = 20
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.log_every = 5
        c.train.progress = False
    return c
