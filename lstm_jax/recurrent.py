"""The recurrent stack: layers, dropout between them, rows split over devices.

One layer over time is an implementation from the registry in
`lstm_jax.layers` (`impl="scan"`, the reference `lax.scan`, or a fast path);
this module converts the layout once at its public entry points
(`to_time_major` / `from_time_major`: [B, T, ...] <-> [T, B, ...]) and stacks
layers. Carries go in and come out, so truncated BPTT with carried state is
exact; `reset[b, t] = True` zeroes stream b's carry before step t.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lstm_jax.cells import Cell, Params
from lstm_jax.layers import AUTO, get_layer_impl, resolve_impl

Array = jax.Array
Carry = Any  # a cell's carry pytree: Array or LSTMCarry


def to_time_major(x: Array | None, time_major: bool) -> Array | None:
    """[B, T, ...] -> [T, B, ...] unless already time-major."""
    return x if (x is None or time_major) else jnp.swapaxes(x, 0, 1)


from_time_major = to_time_major  # the same swap, named for the way back


def run_layer(
    cell: Cell,
    params: Params,
    inputs: Array,
    carry: Carry,
    reset: Array | None = None,
    *,
    time_major: bool = False,
    unroll: int = 1,
    impl: str = AUTO,
) -> tuple[Carry, Array]:
    """One recurrent layer over `inputs` ([B, T, D], or [T, B, D] if
    `time_major`). Returns the final carry and the outputs in the input layout."""
    xs = to_time_major(inputs, time_major)
    impl = resolve_impl(impl, reset_mask=reset is not None, cell=cell, dtype=xs.dtype)
    carry, hs = get_layer_impl(impl)(
        cell, params, xs, carry, to_time_major(reset, time_major), unroll=unroll
    )
    return carry, from_time_major(hs, time_major)


def init_stack(
    key: Array, cell: Cell, in_dim: int, hidden: int, num_layers: int, dtype: Any = jnp.float32
) -> list[Params]:
    """Parameters of `num_layers` layers; layer 0 reads `in_dim`, the rest `hidden`."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    keys = jax.random.split(key, num_layers)
    return [cell.init(k, in_dim if i == 0 else hidden, hidden, dtype) for i, k in enumerate(keys)]


def zero_stack_carry(
    cell: Cell, num_layers: int, batch: int, hidden: int, dtype: Any = jnp.float32
) -> tuple[Carry, ...]:
    return tuple(cell.zero_carry(batch, hidden, dtype) for _ in range(num_layers))


def restart_rows(carries: Any, start: Array) -> Any:
    """`carries` with the rows where `start` [B] is True set to zero: those
    streams begin anew. The same as a `reset` mask that is True only at step 0,
    but applied before the layers, so that layers without mid-sequence resets
    (oneDNN's and cuDNN's fused LSTMs) still run."""
    return jax.tree.map(
        lambda x: jnp.where(start.reshape(-1, *([1] * (x.ndim - 1))), jnp.zeros_like(x), x),
        carries,
    )


def dropout_keep(rate: float, rng: Array | None, shape: tuple[int, ...]) -> Array | None:
    """The keep mask of inverted dropout (None: dropout is off, rate 0 or eval)."""
    if rate == 0.0 or rng is None:
        return None
    return jax.random.bernoulli(rng, 1.0 - rate, shape)


def apply_keep(x: Array, keep: Array | None, rate: float) -> Array:
    """Zero the dropped units and scale the kept ones by 1 / (1 - rate)."""
    if keep is None:
        return x
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
    """Inverted dropout; identity when `rate == 0` or `rng is None` (eval)."""
    return apply_keep(x, dropout_keep(rate, rng, x.shape), rate)


def _layer_rng(rng: Array | None, i: int) -> Array | None:
    """The dropout key of layer i's input."""
    return None if rng is None else jax.random.fold_in(rng, i)


def _locked_rng(rng: Array | None, i: int) -> Array | None:
    """The locked-dropout key of layer i's input (apart from `_layer_rng`'s)."""
    return None if rng is None else jax.random.fold_in(jax.random.fold_in(rng, i), 1)


def locked_dropout_keep(
    rate: float, rng: Array | None, shape: tuple[int, ...], time_axis: int
) -> Array | None:
    """The keep mask of variational ("locked") dropout (Gal & Ghahramani 2016):
    one mask per row, the same at every time step, so the mask has size 1 on
    `time_axis` and broadcasts over it. None: off (rate 0 or eval)."""
    shape = tuple(1 if a == time_axis else n for a, n in enumerate(shape))
    return dropout_keep(rate, rng, shape)


def locked_dropout(x: Array, rate: float, rng: Array | None, time_axis: int = 1) -> Array:
    """Variational dropout of `x` ([B, T, ...] by default); identity when off."""
    return apply_keep(x, locked_dropout_keep(rate, rng, x.shape, time_axis), rate)


def _stack_time_major(
    layer_fn: Callable[..., tuple[Carry, Array]],
    cell: Cell,
    layers: Sequence[Params],
    xs: Array,  # [T, B, D]
    carries: Sequence[Carry],
    reset: Array | None,
    keeps: Sequence[Array | None],  # one dropout keep mask per layer input after the first
    rate: float,
    unroll: int,
    locked_keeps: Sequence[Array | None] = (),  # the same for locked dropout ([1, B, H])
    locked_rate: float = 0.0,
) -> tuple[tuple[Carry, ...], Array]:
    new_carries = []
    for i, (params, carry) in enumerate(zip(layers, carries, strict=True)):
        if i > 0:
            xs = apply_keep(xs, keeps[i - 1], rate)
            if locked_keeps:
                xs = apply_keep(xs, locked_keeps[i - 1], locked_rate)
        carry, xs = layer_fn(cell, params, xs, carry, reset, unroll=unroll)
        new_carries.append(carry)
    return tuple(new_carries), xs


def _stack_rows_per_device(
    mesh: Mesh,
    axis: str,
    stack_fn: Callable,
    layers: Sequence[Params],
    xs: Array,
    carries: Sequence[Carry],
    reset: Array | None,
    keeps: Sequence[Array | None],
) -> tuple[tuple[Carry, ...], Array]:
    """`stack_fn(layers, xs, carries, reset, keeps)` run by every device of
    `mesh` on its own rows (streams).

    Streams are independent, so the stack splits over devices by rows with no
    communication in the forward pass; in the backward pass the transpose of
    `shard_map` sums the replicated parameters' gradients, all layers' at one
    point (one combined all-reduce rather than one per layer). Left to XLA's
    automatic partitioning (GSPMD), the sequential loop of a small layer ran
    no faster on two CPU devices than on one: XLA:CPU runs a small per-step
    matmul and the gate math on one core. Here each device runs its own loop
    on its own core (docs/performance.md).

    `check_vma=False`: the custom-VJP loops of lstm_jax/layers/ do not
    annotate which values vary across devices; the values and gradients are
    checked against one device in tests/test_distributed.py.
    """
    rows = P(None, axis)  # time-major [T, B, ...]: rows are dimension 1
    present = [reset is not None, *(k is not None for k in keeps)]
    extra = [a for a, here in zip([reset, *keeps], present, strict=True) if here]

    def local(layers, xs, carries, *extra_local):
        it = iter(extra_local)
        reset_l, *keeps_l = [next(it) if here else None for here in present]
        return stack_fn(layers, xs, carries, reset_l, keeps_l)

    split = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), rows, P(axis), *[rows] * len(extra)),
        out_specs=(P(axis), rows),
        check_vma=False,
    )
    return split(layers, xs, carries, *extra)


def run_stack(
    cell: Cell,
    layers: Sequence[Params],
    inputs: Array,
    carries: Sequence[Carry],
    reset: Array | None = None,
    *,
    dropout_rate: float = 0.0,
    rng: Array | None = None,
    locked_dropout_rate: float = 0.0,
    time_major: bool = False,
    unroll: int = 1,
    impl: str = AUTO,
    mesh: Mesh | None = None,
    mesh_axis: str = "data",
) -> tuple[tuple[Carry, ...], Array]:
    """L stacked layers. Dropout (rate `dropout_rate`, active only when an
    `rng` is given) sits on the non-recurrent connections *between* layers,
    never on the carry, as in Zaremba, Sutskever & Vinyals 2014.
    `locked_dropout_rate` adds variational dropout on the same connections
    (Gal & Ghahramani 2016; AWD-LSTM's dropouth): one mask per row for all
    time steps; with both rates set, both masks apply.

    With a `mesh` of more than one device, the stack runs on each device's own
    rows (`_stack_rows_per_device`); the batch must split evenly over
    `mesh_axis`. Dropout masks are drawn outside, for the whole batch, so the
    result does not depend on the number of devices."""
    if len(carries) != len(layers):
        raise ValueError(f"got {len(carries)} carries for {len(layers)} layers")
    xs = to_time_major(inputs, time_major)
    reset = to_time_major(reset, time_major)
    # an unknown name fails here, before tracing a layer
    impl = resolve_impl(impl, reset_mask=reset is not None, cell=cell, dtype=xs.dtype)
    layer_fn = get_layer_impl(impl)
    hidden = jax.tree.leaves(carries[0])[0].shape[-1]  # H, from the carry (h or (h, c))
    keeps = [  # drawn for the whole batch, whatever the mesh
        dropout_keep(dropout_rate, _layer_rng(rng, i), (*xs.shape[:2], hidden))
        for i in range(1, len(layers))
    ]
    n = len(keeps)
    if locked_dropout_rate > 0.0:  # [1, B, H]: broadcast over time
        keeps += [
            locked_dropout_keep(
                locked_dropout_rate, _locked_rng(rng, i), (*xs.shape[:2], hidden), time_axis=0
            )
            for i in range(1, len(layers))
        ]

    def stack_fn(layers, xs, carries, reset, keeps):
        return _stack_time_major(
            layer_fn,
            cell,
            layers,
            xs,
            carries,
            reset,
            keeps[:n],
            dropout_rate,
            unroll,
            keeps[n:],
            locked_dropout_rate,
        )

    args = (list(layers), xs, tuple(carries), reset, keeps)
    if mesh is not None and mesh.shape[mesh_axis] > 1:
        new_carries, hs = _stack_rows_per_device(mesh, mesh_axis, stack_fn, *args)
    else:
        new_carries, hs = stack_fn(*args)
    return tuple(new_carries), from_time_major(hs, time_major)
