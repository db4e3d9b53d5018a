"""The lecture's three examples, each runnable in seconds on a CPU.

    python -m lstm_jax.tutorials.dinner          # what's for dinner: MLP vs RNN
    python -m lstm_jax.tutorials.childrens_book  # Doug, Jane, Spot: RNN vs LSTM mistakes
    python -m lstm_jax.tutorials.weights         # how many weights are in each network?

They follow the slide deck the project grew from (a lecture after Brandon
Rohrer's "How RNNs and LSTMs work") and use the project's own cells, layers,
models, train step and sampler; see docs/tutorials.md.
"""
