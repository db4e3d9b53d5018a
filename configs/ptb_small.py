"""Zaremba, Sutskever & Vinyals 2014, "small" config on the Penn Treebank.

2x200 LSTM, 20 steps, batch 20, uniform(+-0.1) init, SGD lr 1 halved every
epoch after epoch 4, 13 epochs, global-norm clip 5, no dropout. Their test
perplexity: 114.5. PTB comes from a local directory holding ptb.train.txt,
ptb.valid.txt and ptb.test.txt (the Mikolov preprocessing, <unk> included):

    python -m lstm_jax.train --config configs/ptb_small.py --config.data.path=/path/to/ptb
"""

from lstm_jax.config import base_config

# 929k training words / (20 x 20) per step = 2,323 steps per epoch.
_EPOCHS = 13
_STEPS_PER_EPOCH = 2323


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown configs/ptb_small.py argument {arg!r}; valid: smoke")
    c = base_config()
    c.data.corpus = "ptb"
    c.data.tokenizer = "word"
    c.data.lowercase = False  # the files are already lowercased, <unk> included
    c.data.min_count = 1
    c.data.word_split = "whitespace"  # pre-tokenized text: keep "<unk>" and "mr." whole

    c.model.cell = "lstm"
    c.model.num_layers = 2
    c.model.hidden_size = 200
    c.model.embed_dim = 200
    c.model.forget_bias = 0.0
    c.model.init_scale = 0.1

    c.train.batch_size = 20
    c.train.seq_len = 20
    c.train.num_steps = _EPOCHS * _STEPS_PER_EPOCH
    c.train.eval_every = _STEPS_PER_EPOCH
    c.train.checkpoint_every = _STEPS_PER_EPOCH
    c.train.log_every = 100
    # XLA:CPU matmuls through oneDNN: faster train steps at this size on the
    # 2-core dev CPU (A/B in docs/performance.md). No effect off CPU.
    c.train.cpu_dots = "onednn"

    c.optim.name = "sgd"
    c.optim.learning_rate = 1.0
    c.optim.clip_mode = "global_norm"
    c.optim.clip_value = 5.0
    c.optim.schedule = "step"
    c.optim.decay_rate = 0.5
    c.optim.decay_after_epochs = 4

    if arg == "smoke":
        c.model.hidden_size = 16
        c.model.embed_dim = 16
        c.train.batch_size = 4
        c.train.seq_len = 5
        c.train.num_steps = 20
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.log_every = 5
        c.train.progress = False
    return c
