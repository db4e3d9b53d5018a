"""lstm_jax: recurrent networks (LSTM, GRU, vanilla RNN) in JAX.

    import jax, lstm_jax

    cell = lstm_jax.make_cell("lstm")                       # or "gru", "rnn_tanh", ...
    params = lstm_jax.init_layers(jax.random.key(0), cell, in_features=16, hidden=64,
                                  num_layers=2)
    x = jax.numpy.ones((8, 20, 16))                         # [batch, time, features]
    carries, ys = lstm_jax.apply_layers(cell, params, x,
                                        seq_lengths=jax.numpy.full(8, 20), impl="auto")
    # Flax: lstm_jax.linen.LSTM(64) is a drop-in for nn.RNN(nn.OptimizedLSTMCell(64))

Cells are pure functions (`cells`), one layer over time has several exact
implementations (`layers`, chosen by name; "auto" picks the fastest here), and
`api` stacks them with Flax's options. docs/library.md has the details.
"""

from lstm_jax.api import apply_layer, apply_layers, init_layers
from lstm_jax.cells import CELLS, GRU, LSTM, LSTMCarry, SimpleRNN, make_cell
from lstm_jax.layers import LAYER_IMPLS, LayerFallbackWarning, get_layer_impl, resolve_impl

__version__ = "0.1.0"

__all__ = [
    "CELLS",
    "GRU",
    "LAYER_IMPLS",
    "LSTM",
    "LSTMCarry",
    "LayerFallbackWarning",
    "SimpleRNN",
    "apply_layer",
    "apply_layers",
    "get_layer_impl",
    "init_layers",
    "make_cell",
    "resolve_impl",
]
