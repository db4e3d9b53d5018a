"""karpathy/char-rnn's defaults on tiny-shakespeare.

2x128 LSTM, one-hot characters, seq 50, batch 50, RMSProp lr 2e-3 with decay
0.95, per-element gradient clip 5, uniform(+-0.08) init, forget bias 1, lr x0.97
per epoch after epoch 10, 95/5 train/validation split.

    python -m lstm_jax.train --config configs/shakespeare_char.py
    python -m lstm_jax.train --config configs/shakespeare_char.py:large  # 2x512, dropout
    # offline: --config.data.path=/path/to/tinyshakespeare.txt

`:large` is the best we found for 30 minutes on a 2-core CPU: 2x512
(char-rnn's larger size), 64-dim embedding, 32 streams of 50 characters,
locked (variational) dropout 0.2 / 0.35 / 0.4 on the inputs, between the layers
and on the outputs (Gal & Ghahramani 2016; AWD-LSTM), Adam 3e-3 with a
warmup-cosine schedule, 4800 steps (7.7M characters), oneDNN's LSTM layer.
Measured 2026-11-28: validation 1.488 nats/char in 28.5 minutes with seed 0,
1.476 in 27.2 minutes with seed 1 (docs/language_models.md, section 4).
"""

from lstm_jax.config import base_config


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke", "large"):
        raise ValueError(
            f"unknown configs/shakespeare_char.py argument {arg!r}; valid: smoke, large"
        )
    c = base_config()
    c.data.corpus = "tiny_shakespeare"
    c.data.tokenizer = "char"
    c.data.val_fraction = 0.05

    c.model.cell = "lstm"
    c.model.num_layers = 2
    c.model.hidden_size = 128
    c.model.embed_dim = 0  # char-rnn feeds one-hot vectors
    c.model.forget_bias = 1.0
    c.model.init_scale = 0.08

    c.train.batch_size = 50
    c.train.seq_len = 50
    c.train.num_steps = 4000
    c.train.eval_every = 1000  # char-rnn evaluates every 1000 iterations
    c.train.checkpoint_every = 1000
    c.train.sample_length = 200

    c.optim.name = "rmsprop"
    c.optim.learning_rate = 2e-3
    c.optim.decay = 0.95
    c.optim.eps = 1e-8  # char-rnn's optim.rmsprop: x / (sqrt(m) + 1e-8)
    c.optim.eps_in_sqrt = False
    c.optim.clip_mode = "element"
    c.optim.clip_value = 5.0
    c.optim.schedule = "exponential"
    c.optim.decay_rate = 0.97
    c.optim.decay_after_epochs = 10

    # On a CPU host, split the 50 streams over 2 devices (one per core): each core
    # runs its own rows' recurrence. The same math (equal up to float summation
    # order); 600 steps in 18.9 s instead of 26.1 s on the 2-core dev machine.
    # Ignored on GPU/TPU (docs/performance.md).
    c.parallel.cpu_devices = 2

    if arg == "large":
        c.model.hidden_size = 512
        c.model.embed_dim = 64
        # Locked dropout: one mask per stream for the whole window (Gal & Ghahramani
        # 2016), on the embedded inputs, between the layers and on the outputs, as
        # AWD-LSTM's dropouti/dropouth/dropout (Merity et al. 2017). It beat
        # per-step dropout 0.4 (Zaremba et al. 2014) here: docs/language_models.md, section 4.
        c.model.dropout_input = 0.2
        c.model.dropout_hidden = 0.35
        c.model.dropout_output = 0.4
        # oneDNN's fused LSTM primitive: the fastest layer at 2x512 on a CPU
        # (docs/performance.md); on a GPU it falls back to "fused" by itself
        c.model.impl = "onednn"
        # 32 x 50: more updates per character than 64 x 50 or 64 x 100, at nearly
        # the same characters per second (docs/language_models.md, section 4)
        c.train.batch_size = 32
        c.train.seq_len = 50
        c.train.num_steps = 4800  # ~7.3 epochs, ~29 minutes on the 2-core CPU
        c.train.eval_every = 800
        c.train.checkpoint_every = 800
        c.train.sample_length = 300
        c.optim.name = "adam"
        c.optim.learning_rate = 3e-3
        c.optim.clip_mode = "global_norm"
        c.optim.schedule = "warmup_cosine"
        c.optim.warmup_steps = 200
        c.optim.decay_steps = c.train.num_steps
        c.optim.end_fraction = 0.05
        # splitting the rows over the two cores does not pay at H = 512
        c.parallel.cpu_devices = 0
    if arg == "smoke":
        c.model.hidden_size = 32
        c.train.batch_size = 4  # splits over the 2 CPU devices
        c.train.seq_len = 16
        c.train.num_steps = 20
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.log_every = 5
        c.train.sample_length = 20
        c.train.progress = False
    return c
