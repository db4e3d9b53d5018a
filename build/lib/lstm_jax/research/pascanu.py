"""The Pascanu single-unit cliff: a loss surface with a wall, and clipping.

    python -m lstm_jax.research.pascanu --config configs/ablations/pascanu.py --workdir DIR

Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural
networks", ICML 2013, sec. 2.3 and Figure 6. One recurrent unit without input,

    x_t = w * sigmoid(x_{t-1}) + b,   x_0 = 0.5,   t = 1..50,
    L(w, b) = (sigmoid(x_50) - 0.7)^2.

For w > 4 (the largest slope of the sigmoid is 1/4, so w * 1/4 > 1) the map
has two stable fixed points for a band of biases b; which one x_50 reaches
depends on (w, b) and flips across a curve in the (w, b) plane. There, L jumps
between ~0.49 (x_50 in the low attractor) and ~0.08/0 (high attractor): a
"wall" on which the gradient is huge, so one gradient step throws the
parameters far away (the exploding gradient). Their Algorithm 1 rescales the
gradient when its norm exceeds a threshold:

    g <- dL/dtheta;  if ||g|| >= threshold:  g <- threshold * g / ||g||
    theta <- theta - lr * g

so no step is longer than `lr * threshold`.

What this tool does:
1. evaluates L and ||grad L|| on a (w, b) grid with one jitted, vmapped call;
2. runs gradient descent from one start point with and without clipping (each a
   `lax.scan` over steps) and draws both on the surfaces;
3. reports the largest gradient norm on the grid and the longest unclipped
   step (the jump at the wall), next to the longest clipped step.

The default start (w, b) = (4.5, -2.4) with lr 0.3 sits just below the wall
near the cusp of the bistable region; its unclipped run hits the wall on step 5
(float32 and float64 agree). The wall is exponentially thin (its width shrinks
like exp(-50 * rate of escape from the unstable fixed point)), so whether a
finite step lands *on* it depends on the start and step size: that sensitivity
is itself the phenomenon.

Outputs: `surface.csv` (w, b, loss, grad_norm per grid point),
`trajectories.csv`, `results.json`, `pascanu.png`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lstm_jax.research import common

Array = jax.Array


def unit_loss(params: Array, num_steps: int, x0: float, target: float) -> Array:
    """L(w, b) of the single-unit recurrent net; params = [w, b]."""
    w, b = params[0], params[1]

    def step(x, _):
        return w * jax.nn.sigmoid(x) + b, None

    x, _ = jax.lax.scan(step, jnp.asarray(x0, params.dtype), None, length=num_steps)
    return jnp.square(jax.nn.sigmoid(x) - target)


@functools.partial(jax.jit, static_argnames=("num_steps", "x0", "target"))
def surface(points: Array, *, num_steps: int, x0: float, target: float) -> tuple[Array, Array]:
    """Loss [N] and gradient norm [N] at points [N, 2] (one vmapped evaluation)."""
    vg = jax.value_and_grad(functools.partial(unit_loss, num_steps=num_steps, x0=x0, target=target))
    loss, grad = jax.vmap(vg)(points)  # [N], [N, 2]
    return loss, jnp.linalg.norm(grad, axis=-1)


@functools.partial(jax.jit, static_argnames=("num_steps", "x0", "target", "descent_steps"))
def descend(
    start: Array,
    learning_rate: float,
    threshold: float,
    *,
    num_steps: int,
    x0: float,
    target: float,
    descent_steps: int,
) -> dict[str, Array]:
    """Gradient descent with Algorithm 1's norm clipping (threshold = inf: none).

    Returns per step k (before its update): params [K, 2], loss [K],
    grad_norm [K] (raw), step [K] (length of the update actually taken).
    """
    vg = jax.value_and_grad(functools.partial(unit_loss, num_steps=num_steps, x0=x0, target=target))

    def step(theta, _):
        loss, g = vg(theta)
        norm = jnp.linalg.norm(g)
        g_used = jnp.where(norm >= threshold, g * (threshold / norm), g)
        update = learning_rate * g_used
        return theta - update, {
            "params": theta,
            "loss": loss,
            "grad_norm": norm,
            "step": jnp.linalg.norm(update),
        }

    _, out = jax.lax.scan(step, start, None, length=descent_steps)
    return out


def wall_b(w: np.ndarray | float, x0: float) -> np.ndarray | float:
    """The wall: `b = x0 - w * sigmoid(x0)`, where x_0 is a fixed point.

    On this line x_t = x_0 for all t; for w * sigmoid'(x0) > 1 that fixed point
    is unstable, and the state escapes to the low attractor below the line and
    to the high one above it. The band where it has not escaped by step T is
    ~ (w sigmoid'(x0))^-T wide, and there ||grad L|| ~ (w sigmoid'(x0))^T.
    """
    return x0 - w / (1.0 + np.exp(-x0))


def grid_axes(grid: ml_collections.ConfigDict, x0: float) -> tuple[np.ndarray, np.ndarray]:
    """The w and b axes of the surface grid.

    w: `num_w` points from `w_min` to `w_max`. b: `num_b` points from `b_min`
    to `b_max`, or, with `align_to_wall`, the step `sigmoid(x0) * dw` laid so
    that every w column has a point exactly on the wall line (the band of large
    gradients is far thinner than any grid step, so an unaligned grid finds the
    wall's height only by luck); `num_b` is then implied by the range.
    """
    ws = np.linspace(grid.w_min, grid.w_max, grid.num_w)
    if not grid.align_to_wall:
        return ws, np.linspace(grid.b_min, grid.b_max, grid.num_b)
    db = (ws[1] - ws[0]) / (1.0 + np.exp(-x0))
    origin = wall_b(ws[0], x0)
    k = np.arange(np.ceil((grid.b_min - origin) / db), np.floor((grid.b_max - origin) / db) + 1)
    return ws, origin + k * db


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Surface, trajectories, numbers; see the module docstring."""
    watch = common.Stopwatch()
    out = common.prepare_workdir(workdir, config)
    m, g, d = config.model, config.grid, config.descent
    precision = jax.enable_x64(True) if config.float64 else contextlib.nullcontext()
    with precision:
        dtype = jnp.float64 if config.float64 else jnp.float32
        ws, bs = grid_axes(g, m.x0)
        ww, bb = np.meshgrid(ws, bs)  # [num_b, num_w]
        points = jnp.asarray(np.stack([ww.ravel(), bb.ravel()], -1), dtype)  # [N, 2]
        kw = {"num_steps": m.num_steps, "x0": m.x0, "target": m.target}
        loss, gnorm = surface(points, **kw)
        loss = np.asarray(loss, np.float64).reshape(ww.shape)
        gnorm = np.asarray(gnorm, np.float64).reshape(ww.shape)
        # a fine local grid around the start, for the zoomed panel
        zw = np.linspace(d.start_w - g.zoom, d.start_w + g.zoom, 201)
        zb = np.linspace(d.start_b - g.zoom, d.start_b + g.zoom, 201)
        zww, zbb = np.meshgrid(zw, zb)
        zloss, _ = surface(jnp.asarray(np.stack([zww.ravel(), zbb.ravel()], -1), dtype), **kw)
        zoom = (zww, zbb, np.asarray(zloss, np.float64).reshape(zww.shape))
        start = jnp.asarray([d.start_w, d.start_b], dtype)
        runs = {
            name: jax.tree.map(
                lambda a: np.asarray(a, np.float64),
                descend(start, d.learning_rate, thr, descent_steps=d.num_steps, **kw),
            )
            for name, thr in (("unclipped", np.inf), ("clipped", d.clip_threshold))
        }

    i_max = np.unravel_index(np.nanargmax(gnorm), gnorm.shape)
    un, cl = runs["unclipped"], runs["clipped"]
    j = int(np.argmax(un["step"]))
    results: dict[str, Any] = {
        "grid_max_grad_norm": float(np.nanmax(gnorm)),
        "grid_max_at": {"w": float(ww[i_max]), "b": float(bb[i_max])},
        "grid_points_grad_above_1e3": int(np.sum(gnorm > 1e3)),
        "grid_shape": list(gnorm.shape),
        "grid_loss_range": [float(np.nanmin(loss)), float(np.nanmax(loss))],
        "unclipped_jump": float(un["step"][j]),
        "unclipped_jump_step": j,
        "unclipped_jump_grad_norm": float(un["grad_norm"][j]),
        "unclipped_jump_from": un["params"][j].tolist(),
        "unclipped_jump_to": (un["params"][j + 1].tolist() if j + 1 < d.num_steps else None),
        "unclipped_median_step": float(np.median(un["step"])),
        "clipped_max_step": float(np.max(cl["step"])),
        "clipped_max_grad_norm_used": float(np.max(cl["step"]) / d.learning_rate),
        "clip_threshold": d.clip_threshold,
        "clipped_steps_clipped": int(np.sum(cl["grad_norm"] >= d.clip_threshold)),
        "final": {
            name: {"w": r["params"][-1][0], "b": r["params"][-1][1], "loss": r["loss"][-1]}
            for name, r in runs.items()
        },
        "max_grad_norm_seen": {name: float(np.max(r["grad_norm"])) for name, r in runs.items()},
        "nan": bool(not (np.isfinite(loss).all() and np.isfinite(gnorm).all())),
    }

    common.write_csv_columns(
        out / "surface.csv", {"w": ww, "b": bb, "loss": loss, "grad_norm": gnorm}
    )
    common.write_csv(
        out / "trajectories.csv",
        [
            {
                "method": name,
                "step": k,
                "w": r["params"][k][0],
                "b": r["params"][k][1],
                "loss": r["loss"][k],
                "grad_norm": r["grad_norm"][k],
                "step_length": r["step"][k],
            }
            for name, r in runs.items()
            for k in range(d.num_steps)
        ],
    )
    plot(ww, bb, loss, gnorm, runs, results, out / "pascanu.png", zoom)
    results["seconds"] = watch.elapsed()
    common.write_json(out / "results.json", results)
    return results


def plot(ww, bb, loss, gnorm, runs, results, path, zoom) -> None:
    """Loss and log10 gradient-norm surfaces, and a zoom on the start, with
    both trajectories drawn on."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), layout="constrained")
    panels = [
        (ww, bb, loss, "loss (sigmoid(x_50) - 0.7)^2", "viridis"),
        (ww, bb, np.log10(np.maximum(gnorm, 1e-12)), "log10 ||grad L||", "magma"),
        (*zoom, "loss, zoom on the start", "viridis"),
    ]
    for ax, (ww, bb, z, title, cmap) in zip(axes, panels, strict=True):
        w_lo, w_hi, b_lo, b_hi = ww.min(), ww.max(), bb.min(), bb.max()
        # a regular grid: imshow is much faster than pcolormesh at this size
        im = ax.imshow(
            z,
            origin="lower",
            extent=(w_lo, w_hi, b_lo, b_hi),
            aspect="auto",
            cmap=cmap,
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax, fraction=0.046)
        for name, color, lw in (("unclipped", "red", 2.4), ("clipped", "cyan", 0.8)):
            p = runs[name]["params"]
            inside = (p[:, 0] >= w_lo) & (p[:, 0] <= w_hi) & (p[:, 1] >= b_lo) & (p[:, 1] <= b_hi)
            ax.plot(p[inside, 0], p[inside, 1], ".-", color=color, ms=2.5, lw=lw, label=name)
        ax.plot(*runs["clipped"]["params"][0], "w*", ms=9, label="start")
        j = results["unclipped_jump_step"]
        if results["unclipped_jump_to"] is not None:
            a, b = runs["unclipped"]["params"][j], runs["unclipped"]["params"][j + 1]
            # the jump usually leaves the plot: draw its direction, clipped to the frame
            v = b - a
            s = min(1.0, *(_frame_scale(a, v, w_lo, w_hi, b_lo, b_hi)))
            ax.annotate(
                "",
                xy=a + s * v,
                xytext=a,
                arrowprops={"arrowstyle": "->", "color": "red", "lw": 1.5},
            )
            ax.text(
                *(a + 0.5 * s * v),
                f" jump {results['unclipped_jump']:.3g}",
                color="red",
                fontsize=8,
            )
        ax.set_xlim(w_lo, w_hi)
        ax.set_ylim(b_lo, b_hi)
        ax.set_xlabel("w")
        ax.set_ylabel("b")
        ax.set_title(title, fontsize=9)
    axes[2].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "Pascanu et al. 2013: x_t = w sigmoid(x_{t-1}) + b, 50 steps; "
        f"max ||grad|| on grid {results['grid_max_grad_norm']:.3g}",
        fontsize=10,
    )
    common.save_figure(fig, path)


def _frame_scale(a, v, w_lo, w_hi, b_lo, b_hi) -> list[float]:
    """Scales s so that a + s*v stays inside the plotting frame."""
    out = []
    for k, (lo, hi) in enumerate(((w_lo, w_hi), (b_lo, b_hi))):
        if v[k] > 0:
            out.append((hi - a[k]) / v[k])
        elif v[k] < 0:
            out.append((lo - a[k]) / v[k])
    return out


if __name__ == "__main__":
    common.cli(run, "Pascanu cliff")
