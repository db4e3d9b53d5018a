"""Using a neural network to predict what's for dinner.

    python -m lstm_jax.tutorials.dinner [--outdir DIR] [--days 24] [--hidden 8]

A methodical cook rotates through three dinners: apple pie, burger, chicken,
apple pie, ... In Rohrer's revised version the weather decides each day:

    sunny: the cook spends the day outside and we have yesterday's dinner again;
    rainy: the cook stays in and makes the next dinner in the rotation.

Every week starts the day after apple pie. Today's dinner is therefore
yesterday's dinner moved on by today's weather: (yesterday + rainy) mod 3.

**A feed-forward net** sees only today's weather. Sun or rain alone does not
say *which* dinner comes next, so the best it can do is guess, for each kind
of weather, the dinner most often served on such days. That ceiling is
computed exactly from the days it is scored on, and the net lands on it.

**A recurrent net** also gets what it knew yesterday: its hidden state
h_{t-1}, from which it made yesterday's prediction. Unrolled over the week,

    h_t = tanh(W_xh x_t + W_hh h_{t-1} + b),   prediction_t = softmax(W_hy h_t + b_y)

it carries yesterday's dinner forward and moves it on when it rains: 100%.

Both nets are the project's `rnn_tanh` cell in a `SequenceModel` with one
output per day; the feed-forward net is the same model with W_hh held at zero
(`lstm_jax.tutorials.common`). Trained with optax's Adam on cross-entropy.
Writes `dinner.png` (the unrolled predictions of one week) to `--outdir`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax.model import SeqConfig, SequenceModel, count_params
from lstm_jax.research.common import pyplot, save_figure
from lstm_jax.tutorials import common

DINNERS = ("apple pie", "burger", "chicken")
WEATHER = ("sunny", "rainy")


class Days(NamedTuple):
    weather: np.ndarray  # [weeks, days] int: 0 sunny, 1 rainy
    dinner: np.ndarray  # [weeks, days] int: index into DINNERS


def cook(weather: np.ndarray) -> np.ndarray:
    """The rule: start after apple pie; rain moves the rotation on, sun repeats."""
    return np.cumsum(weather, axis=-1) % len(DINNERS)


def make_days(rng: np.random.Generator, weeks: int, days: int) -> Days:
    weather = rng.integers(0, len(WEATHER), size=(weeks, days))
    return Days(weather, cook(weather))


def todays_input_ceiling(days: Days) -> float:
    """The best accuracy of any predictor that sees only today's weather:
    for each weather, the count of its most common dinner, over all days."""
    best = sum(
        np.bincount(days.dinner[days.weather == w], minlength=len(DINNERS)).max()
        for w in range(len(WEATHER))
    )
    return float(best / days.dinner.size)


def make_model(hidden: int) -> SequenceModel:
    config = SeqConfig(
        input_dim=len(WEATHER),
        output_dim=len(DINNERS),
        output_mode="all",
        hidden_size=hidden,
        num_layers=1,
        cell="rnn_tanh",
    )
    return SequenceModel(config)


def one_hot_weather(weather: np.ndarray) -> jax.Array:
    return jax.nn.one_hot(weather, len(WEATHER), dtype=jnp.float32)  # [weeks, days, 2]


def train(
    model: SequenceModel,
    days: Days,
    *,
    feedforward: bool,
    steps: int,
    learning_rate: float,
    key: jax.Array,
) -> Any:
    """Full-batch Adam on the mean cross-entropy over all days."""
    params = model.init(key)
    if feedforward:
        params = common.without_recurrence(params)
    optimizer = common.adam(learning_rate, params, feedforward)
    xs, targets = one_hot_weather(days.weather), jnp.asarray(days.dinner)

    def loss_fn(params):
        logits, _ = model.apply(params, xs)  # [weeks, days, 3]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params


def predict(model: SequenceModel, params: Any, weather: np.ndarray) -> np.ndarray:
    logits, _ = model.apply(params, one_hot_weather(weather))
    return np.asarray(jnp.argmax(logits, axis=-1))


def accuracy(model: SequenceModel, params: Any, days: Days) -> float:
    return float(np.mean(predict(model, params, days.weather) == days.dinner))


def plot_week(path, days: Days, predictions: dict[str, np.ndarray], week: int = 0) -> None:
    """The unrolled net: one column per day, weather on top, dinners below."""
    plt = pyplot()
    n = days.weather.shape[1]
    t = np.arange(n)
    fig, (ax_w, ax_d) = plt.subplots(
        2, 1, figsize=(9, 3.6), sharex=True, gridspec_kw={"height_ratios": [1, 3]}
    )
    symbols = np.array(["sun", "rain"])[days.weather[week]]
    ax_w.scatter(t, np.zeros(n), c=np.where(days.weather[week] == 0, "orange", "steelblue"), s=60)
    for ti, s in zip(t, symbols, strict=True):
        ax_w.annotate(s, (ti, 0), textcoords="offset points", xytext=(0, 7), ha="center", size=7)
    ax_w.set_yticks([])
    ax_w.set_title("weather (input) and dinner, day by day")
    ax_d.plot(t, days.dinner[week], "k-", lw=6, alpha=0.2, label="actual dinner")
    markers = {"RNN": ("o", 0.0), "feed-forward": ("x", 0.15)}
    for name, pred in predictions.items():
        marker, dy = markers.get(name, ("s", -0.15))
        ax_d.plot(t, pred[week] + dy, marker, ls="none", label=f"{name} prediction")
    ax_d.set_yticks(range(len(DINNERS)), DINNERS)
    ax_d.set_ylim(-0.5, len(DINNERS) - 0.5)
    ax_d.set_xlabel("day")
    ax_d.legend(loc="upper left", fontsize=7, ncols=3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run(
    outdir,
    *,
    seed: int = 0,
    weeks: int = 64,
    days: int = 24,
    hidden: int = 8,
    steps: int = 600,
    learning_rate: float = 0.05,
) -> dict[str, Any]:
    """Trains both nets on `weeks` sequences of `days` days, scores them on
    those days and on as many new ones; returns the accuracies and the
    ceiling, and writes the figure."""
    rng = np.random.default_rng(seed)
    train_days, new_days = make_days(rng, weeks, days), make_days(rng, weeks, days)
    model = make_model(hidden)
    key = jax.random.key(seed)
    results: dict[str, Any] = {"ceiling": todays_input_ceiling(train_days)}
    results["ceiling_new_days"] = todays_input_ceiling(new_days)
    predictions = {}
    for name, feedforward in (("feed-forward", True), ("RNN", False)):
        params = train(
            model, train_days, feedforward=feedforward, steps=steps,
            learning_rate=learning_rate, key=key,
        )  # fmt: skip
        results[name] = {
            "sees": "today's weather" if feedforward else "today's weather + yesterday's h",
            "params": (
                common.feedforward_weight_count(params) if feedforward else count_params(params)
            ),
            "accuracy": accuracy(model, params, train_days),
            "accuracy_new_days": accuracy(model, params, new_days),
        }
        predictions[name] = predict(model, params, new_days.weather)
    outdir.mkdir(parents=True, exist_ok=True)
    results["figure"] = str(outdir / "dinner.png")
    plot_week(results["figure"], new_days, predictions)
    return results


def table(results: dict[str, Any]) -> str:
    rows = [
        [name, r["sees"], r["params"], f"{r['accuracy']:.1%}", f"{r['accuracy_new_days']:.1%}"]
        for name, r in ((n, results[n]) for n in ("feed-forward", "RNN"))
    ]
    header = ["net", "sees", "params", "accuracy (training days)", "accuracy (new days)"]
    return common.format_table(header, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    def options(p):
        p.add_argument("--weeks", type=int, default=64, help="sequences to train on")
        p.add_argument("--days", type=int, default=24, help="days per sequence")
        p.add_argument("--hidden", type=int, default=8, help="hidden units of both nets")
        p.add_argument("--steps", type=int, default=600, help="Adam steps (full batch)")

    args = common.parse_args("dinner", __doc__, argv, options)
    results = run(
        args.outdir, seed=args.seed, weeks=args.weeks, days=args.days,
        hidden=args.hidden, steps=args.steps,
    )  # fmt: skip
    print(table(results))
    print(
        f"\nBest any net can do from today's weather alone (computed from the training days): "
        f"{results['ceiling']:.1%} (new days: {results['ceiling_new_days']:.1%})."
    )
    print(f"Figure: {results['figure']}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
