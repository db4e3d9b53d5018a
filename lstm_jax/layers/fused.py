"""Fast recurrent layers: a hand-written backward pass, rematerialisation and
bf16 compute. Every function here is a drop-in for
`lstm_jax.layers.scan.scan_layer_time_major` and is tested against it
(tests/test_fused.py).

Why a custom backward pass. Plain autodiff of the reference scan
differentiates one step at a time, so the recurrent weight gradient
`dW_h += h_{t-1}^T dz_t` becomes T small `[H, B] @ [B, G*H]` matmuls (and T
accumulations) inside the backward loop, plus a store of every intermediate
the step created. cuDNN's answer, copied here (`_layer`, one
`jax.custom_vjp` per layer):

    before the loop x_proj = xs @ W_x          one [T*B, D] @ [D, G*H] matmul
    forward loop    z_t = x_proj[t] + b + h_{t-1} @ W_h ; gates ; h_t, c_t
                    the gate activations overwrite x_proj[t] in place
    backward loop   only what is truly sequential: dz_t from (dh_t, dc_t) and
                    dh_{t-1} = dz_t @ W_h^T; dz_t overwrites the activations
    after the loop  dW_h = H_prev^T dZ, dW_x = X^T dZ   (one matmul each)
                    dX = dZ @ W_x^T, db = 1^T dZ

The loops are exact (the same math, sums associated differently), for every
cell in `lstm_jax.cells`, with reset masks and with gradients flowing into the
incoming carry; a cell they do not know runs through the reference scan (with
one warning). What was measured to matter on CPU (docs/performance.md):
the single dW matmuls (fewer, larger GEMMs), in-place reuse of the [T, B, G*H]
buffer (no zero-fill, no copy, less activation memory than autodiff of the
scan), and few ops per step (one elementwise formula for all four LSTM
gates). Things measured and dropped: a transposed (state-major) layout in the
loops, splitting the batch into independent loops, `unroll`, other XLA:CPU dot
libraries (Eigen/XNNPACK/oneDNN).

Options (keep the API small; all are keyword arguments of `fused_layer_time_major`,
and the registered names in `LAYER_IMPLS` fix common choices):

- `remat_chunk`: checkpoint the scan in chunks of K steps. The forward keeps
  only each chunk's incoming carry; the backward re-runs one chunk at a time.
  Activation memory drops from O(T) per-step residuals to O(T/K + K)
  (the layer's input and output, O(T) by nature, stay). "auto" = ceil(sqrt(T)).
- `compute_dtype`: e.g. jnp.bfloat16: matmul operands in that dtype, products
  accumulated in fp32, parameters, carries and gate math stay fp32.

Registered names (merged into the registry, `lstm_jax.layers.LAYER_IMPLS`):
  "fused"        fp32, custom VJP
  "fused_remat"  + checkpointed chunks of ceil(sqrt(T)) steps (long sequences)
  "fused_bf16"   + bf16 matmul operands (meant for GPUs, and CPUs with bf16
                 dot instructions; docs/performance.md has the measurements)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.cells import GRU, LSTM, LSTM_GATES, Cell, LSTMCarry, Params, SimpleRNN
from lstm_jax.layers.fallback import warn_fallback
from lstm_jax.layers.scan import scan_layer_time_major

Array = jax.Array
Carry = Any  # Array (GRU, RNN) or LSTMCarry(h, c)


# ---------------------------------------------------------------------------
# Helpers


def _matmul(a: Array, b: Array, compute_dtype: str | None) -> Array:
    """`a @ b` with operands cast to `compute_dtype` and an fp32 result."""
    if compute_dtype is None:
        return a @ b
    dt = jnp.dtype(compute_dtype)
    return jnp.matmul(a.astype(dt), b.astype(dt), preferred_element_type=jnp.float32)


def _mask(x: Array, reset_t: Array | None) -> Array:
    """Zero the rows (streams) that restart at this step: x [B, H], reset_t [B]."""
    if reset_t is None:
        return x
    return jnp.where(reset_t[:, None], jnp.zeros_like(x), x)


def _index(buf: Array, t: Array) -> Array:
    """buf[t] for a traced t: [T, ...] -> [...]."""
    return jax.lax.dynamic_index_in_dim(buf, t, axis=0, keepdims=False)


def _read(buf: Array, t: Array) -> Array:
    """buf[t] materialised before anything else in the step runs.

    A buffer that is read and then overwritten at the same index (`_store`)
    can only be updated in place if every read happens before the write;
    without the barrier XLA fuses the slice into several consumers, some
    scheduled after the write, and then copies the whole [T, ...] buffer
    on every step to keep the old values."""
    return jax.lax.optimization_barrier(_index(buf, t))


def _store(buf: Array, x: Array, t: Array) -> Array:
    """buf.at[t].set(x), in place when buf is a loop-carried buffer."""
    return jax.lax.dynamic_update_index_in_dim(buf, x.astype(buf.dtype), t, axis=0)


def _prev(first: Array, seq: Array, reset: Array | None) -> Array:
    """The state each step *read*: [first, seq[:-1]] after the reset mask.
    first [B, H], seq [T, B, H] -> [T, B, H]."""
    prev = jnp.concatenate([first[None], seq[:-1]], axis=0)
    if reset is None:
        return prev
    return jnp.where(reset[..., None], jnp.zeros_like(prev), prev)


def cell_kind(cell: Cell) -> str | None:
    """The static tag the custom VJP dispatches on; None = no fast path."""
    if isinstance(cell, LSTM):
        return "lstm"
    if isinstance(cell, GRU):
        return "gru"
    if isinstance(cell, SimpleRNN):
        return f"rnn_{cell.activation}"
    return None


# ---------------------------------------------------------------------------
# Per-cell forward / backward loops. Carries are tuples: (h, c) or (h,).
# `rec` holds the layer's parameters but w_x: {"w_h", "b"} (+ "b_hn" for the GRU).


def _gate_scale(hidden: int, dtype: Any) -> Array:
    """s = 1 on the sigmoid gates (i, f, o), 2 on the tanh candidate (g).

    All four LSTM gates then take one elementwise formula,
    act(z) = s * sigmoid(s * z) + 1 - s   (tanh(z) = 2 sigmoid(2z) - 1),
    whose derivative is (act + s - 1) * (1 - act): a(1-a) for a sigmoid and
    1 - g^2 for the tanh. One formula over [B, 4H] is one loop fusion per step
    instead of four slices with four fusions (per-step op count is what
    bounds small layers on CPU)."""
    s = jnp.ones((4, hidden), dtype).at[LSTM_GATES.index("cell")].set(2.0)
    return s.reshape(-1)


def _lstm_fwd(rec, x_proj, carry, reset, unroll, cdt):
    """x_proj [T, B, 4H] (bias not yet added) -> final (h, c), hs [T, B, H],
    residuals (hs, cs [T, B, H], acts [T, B, 4H]).

    The gate activations overwrite x_proj in place (step t reads x_proj[t],
    then stores (i, f, g, o) at the same index): no second [T, B, 4H] buffer
    to allocate, zero-fill and keep."""
    w_h = rec["w_h"] if cdt is None else rec["w_h"].astype(cdt)
    b = rec["b"]
    hidden = w_h.shape[0]
    s = _gate_scale(hidden, x_proj.dtype)

    def body(state, r):
        t, h, c, buf = state
        h, c = _mask(h, r), _mask(c, r)
        z = _read(buf, t) + b + _matmul(h, w_h, cdt)  # [B, 4H]
        a = s * jax.nn.sigmoid(s * z) + (1.0 - s)  # (i, f, g, o)
        i, f, g, o = jnp.split(a, 4, axis=-1)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (t + 1, h, c, _store(buf, a, t)), (h, c)

    h0, c0 = carry
    init = (jnp.int32(0), h0, c0, x_proj)
    (_, h, c, acts), (hs, cs) = jax.lax.scan(
        body, init, reset, length=x_proj.shape[0], unroll=unroll
    )
    return (h, c), hs, (hs, cs, acts)


def _lstm_bwd(rec, carry, reset, res, d_final, d_hs, unroll, cdt):
    """Reverse loop: dZ_t from (dh, dc), written over acts[t] in place."""
    hs, cs, acts = res  # [T, B, H], [T, B, H], [T, B, 4H]
    h0, c0 = carry
    w_ht = rec["w_h"].T  # [4H, H], transposed once, outside the loop
    w_ht = w_ht if cdt is None else w_ht.astype(cdt)
    s = _gate_scale(h0.shape[-1], acts.dtype)

    def body(state, inp):
        t, dh, dc, buf = state
        dh_out, c, r = inp
        a = _read(buf, t)  # [B, 4H]
        i, f, g, o = jnp.split(a, 4, axis=-1)
        cp = jnp.where(t > 0, _index(cs, jnp.maximum(t - 1, 0)), c0)  # c_{t-1}
        cp = _mask(cp, r)
        dh = dh + dh_out
        tc = jnp.tanh(c)
        dc = dc + dh * o * (1.0 - tc * tc)
        # d act / d (i, f, g, o) = (dc g, dc c_prev, dc i, dh tanh c)
        d_act = jnp.concatenate([dc, dc, dc, dh], -1) * jnp.concatenate([g, cp, i, tc], -1)
        dz = d_act * (a + s - 1.0) * (1.0 - a)  # [B, 4H]
        dh_prev = _mask(_matmul(dz, w_ht, cdt), r)
        dc_prev = _mask(dc * f, r)
        return (t - 1, dh_prev, dc_prev, _store(buf, dz, t)), None

    t_last = jnp.int32(acts.shape[0] - 1)
    (_, dh0, dc0, dzs), _ = jax.lax.scan(
        body, (t_last, *d_final, acts), (d_hs, cs, reset), reverse=True, unroll=unroll
    )
    h_prev = _prev(h0, hs, reset)  # [T, B, H]
    d_rec = {"w_h": _weight_grad(h_prev, dzs, cdt)}
    return d_rec, dzs, (dh0, dc0)


def _gru_fwd(rec, x_proj, carry, reset, unroll, cdt):
    """x_proj [T, B, 3H] -> final (h,), hs [T, B, H], residuals
    (hs, acts = (r, z, n) written over x_proj in place, hnb = W_hn h + b_hn)."""
    w_h = rec["w_h"] if cdt is None else rec["w_h"].astype(cdt)
    b, b_hn = rec["b"], rec["b_hn"]

    def body(state, r):
        t, h, buf = state
        h = _mask(h, r)
        xr, xz, xn = jnp.split(_read(buf, t) + b, 3, axis=-1)
        hr, hz, hn = jnp.split(_matmul(h, w_h, cdt), 3, axis=-1)
        rg = jax.nn.sigmoid(xr + hr)
        zg = jax.nn.sigmoid(xz + hz)
        hnb = hn + b_hn
        n = jnp.tanh(xn + rg * hnb)
        h = (1.0 - zg) * n + zg * h
        buf = _store(buf, jnp.concatenate([rg, zg, n], axis=-1), t)
        return (t + 1, h, buf), (h, hnb)

    init = (jnp.int32(0), carry[0], x_proj)
    (_, h, acts), (hs, hnbs) = jax.lax.scan(
        body, init, reset, length=x_proj.shape[0], unroll=unroll
    )
    return (h,), hs, (hs, acts, hnbs)


def _gru_bwd(rec, carry, reset, res, d_final, d_hs, unroll, cdt):
    """Reverse loop; d x_proj overwrites (r, z, n) in place."""
    hs, acts, hnbs = res  # [T, B, H], [T, B, 3H], [T, B, H]
    (h0,) = carry
    w_ht = rec["w_h"].T  # [3H, H]
    w_ht = w_ht if cdt is None else w_ht.astype(cdt)

    def body(state, inp):
        t, dh, buf = state
        dh_out, hnb, r = inp
        rg, zg, n = jnp.split(_read(buf, t), 3, axis=-1)
        hp = jnp.where(t > 0, _index(hs, jnp.maximum(t - 1, 0)), h0)  # h_{t-1}
        hp = _mask(hp, r)
        dh = dh + dh_out
        dn = dh * (1.0 - zg) * (1.0 - n * n)  # d pre-tanh of n
        dr = dn * hnb * rg * (1.0 - rg)  # d pre-sigmoid of r
        dzg = dh * (hp - n) * zg * (1.0 - zg)  # d pre-sigmoid of z
        dhn = dn * rg  # d (W_hn h + b_hn)
        dhp = jnp.concatenate([dr, dzg, dhn], axis=-1)  # d (h @ W_h) [B, 3H]
        dh_prev = _mask(dh * zg + _matmul(dhp, w_ht, cdt), r)
        buf = _store(buf, jnp.concatenate([dr, dzg, dn], axis=-1), t)  # d x_proj
        return (t - 1, dh_prev, buf), dhn

    t_last = jnp.int32(acts.shape[0] - 1)
    (_, dh0, dxs), dhns = jax.lax.scan(
        body, (t_last, *d_final, acts), (d_hs, hnbs, reset), reverse=True, unroll=unroll
    )
    h_prev = _prev(h0, hs, reset)
    dhp_all = jnp.concatenate([dxs[..., : -dhns.shape[-1]], dhns], axis=-1)
    d_rec = {"w_h": _weight_grad(h_prev, dhp_all, cdt), "b_hn": _sum_rows(dhns)}
    return d_rec, dxs, (dh0,)


def _rnn_fwd(activation, rec, x_proj, carry, reset, unroll, cdt):
    """x_proj [T, B, H] -> final (h,), hs [T, B, H] (written over x_proj in
    place); hs is the only residual."""
    w_h = rec["w_h"] if cdt is None else rec["w_h"].astype(cdt)
    b = rec["b"]
    act = jnp.tanh if activation == "tanh" else jax.nn.relu

    def body(state, r):
        t, h, buf = state
        h = act(_read(buf, t) + b + _matmul(_mask(h, r), w_h, cdt))
        return (t + 1, h, _store(buf, h, t)), None

    init = (jnp.int32(0), carry[0], x_proj)
    (_, h, hs), _ = jax.lax.scan(body, init, reset, length=x_proj.shape[0], unroll=unroll)
    return (h,), hs, (hs,)


def _rnn_bwd(activation, rec, carry, reset, res, d_final, d_hs, unroll, cdt):
    """Reverse loop; dz overwrites the incoming d_hs[t] in place."""
    (hs,) = res
    (h0,) = carry
    w_ht = rec["w_h"].T
    w_ht = w_ht if cdt is None else w_ht.astype(cdt)

    def body(state, inp):
        t, dh, buf = state
        h, r = inp
        dh = dh + _read(buf, t)
        # tanh' = 1 - h^2; relu' = [h > 0] (0 at the kink, as jax.nn.relu)
        dz = dh * (1.0 - h * h) if activation == "tanh" else jnp.where(h > 0, dh, 0.0)
        return (t - 1, _mask(_matmul(dz, w_ht, cdt), r), _store(buf, dz, t)), None

    t_last = jnp.int32(hs.shape[0] - 1)
    (_, dh0, dzs), _ = jax.lax.scan(
        body, (t_last, *d_final, d_hs), (hs, reset), reverse=True, unroll=unroll
    )
    d_rec = {"w_h": _weight_grad(_prev(h0, hs, reset), dzs, cdt)}
    return d_rec, dzs, (dh0,)


def _weight_grad(h_prev: Array, dz: Array, cdt: str | None) -> Array:
    """dW_h = sum_t h_{t-1}^T dz_t as ONE matmul: [H, T*B] @ [T*B, G*H]."""
    t, b, h = h_prev.shape
    return _matmul(h_prev.reshape(t * b, h).T, dz.reshape(t * b, -1), cdt)


def _sum_rows(x: Array) -> Array:
    """Sum over (T, B) as a matrix-vector product: [T, B, G] -> [G].

    A bias gradient as `jnp.sum` becomes a reduce-window on XLA:CPU when the
    dot library is not YNNPACK, ~20x slower than this GEMV."""
    rows = x.reshape(-1, x.shape[-1])
    return jnp.ones((rows.shape[0],), rows.dtype) @ rows


def _loops(kind: str) -> tuple[Callable, Callable]:
    if kind == "lstm":
        return _lstm_fwd, _lstm_bwd
    if kind == "gru":
        return _gru_fwd, _gru_bwd
    activation = kind.removeprefix("rnn_")
    return functools.partial(_rnn_fwd, activation), functools.partial(_rnn_bwd, activation)


# ---------------------------------------------------------------------------
# The custom VJP over one layer: input projection + recurrence.
#
# The projection sits inside (rather than being left to autodiff) so that its
# backward is written out too: dW_x = xs^T dZ as one matmul contracting the
# T*B axis of both operands in place (autodiff's version made XLA transpose
# dZ [T*B, G*H] first), and the bias is added inside the loop's elementwise
# fusion instead of in a separate pass over x_proj [T, B, G*H].


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _layer(
    kind: str, unroll: int, cdt: str | None, precision: str | None, params, xs, carry, reset
):
    """(params {w_x, w_h, b[, b_hn]}, xs [T, B, D], carry tuple, reset [T, B] | None)
    -> (final carry tuple, hs [T, B, H]).

    `precision`: the `jax.default_matmul_precision` the forward was traced
    under (None: JAX's default). The backward is traced later, outside any
    such context, so it re-enters this one: the forward and backward matmuls
    run at the same precision (the model's `matmul_precision`)."""
    (final, hs), _ = _layer_fwd(kind, unroll, cdt, precision, params, xs, carry, reset)
    return final, hs


def _layer_fwd(kind, unroll, cdt, precision, params, xs, carry, reset):
    x_proj = _matmul(xs, params["w_x"], cdt)  # [T, B, G*H], one matmul for all steps
    rec = {k: v for k, v in params.items() if k != "w_x"}
    final, hs, res = _loops(kind)[0](rec, x_proj, carry, reset, unroll, cdt)
    return (final, hs), (params, xs, carry, reset, res)


def _layer_bwd(kind, unroll, cdt, precision, saved, cotangents):
    with jax.default_matmul_precision(precision):
        return _layer_bwd_at_precision(kind, unroll, cdt, saved, cotangents)


def _layer_bwd_at_precision(kind, unroll, cdt, saved, cotangents):
    params, xs, carry, reset, res = saved
    d_final, d_hs = cotangents
    rec = {k: v for k, v in params.items() if k != "w_x"}
    d_rec, d_xp, d_carry = _loops(kind)[1](rec, carry, reset, res, d_final, d_hs, unroll, cdt)
    w_x = params["w_x"] if cdt is None else params["w_x"].astype(cdt)
    d_params = {
        **d_rec,
        "w_x": _weight_grad(xs, d_xp, cdt),  # [D, G*H]
        "b": _sum_rows(d_xp),
    }
    d_xs = jax.lax.dot_general(  # d_xp @ w_x^T without materialising the transpose
        d_xp.astype(w_x.dtype), w_x, (((2,), (1,)), ((), ())), preferred_element_type=xs.dtype
    )
    return d_params, d_xs, d_carry, None  # reset: boolean, no cotangent


_layer.defvjp(_layer_fwd, _layer_bwd)


# ---------------------------------------------------------------------------
# Public layer functions (the interface of layers.scan.scan_layer_time_major).


def _carry_to_tuple(cell: Cell, carry: Carry) -> tuple[Array, ...]:
    return (carry.h, carry.c) if isinstance(cell, LSTM) else (carry,)


def _tuple_to_carry(cell: Cell, carry: tuple[Array, ...]) -> Carry:
    return LSTMCarry(*carry) if isinstance(cell, LSTM) else carry[0]


def _fused_chunk(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Carry,
    reset: Array | None,
    unroll: int,
    compute_dtype: str | None,
) -> tuple[Carry, Array]:
    """Projection + custom-VJP recurrence over all of `xs` (no remat)."""
    kind = cell_kind(cell)
    if kind is None:  # an unknown cell: the reference scan is always right
        reason = f"no hand-written backward pass for the cell {type(cell).__name__}"
        warn_fallback("fused", "scan", reason)
        return scan_layer_time_major(cell, params, xs, carry, reset, unroll=unroll)
    params = {k: params[k] for k in ("w_x", "w_h", "b", "b_hn") if k in params}
    precision = jax.config.jax_default_matmul_precision  # the context this is traced in
    carry_in = _carry_to_tuple(cell, carry)
    final, hs = _layer(kind, unroll, compute_dtype, precision, params, xs, carry_in, reset)
    return _tuple_to_carry(cell, final), hs


def auto_chunk(num_steps: int) -> int:
    """ceil(sqrt(T)): balances T/K stored carries against K live steps."""
    return max(1, math.ceil(math.sqrt(num_steps)))


def fused_layer_time_major(
    cell: Cell,
    params: Params,
    xs: Array,  # [T, B, D]
    carry: Carry,
    reset: Array | None = None,  # [T, B] bool
    *,
    unroll: int = 1,
    remat_chunk: int | str | None = None,
    compute_dtype: Any = None,
) -> tuple[Carry, Array]:
    """Drop-in for `scan.scan_layer_time_major` with a hand-written VJP.

    remat_chunk: None (keep every step's activations), an int K, or "auto"
      (ceil(sqrt(T))). With K, the sequence runs as an outer scan over
      chunks of K steps, each under `jax.checkpoint`: the forward stores only
      the chunk boundaries' carries, the backward recomputes one chunk's
      projection and activations at a time (one extra forward pass, about
      +1/3 FLOPs). A tail of T mod K steps runs as one more chunk.
    compute_dtype: None (fp32) or a dtype such as jnp.bfloat16 for the matmul
      operands; accumulation, carries, gates and parameters stay fp32.
    """
    cdt = None if compute_dtype is None else jnp.dtype(compute_dtype).name
    if remat_chunk is None:
        return _fused_chunk(cell, params, xs, carry, reset, unroll, cdt)
    t = xs.shape[0]
    k = auto_chunk(t) if remat_chunk == "auto" else int(remat_chunk)
    if k < 1:
        raise ValueError(f"remat_chunk must be >= 1 or 'auto', got {remat_chunk!r}")
    n, tail = divmod(t, k)
    if n <= 1:  # one chunk: checkpointing would only add a recompute
        return _fused_chunk(cell, params, xs, carry, reset, unroll, cdt)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def chunk(params, carry, xs_c, reset_c):
        return _fused_chunk(cell, params, xs_c, carry, reset_c, unroll, cdt)

    def body(carry, inp):
        xs_c, reset_c = inp
        return chunk(params, carry, xs_c, reset_c)

    head = n * k
    xs_h = xs[:head].reshape(n, k, *xs.shape[1:])  # [n, K, B, D]
    reset_h = None if reset is None else reset[:head].reshape(n, k, *reset.shape[1:])
    carry, hs = jax.lax.scan(body, carry, (xs_h, reset_h))  # hs [n, K, B, H]
    hs = hs.reshape(head, *hs.shape[2:])
    if tail:
        reset_t = None if reset is None else reset[head:]
        carry, hs_t = chunk(params, carry, xs[head:], reset_t)
        hs = jnp.concatenate([hs, hs_t], axis=0)
    return carry, hs


# The names this module adds to the registry (lstm_jax.layers.LAYER_IMPLS); each
# has the layer interface f(cell, params, xs, carry, reset, *, unroll).
LAYER_IMPLS: dict[str, Callable[..., tuple[Carry, Array]]] = {
    "fused": fused_layer_time_major,
    "fused_remat": functools.partial(fused_layer_time_major, remat_chunk="auto"),
    "fused_bf16": functools.partial(fused_layer_time_major, compute_dtype=jnp.bfloat16),
}
