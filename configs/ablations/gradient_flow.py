"""Gradient flow through time, RNN vs GRU vs LSTM (lstm_jax.research.gradient_flow).

    python -m lstm_jax.research.gradient_flow \
        --config configs/ablations/gradient_flow.py --workdir workdirs/gradient_flow
    # the test's tiny variant:  --config configs/ablations/gradient_flow.py:smoke
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.seed = 0  # PRNG seed: inits, probe batch, training batches (fold_in)
    c.num_seeds = 3  # independent inits (and trainings) averaged per cell
    # cells compared; names in lstm_jax.research.gradient_flow.VARIANTS
    c.variants = ("rnn_tanh", "rnn_relu", "irnn", "gru", "lstm_fb0", "lstm_fb1")
    c.plot_ylim = (1e-40, 1e20)  # y-range of the figure; the CSV holds the full curves
    c.fit_floor = 1e-290  # decay slope is fitted where the relative norm > this (float64 floor)

    c.model = ml_collections.ConfigDict()
    c.model.hidden_size = 64  # H, units of the single recurrent layer
    c.model.kernel_init = config_dict.placeholder(str)  # None = each cell's default (char-rnn)
    c.model.recurrent_init = config_dict.placeholder(str)  # e.g. "orthogonal"; None = default
    c.model.init_scale = config_dict.placeholder(float)  # None = cell default (0.08 uniform)

    c.probe = ml_collections.ConfigDict()
    c.probe.seq_len = 1000  # T of the probe sequence: gradients for k = 0..T
    c.probe.batch_size = 32  # examples the norms are averaged over
    c.probe.float64 = True  # probe in float64: float32 underflows at 1e-38 (fit_floor 1e-30 then)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1500  # Adam steps on the adding problem (0 = init only)
    c.train.seq_len = 50  # adding-problem length used for training (LSTM/GRU solve it)
    c.train.batch_size = 32  # examples per step
    c.train.learning_rate = 3e-3  # Adam step size
    c.train.clip_norm = 1.0  # global-norm clipping during training

    if arg == "smoke":
        c.num_seeds = 2
        c.variants = ("rnn_tanh", "lstm_fb1")  # the pair the test compares
        c.model.hidden_size = 32
        c.probe.seq_len = 120  # > 100: the test compares cells at distance 100
        c.probe.batch_size = 8
        c.train.num_steps = 10
        c.train.seq_len = 10
        c.train.batch_size = 8
    c.lock()
    return c
