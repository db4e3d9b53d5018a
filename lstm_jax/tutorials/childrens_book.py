"""Let's write a children's book.

    python -m lstm_jax.tutorials.childrens_book [--outdir DIR] [--hidden 16] [--stories 200]

The dictionary has five words, {Doug, Jane, Spot, saw, .}, and the stories go

    Doug saw Jane. Jane saw Spot. Spot saw Doug. ...

Every sentence is "subject saw object." with someone other than the subject
as the object, and whoever was seen starts the next sentence (`tell_story`).

The slides list the mistakes of a net that remembers only the last word:

    "Doug saw Doug."                  after "saw" it forgot who was looking;
    "Jane saw Spot saw Doug saw ..."  after a name it forgot that "saw" came already;
    "Spot. Doug. Jane."               after a name it forgot that "saw" has not come yet.

`find_mistakes` counts these three in any text (and, as "other", anything
else off the grammar, such as a sentence whose subject is not the last one
seen). The nets are the project's `LanguageModel` (one-hot words, one
recurrent layer) trained by the project's train step (`lstm_jax.train`) with
Adam, and sampled by the project's sampler (`lstm_jax.sample.generate`):

    feed-forward: the `rnn_tanh` model with W_hh held at zero, so it sees the
                  last word only: the slide's mistakes, by construction;
    RNN:          the `rnn_tanh` cell, h = tanh(W_xh x + W_hh h_prev + b);
    LSTM:         the `lstm` cell, whose gates decide what to keep in its cell c.

The slide says the plain RNN makes the mistakes and the LSTM does not. Here
that is measured, not assumed: this grammar needs only three words of
memory, which a plain RNN of modest size holds well, so the table also sweeps
the hidden size down (`--sweep`) to show where each net starts to fail.

Writes `lstm_gates.png` (the LSTM's input, forget and output gates and its
cell state on one story) and `stories.txt` (samples) to `--outdir`.
"""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax import train
from lstm_jax.cells import LSTM, LSTM_GATES, LSTMCarry
from lstm_jax.data.batching import Batch
from lstm_jax.model import LanguageModel, LMConfig, count_params
from lstm_jax.research.common import pyplot, save_figure
from lstm_jax.sample import generate
from lstm_jax.tutorials import common

NAMES = ("Doug", "Jane", "Spot")
WORDS = (*NAMES, "saw", ".")
SAW, STOP = WORDS.index("saw"), WORDS.index(".")
MISTAKES = ("sees itself", "run-on", "missing verb", "other")
NETS = {"feed-forward": "rnn_tanh", "RNN": "rnn_tanh", "LSTM": "lstm"}


# ---------------------------------------------------------------------------
# The grammar and the checker.


def tell_story(rng: np.random.Generator, sentences: int) -> list[str]:
    """One story of the grammar, as words ("." is a word)."""
    words, subject = [], NAMES[rng.integers(len(NAMES))]
    for _ in range(sentences):
        others = [n for n in NAMES if n != subject]
        seen = others[rng.integers(len(others))]
        words += [subject, "saw", seen, "."]
        subject = seen
    return words


def to_text(words: Sequence[str]) -> str:
    return " ".join(words).replace(" .", ".")


def to_words(text: str) -> list[str]:
    words = re.findall(r"[A-Za-z]+|\.", text)
    unknown = sorted(set(words) - set(WORDS))
    if unknown:
        raise ValueError(f"words outside the dictionary {WORDS}: {unknown}")
    return words


def judge_sentence(sentence: Sequence[str], last_seen: str | None) -> str | None:
    """The mistake in one sentence (its words without the "."), or None."""
    verbs = sentence.count("saw")
    if verbs >= 2:
        return "run-on"  # "Jane saw Spot saw Doug saw ..."
    if verbs == 0:
        return "missing verb" if sentence else "other"  # "Spot." / an empty sentence
    if len(sentence) != 3 or sentence[1] != "saw":
        return "other"  # "saw Doug.", "Doug saw.", "Doug Jane saw Spot."
    subject, _, seen = sentence
    if subject == seen:
        return "sees itself"  # "Doug saw Doug."
    if last_seen is not None and subject != last_seen:
        return "other"  # the story jumped: not the one seen last
    return None


def find_mistakes(text_or_words: str | Sequence[str]) -> collections.Counter:
    """Counts each kind of mistake (one per sentence), and the sentences.

    A text may stop mid-sentence (a sample has a fixed length): the unfinished
    tail is judged only if it already shows a mistake ("Doug saw Doug" or a
    second "saw"); a tail that is merely short is not a mistake."""
    words = to_words(text_or_words) if isinstance(text_or_words, str) else list(text_or_words)
    *sentences, tail = _split_sentences(words)
    counts: collections.Counter = collections.Counter({k: 0 for k in MISTAKES})
    last_seen = None
    for sentence in sentences:
        counts["sentences"] += 1
        mistake = judge_sentence(sentence, last_seen)
        if mistake:
            counts[mistake] += 1
        last_seen = sentence[-1] if mistake is None else None
    if tail.count("saw") >= 2 or (len(tail) >= 3 and tail[0] == tail[2]):
        counts["sentences"] += 1
        counts[judge_sentence(tail, None)] += 1
    return counts


def _split_sentences(words: list[str]) -> list[list[str]]:
    """[[words of sentence 1], ..., [words after the last "."]]."""
    sentences, current = [], []
    for w in words:
        if w == ".":
            sentences.append(current)
            current = []
        else:
            current.append(w)
    return [*sentences, current]


# ---------------------------------------------------------------------------
# Training with the project's model and train step.


def make_model(cell: str, hidden: int) -> LanguageModel:
    config = LMConfig(
        vocab_size=len(WORDS), embed_dim=0, hidden_size=hidden, num_layers=1, cell=cell
    )
    return LanguageModel(config)


def story_batch(rng: np.random.Generator, batch: int, sentences: int) -> Batch:
    """Rows ". story": the "." before the first word stands for the end of
    the sentence before the story; every row starts from a zero carry."""
    ids = np.array(
        [[STOP, *(WORDS.index(w) for w in tell_story(rng, sentences))] for _ in range(batch)],
        np.int32,
    )
    reset = np.zeros(ids[:, 1:].shape, bool)
    reset[:, 0] = True
    return Batch(ids[:, :-1], ids[:, 1:], np.ones(reset.shape, np.float32), reset)


def train_net(
    net: str,
    hidden: int,
    *,
    seed: int,
    steps: int,
    batch: int,
    sentences: int,
    learning_rate: float,
) -> tuple[LanguageModel, Any, float]:
    """Returns the model, its trained params and the last training loss."""
    model = make_model(NETS[net], hidden)
    feedforward = net == "feed-forward"
    params = model.init(jax.random.key(seed))
    if feedforward:
        params = common.without_recurrence(params)
    # Decayed to 0 so that the last steps do not leave noise in the rare
    # tokens' probabilities, which sampling at temperature 1 would show as mistakes.
    schedule = optax.cosine_decay_schedule(learning_rate, steps)
    optimizer = common.adam(schedule, params, feedforward)
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        carry=model.init_carry(batch),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    step = train.make_train_step(model, optimizer, lambda step, opt_state: schedule(step))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        state, metrics = step(state, story_batch(rng, batch, sentences))
    return model, state.params, float(metrics["train_loss"])


def sample_stories(
    model: LanguageModel, params: Any, *, num: int, sentences: int, seed: int, temperature: float
) -> list[list[str]]:
    """`num` stories of (up to) `sentences` sentences' length, each begun
    after a "." by the project's sampler."""
    gen = generate(
        model,
        params,
        np.array([STOP]),
        jax.random.key(seed),
        length=4 * sentences,
        num_samples=num,
        temperature=temperature,
    )
    return [[WORDS[i] for i in row] for row in np.asarray(gen.tokens)]


def count_mistakes(stories: Sequence[Sequence[str]]) -> dict[str, int]:
    total: collections.Counter = collections.Counter({k: 0 for k in (*MISTAKES, "sentences")})
    clean = 0
    for story in stories:
        counts = find_mistakes(story)
        total.update(counts)
        clean += not any(counts[k] for k in MISTAKES)
    return {**total, "stories": len(stories), "clean stories": clean}


# ---------------------------------------------------------------------------
# The LSTM's gates on one story.


def lstm_trace(cell: LSTM, layer: dict[str, jax.Array], xs: jax.Array) -> dict[str, np.ndarray]:
    """Gate activations and cell state of one LSTM layer on `xs [T, D]`:
    name -> [T, H]. The gates are read from the same fused pre-activation
    the cell computes (gate order `LSTM_GATES`); the state is the cell's own."""
    hidden = layer["w_h"].shape[0]

    def body(carry: LSTMCarry, x_proj):
        z = x_proj + carry.h @ layer["w_h"]  # [1, 4H], as in LSTM.recur
        gates = dict(zip(LSTM_GATES, jnp.split(z, 4, axis=-1), strict=True))
        carry, _ = cell.recur(layer, carry, x_proj)
        sig = {g: jax.nn.sigmoid(gates[g][0]) for g in ("input", "forget", "output")}
        return carry, {**sig, "cell state c": carry.c[0]}

    _, trace = jax.lax.scan(body, cell.zero_carry(1, hidden), cell.project(layer, xs)[:, None])
    return {k: np.asarray(v) for k, v in trace.items()}


def plot_gates(path, words: Sequence[str], trace: dict[str, np.ndarray]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(trace), 1, figsize=(9, 1.5 * len(trace) + 0.6), sharex=True)
    for ax, (name, values) in zip(axes, trace.items(), strict=True):
        is_gate = name != "cell state c"
        limit = float(np.abs(values).max()) or 1.0
        im = ax.imshow(
            values.T,
            aspect="auto",
            cmap="viridis" if is_gate else "coolwarm",
            vmin=0.0 if is_gate else -limit,
            vmax=1.0 if is_gate else limit,
            interpolation="nearest",
        )
        ax.set_ylabel(f"{name}\n(unit)" if is_gate else f"{name}\n(unit)", fontsize=8)
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1].set_xticks(range(len(words)), words, rotation=90, fontsize=8)
    axes[-1].set_xlabel("input word")
    axes[0].set_title("LSTM gates (0 = closed, 1 = open) and cell state, one story")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------


def run(
    outdir,
    *,
    seed: int = 0,
    hidden: int = 16,
    sweep: Sequence[int] = (1, 2, 4),
    stories: int = 200,
    sentences: int = 6,
    steps: int = 400,
    batch: int = 32,
    learning_rate: float = 0.02,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Trains each net, samples `stories` stories from it, counts mistakes."""
    outdir.mkdir(parents=True, exist_ok=True)
    configs = [("feed-forward", hidden), ("RNN", hidden), ("LSTM", hidden)]
    configs += [(net, h) for h in sweep for net in ("RNN", "LSTM") if h != hidden]
    rows, samples, trained = [], [], {}
    fit = dict(seed=seed, steps=steps, batch=batch, sentences=sentences)
    for net, h in configs:
        model, params, loss = train_net(net, h, learning_rate=learning_rate, **fit)
        told = sample_stories(
            model, params, num=stories, sentences=sentences, seed=seed, temperature=temperature
        )
        weights = common.feedforward_weight_count(params) if net == "feed-forward" else None
        rows.append(
            {"net": net, "hidden": h, "params": weights or count_params(params),
             "final loss": loss, **count_mistakes(told)}
        )  # fmt: skip
        samples += [f"{net} H={h}: {to_text(s)}" for s in told[:3]]
        trained[net, h] = model, params
    (outdir / "stories.txt").write_text("\n".join(samples) + "\n")
    model, params = trained["LSTM", hidden]
    story = [".", *tell_story(np.random.default_rng(seed + 1), 3)]
    xs = model.embed(params, jnp.array([WORDS.index(w) for w in story]))
    trace = lstm_trace(model.cell, params["layers"][0], xs)
    figure = outdir / "lstm_gates.png"
    plot_gates(figure, story, trace)
    return {"rows": rows, "figure": str(figure), "samples": str(outdir / "stories.txt"),
            "hidden": hidden, "grammar_loss": grammar_entropy(sentences)}  # fmt: skip


def grammar_entropy(sentences: int) -> float:
    """The lowest achievable training loss (nats per word): only the object
    is a free choice, one of two names, once per 4-word sentence; the first
    subject is one of three."""
    return float((np.log(3) + sentences * np.log(2)) / (4 * sentences))


def mistakes(row: dict[str, Any]) -> int:
    return sum(row[k] for k in MISTAKES)


def table(results: dict[str, Any]) -> str:
    header = ["net", "H", "params", "loss", "sentences", *MISTAKES, "clean stories"]
    rows = [
        [r["net"], r["hidden"], r["params"], r["final loss"], r["sentences"],
         *(r[k] for k in MISTAKES), f"{r['clean stories']}/{r['stories']}"]
        for r in results["rows"]
    ]  # fmt: skip
    return common.format_table(header, rows)


def conclusion(results: dict[str, Any]) -> str:
    """What the table says about the slide's claim, read from the numbers."""
    lines = []
    by = {(r["net"], r["hidden"]): r for r in results["rows"]}
    h = results["hidden"]
    for net in ("RNN", "LSTM"):
        n = mistakes(by[net, h])
        failing = sorted(size for (name, size), r in by.items() if name == net and mistakes(r))
        verdict = f"makes {n} mistakes" if n else "makes no mistakes"
        where = (
            f"it does make them at H = {', '.join(map(str, failing))}"
            if failing
            else "nor at any size swept"
        )
        lines.append(f"The {net} at H = {h} {verdict}; {where}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    def options(p):
        p.add_argument("--hidden", type=int, default=16, help="hidden size of the main nets")
        p.add_argument(
            "--sweep", type=int, nargs="*", default=[1, 2, 4], help="smaller hidden sizes to try"
        )
        p.add_argument("--stories", type=int, default=200, help="stories sampled per net")
        p.add_argument("--sentences", type=int, default=6, help="sentences per story")
        p.add_argument("--steps", type=int, default=400, help="training steps per net")
        p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")

    args = common.parse_args("childrens_book", __doc__, argv, options)
    results = run(
        args.outdir, seed=args.seed, hidden=args.hidden, sweep=args.sweep,
        stories=args.stories, sentences=args.sentences, steps=args.steps,
        temperature=args.temperature,
    )  # fmt: skip
    print(table(results))
    print(
        f"\nLowest possible loss (the grammar's entropy): {results['grammar_loss']:.3f} nats/word"
    )
    print(conclusion(results))
    print(f"Figure: {results['figure']}\nSample stories: {results['samples']}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
