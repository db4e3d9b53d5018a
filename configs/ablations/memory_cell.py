"""The LSTM memory cell, step by step (lstm_jax.research.memory_cell).

python -m lstm_jax.research.memory_cell --config configs/ablations/memory_cell.py --workdir DIR
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.float64 = True  # compute in float64 (float32 underflows the RNN gradients at 1e-38)
    c.value = 4.2  # the value written into the cell at step 0
    c.gate_gain = 15.0  # K: gates are sigmoid(+-K); forget gate open = 1 - 3.1e-7
    c.table_ns = (10, 30, 100, 300, 1000)  # keep lengths N in the table
    c.curve_max_n = 1000  # largest N of the dense curve in the figure
    c.curve_points = 40  # log-spaced N values of the dense curve
    c.trace_n = 3  # keep length of the step-by-step trace
    c.rnn_weights = (0.9, 1.0, 1.1)  # recurrent weights of the vanilla tanh unit
    c.rnn_input_scale = 0.1  # u: the RNN writes tanh(u * 4.2) = 0.40 (near-linear range)

    if arg == "smoke":
        c.table_ns = (10, 100)  # the test checks the gradient over 100 steps
        c.curve_max_n = 100
        c.curve_points = 8
    c.lock()
    return c
