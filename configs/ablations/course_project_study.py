"""The course project's hyperparameter study on the D&D spells (lstm_jax.research.study).

    python -m lstm_jax.research.study --config configs/ablations/course_project_study.py \\
        --workdir DIR
    # the test's tiny variant (2x32 model of configs/dnd.py:smoke, a few steps):
    #   --config configs/ablations/course_project_study.py:smoke

Each axis changes one setting of the base config (configs/dnd.py: word level,
3x512 LSTM, 15-word windows, RMSProp 1e-3); every run sees `train_tokens` words.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r}; valid: '' (full), 'smoke'")
    c = ml_collections.ConfigDict()
    c.base = "configs/dnd.py"  # the training config every variant starts from (path[:arg])
    c.seed = 0  # the runs' seed (init, dropout, batches): the same for every variant
    # optimizer axis, NAME:LR (names in lstm_jax.optim.OPTIMIZERS); plain SGD has no momentum
    c.optimizers = ("sgd:0.1", "sgd:0.01", "sgd:0.001", "sgd:0.0005", "rmsprop:0.001", "adam:0.001")
    c.seq_lens = (3, 5, 15)  # window axis: words per training window (TBPTT length)
    c.num_layers = (2, 3)  # depth axis: layers of 512
    # None = the base config's batching ("streams": TBPTT, the carry crosses windows, so
    # the window is the BPTT length); "windows" = independent shuffled windows whose
    # context is the window itself, as in the course project's Keras model
    c.batching = config_dict.placeholder(str)
    # training words per run (= steps x batch 32 x window): 200 steps at window 15,
    # ~2 epochs of the ~46k training words; a CPU budget, far from convergence
    c.train_tokens = 96_000
    c.evals_per_run = 2  # validations (whole split) per run, the last at the end
    c.log_points = 40  # training-loss points per run in metrics.jsonl
    c.keep_checkpoints = False  # delete each run's orbax checkpoints when it is done
    c.progress = True  # print one line per run

    if arg == "smoke":
        c.base = "configs/dnd.py:smoke"  # 2x32 LSTM, batch 8, window 10
        c.optimizers = ("rmsprop:0.001",)  # one run: the baseline on every axis
        c.seq_lens = (10,)
        c.num_layers = (2,)
        c.train_tokens = 8 * 10 * 3  # 3 steps
        c.evals_per_run = 1
        c.log_points = 3
        c.progress = False
    c.lock()
    return c
