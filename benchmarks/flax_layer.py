"""A Flax model with our LSTM against the same model with Flax's own layer.

    python -m benchmarks.flax_layer [--shapes char_rnn,course_project,dnd_word] [--impls ...]

Both models are `Embed -> L stacked LSTM layers -> Dense` in flax.linen, one
with `nn.RNN(nn.OptimizedLSTMCell(H))` per layer, the other with
`lstm_jax.linen.LSTM(H, num_layers=L, impl=...)`. One jitted train step each
(cross-entropy, Adam, donated state), the same inputs; the steps of the two
are timed in turns (A, B, A, B, ...) so that a noisy neighbour hits both, and
the table gives each one's median train tokens/s and their ratio. The shapes
are the throughput benchmark's TRAIN_CONFIGS (benchmarks/configs.py:
vocabulary, embedding, hidden, layers, batch, steps).
"""

from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks.configs import TRAIN_CONFIGS, Shape
from lstm_jax import host
from lstm_jax import linen as lj

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", ["char_rnn", "course_project", "dnd_word"], "Names in TRAIN_CONFIGS.")
flags.DEFINE_list("impls", ["fused", "onednn"], "Our layer implementations to time.")
flags.DEFINE_integer("steps", 20, "Timed steps per turn.")
flags.DEFINE_integer("turns", 5, "Turns of each model (the median is over turns).")
flags.DEFINE_bool(
    "retain_freed_memory",
    True,
    "glibc keeps freed memory between steps, for both models, as the train CLI does "
    "(lstm_jax/host.py).",
)


class LanguageModel(nn.Module):
    shape: Shape
    impl: str | None  # None: Flax's nn.RNN(OptimizedLSTMCell)

    @nn.compact
    def __call__(self, ids):
        s = self.shape
        x = nn.Embed(s.vocab, s.embed)(ids)
        if self.impl is None:
            for _ in range(s.layers):
                x = nn.RNN(nn.OptimizedLSTMCell(s.hidden))(x)
        else:
            x = lj.LSTM(s.hidden, num_layers=s.layers, impl=self.impl)(x)
        return nn.Dense(s.vocab)(x)


def make_step(model: LanguageModel, ids: jax.Array):
    params = model.init(jax.random.key(0), ids)
    optimizer = optax.adam(1e-3)
    state = (params, optimizer.init(params))

    def step(state, ids, targets):
        params, opt_state = state

        def loss_fn(p):
            logits = model.apply(p, ids)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0), state


def time_turn(step, state, ids, targets, steps: int):
    t0 = time.perf_counter()
    for _ in range(steps):
        state, loss = step(state, ids, targets)
    jax.block_until_ready(loss)
    return state, time.perf_counter() - t0


def compare(shape: Shape, impl: str) -> dict:
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, shape.vocab, (shape.batch, shape.seq)), jnp.int32)
    targets = jnp.roll(ids, -1, axis=1)
    runs = {}
    for name, model in (("flax", LanguageModel(shape, None)), ("ours", LanguageModel(shape, impl))):
        step, state = make_step(model, ids)
        state, _ = time_turn(step, state, ids, targets, 2)  # compile and warm up
        runs[name] = [step, state, []]
    for _ in range(FLAGS.turns):
        for run in runs.values():
            run[1], seconds = time_turn(run[0], run[1], ids, targets, FLAGS.steps)
            run[2].append(seconds)
    tokens = FLAGS.steps * shape.batch * shape.seq
    rate = {k: tokens / statistics.median(v[2]) for k, v in runs.items()}
    return {"flax": rate["flax"], "ours": rate["ours"], "ratio": rate["ours"] / rate["flax"]}


def main(argv):
    del argv
    kept = FLAGS.retain_freed_memory and host.retain_freed_memory()  # before JAX's threads
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({device.device_kind}); glibc "
        f"keeps freed memory: {bool(kept)}"
    )
    print("| shape (V, E, HxL, B, T) | our impl | Flax nn.RNN tok/s | ours tok/s | ours / Flax |")
    print("|---|---|--:|--:|--:|")
    for name in FLAGS.shapes:
        s = TRAIN_CONFIGS[name]
        for impl in FLAGS.impls:
            r = compare(s, impl)
            print(
                f"| {name} ({s.vocab}, {s.embed}, {s.hidden}x{s.layers}, {s.batch}, {s.seq}) "
                f"| {impl} | {r['flax']:,.0f} | {r['ours']:,.0f} | {r['ratio']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
