"""Gradient flow through time: how fast `dL_T/dh_k` vanishes, per cell.

    python -m lstm_jax.research.gradient_flow \\
        --config configs/ablations/gradient_flow.py --workdir workdirs/gradient_flow

The quantity. A one-layer recurrent net reads a sequence `x_1..x_T` and a
linear head reads `h_T`; the loss `L_T` is the squared error of that readout on
the adding problem (Le, Jaitly & Hinton 2015). For every k = 0..T we measure
the norm of the *total* derivative `dL_T/dh_k`: the gradient that reaches the
hidden state of step k through the recurrence, i.e. the quantity whose
vanishing Bengio, Simard & Frasconi (1994), Hochreiter (1991) and Pascanu,
Mikolov & Bengio (2013, eq. 3-5) analyse:

    dL_T/dh_k = dL_T/dh_T * prod_{t=k+1..T} dh_t/dh_{t-1},
    vanilla RNN: dh_t/dh_{t-1} = diag(g'(a_t)) W_h^T   (a product of Jacobians).

How it is measured, in one backward pass. The cell is wrapped so that a zero
perturbation `eps_k` is added to its state right after step k
(`h_k <- h_k + eps_k`, and `c_k <- c_k + eps^c_k` for the LSTM); the wrapped
cell runs through the ordinary `lstm_jax.recurrent.run_layer` scan. Then
`dL_T/deps_k = dL_T/dh_k` exactly (the perturbation enters everything that
h_k enters: the next step and, at k = T, the head), and the gradient w.r.t.
the initial carry gives k = 0. The perturbation rides in extra input columns,
so it is part of the hoisted input projection and the scan body stays the
cell's own `recur`.

For the LSTM the state is (h, c). We report `dL_T/dh_k` (c_k held fixed, the
same quantity as for the other cells) as the headline, and `dL_T/dc_k` (h_k
held fixed: the gradient through the constant error carousel of Hochreiter &
Schmidhuber 1997) as a second curve.

Averaging: each example b has its own loss, so the gradient of the summed loss
w.r.t. example b's state is example b's gradient. We take the L2 norm over the
H units, then the mean over the batch and over `num_seeds` independent
initialisations (trained side by side on the same stream of batches; the probe
batch is shared by every cell and seed). Curves are normalised by `||dL_T/dh_T||`, the
value at distance 0, so cells with different head scales compare (the LSTM's
`dL_T/dc_k` curve too; it is 0 at distance 0, since the loss reads h_T only).

Precision: the probe runs in float64 by default (`probe.float64`), because a
vanishing gradient passes float32's smallest normal number (1e-38) within about
a hundred steps and would then read as exactly 0; the trained weights are cast.

Reported per cell and phase (at init / after training on the adding problem):
- `decay_log10_per_step`: least-squares slope of log10(norm) vs distance T-k
  (over the points above `fit_floor`, i.e. before float32 underflow);
  `factor_per_step = 10**slope`.
- `distance_below_1e-6`: the first distance at which the norm falls below 1e-6
  of its value at T (None: never within T steps). For the LSTM's c-curve
  (`c_*` fields) the reference is its value at distance 1.
- vanilla RNNs: Pascanu's quantity `sigma_max(W_h) * gamma` with gamma the
  bound on |g'| (1 for tanh and relu). `< 1` is their sufficient condition for
  vanishing gradients (sec. 3.1); `> 1` is necessary for exploding ones.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lstm_jax import recurrent
from lstm_jax.cells import LSTM, Cell, LSTMCarry, Params
from lstm_jax.model import SeqConfig, SequenceModel
from lstm_jax.research import common
from lstm_jax.research.synthetic import make_task

Array = jax.Array

# The cells compared, by the name used in configs, tables and figures.
# Everything not listed (init scheme, scale) is the cell's default from
# lstm_jax.cells (char-rnn's uniform(-0.08, 0.08); IRNN: identity + N(0, 1e-3)),
# unless the config overrides it.
VARIANTS: dict[str, dict[str, Any]] = {
    "rnn_tanh": {"cell": "rnn_tanh"},
    "rnn_relu": {"cell": "rnn_relu"},
    "irnn": {"cell": "irnn"},
    "gru": {"cell": "gru"},
    "lstm_fb0": {"cell": "lstm", "forget_bias": 0.0},
    "lstm_fb1": {"cell": "lstm", "forget_bias": 1.0},
}

# |g'| <= gamma for the vanilla RNN activations (Pascanu et al. 2013, sec. 3.1:
# gamma = 1 for tanh, 1/4 for the logistic sigmoid; relu's derivative is 0 or 1).
ACTIVATION_GAMMA = {"tanh": 1.0, "relu": 1.0}

VANISH_THRESHOLD = 1e-6  # "falls below 1e-6 of its value at T"


def check_variants(names: Any) -> tuple[str, ...]:
    names = tuple(names)
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise ValueError(f"unknown cell variant(s) {bad}; valid: {sorted(VARIANTS)}")
    return names


# ---------------------------------------------------------------------------
# The probed cell: a zero perturbation added to the state after every step
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PerturbedCell:
    """Wraps a cell so that extra input columns are added to its carry.

    The layer input is `[x_t, eps_t]` with `eps_t [B, P]` (P = H, or 2H for the
    LSTM's (h, c)). `project` passes `eps` through next to the cell's input
    projection; `recur` runs the cell's step, then adds `eps_t` to the new
    carry. With `eps = 0` the forward pass is the plain cell's.
    """

    cell: Cell
    in_dim: int  # D, the real input features; the rest of the columns are eps

    def project(self, params: Params, x: Array) -> Array:
        # x: [..., D + P] -> [..., G*H + P]
        d = self.in_dim
        return jnp.concatenate([self.cell.project(params, x[..., :d]), x[..., d:]], axis=-1)

    def recur(self, params: Params, carry: Any, x_proj: Array) -> tuple[Any, Array]:
        gh = params["w_h"].shape[1]  # G*H
        carry, _ = self.cell.recur(params, carry, x_proj[..., :gh])
        eps = x_proj[..., gh:]
        carry = add_to_carry(carry, eps)
        return carry, self.cell.output(carry)

    def zero_carry(self, batch: int, hidden: int, dtype: Any = jnp.float32) -> Any:
        return self.cell.zero_carry(batch, hidden, dtype)

    def output(self, carry: Any) -> Array:
        return self.cell.output(carry)


def add_to_carry(carry: Any, eps: Array) -> Any:
    """carry + eps; for an LSTMCarry eps is [.., 2H] = (eps_h, eps_c)."""
    if isinstance(carry, LSTMCarry):
        e_h, e_c = jnp.split(eps, 2, axis=-1)
        return LSTMCarry(carry.h + e_h, carry.c + e_c)
    return carry + eps


def state_gradient_norms(
    model: SequenceModel, params: dict[str, Any], inputs: Array, targets: Array
) -> tuple[Array, Array | None]:
    """Per-example norms of `dL_T/dh_k` (and `dL_T/dc_k` for the LSTM).

    Args:
      model: a one-layer SequenceModel (output_mode "last").
      params: its parameters.
      inputs: [B, T, D].
      targets: [B, O]; `L_T = sum_b ||head(h_T^b) - target^b||^2`.

    Returns:
      norms_h [T+1, B] for k = 0..T, and norms_c [T+1, B] (LSTM) or None.
    """
    cell = model.cell
    batch, seq_len, in_dim = inputs.shape
    hidden = model.config.hidden_size
    is_lstm = isinstance(cell, LSTM)
    p = 2 * hidden if is_lstm else hidden
    probed = PerturbedCell(cell, in_dim)
    layer = params["layers"][0]
    xs = jnp.swapaxes(inputs, 0, 1)  # [T, B, D]

    def loss(carry0, eps):  # eps [T, B, P]
        _, hs = recurrent.run_layer(
            probed, layer, jnp.concatenate([xs, eps], -1), carry0, time_major=True, impl="scan"
        )
        y = hs[-1] @ params["head"]["w"] + params["head"]["b"]  # [B, O]
        return jnp.sum(jnp.square(y - targets))

    carry0 = cell.zero_carry(batch, hidden, inputs.dtype)
    eps = jnp.zeros((seq_len, batch, p), inputs.dtype)
    g0, g_eps = jax.grad(loss, argnums=(0, 1))(carry0, eps)
    if is_lstm:
        gh = jnp.concatenate([g0.h[None], g_eps[..., :hidden]], 0)  # [T+1, B, H]
        gc = jnp.concatenate([g0.c[None], g_eps[..., hidden:]], 0)
        return scaled_norm(gh), scaled_norm(gc)
    g = jnp.concatenate([g0[None], g_eps], 0)  # [T+1, B, H]
    return scaled_norm(g), None


def scaled_norm(x: Array) -> Array:
    """L2 norm over the last axis, computed as `m * ||x / m||` with m = max|x|,
    so that it does not underflow when the squares of tiny entries would
    (entries below ~1e-154 in float64, ~1e-19 in float32)."""
    m = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    safe = jnp.where(m > 0, m, 1.0)
    return (m * jnp.linalg.norm(x / safe, axis=-1, keepdims=True))[..., 0]


# ---------------------------------------------------------------------------
# The task: the adding problem (Le, Jaitly & Hinton 2015)
# ---------------------------------------------------------------------------


def adding_sampler(seq_len: int):
    """`sample(key, batch) -> (inputs [B, T, 2], targets [B, 1])` for the adding
    problem of Le et al. 2015 (`synthetic.AddingLe`): values U[0,1], two markers
    (one per half), target the sum of the two marked values."""
    task = make_task("adding_le", seq_len=seq_len)

    def sample(key: Array, batch: int) -> tuple[Array, Array]:
        b = task.sample(key, batch)
        return b.inputs, b.targets

    return sample


def make_model(config: ml_collections.ConfigDict, variant: str) -> SequenceModel:
    v = VARIANTS[variant]
    m = config.model
    return SequenceModel(
        SeqConfig(
            input_dim=2,
            output_dim=1,
            hidden_size=m.hidden_size,
            num_layers=1,
            cell=v["cell"],
            forget_bias=v.get("forget_bias", 0.0),
            kernel_init=m.kernel_init,
            recurrent_init=m.recurrent_init,
            init_scale=m.init_scale,
            impl="scan",  # the reference layer: float64, vmapped over seeds
        )
    )


def adding_batches(
    key: Array, seq_len: int, batch_size: int, num_batches: int
) -> tuple[Array, Array]:
    """`num_batches` adding-problem batches in one jitted call:
    inputs [N, B, T, 2], targets [N, B, 1]; batch i comes from fold_in(key, i).

    Drawing them outside the training step keeps the (slow to compile) random
    number generation out of the step's program."""
    return _batch_fn(seq_len, batch_size, num_batches)(key)


@functools.lru_cache(maxsize=8)
def _batch_fn(seq_len: int, batch_size: int, num_batches: int):
    sample = adding_sampler(seq_len)
    return jax.jit(
        lambda key: jax.vmap(lambda i: sample(jax.random.fold_in(key, i), batch_size))(
            jnp.arange(num_batches)
        )
    )


def train_seeds(
    model: SequenceModel,
    params: dict[str, Any],
    data: tuple[Array, Array],
    config: ml_collections.ConfigDict,
) -> tuple[dict[str, Any], Array]:
    """Trains one model per seed: the seeds' initialisations (params stacked
    on axis 0) are trained side by side (vmapped) on the same batches `data`
    (from `adding_batches`), the step loop a `lax.scan`. Adam with global-norm
    clipping. Returns (trained params, losses [S, steps])."""
    t = config.train
    tx = optax.chain(optax.clip_by_global_norm(t.clip_norm), optax.adam(t.learning_rate))

    def loss_fn(p, inputs, targets):
        out, _ = model.apply(p, inputs)  # [B, 1]
        return jnp.mean(jnp.square(out - targets))

    def one_seed(p, data):
        def step(state, batch):
            p, opt = state
            loss, g = jax.value_and_grad(loss_fn)(p, *batch)
            upd, opt = tx.update(g, opt, p)
            return (optax.apply_updates(p, upd), opt), loss

        (p, _), losses = jax.lax.scan(step, (p, tx.init(p)), data)
        return p, losses

    return jax.jit(jax.vmap(one_seed, in_axes=(0, None)))(params, data)


def run_probe(probe, params, inputs, targets, float64: bool) -> tuple[Array, Array | None]:
    """Runs the jitted probe, in float64 if asked: a vanishing gradient falls
    below float32's smallest normal number (1e-38) within ~100 steps for a tanh
    RNN, while float64 resolves the decay down to 1e-308."""
    if not float64:
        return probe(params, inputs, targets)
    with jax.enable_x64(True):
        cast = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
        return probe(jax.tree.map(cast, params), cast(inputs), cast(targets))


def pascanu_quantity(cell: Cell, w_h: Array) -> float | None:
    """sigma_max(W_h) * gamma for a vanilla RNN, None for gated cells."""
    act = getattr(cell, "activation", None)
    if act is None:
        return None
    return (
        float(np.linalg.svd(np.asarray(w_h, np.float64), compute_uv=False)[0])
        * (ACTIVATION_GAMMA[act])
    )


def curve_summary(norms: np.ndarray, fit_floor: float, start: int = 0) -> dict[str, Any]:
    """Summary of one mean-norm curve indexed by distance d = T-k.

    The curve is taken from distance `start` on and measured relative to its
    value there (`start = 0`: relative to dL/dh_T; the LSTM's dL/dc curve
    starts at 1 because the loss reads h_T, so dL_T/dc_T = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_full = norms / norms[start]
    d = np.arange(len(norms))[start:]
    rel = rel_full[start:]
    slope, used = common.fit_log10_slope(d, rel, fit_floor)
    below = common.first_below(d, rel, VANISH_THRESHOLD)
    return {
        "decay_log10_per_step": slope,
        "factor_per_step": float(10.0**slope) if np.isfinite(slope) else float("nan"),
        "fit_points": used,
        "distance_below_1e-6": None if below is None else int(below),
        "rel_at_100": float(rel_full[100]) if len(rel_full) > 100 else None,
        "rel_at_end": float(rel_full[-1]),
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Measures gradient flow for every configured cell; writes
    `gradient_flow.csv` (curves), `summary.csv`, `results.json`,
    `train_loss.csv` and `gradient_flow.png` into `workdir`."""
    watch = common.Stopwatch()
    variants = check_variants(config.variants)
    out = common.prepare_workdir(workdir, config)
    base_key = jax.random.key(config.seed)
    seed_keys = jax.random.split(jax.random.fold_in(base_key, 0), config.num_seeds)
    probe_key = jax.random.fold_in(base_key, 1)
    train_key = jax.random.fold_in(base_key, 2)
    probe_inputs, probe_targets = (
        a[0] for a in adding_batches(probe_key, config.probe.seq_len, config.probe.batch_size, 1)
    )  # [B, T, 2], [B, 1] shared by every cell and seed
    t = config.train
    train_data = (
        adding_batches(train_key, t.seq_len, t.batch_size, t.num_steps) if t.num_steps else None
    )  # [steps, B, T, 2], [steps, B, 1]: the same stream for every cell and seed

    phases = ("init", "trained") if config.train.num_steps > 0 else ("init",)
    curves: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    summary_rows, loss_rows = [], []
    results: dict[str, Any] = {"cells": {}}
    for variant in variants:
        model = make_model(config, variant)
        params = jax.jit(jax.vmap(model.init))(seed_keys)  # stacked over seeds
        probe = jax.jit(
            jax.vmap(
                functools.partial(state_gradient_norms, model),
                in_axes=(0, None, None),
            )
        )
        per_phase = {"init": params}
        if "trained" in phases:
            trained, losses = train_seeds(model, params, train_data, config)
            per_phase["trained"] = trained
            losses = np.asarray(losses)  # [S, steps]
            every = max(1, config.train.num_steps // 100)
            for i in range(0, config.train.num_steps, every):
                loss_rows.append({"cell": variant, "step": i, "loss": float(losses[:, i].mean())})
            tail = max(1, config.train.num_steps // 10)
            final_loss = float(np.mean(losses[:, -tail:]))
        results["cells"][variant] = {}
        for phase in phases:
            p = per_phase[phase]
            nh, nc = run_probe(probe, p, probe_inputs, probe_targets, config.probe.float64)
            # mean over seeds and batch; reversed so index = distance T-k
            mean_h = np.asarray(nh).mean(axis=(0, 2))[::-1]
            mean_c = None if nc is None else np.asarray(nc).mean(axis=(0, 2))[::-1]
            curves[(variant, phase)] = {"h": mean_h, "c": mean_c}
            s = curve_summary(mean_h, config.fit_floor)
            if mean_c is not None:
                sc = curve_summary(mean_c, config.fit_floor, start=1)
                s["c_decay_log10_per_step"] = sc["decay_log10_per_step"]
                s["c_distance_below_1e-6"] = sc["distance_below_1e-6"]
                s["c_rel_at_100"] = sc["rel_at_100"]
            w_h = np.asarray(p["layers"][0]["w_h"])  # [S, H, G*H]
            pq = [pascanu_quantity(model.cell, w) for w in w_h]
            if pq[0] is not None:
                s["pascanu_sigma_gamma"] = float(np.mean(pq))
                s["pascanu_sigma_gamma_max"] = float(np.max(pq))
                s["pascanu_vanishing_condition"] = bool(np.max(pq) < 1.0)
            if phase == "trained":
                s["train_loss_final"] = final_loss
            s["nan"] = bool(not np.isfinite(mean_h).all())
            results["cells"][variant][phase] = s
            summary_rows.append({"cell": variant, "phase": phase, **s})

    _write_curves(out, curves, variants, phases)
    common.write_csv(out / "summary.csv", _uniform_rows(summary_rows))
    if loss_rows:
        common.write_csv(out / "train_loss.csv", loss_rows)
    plot(
        curves, variants, phases, out / "gradient_flow.png", config.probe.seq_len, config.plot_ylim
    )
    results["probe_seq_len"] = config.probe.seq_len
    results["adding_baseline_mse"] = 1.0 / 6.0  # predict 1.0 always: Var(U1 + U2)
    results["seconds"] = watch.elapsed()
    common.write_json(out / "results.json", results)
    return results


def _uniform_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return [{k: r.get(k) for k in keys} for r in rows]


def _write_curves(out, curves, variants, phases) -> None:
    rows = []
    for phase in phases:
        for v in variants:
            c = curves[(v, phase)]
            h, cc = c["h"], c["c"]
            for d in range(len(h)):
                rows.append(
                    {
                        "phase": phase,
                        "cell": v,
                        "distance": d,
                        "norm_h": float(h[d]),
                        "rel_h": float(h[d] / h[0]),
                        "norm_c": None if cc is None else float(cc[d]),
                        "rel_c": None if cc is None else float(cc[d] / h[0]),
                    }
                )
    common.write_csv(out / "gradient_flow.csv", rows)


def plot(curves, variants, phases, path, seq_len: int, ylim: tuple[float, float]) -> None:
    """Log-scale relative gradient norm vs distance, one panel per phase.

    `ylim` frames the interesting range; curves that leave it (a tanh RNN
    reaches 1e-300 within 1000 steps) are complete in gradient_flow.csv."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(phases), figsize=(5.2 * len(phases), 3.8), squeeze=False)
    colors = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, phase in zip(axes[0], phases, strict=True):
        for v in variants:
            c = curves[(v, phase)]
            d = np.arange(len(c["h"]))
            rel = c["h"] / c["h"][0]
            ok = rel > 0
            ax.semilogy(d[ok], rel[ok], label=f"{v}  dL/dh", color=colors[v], lw=1.4)
            if c["c"] is not None:
                relc = c["c"] / c["h"][0]
                okc = relc > 0
                ax.semilogy(d[okc], relc[okc], ls="--", color=colors[v], lw=1, alpha=0.8)
        ax.axhline(VANISH_THRESHOLD, color="gray", lw=0.8, ls=":")
        ax.set_xlim(0, seq_len)
        ax.set_ylim(*ylim)
        ax.set_xlabel("distance T - k (steps)")
        ax.set_title(f"{phase}: ||dL_T/dh_k|| / ||dL_T/dh_T||  (dashed: dL/dc_k)", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("relative gradient norm")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    common.save_figure(fig, path)


if __name__ == "__main__":
    common.cli(run, "Gradient flow")
