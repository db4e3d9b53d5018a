"""The scan against a Python loop, chunking, reset masks, finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lstm_jax import cells, recurrent

CELL_NAMES = ["lstm", "gru", "rnn_tanh", "rnn_relu", "irnn"]
B, T, D, H = 3, 7, 4, 5


def setup(name, key=0, num_layers=1, dtype=jnp.float32):
    cell = cells.make_cell(name, init_scale=0.3) if name != "irnn" else cells.make_cell(name)
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    layers = recurrent.init_stack(k1, cell, D, H, num_layers, dtype)
    # IRNN's default input init is tiny; make the inputs matter.
    xs = jax.random.normal(k2, (B, T, D), dtype) * (30.0 if name == "irnn" else 1.0)
    carries = jax.tree.map(
        lambda z: 0.1 * jax.random.normal(k3, z.shape, dtype),
        recurrent.zero_stack_carry(cell, num_layers, B, H, dtype),
    )
    return cell, layers, xs, carries


def python_loop(cell, params, xs, carry):
    outs = []
    for t in range(xs.shape[1]):
        carry, h = cell.step(params, carry, xs[:, t])
        outs.append(h)
    return carry, jnp.stack(outs, axis=1)


def assert_trees_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_scan_equals_python_loop(name):
    cell, layers, xs, carries = setup(name)
    got = recurrent.run_layer(cell, layers[0], xs, carries[0])
    assert_trees_close(got, python_loop(cell, layers[0], xs, carries[0]))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_two_chunks_equal_one_scan(name):
    cell, layers, xs, carries = setup(name, num_layers=2)
    full_carry, full_out = recurrent.run_stack(cell, layers, xs, carries)
    c1, o1 = recurrent.run_stack(cell, layers, xs[:, :3], carries)
    c2, o2 = recurrent.run_stack(cell, layers, xs[:, 3:], c1)
    assert_trees_close((full_carry, full_out), (c2, jnp.concatenate([o1, o2], axis=1)))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_reset_mask_equals_starting_fresh(name):
    cell, layers, xs, carries = setup(name, num_layers=2)
    reset = np.zeros((B, T), bool)
    reset[1, 4] = True  # stream 1 restarts at step 4
    reset[2, 0] = True  # stream 2 ignores the incoming carry
    _, out = recurrent.run_stack(cell, layers, xs, carries, jnp.asarray(reset))
    zeros = recurrent.zero_stack_carry(cell, 2, B, H)
    _, fresh = recurrent.run_stack(cell, layers, xs[:, 4:], zeros)
    np.testing.assert_allclose(out[1, 4:], fresh[1], atol=1e-5)
    _, fresh_all = recurrent.run_stack(cell, layers, xs, zeros)
    np.testing.assert_allclose(out[2], fresh_all[2], atol=1e-5)
    _, no_reset = recurrent.run_stack(cell, layers, xs, carries)
    np.testing.assert_allclose(out[0], no_reset[0], atol=1e-6)  # untouched stream
    np.testing.assert_allclose(out[1, :4], no_reset[1, :4], atol=1e-6)
    assert not np.allclose(out[1, 4:], no_reset[1, 4:], atol=1e-4)  # the reset mattered


@pytest.mark.parametrize("name", CELL_NAMES)
def test_time_major_and_unroll_agree(name):
    cell, layers, xs, carries = setup(name, num_layers=2)
    ref = recurrent.run_stack(cell, layers, xs, carries)
    tm_carry, tm_out = recurrent.run_stack(
        cell, layers, jnp.swapaxes(xs, 0, 1), carries, time_major=True
    )
    assert_trees_close(ref, (tm_carry, jnp.swapaxes(tm_out, 0, 1)))
    assert_trees_close(ref, recurrent.run_stack(cell, layers, xs, carries, unroll=3))


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_gradients_match_finite_differences(name, num_layers):
    with jax.enable_x64(True):
        cell, layers, xs, carries = setup(name, num_layers=num_layers, dtype=jnp.float64)
        reset = jnp.zeros((B, T), bool).at[0, 3].set(True)

        def loss(layers, xs, carries):
            final, out = recurrent.run_stack(cell, layers, xs, carries, reset)
            return jnp.sum(out**2) + sum(jnp.sum(c) for c in jax.tree.leaves(final))

        # eps small enough that no relu pre-activation crosses its kink
        check_grads(
            loss, (layers, xs, carries), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6
        )


def test_dropout_between_layers_only_in_training():
    cell, layers, xs, carries = setup("lstm", num_layers=2)
    ref = recurrent.run_stack(cell, layers, xs, carries, dropout_rate=0.5)
    np.testing.assert_allclose(ref[1], recurrent.run_stack(cell, layers, xs, carries)[1])
    drop = recurrent.run_stack(cell, layers, xs, carries, dropout_rate=0.5, rng=jax.random.key(3))
    assert not np.allclose(drop[1], ref[1])
    # one layer: nothing sits between layers, so dropout changes nothing
    one = recurrent.run_stack(
        cell, layers[:1], xs, carries[:1], dropout_rate=0.5, rng=jax.random.key(3)
    )
    np.testing.assert_allclose(one[1], recurrent.run_stack(cell, layers[:1], xs, carries[:1])[1])


def test_errors():
    cell, layers, xs, carries = setup("lstm", num_layers=2)
    with pytest.raises(ValueError, match="unknown layer implementation 'fast'.*'scan'"):
        recurrent.run_layer(cell, layers[0], xs, carries[0], impl="fast")
    with pytest.raises(ValueError, match="got 1 carries for 2 layers"):
        recurrent.run_stack(cell, layers, xs, carries[:1])
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        recurrent.init_stack(jax.random.key(0), cell, D, H, 0)
