"""lstm_jax: recurrent networks (LSTM, GRU, vanilla RNN) in JAX.

The recurrent core lives in `cells` (pure cell functions), `recurrent` (the
scan over time and the layer stack) and `model` (language model and sequence
model around it). See README.md for the data flow.
"""

__version__ = "0.1.0"
