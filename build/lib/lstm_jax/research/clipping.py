"""Exploding gradients and clipping: a vanilla RNN char model trained with
plain SGD, with gradient clipping by global norm, per element, and none.

    python -m lstm_jax.research.clipping --config configs/ablations/clipping.py --workdir DIR
    # on tiny-shakespeare instead of the D&D spells:
    #   --config.data.corpus=text --config.data.path=/work/shared/data/tinyshakespeare.txt

The setting is min-char-rnn's (Karpathy 2015): a one-layer tanh RNN with 100
units on one-hot characters, sequences of 25 steps, the loss summed over the 25
steps (averaged over the batch), learning rate 0.1. min-char-rnn clips every
gradient element to [-5, 5] (`np.clip(dparam, -5, 5)`); Pascanu, Mikolov &
Bengio (2013, Algorithm 1) rescale the whole gradient when its norm exceeds a
threshold (`optax.clip_by_global_norm`); the third run does neither. The seeds
saw the loss "oscillating violently" at lr 0.1 with plain SGD.

Runs are (mode, learning rate, seed) triples. The runs of one seed start from
the same weights and see the same batches (random windows, their start
positions drawn up front from a seeded NumPy generator); seeds change both.
All runs are one program, vmapped over the runs, whose step loop is a
`lax.scan` over the batches. Whether a run blows up is chaotic in the data
order, hence several seeds; the summary counts the seeds with loss spikes. Recorded per step:
the loss (nats per character), the raw gradient's global norm, the norm of the
update actually applied, and the largest gradient element.

Outputs: `curves.csv` (per step and run), `runs.csv` (per run),
`summary.csv` (per mode and lr, over seeds), `results.json`, `clipping.png`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lstm_jax.model import LanguageModel, LMConfig
from lstm_jax.research import common

Array = jax.Array

# Gradient treatments compared, by name; each maps (grads, config) -> grads.
CLIP_MODES = ("none", "global_norm", "value")

# Used only if the data package is unavailable (tests must not need the network).
_FALLBACK_TEXT = (
    "Acid Arrow\nLevel 2 evocation\nA shimmering green arrow streaks toward a target "
    "within range and bursts in a spray of acid. Make a ranged spell attack against the "
    "target. On a hit, the target takes 4d4 Acid damage and 2d4 Acid damage at the end "
    "of its next turn. On a miss, the arrow splashes the target with acid for half as "
    "much of the initial damage only.\n"
) * 40


def check_modes(modes: Any) -> tuple[str, ...]:
    modes = tuple(modes)
    bad = [m for m in modes if m not in CLIP_MODES]
    if bad or not modes:
        raise ValueError(f"unknown clipping mode(s) {bad}; valid: {list(CLIP_MODES)}")
    return modes


def load_tokens(data: ml_collections.ConfigDict) -> tuple[np.ndarray, int, str]:
    """Corpus -> char ids int32 [N], vocabulary size, a description.

    Uses `lstm_jax.data` (corpora + char tokenizer) when importable; a short
    built-in text otherwise."""
    try:
        from lstm_jax.data.corpora import load_corpus
        from lstm_jax.data.tokenizers import build_tokenizer
    except ImportError:  # pragma: no cover - the data package is part of the project
        text = _FALLBACK_TEXT
        vocab = sorted(set(text))
        ids = {c: i for i, c in enumerate(vocab)}
        return np.asarray([ids[c] for c in text], np.int32), len(vocab), "built-in text"
    corpus = load_corpus(data.corpus, data.path)
    text = corpus.text[: data.max_chars] if data.max_chars else corpus.text
    tok = build_tokenizer("char", text)
    return tok.encode(text), tok.vocab_size, f"{corpus.name}: {len(text)} chars"


def clip_grads(mode: str, grads: Any, clip_norm: float, clip_value: float) -> Any:
    """Applies one gradient treatment (optax's stateless transforms)."""
    if mode == "none":
        return grads
    if mode == "global_norm":  # Pascanu et al. 2013, Algorithm 1
        tx = optax.clip_by_global_norm(clip_norm)
    elif mode == "value":  # per element, min-char-rnn's np.clip(dparam, -5, 5)
        tx = optax.clip(clip_value)
    else:
        raise ValueError(f"unknown clipping mode {mode!r}; valid: {list(CLIP_MODES)}")
    return tx.update(grads, tx.init(grads))[0]


def window_starts(seed: int, num_tokens: int, shape: tuple[int, ...], seq_len: int) -> np.ndarray:
    """Random window start positions, int32 of `shape` (e.g. [steps, B]).

    Drawn on the host with NumPy (seeded, deterministic), so no random number
    generator is compiled into the training program."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_tokens - seq_len - 1, size=shape, dtype=np.int64).astype(np.int32)


def gather_windows(tokens: Array, starts: Array, seq_len: int) -> Array:
    """Windows of seq_len + 1 tokens at `starts` [B]: [B, T+1]."""
    return jax.vmap(lambda s: jax.lax.dynamic_slice(tokens, (s,), (seq_len + 1,)))(starts)


def make_loss(model: LanguageModel, sum_over_time: bool):
    """Cross-entropy of next-char prediction: returns (objective, nats per char)."""

    def loss_fn(params, windows):  # windows [B, T+1]
        inputs, targets = windows[:, :-1], windows[:, 1:]
        logits, _ = model.apply(params, inputs, model.init_carry(windows.shape[0]))
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
        per_char = jnp.mean(nll)
        objective = jnp.mean(jnp.sum(nll, axis=1)) if sum_over_time else per_char
        return objective, per_char

    return loss_fn


def run_names(
    modes: tuple[str, ...], learning_rates: tuple[float, ...], num_seeds: int
) -> list[tuple[str, float, int]]:
    """The (mode, learning rate, seed index) runs trained, in order."""
    return [(m, float(lr), k) for lr in learning_rates for k in range(num_seeds) for m in modes]


def train_all(
    model: LanguageModel,
    params: dict[str, Any],
    tokens: Array,
    starts: Array,
    config: ml_collections.ConfigDict,
    runs: list[tuple[str, float, int]],
) -> tuple[dict[str, Any], dict[str, Array]]:
    """Trains every (mode, lr, seed) run, vmapped over the runs.

    `params` and `starts` (window starts [S, steps, B]) are stacked over seeds:
    the runs of one seed share the initial weights and the batches. Returns
    (final params stacked over runs, metrics {name: [R, steps]})."""
    t = config.train
    loss_fn = make_loss(model, t.sum_over_time)
    modes = sorted({m for m, _, _ in runs}, key=CLIP_MODES.index)
    branches = [
        functools.partial(clip_grads, m, clip_norm=t.clip_norm, clip_value=t.clip_value)
        for m in modes
    ]

    def one_run(mode_index, learning_rate, params, starts):
        opt = optax.sgd(learning_rate)

        def step(state, starts_k):
            params, opt_state = state
            windows = gather_windows(tokens, starts_k, t.seq_len)  # [B, T+1]
            (_, per_char), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, windows)
            clipped = jax.lax.switch(mode_index, branches, grads)
            updates, opt_state = opt.update(clipped, opt_state, params)
            metrics = {
                "loss": per_char,
                "grad_norm": optax.tree.norm(grads),
                "update_norm": optax.tree.norm(updates),
                "grad_max_abs": _max_abs(grads),
                "update_max_abs": _max_abs(updates),
            }
            return (optax.apply_updates(params, updates), opt_state), metrics

        (params, _), metrics = jax.lax.scan(step, (params, opt.init(params)), starts)
        return params, metrics

    mode_index = jnp.asarray([modes.index(m) for m, _, _ in runs])
    lrs = jnp.asarray([lr for _, lr, _ in runs], jnp.float32)
    seed = np.asarray([k for _, _, k in runs])
    run_params = jax.tree.map(lambda a: a[seed], params)  # [R, ...]
    return jax.jit(jax.vmap(one_run))(mode_index, lrs, run_params, starts[seed])


def _max_abs(tree: Any) -> Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)]))


def evaluate(
    model: LanguageModel, params: dict[str, Any], tokens: Array, starts: Array, seq_len: int
) -> Array:
    """Mean nats/char over held-out windows (starts [E, B]), per run."""
    loss_fn = make_loss(model, sum_over_time=False)
    windows = jax.vmap(lambda s: gather_windows(tokens, s, seq_len))(starts)  # [E, B, T+1]

    def per_run(p):
        return jnp.mean(jax.vmap(lambda w: loss_fn(p, w)[1])(windows))

    return jax.jit(jax.vmap(per_run))(params)


def summarize(metrics: dict[str, np.ndarray], t: ml_collections.ConfigDict) -> dict[str, Any]:
    """Numbers for one run (arrays [steps])."""
    loss, gn = metrics["loss"], metrics["grad_norm"]
    steps = len(loss)
    tail = max(1, steps // 10)
    second_half = loss[steps // 2 :]
    finite = np.isfinite(loss)
    # a "spike": the loss jumps by more than 0.5 nats/char above the mean of the
    # previous 20 steps (a visible oscillation, far above batch noise)
    window = 20
    prev = np.convolve(np.nan_to_num(loss), np.ones(window) / window, mode="full")[:steps]
    spikes = int(np.sum(loss[window:] > prev[window - 1 : steps - 1] + 0.5))
    return {
        "final_loss": float(np.mean(loss[-tail:])),
        "min_loss": float(np.nanmin(loss)) if finite.any() else float("nan"),
        "loss_diff_std_2nd_half": float(np.std(np.diff(second_half))),
        "loss_spikes": spikes,
        "grad_norm_median": float(np.nanmedian(gn)),
        "grad_norm_p99": float(np.nanpercentile(gn, 99)),
        "grad_norm_max": float(np.nanmax(gn)),
        "update_norm_max": float(np.nanmax(metrics["update_norm"])),
        "update_max_abs": float(np.nanmax(metrics["update_max_abs"])),
        "frac_steps_norm_above_clip": float(np.mean(gn > t.clip_norm)),
        "frac_steps_element_above_clip": float(np.mean(metrics["grad_max_abs"] > t.clip_value)),
        "diverged": bool(not finite.all()),
    }


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, lr) over its seeds: the table of the README."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["learning_rate"]), []).append(r)
    rows = []
    for (mode, lr), rs in groups.items():

        def col(k: str, rs: list[dict[str, Any]] = rs) -> np.ndarray:
            return np.asarray([r[k] for r in rs], np.float64)

        rows.append(
            {
                "mode": mode,
                "learning_rate": lr,
                "seeds": len(rs),
                "final_loss_median": float(np.median(col("final_loss"))),
                "final_loss_max": float(np.max(col("final_loss"))),
                "val_loss_median": float(np.median(col("val_loss"))),
                "seeds_with_spikes": int(np.sum(col("loss_spikes") > 0)),
                "loss_spikes_total": int(np.sum(col("loss_spikes"))),
                "grad_norm_median": float(np.median(col("grad_norm_median"))),
                "grad_norm_max": float(np.max(col("grad_norm_max"))),
                "update_norm_max": float(np.max(col("update_norm_max"))),
                "frac_steps_norm_above_clip": float(np.mean(col("frac_steps_norm_above_clip"))),
                "frac_steps_element_above_clip": float(
                    np.mean(col("frac_steps_element_above_clip"))
                ),
                "diverged": int(np.sum(col("diverged"))),
            }
        )
    return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains every (mode, lr, seed) run; writes curves, tables and figure."""
    watch = common.Stopwatch()
    modes = check_modes(config.modes)
    out = common.prepare_workdir(workdir, config)
    tokens, vocab, description = load_tokens(config.data)
    n_val = int(len(tokens) * config.data.val_fraction)
    train_tokens = jnp.asarray(tokens[: len(tokens) - n_val])
    val_tokens = jnp.asarray(tokens[len(tokens) - n_val :])
    m = config.model
    model = LanguageModel(
        LMConfig(
            vocab_size=vocab,
            embed_dim=0,  # one-hot characters, as min-char-rnn
            hidden_size=m.hidden_size,
            num_layers=1,
            cell=m.cell,
            kernel_init=m.kernel_init,
            recurrent_init=m.recurrent_init,
            init_scale=m.init_scale,
        )
    )
    t = config.train
    seed_keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    params = jax.jit(jax.vmap(model.init))(seed_keys)  # [S, ...]
    runs = run_names(modes, tuple(t.learning_rates), config.num_seeds)
    starts = np.stack(
        [
            window_starts(
                config.seed + 1000 * k, len(train_tokens), (t.num_steps, t.batch_size), t.seq_len
            )
            for k in range(config.num_seeds)
        ]
    )  # [S, steps, B]
    final, metrics = train_all(model, params, train_tokens, jnp.asarray(starts), config, runs)
    metrics = {k: np.asarray(v, np.float64) for k, v in metrics.items()}  # [R, steps]
    val_starts = window_starts(
        config.seed + 1, len(val_tokens), (config.eval_batches, t.batch_size), t.seq_len
    )
    val = np.asarray(evaluate(model, final, val_tokens, jnp.asarray(val_starts), t.seq_len))

    results: dict[str, Any] = {"data": description, "vocab_size": vocab, "runs": []}
    for i, (mode, lr, seed) in enumerate(runs):
        s = summarize({k: v[i] for k, v in metrics.items()}, config.train)
        s["val_loss"] = float(val[i])
        results["runs"].append({"mode": mode, "learning_rate": lr, "seed": seed, **s})
    results["summary"] = aggregate(results["runs"])
    common.write_csv(out / "runs.csv", results["runs"])
    common.write_csv(out / "summary.csv", results["summary"])
    common.write_csv(
        out / "curves.csv",
        [
            {
                "mode": mode,
                "learning_rate": lr,
                "seed": seed,
                "step": k,
                **{name: v[i, k] for name, v in metrics.items()},
            }
            for i, (mode, lr, seed) in enumerate(runs)
            for k in range(config.train.num_steps)
        ],
    )
    plot(metrics, runs, config, out / "clipping.png")
    results["seconds"] = watch.elapsed()
    common.write_json(out / "results.json", results)
    return results


def plot(metrics, runs, config, path) -> None:
    """Per learning rate: gradient norm (log, top) and loss (bottom), one line per mode."""
    plt = common.pyplot()
    lrs = sorted({lr for _, lr, _ in runs})
    fig, axes = plt.subplots(
        2, len(lrs), figsize=(4.2 * len(lrs) + 1, 6), squeeze=False, layout="constrained"
    )
    steps = np.arange(config.train.num_steps)
    colors = {"none": "tab:blue", "global_norm": "tab:orange", "value": "tab:green"}
    for i, (mode, lr, seed) in enumerate(runs):
        if seed != 0:  # one seed per panel keeps the curves readable; tables cover all
            continue
        col = lrs.index(lr)
        kw = {"lw": 0.6, "alpha": 0.8, "label": mode, "color": colors[mode]}
        axes[0][col].semilogy(steps, metrics["grad_norm"][i], **kw)
        axes[1][col].semilogy(steps, metrics["loss"][i], **kw)
    for col, lr in enumerate(lrs):
        axes[0][col].axhline(config.train.clip_norm, color="gray", ls=":", lw=0.8)
        axes[0][col].set_title(
            f"SGD lr {lr:g}: raw gradient norm (dotted: {config.train.clip_norm:g})", fontsize=9
        )
        axes[1][col].set_title(f"SGD lr {lr:g}: training loss (log)", fontsize=9)
        axes[1][col].set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    axes[1][0].set_ylabel("nats / char")
    fig.suptitle(
        f"{config.model.cell}, hidden {config.model.hidden_size}, plain SGD (seed 0)", fontsize=10
    )
    common.save_figure(fig, path, dpi=70)  # noisy curves: keep the PNG small


if __name__ == "__main__":
    common.cli(run, "Gradient clipping")
