"""A D&D spell's school from its description: a bidirectional LSTM in Flax NNX,
built from the library's layers, against a bag-of-words baseline.

    python -m lstm_jax.tutorials.spell_school [--epochs 40] [--hidden 64]

The 339 SRD spells (the headline corpus's package, offline), description only
(the header that names the school is dropped), 8 schools; a fixed 80/20 split
by a seeded permutation. Words come from the project's word tokenizer, built
on the training descriptions (rarer than 2: <unk>); each description is cut
to its first `--max_len` words, so the rows have different lengths, given to
the layers as `seq_lengths`.

    model     embed -> nnx.Bidirectional(lstm_jax.nnx.LSTM, lstm_jax.nnx.LSTM)
              -> mean over each row's real steps -> Linear -> 8 logits
    baseline  multinomial logistic regression on word counts (the same words)

Both are trained with optax's Adam on cross-entropy, full-batch for the
baseline, minibatches of 32 for the LSTM. The script prints both test
accuracies, the majority-class rate and the wall time. This is a copyable
example of the library surface, not a tuned classifier: 271 training spells
are few for a recurrent model.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lstm_jax import nnx as ljx
from lstm_jax.data import corpora, tokenizers


class Split(NamedTuple):
    ids: np.ndarray  # [N, max_len] int32, 0-padded
    lengths: np.ndarray  # [N] real words per row
    counts: np.ndarray  # [N, V] bag of words
    labels: np.ndarray  # [N] school index


def spells() -> tuple[list[str], list[str]]:
    """(descriptions, schools) of the SRD spells, in the corpus's order."""
    texts, schools = [], []
    for record in corpora.dnd_spell_records():
        _, header, description = record.split("\n", 2)
        # "Level 2 evocation" or "Evocation cantrip"
        school = header.split()[0] if header.endswith("cantrip") else header.split()[-1]
        texts.append(description)
        schools.append(school.lower())
    return texts, schools


def make_splits(max_len: int, seed: int = 0) -> tuple[Split, Split, list[str], int]:
    texts, schools = spells()
    names = sorted(set(schools))
    order = np.random.default_rng(seed).permutation(len(texts))
    cut = int(0.8 * len(texts))
    train_idx, test_idx = order[:cut], order[cut:]
    tok = tokenizers.build_tokenizer(
        "word", "\n".join(texts[i] for i in train_idx), lowercase=True, min_count=2
    )
    vocab = tok.vocab_size + 1  # id 0 is padding; token ids shift by one

    def split(idx: np.ndarray) -> Split:
        ids = np.zeros((len(idx), max_len), np.int32)
        lengths = np.zeros(len(idx), np.int32)
        counts = np.zeros((len(idx), vocab), np.float32)
        for row, i in enumerate(idx):
            words = np.asarray(tok.encode(re.sub(r"\s+", " ", texts[i])), np.int32)[:max_len] + 1
            ids[row, : len(words)], lengths[row] = words, len(words)
            np.add.at(counts[row], words, 1.0)
        labels = np.asarray([names.index(schools[i]) for i in idx], np.int32)
        return Split(ids, lengths, counts, labels)

    return split(train_idx), split(test_idx), names, vocab


class Classifier(nnx.Module):
    """embed -> bidirectional LSTM (lstm_jax.nnx) -> masked mean -> logits."""

    def __init__(self, vocab: int, classes: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, embed, rngs=rngs)
        self.rnn = nnx.Bidirectional(
            ljx.LSTM(embed, hidden, rngs=rngs), ljx.LSTM(embed, hidden, rngs=rngs)
        )
        self.out = nnx.Linear(2 * hidden, classes, rngs=rngs)

    def __call__(self, ids: jax.Array, lengths: jax.Array) -> jax.Array:
        hs = self.rnn(self.embed(ids), seq_lengths=lengths)  # [B, T, 2H], zero past the length
        pooled = hs.sum(axis=1) / jnp.maximum(lengths, 1)[:, None]
        return self.out(pooled)


def accuracy(logits: jax.Array, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == labels))


def train_lstm(train: Split, test: Split, vocab: int, classes: int, args) -> float:
    model = Classifier(vocab, classes, args.embed, args.hidden, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adam(args.learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, ids, lengths, labels):
        def loss_fn(model):
            logits = model(ids, lengths)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(args.seed)
    n = len(train.labels)
    for _ in range(args.epochs):
        order = rng.permutation(n)
        for start in range(0, n - args.batch + 1, args.batch):  # full batches: one compile
            b = order[start : start + args.batch]
            step(model, optimizer, train.ids[b], train.lengths[b], train.labels[b])
    return accuracy(nnx.jit(lambda m, i, n: m(i, n))(model, test.ids, test.lengths), test.labels)


def train_bag_of_words(train: Split, test: Split, classes: int, args) -> float:
    params = {"w": jnp.zeros((train.counts.shape[1], classes)), "b": jnp.zeros((classes,))}
    logits = lambda p, x: jnp.log1p(x) @ p["w"] + p["b"]
    optimizer = optax.adam(0.05)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            ce = optax.softmax_cross_entropy_with_integer_labels(
                logits(p, train.counts), train.labels
            )
            return ce.mean() + 1e-3 * jnp.sum(p["w"] ** 2)

        grads = jax.grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state

    for _ in range(300):
        params, state = step(params, state)
    return accuracy(logits(params, test.counts), test.labels)


def run(args) -> dict[str, float]:
    start = time.perf_counter()
    train, test, names, vocab = make_splits(args.max_len, args.seed)
    majority = float(np.mean(test.labels == np.bincount(train.labels).argmax()))
    result = {
        "bilstm_accuracy": train_lstm(train, test, vocab, len(names), args),
        "bag_of_words_accuracy": train_bag_of_words(train, test, len(names), args),
        "majority_accuracy": majority,
        "train_spells": len(train.labels),
        "test_spells": len(test.labels),
    }
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max_len", type=int, default=96, help="words kept per description")
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    result = run(parse_args(argv))
    print(
        f"school of {result['test_spells']} held-out spells: bidirectional LSTM "
        f"{result['bilstm_accuracy']:.1%}, bag of words {result['bag_of_words_accuracy']:.1%}, "
        f"majority class {result['majority_accuracy']:.1%}; {result['wall_s']} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
