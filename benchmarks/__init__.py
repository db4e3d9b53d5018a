"""Benchmarks beside the library: each module a `python -m benchmarks.NAME` run
that times lstm_jax against a peer side by side, in one process, and prints a table."""
