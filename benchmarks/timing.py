"""How a row is measured: a compiled, donated train step timed a few steps at
a time (wall and CPU seconds), XLA's peak memory of the step, the matmul rate
behind the roofline, the run's time budget, and `Row`, one measured row."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.configs import BF16_IMPLS, Shape, split_impl
from lstm_jax import host, parallel
from lstm_jax.model import LanguageModel, LMConfig

MiB = 2**20


@dataclasses.dataclass
class Row:
    """One measured implementation on one config."""

    config: str
    impl: str
    shape: Shape
    times: list[float] = dataclasses.field(default_factory=list)  # seconds per step
    cpu: list[float] = dataclasses.field(default_factory=list)  # CPU seconds per step
    compile_s: float = float("nan")
    peak_mib: float = float("nan")
    note: str = ""
    cell: str = "lstm"

    @property
    def tokens_per_s(self) -> float:
        return self.shape.batch * self.shape.seq / float(np.median(self.times))

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per CPU-second (all threads): robust to other processes'
        load, which stretches wall time but not the work done."""
        total = sum(self.cpu)
        return self.shape.batch * self.shape.seq * len(self.cpu) / total if total else float("nan")

    @property
    def compute_dtype(self) -> str:
        """ "bfloat16" for rows whose matmuls run in bf16, else "float32"."""
        return "bfloat16" if split_impl(self.impl)[0] in BF16_IMPLS else "float32"

    @property
    def spread(self) -> float:
        """Interquartile range of the step time, relative to the median."""
        q1, q2, q3 = np.percentile(self.times, [25, 50, 75])
        return float((q3 - q1) / q2)

    def as_json(self, rates: MatmulRates, ratios: dict[str, float]) -> dict[str, Any]:
        """The row as strict JSON (a figure that was not measured is null, not NaN)."""
        s = self.shape
        out = {
            "config": self.config,
            "impl": self.impl,
            "cell": self.cell,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "tokens_per_cpu_s": round(self.tokens_per_cpu_s, 1),
            **dataclasses.asdict(s),
            "median_step_s": float(np.median(self.times)),
            "iqr_rel": round(self.spread, 4),
            "steps_timed": len(self.times),
            "compile_s": round(self.compile_s, 3),
            "peak_mib": round(self.peak_mib, 2),
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "note": self.note,
        }
        if self.config != "sample":
            out["roofline_fraction"] = round(roofline_fraction(self, rates), 4)
            out["matmul_gflops"] = round(rates.rate(self.compute_dtype), 1)
            out["matmul_dtype"] = self.compute_dtype
            out["matmul_platform"] = rates.platform
        return {
            k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in out.items()
        }


# ---------------------------------------------------------------------------
# The roofline: the best matmul rate of the backend the rows run on


@dataclasses.dataclass
class MatmulRates:
    """The best matmul rate of one JAX backend's first device, per dtype (GFLOP/s)."""

    platform: str  # jax.Device.platform: "cpu", "gpu", "tpu"
    device_kind: str
    gflops: dict[str, float]

    def rate(self, dtype: str) -> float:
        """The rate for `dtype`, else the fp32 one (a row whose dtype was not measured)."""
        return self.gflops.get(dtype, self.gflops["float32"])

    def update(self, other: MatmulRates) -> None:
        """Keep the best of both measurements (load on a shared machine only slows)."""
        for dtype, g in other.gflops.items():
            self.gflops[dtype] = max(g, self.gflops.get(dtype, 0.0))


def matmul_gflops(
    device: jax.Device, dtype: str = "float32", n: int | None = None, reps: int = 8
) -> float:
    """Best n^3 matmul rate of `device` right now, at JAX's default precision
    (the precision the model's own matmuls get); n = 2048 on a CPU, 8192 on an
    accelerator, where a smaller product is too short to time."""
    n = n or (2048 if device.platform == "cpu" else 8192)
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure_matmul_rates(
    backend: str | None = None,
    dtypes: tuple[str, ...] = ("float32",),
    n: int | None = None,
    reps: int = 8,
) -> MatmulRates:
    """The roofline's rates on `backend` (None: JAX's default backend, the one
    every row runs on), so that an accelerator's rows are set against the
    accelerator's matmul rate and not the host CPU's."""
    try:
        device = jax.devices(backend)[0]
    except RuntimeError as e:
        raise RuntimeError(
            f"no JAX backend {backend!r} to measure the matmul rate on "
            f"(available: {jax.default_backend()!r}): {e}"
        ) from e
    gflops = {d: matmul_gflops(device, d, n, reps) for d in dict.fromkeys(("float32", *dtypes))}
    return MatmulRates(device.platform, device.device_kind, gflops)


def roofline_fraction(row: Row, rates: MatmulRates) -> float:
    """The row's train FLOP rate over the matmul rate of its compute dtype."""
    flops = row.tokens_per_s * row.shape.train_flops_per_token
    return flops / (rates.rate(row.compute_dtype) * 1e9)


# ---------------------------------------------------------------------------
# Wall time, CPU time, memory


class Budget:
    """A cap on the whole run's wall time; `None` is no cap. `clock` is the
    time source (seconds), injectable so that the cut-off can be tested."""

    def __init__(self, seconds: float | None, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock = seconds, clock
        self.start = clock()
        self.skipped: list[str] = []

    def left(self) -> float:
        if self.seconds is None:
            return float("inf")
        return self.seconds - (self.clock() - self.start)

    def fits(self, estimate_s: float = 0.0) -> bool:
        """True if something expected to take `estimate_s` can still finish."""
        return self.left() > estimate_s

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def note(self) -> str | None:
        if not self.skipped:
            return None
        return f"--budget_s {self.seconds:g} spent; skipped: " + "; ".join(self.skipped)


def cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) used by this process so far."""
    t = os.times()
    return t.user + t.system


def _peak_mib(compiled: Any) -> float:
    """Arguments + outputs (less the donated, aliased part) + XLA's scratch.

    XLA's CPU `peak_memory_in_bytes` reports only the argument size, so the sum
    of the buffer sizes is used: an upper bound on what is live at once."""
    try:
        m = compiled.memory_analysis()
        total = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
    except (AttributeError, TypeError):  # a backend without the analysis
        return float("nan")
    return total / MiB


# ---------------------------------------------------------------------------
# JAX train steps: ours and (benchmarks/peers.py) Flax's


class JaxTrainer:
    """A compiled, donated train step and its state, timed a few steps at a time."""

    def __init__(
        self,
        loss_fn: Callable,
        params: Any,
        tokens: jax.Array,
        compiler_options: dict[str, Any] | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ):
        """With a `mesh`: params and optimizer state replicated, tokens split by rows."""
        opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(2e-3))
        targets = jnp.roll(tokens, -1, axis=1)
        jit_kw: dict[str, Any] = {}
        if mesh is not None:
            rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
            jit_kw = dict(in_shardings=(rep, rep, rows, rows), out_shardings=(rep, rep, rep))

        def step(params, opt_state, tokens, targets):
            loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        opt_state = opt.init(params)
        t0 = time.perf_counter()
        self.compiled = (
            jax.jit(step, donate_argnums=(0, 1), **jit_kw)
            .lower(params, opt_state, tokens, targets)
            .compile(compiler_options=compiler_options or None)
        )
        self.compile_s = time.perf_counter() - t0
        self.peak_mib = _peak_mib(self.compiled)
        if mesh is not None:  # place the arguments where the compiled step expects them
            params, opt_state = jax.device_put((params, opt_state), parallel.replicated(mesh))
            tokens, targets = jax.device_put((tokens, targets), parallel.batch_sharding(mesh))
        self.state = (params, opt_state)
        self.batch = (tokens, targets)

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Wall and CPU seconds of `steps` train steps."""
        times, cpu = [], []
        for _ in range(steps):
            c0, t0 = cpu_seconds(), time.perf_counter()
            params, opt_state, loss = self.compiled(*self.state, *self.batch)
            loss.block_until_ready()
            times.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds() - c0)
            self.state = (params, opt_state)
        return times, cpu


def xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy, the loss of every train step."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def random_tokens(shape: Shape) -> jax.Array:
    """The fixed random batch [B, T] every train step of `shape` runs on."""
    return jax.random.randint(jax.random.key(1), (shape.batch, shape.seq), 0, shape.vocab)


def shape_model(shape: Shape, **overrides: Any) -> LanguageModel:
    """Our language model at a benchmark shape (vocabulary, embedding, hidden,
    layers), with any other LMConfig field in `overrides`."""
    return LanguageModel(
        LMConfig(
            vocab_size=shape.vocab,
            embed_dim=shape.embed,
            hidden_size=shape.hidden,
            num_layers=shape.layers,
            **overrides,
        )
    )


def ours_trainer(
    shape: Shape, impl: str, compiler_options: dict[str, Any] | None = None, cell: str = "lstm"
) -> JaxTrainer:
    impl, devices, dots = split_impl(impl)
    compiler_options = {**(compiler_options or {}), **host.cpu_compiler_options(dots)}
    mesh = parallel.data_mesh(jax.devices()[:devices]) if devices > 1 else None
    model = shape_model(shape, impl=impl, cell=cell)
    carry = model.init_carry(shape.batch)

    def loss_fn(params, tokens, targets):
        logits, _ = model.apply(params, tokens, carry, mesh=mesh)
        return xent(logits, targets)

    params, tokens = model.init(jax.random.key(0)), random_tokens(shape)
    return JaxTrainer(loss_fn, params, tokens, compiler_options, mesh)
