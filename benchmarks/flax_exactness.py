"""Our LSTM against Flax's own, number by number: the exactness table.

    python -m benchmarks.flax_exactness [--impls scan,fused,onednn] [--cases ...]

For each implementation and case, `lstm_jax.linen.LSTM` runs with the variables
of `nn.RNN(nn.OptimizedLSTMCell(H))` (Flax's own layer), and the table gives
the largest absolute difference from Flax in the outputs at the real steps,
the final carry (c, h) and the gradients (parameters and inputs) of a loss
that weighs every output and the carry differently. Everything runs under
`jit`. The layers that compute in float64 (scan, fused, fused_remat) are
compared in float64; oneDNN and cuDNN compute in float32 and are compared,
in float32 at the "highest" matmul precision, with Flax in float64, beside
the rows of Flax's own layer in float32 (impl "flax"), the float32 floor. "runs as" is the layer
that ran: an implementation that cannot do a case exactly says so with one
`LayerFallbackWarning` and runs an exact one. tests/test_library.py asserts
these cases at fixed tolerances; this prints the measured numbers.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lstm_jax import layers
from lstm_jax import linen as lj
from lstm_jax.layers import onednn

B, T, D, H = 6, 12, 5, 8
LENGTHS = np.array([12, 5, 1, 9, 12, 3])  # the full length, length 1 and others
INITIAL_CARRY = np.random.default_rng(3).standard_normal((2, B, H))  # (c, h), cast per dtype
FLOAT64_IMPLS = ("scan", "fused", "fused_remat")
FLAX_FLOAT32 = "flax"  # the reference row: Flax's own layer in float32

CASES = (
    "plain",
    "seq_lengths",
    "reverse",
    "reverse+seq_lengths",
    "reverse+keep_order+seq_lengths",
    "time_major",
    "initial_carry+seq_lengths",
    "2 layers+seq_lengths",
    "3 layers+seq_lengths",
    "bidirectional+seq_lengths",
    "vmap over rows+seq_lengths",
)

FLAGS = flags.FLAGS
flags.DEFINE_list("impls", None, "Implementations (default: every exact one this machine runs).")
flags.DEFINE_list("cases", list(CASES), "Cases to run.")


def default_impls() -> list[str]:
    impls = list(FLOAT64_IMPLS)
    if onednn.installed():
        impls.append("onednn")
    if jax.default_backend() == "gpu":
        impls.append("cudnn")
    return [*impls, FLAX_FLOAT32]


@dataclasses.dataclass
class Row:
    impl: str
    case: str
    runs_as: str
    dtype: str
    outputs: float
    carry: float
    d_params: float
    d_inputs: float


def _options(case: str) -> dict:
    options = {}
    if "seq_lengths" in case:
        options["seq_lengths"] = jnp.asarray(LENGTHS)
    if case.startswith("reverse"):
        options["reverse"] = True
    if "keep_order" in case:
        options["keep_order"] = True
    return options


def _flax_layer(dtype, **kw) -> nn.RNN:
    return nn.RNN(nn.OptimizedLSTMCell(H, param_dtype=dtype, dtype=dtype), return_carry=True, **kw)


def _models(case: str, impl: str | None, dtype) -> tuple[Callable, Callable]:
    """-> (init(key, x) -> variables, apply(variables, x) -> (carries, ys [B, T, F])),
    batch-major x [B, T, D]; impl None: Flax's own layers."""
    options = _options(case)
    ours = impl is not None

    def single(**kw):
        if ours:
            return lj.LSTM(H, impl=impl, return_carry=True, param_dtype=dtype, **kw)
        return _flax_layer(dtype, **kw)

    if case == "time_major":
        layer = single(time_major=True)

        def apply(v, x):
            carry, ys = layer.apply(v, jnp.swapaxes(x, 0, 1))
            return carry, jnp.swapaxes(ys, 0, 1)

        return lambda k, x: layer.init(k, jnp.swapaxes(x, 0, 1)), apply

    if case.startswith(("2 layers", "3 layers")):
        depth = int(case[0])
        mask = jnp.asarray(_valid(case), dtype)
        if ours:
            stack = lj.LSTM(H, num_layers=depth, impl=impl, return_carry=True, param_dtype=dtype)
            return stack.init, lambda v, x: stack.apply(v, x, **options)
        layer = single()

        def apply(v, x):  # Flax's layers in sequence, as nn.Sequential of nn.RNNs
            carries, h = [], x
            for i in range(depth):
                carry, h = layer.apply({"params": v["params"][f"layers_{i}"]}, h, **options)
                carries.append(carry)
                h = h * mask  # ours hands the next layer zeros past each row's length
            return tuple(carries), h

        init = lj.LSTM(H, num_layers=depth, impl="scan", param_dtype=dtype).init
        return init, apply

    if case.startswith("bidirectional"):
        bi = nn.Bidirectional(single(), single(), return_carry=True)
        return bi.init, lambda v, x: bi.apply(v, x, **options)

    layer = single()
    if case.startswith("vmap"):

        def apply(v, x):  # one row at a time, mapped; Flax's runs the batch
            def row(xi, n):
                return layer.apply(v, xi[None], seq_lengths=n[None])

            if not ours:
                return layer.apply(v, x, **options)
            carry, ys = jax.vmap(row)(x, options["seq_lengths"])
            return jax.tree.map(lambda a: a[:, 0], carry), ys[:, 0]

        return layer.init, apply

    if case.startswith("initial_carry"):
        carry = tuple(jnp.asarray(a, dtype) for a in INITIAL_CARRY)
        return layer.init, lambda v, x: layer.apply(v, x, initial_carry=carry, **options)

    return layer.init, lambda v, x: layer.apply(v, x, **options)


def _valid(case: str) -> np.ndarray:
    lengths = LENGTHS if "seq_lengths" in case else np.full(B, T)
    return np.arange(T)[None, :, None] < lengths[:, None, None]


def _run(case: str, impl: str | None, dtype, variables, x):
    """Outputs (masked to the real steps), carry leaves and gradients, under jit."""
    _, apply = _models(case, impl, dtype)
    mask = jnp.asarray(_valid(case), dtype)

    def loss(v, x):
        carries, ys = apply(v, x)
        weights = jnp.arange(1.0, 1.0 + ys.size, dtype=dtype).reshape(ys.shape) / ys.size
        carry_terms = sum(
            jnp.sum(c * (0.3 + 0.1 * i)) for i, c in enumerate(jax.tree.leaves(carries))
        )
        return jnp.sum(ys * mask * weights) + carry_terms, (carries, ys * mask)

    (_, (carries, ys)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        variables, x
    )
    return ys, jax.tree.leaves(carries), grads


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in pairs
    )


def measure(impl: str, case: str) -> Row:
    """One row: `impl` on `case` against Flax in float64 (same variables)."""
    float32 = impl not in FLOAT64_IMPLS
    with jax.enable_x64(True):
        init, _ = _models(case, None, jnp.float64)
        x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float64)
        variables = init(jax.random.key(0), x)
        reference = _run(case, None, jnp.float64, variables, x)
        if not float32:
            ours, ran = _ours(impl, case, jnp.float64, variables, x)
    if float32:
        cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)  # noqa: E731
        with jax.default_matmul_precision("highest"):
            if impl == FLAX_FLOAT32:
                ours, ran = _run(case, None, jnp.float32, cast(variables), cast(x)), "Flax nn.RNN"
            else:
                ours, ran = _ours(impl, case, jnp.float32, cast(variables), cast(x))
    (y1, c1, (gp1, gx1)), (y2, c2, (gp2, gx2)) = ours, reference
    return Row(
        impl, case, ran, "float32" if float32 else "float64",
        _max_diff(y1, y2), _max_diff(c1, c2), _max_diff(gp1, gp2), _max_diff(gx1, gx2),
    )  # fmt: skip


FALLBACK = re.compile(r'layer "[^"]+" runs as "([^"]+)"')  # lstm_jax/layers/fallback.py


def _ours(impl: str, case: str, dtype, variables, x):
    """Our layer's run, and the name of the layer that ran (a fallback's target)."""
    layers.fallback._warned.clear()  # each reason is said once per process: hear it here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", layers.LayerFallbackWarning)
        result = _run(case, impl, dtype, variables, x)
    fell_back = [w for w in caught if issubclass(w.category, layers.LayerFallbackWarning)]
    ran = {FALLBACK.match(str(w.message)).group(1) for w in fell_back}
    return result, " + ".join(sorted(ran)) if ran else layers.resolve_impl(impl)


def table(rows: list[Row]) -> list[str]:
    out = [
        "| impl | case | runs as | dtype | outputs | carry | d params | d inputs |",
        "|---|---|---|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        out.append(
            f"| {r.impl} | {r.case} | {r.runs_as} | {r.dtype} | {r.outputs:.1e} | {r.carry:.1e} "
            f"| {r.d_params:.1e} | {r.d_inputs:.1e} |"
        )
    return out


def summary(rows: list[Row]) -> list[str]:
    """Per implementation, the largest difference over its cases, and the cases
    another layer ran."""
    out = [
        "| impl | dtype | cases | outputs | carry | d params | d inputs "
        "| cases another layer ran |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for impl in dict.fromkeys(r.impl for r in rows):
        mine = [r for r in rows if r.impl == impl]
        worst = [
            max(getattr(r, k) for r in mine) for k in ("outputs", "carry", "d_params", "d_inputs")
        ]
        others = [f"{r.case} ({r.runs_as})" for r in mine if r.runs_as not in (impl, "Flax nn.RNN")]
        out.append(
            f"| {impl} | {mine[0].dtype} | {len(mine)} | "
            + " | ".join(f"{w:.1e}" for w in worst)
            + f" | {', '.join(others) or 'none'} |"
        )
    return out


def main(argv):
    del argv
    impls = FLAGS.impls or default_impls()
    print(f"jax {jax.__version__} on {jax.default_backend()}; B={B}, T={T}, D={D}, H={H}, "
          f"lengths {LENGTHS.tolist()}; max abs difference from Flax's nn.RNN(OptimizedLSTMCell) "
          "in float64")  # fmt: skip
    rows = [measure(impl, case) for impl in impls for case in FLAGS.cases]
    print("\n".join(table(rows)))
    print("\nThe largest difference over the cases:\n")
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    app.run(main)
