"""The training config schema: every field, its default and what it means.

Config files in `configs/` start from `base_config()` and change what their
experiment needs, so the set of keys is defined here once. `validate` checks
names and values before any compute; an unknown key (a typo such as
`--config.train.num_step=...`) is refused by ml_collections itself because
`base_config()` returns a locked ConfigDict.
"""

from __future__ import annotations

import difflib
import pathlib

import ml_collections
from ml_collections import config_dict

from lstm_jax import cells, host, optim

TOKENIZERS = ("char", "word")
BATCHING_MODES = ("streams", "windows")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # PRNG seed: init, dropout, shuffling (step keys via fold_in)

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "text"  # a name in lstm_jax.data.corpora.CORPORA
    c.data.path = config_dict.placeholder(str)  # file/glob/dir for text, ptb, tiny_shakespeare
    # A corpus given as split files (corpus "text", without data.path); a directory
    # holding WikiText's or PTB's names as data.path does the same.
    c.data.train_path = config_dict.placeholder(str)
    c.data.valid_path = config_dict.placeholder(str)
    c.data.test_path = config_dict.placeholder(str)
    # Tokenize a file corpus once into a memory-mapped id file, reused by every
    # later run and resume (lstm_jax/data/token_cache.py; docs/data.md).
    c.data.cache = True
    c.data.cache_dir = config_dict.placeholder(str)  # default: $LSTM_JAX_DATA_DIR/token_cache
    c.data.encoding_errors = "strict"  # "replace" to accept non-UTF-8 bytes
    c.data.tokenizer = "char"  # "char" or "word"
    c.data.lowercase = True  # word tokenizer: lowercase words
    c.data.min_count = 1  # word tokenizer: rarer words become <unk>
    c.data.max_vocab = 0  # word tokenizer: keep the most frequent N words (0 = all)
    c.data.word_split = "regex"  # word tokenizer: "regex" (punctuation apart) | "whitespace"
    c.data.val_fraction = 0.05  # split by fraction when the corpus has no own splits
    c.data.test_fraction = 0.0  # (char-rnn: 0.95 / 0.05 / 0)
    c.data.batching = "streams"  # "streams" (TBPTT, carry passed on) | "windows" (shuffled)

    c.model = ml_collections.ConfigDict()
    c.model.cell = "lstm"  # a name in lstm_jax.cells.CELLS
    c.model.hidden_size = 128  # units per layer
    c.model.num_layers = 2  # stacked recurrent layers
    c.model.embed_dim = 0  # token embedding size; 0 = one-hot inputs (char-rnn)
    # readout = embedding^T (Press & Wolf 2017; Inan et al. 2017); when embed_dim !=
    # hidden_size, through a learned [hidden, embed] projection; needs embed_dim > 0
    c.model.tie_embeddings = False
    c.model.dropout = 0.0  # non-recurrent dropout (Zaremba et al. 2014)
    # AWD-LSTM's regularizers (Merity, Keskar & Socher 2017; docs/regularization.md),
    # 0 = off. The three locked dropouts are variational dropout (Gal & Ghahramani
    # 2016): one mask per row, the same at every step. They stack with
    # `dropout` above: with both set, both masks apply (AWD uses only the locked ones).
    c.model.dropout_input = 0.0  # locked dropout on the embedded inputs (AWD dropouti)
    c.model.dropout_hidden = 0.0  # locked dropout between layers (AWD dropouth)
    c.model.dropout_output = 0.0  # locked dropout on the last layer's outputs (AWD dropout)
    # Embedding dropout (Gal & Ghahramani 2016; AWD dropoute): drop whole words, i.e.
    # rows of the embedding table, one mask per batch; needs embed_dim > 0
    c.model.dropout_embedding = 0.0
    # DropConnect (Wan et al. 2013) on each recurrent kernel w_h, one mask per batch
    # (AWD's WeightDrop, wdrop)
    c.model.weight_drop = 0.0
    c.model.forget_bias = 1.0  # LSTM b_f at init (char-rnn/Keras 1; Flax 0)
    c.model.input_bias = 0.0  # LSTM b_i at init (< 0 closes the input gate, HS97)
    c.model.kernel_init = "uniform"  # input kernels (lstm_jax.initializers)
    c.model.recurrent_init = "uniform"  # recurrent kernels
    c.model.init_scale = 0.08  # uniform bound / normal std (char-rnn 0.08)
    # the layer: "auto" (the fastest exact one here, lstm_jax.layers.resolve_impl: for an
    # fp32 LSTM cuDNN on a CUDA GPU, oneDNN on a CPU, else "fused"), or a name in
    # lstm_jax.layers.LAYER_IMPLS ("fused", "scan" the reference, ...)
    c.model.impl = "auto"
    c.model.unroll = 1  # lax.scan unroll factor
    # Matmul precision of the forward and backward: "default" (the backend's
    # fastest: full fp32 on CPU, TF32 on NVIDIA GPUs, bf16 passes on TPUs),
    # "high" (TF32 / 3-pass bf16) or "highest" (full fp32 everywhere).
    c.model.matmul_precision = "default"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 50  # B parallel streams
    c.train.seq_len = 50  # T steps per window (truncated BPTT length)
    c.train.num_steps = 1000  # total optimizer steps
    c.train.log_every = 10  # steps between metrics.jsonl lines
    c.train.evaluate = True  # score the validation split (False: no val loss, no best ckpt)
    c.train.eval_every = 200  # steps between validations (0 = only at the end)
    # steps between checkpoints; every evaluation and the last step save one too
    # (0 = only those), so the best checkpoint by val loss is always on disk
    c.train.checkpoint_every = 200
    c.train.keep_checkpoints = 2  # latest checkpoints kept, >= 1 (plus the best by val loss)
    c.train.restore_fallback = False  # a damaged newest checkpoint: resume from the newest good one
    # cap validation batches (0 = the whole split: tokens / (B x T) batches, each about a
    # third of a train step; docs/data.md)
    c.train.max_eval_batches = 0
    c.train.sample_length = 0  # tokens sampled at each evaluation (0 = off)
    c.train.sample_prime = ""  # prime text for those samples ("" = record start)
    c.train.progress = True  # show a progress bar
    # Seconds without progress (no step, evaluation batch or save finished) before
    # the CLI dumps every thread's stack and exits 4 (lstm_jax/watchdog.py); long
    # enough for a first compile on a slow machine, short against a SLURM job. 0 = off
    c.train.watchdog_s = 600.0
    # After SIGTERM/SIGINT: seconds without progress before the CLI exits 128 + N
    # unsaved (a step stuck in a collective never reaches the save); SLURM's
    # --signal=TERM@120 leaves 120 s before its SIGKILL
    c.train.watchdog_grace_s = 60.0
    # XLA:CPU's matmul library for the train/eval steps: "default" (XLA's choice)
    # or "onednn" (faster at some sizes; docs/performance.md, lstm_jax/host.py).
    c.train.cpu_dots = "default"
    # Activation regularization of the last layer (AWD-LSTM sec. 4.6; Merity et al.
    # 2017): loss += alpha * mean(dropped h_t ** 2) + beta * mean((h_t - h_{t-1}) ** 2),
    # on the optimised loss only (train_loss logs the cross-entropy); 0 = off
    c.train.activation_reg = 0.0  # AR's alpha (AWD: 2)
    c.train.temporal_activation_reg = 0.0  # TAR's beta, on the undropped outputs (AWD: 1)
    c.train.profile_start_step = 0  # > 0: jax.profiler trace from this step into WORKDIR/tb
    c.train.profile_num_steps = 5  # steps in that trace (TensorBoard's profile plugin)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # a name in lstm_jax.optim.OPTIMIZERS
    c.optim.learning_rate = 2e-3  # peak / initial learning rate
    c.optim.clip_mode = "global_norm"  # "global_norm" | "element" | "none"
    c.optim.clip_value = 5.0  # norm bound or per-element bound
    c.optim.schedule = "constant"  # a name in lstm_jax.optim.SCHEDULES
    c.optim.decay_rate = 0.5  # step/exponential/plateau factor
    c.optim.decay_after_epochs = 10  # step/exponential: first decayed epoch
    c.optim.warmup_steps = 100  # warmup_cosine: linear warmup
    c.optim.decay_steps = 1000  # warmup_cosine: total length
    c.optim.end_fraction = 0.1  # warmup_cosine: final lr / peak lr
    c.optim.plateau_patience = 2  # reduce_on_plateau: epochs without improvement
    c.optim.momentum = 0.0  # sgd / rmsprop momentum
    c.optim.nesterov = False  # sgd Nesterov momentum
    c.optim.decay = 0.95  # rmsprop squared-gradient decay (char-rnn 0.95)
    # rmsprop: where the squared-gradient average starts (optax's initial_scale;
    # 0 as char-rnn, PyTorch and Keras; Arjovsky et al. 2016's code: 1e-3)
    c.optim.initial_scale = 0.0
    c.optim.b1 = 0.9  # adam beta1
    c.optim.b2 = 0.999  # adam beta2
    c.optim.eps = 1e-8  # optimizer epsilon
    # rmsprop: divide by sqrt(v) + eps (False: char-rnn, PyTorch, Keras, TF) or by
    # sqrt(v + eps) (True: optax's default). With eps 1e-8 inside, the step of a
    # weight whose gradients are rarely non-zero (a rare character's column) is
    # capped near lr * g / 1e-4 instead of reaching lr * sign(g).
    c.optim.eps_in_sqrt = False
    c.optim.weight_decay = 1e-4  # adamw decoupled weight decay
    # nt_asgd: start averaging once the val loss is worse than the best of those
    # more than this many evaluations old (Merity et al. 2017's n; AWD: 5)
    c.optim.nt_asgd_interval = 5

    c.parallel = ml_collections.ConfigDict()  # data parallelism (lstm_jax/parallel.py)
    c.parallel.per_device_batch_size = 0  # > 0: global batch = this x devices (sets batch_size)
    c.parallel.shard_optimizer_state = False  # split optimizer moments over devices (ZeRO-1)
    # CPU only: expose the host as this many devices (0 = JAX's default, one), so the
    # batch splits over cores; each core runs its own rows' recurrence. Pays off for
    # small models, not for big readouts (docs/performance.md).
    c.parallel.cpu_devices = 0

    c.lock()
    return c


def _check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, path=""):
    for key in config:
        if key not in reference:
            near = difflib.get_close_matches(key, list(reference), n=1)
            hint = f"; did you mean {path}{near[0]!r}?" if near else ""
            raise KeyError(f"unknown config key {path}{key!r}{hint}")
        if isinstance(config[key], ml_collections.ConfigDict):
            _check_keys(config[key], reference[key], f"{path}{key}.")


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with every field `base_config()` has: a config written before a
    field existed (an older workdir's config.json) gets that field's default, so
    the rest of the code reads every field directly. The one place defaults are
    filled in."""
    full = base_config()
    _fill(full, config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)
    return full


def _fill(target: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
        if key not in target:
            continue  # validate() reports unknown keys
        if isinstance(value, dict):
            _fill(target[key], value)
        else:
            target[key] = value


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuse unknown keys and bad values before any compute."""
    _check_keys(config, base_config())
    m, t, d = config.model, config.train, config.data
    if m.cell not in cells.CELLS:
        raise ValueError(f"unknown cell {m.cell!r}; valid cells: {sorted(cells.CELLS)}")
    if d.tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {d.tokenizer!r}; valid: {list(TOKENIZERS)}")
    if d.batching not in BATCHING_MODES:
        raise ValueError(f"unknown batching {d.batching!r}; valid: {list(BATCHING_MODES)}")
    positive = {
        "model.num_layers": m.num_layers,
        "model.hidden_size": m.hidden_size,
        "train.batch_size": t.batch_size,
        "train.seq_len": t.seq_len,
        "train.num_steps": t.num_steps,
        "train.log_every": t.log_every,
        "train.keep_checkpoints": t.keep_checkpoints,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= d.val_fraction < 1 or not 0 <= d.test_fraction < 1:
        raise ValueError("data.val_fraction and data.test_fraction must be in [0, 1)")
    full = complete(config)
    cpu_devices = full.parallel.cpu_devices
    if cpu_devices < 0:
        raise ValueError(
            f"parallel.cpu_devices must be >= 0 (0 = JAX's default), got {cpu_devices}"
        )
    for name in ("activation_reg", "temporal_activation_reg"):
        if not full.train[name] >= 0:
            raise ValueError(f"train.{name} must be >= 0 (0 = off), got {full.train[name]}")
    counts = (
        "eval_every",  # 0 = only at the end
        "checkpoint_every",  # 0 = at evaluations and the end
        "max_eval_batches",  # 0 = the whole split
        "sample_length",  # 0 = no samples
        "profile_start_step",  # 0 = no trace
        "profile_num_steps",
        "watchdog_s",  # 0 = off
    )
    for name in counts:
        if full.train[name] < 0:
            raise ValueError(f"train.{name} must be >= 0, got {full.train[name]}")
    if not full.train.watchdog_grace_s > 0:
        raise ValueError(f"train.watchdog_grace_s must be > 0, got {full.train.watchdog_grace_s}")
    cpu_dots = full.train.cpu_dots
    if cpu_dots not in host.CPU_DOT_LIBRARIES:
        raise ValueError(
            f"unknown train.cpu_dots {cpu_dots!r}; valid: {sorted(host.CPU_DOT_LIBRARIES)}"
        )
    optim.validate(full.optim)
    if full.optim.name == "nt_asgd" and not full.train.evaluate:
        raise ValueError(
            "optim.name='nt_asgd' starts averaging from the validation losses; "
            "it needs train.evaluate=True"
        )


def load(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> `get_config(arg)`, as `--config` loads it
    (for tests, scripts and notebooks)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_config_{pathlib.Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
