"""Research ablations on vanishing and exploding gradients (docs/research_gradients.md).

Each tool is a module with `run(config, workdir) -> dict` and a CLI
(`python -m lstm_jax.research.<name> --config configs/ablations/<name>.py
--workdir DIR`); results are CSV/JSON, figures PNG.

- `gradient_flow`: ||dL_T/dh_k|| for k = 0..T, RNN vs GRU vs LSTM, at init and
  after training; decay rates, 1e-6 distances, Pascanu's sigma_max * gamma.
- `pascanu`: the single-unit cliff of Pascanu, Mikolov & Bengio (2013), its loss
  and gradient-norm surfaces, and descent with and without norm clipping.
- `memory_cell`: a hand-set LSTM unit that writes 4.2, keeps it N steps, reads
  and clears it; its gradient stays ~1 while a vanilla RNN's decays.
- `clipping`: a vanilla RNN char model under plain SGD with clipping by global
  norm, per element, and none.
- `synthetic`: the long-range tasks (adding, copy, temporal order, timer),
  generated on the fly from a key.
- `long_range`: the task runner: any cell on any synthetic task, vmapped
  sweeps (`sweep`) of seeds, learning rates and init scales.
- `study`: the 2018 course project's hyperparameter study (optimizer, window,
  depth), rerun as ordinary `lstm_jax.train` runs.
- `common`: CLI flags, config loading, result files, figures.
"""
