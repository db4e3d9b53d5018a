"""The layer tests' cases (imported by test_fused, test_onednn and
test_layers_gpu): small random stacks of every cell, float64 references from
plain autodiff of the reference scan, and a tree comparison."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import cells, recurrent

CELL_NAMES = ["lstm", "gru", "rnn_tanh", "rnn_relu", "irnn"]
B, T, D, H = 3, 7, 4, 5


def make(name, num_layers, key=0, dtype=jnp.float64, t=T):
    cell = cells.make_cell(name, init_scale=0.3) if name != "irnn" else cells.make_cell(name)
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    layers = recurrent.init_stack(k1, cell, D, H, num_layers, dtype)
    if name == "gru":  # b_hn initialises to 0; make its gradient path matter
        layers = [dict(p, b_hn=p["b_hn"] + 0.2) for p in layers]
    xs = jax.random.normal(k2, (B, t, D), dtype) * (30.0 if name == "irnn" else 1.0)
    carried = jax.tree.map(
        lambda z: 0.5 * jax.random.normal(k3, z.shape, dtype),
        recurrent.zero_stack_carry(cell, num_layers, B, H, dtype),
    )
    return cell, layers, xs, carried


def reset_mask(t=T):
    r = np.zeros((B, t), bool)
    r[0, 3] = True  # stream 0 restarts mid-window
    r[1, 0] = True  # stream 1 drops the incoming carry
    r[2, t - 1] = True  # stream 2 restarts at the last step
    return jnp.asarray(r)


def value_and_grads(cell, layers, xs, carries, reset, impl):
    """A loss touching every output and every final carry, and its gradients
    with respect to params, inputs and the incoming carries."""

    def loss(layers, xs, carries):
        final, out = recurrent.run_stack(cell, layers, xs, carries, reset, impl=impl)
        weights = jnp.linspace(0.5, 1.5, out.size).reshape(out.shape)
        return jnp.sum(jnp.sin(out) * weights) + sum(
            jnp.sum(c * c) for c in jax.tree.leaves(final)
        ), (final, out)

    (val, aux), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        layers, xs, carries
    )
    return val, aux, grads


def assert_trees_close(a, b, tol=1e-5):
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    assert ta == tb, (ta, tb)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


@functools.cache
def all_cases(impl, name, num_layers, dtype=None, precision=None):
    """Forward values and gradients for {no reset, reset} x {zero, carried
    state}, one jitted function per (impl, cell, depth) to keep compiles few;
    cached, so the scan reference is computed once for all the tests.
    `dtype`: None runs in float64; a dtype rounds every input to float32 first
    and runs in `dtype` (fp32-only layers against the float64 scan on the
    very same values). `precision`: a `jax.default_matmul_precision` for the
    whole computation (None: JAX's default; on CPUs fp32 is exact either way)."""
    with jax.enable_x64(True), jax.default_matmul_precision(precision):
        cell, layers, xs, carried = make(name, num_layers)
        zeros = recurrent.zero_stack_carry(cell, num_layers, B, H, jnp.float64)
        if dtype is not None:
            layers, xs, carried, zeros = jax.tree.map(
                lambda a: a.astype(jnp.float32).astype(dtype), (layers, xs, carried, zeros)
            )

        @jax.jit
        def run(layers, xs, carried, zeros):
            return [
                value_and_grads(cell, layers, xs, c, r, impl)
                for r in (None, reset_mask())
                for c in (zeros, carried)
            ]

        return jax.device_get(run(layers, xs, carried, zeros))
