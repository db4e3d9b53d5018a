"""The LSTM memory cell, step by step: write 4.2, keep it N steps, read, clear.

    python -m lstm_jax.research.memory_cell --config configs/ablations/memory_cell.py --workdir DIR

One LSTM unit (H = 1) with hand-set weights and no recurrent weights
(`w_h = 0`), so each gate is a switch driven by a control input. The input at
step t is `x_t = [v_t, write_t, read_t, clear_t]` and, with a gate gain K,

    i_t = sigmoid(K (2 write_t - 1))    open only on "write"
    f_t = sigmoid(K (1 - 2 clear_t))    closed only on "clear"
    o_t = sigmoid(K (2 read_t - 1))     open only on "read"
    c_t = f_t c_{t-1} + i_t g_t,  h_t = o_t * c_t   (g_t = v_t)

Program: step 0 writes v = 4.2 (write = 1), steps 1..N keep (all controls 0),
step N+1 reads (read = 1; the read value is h_{N+1}), step N+2 clears.
The gradient of the read value w.r.t. the written input is

    d h_{N+1} / d v_0 = i_0 * prod_{t=1..N+1} f_t * o_{N+1} = sigmoid(K)^(N+3),

the constant error carousel of Hochreiter & Schmidhuber (1997): the cell is
additive, so its Jacobian is the forget gate itself, not `W^T diag(g')`. With
K = 15, sigmoid(K) = 1 - 3.1e-7 and the gradient is 0.99997 at N = 100 and
0.9997 at N = 1000.

Which LSTM. The unit uses the core's LSTM gates (`lstm_jax.cells.LSTM`, fused
(i, f, g, o) kernels, run by `lstm_jax.recurrent.run_layer`) with the two
squashing functions made the identity (`CarouselLSTM`), as in the CommonLounge
walk-through and the linear carousel of the 1997 paper, so the cell can hold
4.2 exactly. The same weights in the core cell (`g = tanh(.)`,
`h = o tanh(c)`) are reported too (`lstm_tanh_grad`): there the written value
is squashed to tanh(4.2) and the read is tanh'd, which multiplies the gradient
by constants independent of N; the N-dependence, prod f_t, is identical.

The vanilla RNN unit (the core's `rnn_tanh`, H = 1) gets the same program:
`h_t = tanh(w h_{t-1} + u v_t)` with `u = rnn_input_scale` (value kept in tanh's
near-linear range) and recurrent weights `rnn_weights`. It has no gates, so
keeping means iterating `h <- tanh(w h)`, and
`d h_{N+1} / d v_0 = u tanh'(.) prod_t w tanh'(w h_{t-1})`: w < 1 decays like
w^N, w = 1 (the edge of Pascanu's condition) decays polynomially, w > 1 settles
on a fixed point with w tanh' < 1 and decays exponentially again.

Computed in float64 by default (`float64`), so that the RNN's decayed
gradients (1e-47 at N = 1000 for w = 0.9) do not underflow to 0.

Outputs: `memory_cell.csv` (table over N), `curve.csv` (dense N), `trace.csv`
(step-by-step gates and state for a short N), `results.json`, `memory_cell.png`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lstm_jax import recurrent
from lstm_jax.cells import LSTM, LSTM_GATES, LSTMCarry, Params, make_cell
from lstm_jax.research import common

Array = jax.Array

INPUTS = ("value", "write", "read", "clear")  # columns of x_t
PHASES = ("write", "keep", "read", "clear", "idle")


@dataclasses.dataclass(frozen=True)
class CarouselLSTM(LSTM):
    """The core LSTM's gates with identity cell input and output squashing:
    `c = f c_prev + i z_g`, `h = o c` (the linear constant error carousel)."""

    def recur(self, params: Params, carry: LSTMCarry, x_proj: Array) -> tuple[LSTMCarry, Array]:
        z = x_proj + carry.h @ params["w_h"]  # [B, 4]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * g
        h = jax.nn.sigmoid(o) * c
        return LSTMCarry(h, c), h


def memory_params(gain: float) -> Params:
    """Hand-set weights of the one-unit LSTM: each gate is a switch on one
    control input (see the module docstring); `w_h = 0`. Float32 arrays."""
    k = gain
    col = {g: LSTM_GATES.index(g) for g in LSTM_GATES}  # gate -> fused column (H = 1)
    row = {n: INPUTS.index(n) for n in INPUTS}
    w_x = np.zeros((len(INPUTS), 4), np.float32)
    b = np.zeros((4,), np.float32)
    w_x[row["write"], col["input"]], b[col["input"]] = 2 * k, -k
    w_x[row["clear"], col["forget"]], b[col["forget"]] = -2 * k, k
    w_x[row["value"], col["cell"]] = 1.0
    w_x[row["read"], col["output"]], b[col["output"]] = 2 * k, -k
    return {"w_x": jnp.asarray(w_x), "w_h": jnp.zeros((1, 4)), "b": jnp.asarray(b)}


def rnn_params(weight: float, input_scale: float) -> Params:
    """The vanilla tanh unit: h = tanh(weight * h_prev + input_scale * v)."""
    w_x = np.zeros((len(INPUTS), 1), np.float32)
    w_x[INPUTS.index("value"), 0] = input_scale
    return {"w_x": jnp.asarray(w_x), "w_h": jnp.full((1, 1), weight), "b": jnp.zeros((1,))}


def programs(ns: np.ndarray, value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Input sequences for keep-lengths `ns`, one row each, padded with idle
    steps to a common length T = max(ns) + 3.

    Returns inputs [B, T, 4], read step [B] (= N + 1), phase ids [B, T]."""
    t_len = int(np.max(ns)) + 3
    x = np.zeros((len(ns), t_len, len(INPUTS)), np.float32)
    phase = np.full((len(ns), t_len), PHASES.index("idle"), np.int32)
    for r, n in enumerate(ns):
        x[r, 0, INPUTS.index("value")] = value
        x[r, 0, INPUTS.index("write")] = 1.0
        x[r, n + 1, INPUTS.index("read")] = 1.0
        x[r, n + 2, INPUTS.index("clear")] = 1.0
        phase[r, 0] = PHASES.index("write")
        phase[r, 1 : n + 1] = PHASES.index("keep")
        phase[r, n + 1] = PHASES.index("read")
        phase[r, n + 2] = PHASES.index("clear")
    return x, np.asarray(ns) + 1, phase


def read_and_grad(cell: Any, params: Params, inputs: Array, read_at: Array) -> dict[str, Array]:
    """Read values h_{N+1}, d read / d v_0 and the state after the clear step,
    for every row (one scan through `recurrent.run_layer`, one backward pass).

    inputs [B, T, 4]; read_at [B] (int)."""
    rows = jnp.arange(inputs.shape[0])

    def reads(x):
        carry = cell.zero_carry(x.shape[0], 1, x.dtype)
        _, hs = recurrent.run_layer(cell, params, x, carry, impl="scan")  # [B, T, 1]
        return hs[rows, read_at, 0], hs  # [B]

    (read, hs), vjp = jax.vjp(reads, inputs)
    (dx,) = vjp((jnp.ones_like(read), jnp.zeros_like(hs)))  # rows are independent
    return {"read": read, "grad": dx[:, 0, INPUTS.index("value")], "hs": hs[..., 0]}


def trace(cell: Any, params: Params, inputs: Array) -> dict[str, np.ndarray]:
    """Gates and state at every step of one short program (inputs [T, 4])."""
    x_proj = cell.project(params, inputs)  # [T, 4]; w_h = 0, so the gates are these
    z_i, z_f, z_g, z_o = (x_proj[:, k] for k in range(4))

    def step(carry, x):
        carry, _ = cell.step(params, carry, x[None])
        return carry, carry

    _, carries = jax.lax.scan(step, cell.zero_carry(1, 1, inputs.dtype), inputs)
    return {
        "i": np.asarray(jax.nn.sigmoid(z_i)),
        "f": np.asarray(jax.nn.sigmoid(z_f)),
        "g": np.asarray(z_g),
        "o": np.asarray(jax.nn.sigmoid(z_o)),
        "c": np.asarray(carries.c[:, 0, 0]),
        "h": np.asarray(carries.h[:, 0, 0]),
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Table, dense curve, trace and figure; see the module docstring."""
    watch = common.Stopwatch()
    out = common.prepare_workdir(workdir, config)
    table_ns = np.asarray(sorted(config.table_ns), np.int64)
    curve_ns = np.unique(
        np.round(np.geomspace(1, config.curve_max_n, config.curve_points)).astype(np.int64)
    )
    ns = np.unique(np.concatenate([table_ns, curve_ns]))
    x, read_at, _ = programs(ns, config.value)
    with common.precision(config.float64):
        cast = common.to_float64 if config.float64 else (lambda t: t)
        x, read_at = cast(jnp.asarray(x)), jnp.asarray(read_at)
        fn = jax.jit(read_and_grad, static_argnums=0)
        lstm_p = cast(memory_params(config.gate_gain))
        units = {"lstm": fn(CarouselLSTM(), lstm_p, x, read_at)}
        units["lstm_tanh"] = fn(make_cell("lstm"), lstm_p, x, read_at)
        rnn = make_cell("rnn_tanh")
        for w in config.rnn_weights:
            p = cast(rnn_params(w, config.rnn_input_scale))
            units[f"rnn_w{w:g}"] = fn(rnn, p, x, read_at)
        units = {k: jax.tree.map(np.asarray, v) for k, v in units.items()}
        # the cell content after the clear step (c is not a layer output: trace it)
        cleared = {}
        for n in table_ns:
            xs, _, _ = programs(np.asarray([n]), config.value)
            tr = trace(CarouselLSTM(), lstm_p, cast(jnp.asarray(xs[0])))
            cleared[int(n)] = float(tr["c"][n + 2])
        n_tr = config.trace_n
        xs, _, phase = programs(np.asarray([n_tr]), config.value)
        tr = trace(CarouselLSTM(), lstm_p, cast(jnp.asarray(xs[0])))

    idx = {int(n): k for k, n in enumerate(ns)}
    rows = []
    for n in table_ns:
        k = idx[int(n)]
        row = {
            "N": int(n),
            "lstm_read": units["lstm"]["read"][k],
            "lstm_grad": units["lstm"]["grad"][k],
            "lstm_cell_after_clear": cleared[int(n)],
            "lstm_tanh_read": units["lstm_tanh"]["read"][k],
            "lstm_tanh_grad": units["lstm_tanh"]["grad"][k],
        }
        for w in config.rnn_weights:
            u = units[f"rnn_w{w:g}"]
            row[f"rnn_w{w:g}_read"] = u["read"][k]
            row[f"rnn_w{w:g}_grad"] = u["grad"][k]
        rows.append({key: (float(v) if not isinstance(v, int) else v) for key, v in row.items()})
    common.write_csv(out / "memory_cell.csv", rows)
    common.write_csv(
        out / "curve.csv",
        [
            {"N": int(n), **{f"{name}_grad": float(u["grad"][k]) for name, u in units.items()}}
            for k, n in enumerate(ns)
        ],
    )

    # step-by-step trace of a short program
    trace_rows = [
        {
            "t": t,
            "phase": PHASES[phase[0, t]],
            **{name: float(xs[0, t, j]) for j, name in enumerate(INPUTS)},
            **{key: float(tr[key][t]) for key in ("i", "f", "g", "o", "c", "h")},
        }
        for t in range(xs.shape[1])
    ]
    common.write_csv(out / "trace.csv", trace_rows)

    lstm_grad = units["lstm"]["grad"]
    results = {
        "table": rows,
        "lstm_grad_min": float(lstm_grad.min()),
        "lstm_grad_max_deviation": float(np.max(np.abs(lstm_grad - 1.0))),
        "trace": trace_rows,
    }
    plot(ns, units, trace_rows, config, out / "memory_cell.png")
    results["seconds"] = watch.elapsed()
    common.write_json(out / "results.json", results)
    return results


def plot(ns, units, trace_rows, config, path) -> None:
    """Left: d read / d write vs N (log-log). Right: the step-by-step trace."""
    plt = common.pyplot()
    fig = plt.figure(figsize=(11, 4.2), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.6))
    ax = fig.add_subplot(grid[:, 0])
    ax_g = fig.add_subplot(grid[0, 1])
    ax_s = fig.add_subplot(grid[1, 1], sharex=ax_g)
    labels = {
        "lstm": "LSTM unit (linear carousel)",
        "lstm_tanh": "same weights, core LSTM (tanh)",
    }
    for name, u in units.items():
        g = np.abs(u["grad"])
        ok = g > 0
        label = labels.get(name, f"tanh RNN, w = {name.removeprefix('rnn_w')}")
        ls = "-" if name.startswith("lstm") else "--"
        ax.loglog(ns[ok], g[ok], ls, marker=".", ms=3, label=label)
    ax.set_xlabel("N (steps the value is kept)")
    ax.set_ylabel("|d read / d written input|")
    ax.set_title(f"write {config.value:g}, keep N steps, read", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)

    t = np.asarray([r["t"] for r in trace_rows])
    for key, color in (("i", "tab:green"), ("f", "tab:purple"), ("o", "tab:red")):
        ax_g.step(t, [r[key] for r in trace_rows], where="mid", color=color, label=f"gate {key}")
    ax_g.set_ylim(-0.1, 1.35)
    ax_g.set_ylabel("gates")
    ax_g.legend(fontsize=7, ncol=3, loc=(0.12, 0.35))
    ax_g.set_title(f"LSTM unit step by step (N = {config.trace_n})", fontsize=9)
    for r in trace_rows:
        if r["phase"] not in ("keep", "idle"):
            ax_g.annotate(r["phase"], (r["t"], 1.15), ha="center", fontsize=8)
    ax_s.plot(t, [r["c"] for r in trace_rows], "-o", color="tab:blue", ms=4, label="cell c_t")
    ax_s.plot(t, [r["h"] for r in trace_rows], "-s", color="tab:orange", ms=4, label="output h_t")
    ax_s.set_ylim(-0.3, 1.15 * config.value)
    ax_s.set_xlabel("step t")
    ax_s.legend(fontsize=7, loc="center left")
    common.save_figure(fig, path)


if __name__ == "__main__":
    common.cli(run, "LSTM memory cell")
