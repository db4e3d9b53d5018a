"""Sample text from a trained language model.

    python -m lstm_jax.sample --workdir workdirs/dnd --prime "spell" --stop_at_record_end
    python -m lstm_jax.sample --workdir workdirs/dnd --prime "spell" --greedy --length 80
    python -m lstm_jax.sample --workdir workdirs/dnd --num_samples 5 --temperature 0.8 \\
        --top_k 40 --rank
    python -m lstm_jax.sample --workdir workdirs/dnd --prime "spell" --stop_at_record_end \\
        --beam 5 --num_samples 3
    python -m lstm_jax.sample --workdir workdirs/dnd --interactive

The data flow, one function per arrow:

    workdir --restore()--> params (only the params are read) + tokenizer + config
    prime   --encode_prime()--> ids [P]: the record start ("\\n␞\\n", or "\\n") + the prime
            --warm_carry()--> one scan over the prime: carry, next-token logits [S, V]
            --sample loop--> lax.while_loop of <= N steps, batched over S samples:
                             choose a token, record log p, feed it back; the loop
                             ends early once every sample has hit the record end
            --decode--> text, with per-token log-likelihoods to rank samples by

Choosing a token (`choose_next`): greedy is argmax. Otherwise the logits are
divided by the temperature, all but the `top_k` largest are masked, and
`jax.random.categorical` draws with the key `fold_in(key, t)` for generated
token t, so a step-by-step Python loop with the same keys reproduces the
compiled loop exactly. Log-likelihoods are always the model's own (temperature
1, no top-k): they say how likely the model finds a text, not how it was drawn.

Beam search (`beam_search`, `--beam N`) replaces the sample loop with one
`lax.while_loop` over the steps whose batch is the N beams: each step scores
the N*V one-token extensions, keeps the N best (`lax.top_k`, by sum of log p /
length**alpha) and gathers the parents' carries. It is deterministic.

Compilation: the prime's scan is compiled once per prime length, the sample
loop once per (num_samples, length, stop token), and both are keyed on the
model's frozen config, so the training loop can sample at every evaluation
(`make_sampler`) without recompiling, and a benchmark can time `generate`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from lstm_jax import cli, host
from lstm_jax import workdir as workdir_lib
from lstm_jax.checkpoint import Checkpointer, CheckpointError, flat_leaves, shape_mismatch
from lstm_jax.data.corpora import RECORD_SEPARATOR
from lstm_jax.data.tokenizers import Tokenizer, tokenizer_from_json
from lstm_jax.model import LanguageModel, LMConfig, build_model

Array = jax.Array
Params = Any

PAD_ID = -1  # fills `Generation.tokens` past a sample's end; decoding it fails loudly


# ----------------------------------------------------------------------------
# Token choice.


def top_k_filter(logits: Array, k: Array | int) -> Array:
    """Sets all but the `k` largest logits of each row to -inf.

    `k` may be a traced int (one compiled loop serves every k). Logits tied
    with the k-th largest are all kept, so a row can keep more than k tokens
    when there are exact ties.
    """
    vocab = logits.shape[-1]
    kth = jnp.sort(logits, axis=-1)[..., vocab - k]  # [...]: the k-th largest
    return jnp.where(logits >= kth[..., None], logits, -jnp.inf)


def choose_next(
    logits: Array,  # [S, V]
    key: Array,
    temperature: Array | float,
    top_k: Array | int,  # 0 = no top-k
    greedy: Array | bool,
) -> Array:
    """One token per row, [S] int32: argmax when `greedy`, else a draw from
    softmax(logits / temperature) restricted to the `top_k` largest logits."""

    def draw(z):
        z = z / temperature
        z = jax.lax.cond(top_k > 0, lambda z: top_k_filter(z, top_k), lambda z: z, z)
        return jax.random.categorical(key, z, axis=-1).astype(jnp.int32)

    def argmax(z):
        return jnp.argmax(z, axis=-1).astype(jnp.int32)

    return jax.lax.cond(greedy, argmax, draw, logits)


def token_logprobs(logits: Array, tokens: Array) -> Array:
    """log softmax(logits)[token] at temperature 1: logits [..., V], tokens [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


# ----------------------------------------------------------------------------
# The compiled pieces. Both are keyed on the model's frozen (hashable) config,
# not on the model object, so any LanguageModel with the same config reuses them.


def sampling_model(model: LanguageModel) -> LanguageModel:
    """The same model on the reference "scan" layer: sampling runs one token at
    a time with no backward pass, where the fused/cuDNN layers (which exist to
    speed up training) gain nothing; the params are the same for every impl."""
    if model.config.impl == "scan":
        return model
    return LanguageModel(dataclasses.replace(model.config, impl="scan"))


@functools.partial(jax.jit, static_argnames=("config", "num_samples"))
def _warm(config: LMConfig, params: Params, prime_ids: Array, num_samples: int):
    model = LanguageModel(config)
    logits, carry = model.apply(params, prime_ids[None, :], model.init_carry(1))  # [1, P, V]
    prime_logprobs = token_logprobs(logits[0, :-1], prime_ids[1:])  # [P-1]
    # The prime is the same for every sample: run it once, broadcast the result.
    carry = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_samples, *x.shape[1:])), carry)
    next_logits = jnp.broadcast_to(logits[:, -1], (num_samples, logits.shape[-1]))  # [S, V]
    return carry, next_logits, prime_logprobs


def warm_carry(
    model: LanguageModel, params: Params, prime_ids: Array | np.ndarray, num_samples: int = 1
) -> tuple[Any, Array, Array]:
    """Runs the prime (ids [P], P >= 1) through the model from a zero carry.

    Returns (carry for `num_samples` rows, logits of the token after the prime
    [S, V], log p(prime[i+1] | prime[:i+1]) [P-1]).
    """
    prime_ids = jnp.asarray(prime_ids, jnp.int32)
    if prime_ids.ndim != 1 or prime_ids.shape[0] < 1:
        raise ValueError(f"prime ids must be a non-empty 1-D array, got shape {prime_ids.shape}")
    return _warm(sampling_model(model).config, params, prime_ids, num_samples)


class Generation(NamedTuple):
    """What the compiled sampler returns (device arrays)."""

    tokens: Array  # [S, N] int32 generated ids; PAD_ID at positions >= lengths
    lengths: Array  # [S] int32 generated tokens per sample, the stop token included
    logprobs: Array  # [S, N] float32 log p(token | past) at temperature 1; 0 past the end
    prime_logprobs: Array  # [P-1] float32 log p(prime[i+1] | prime[:i+1])


@functools.partial(jax.jit, static_argnames=("config", "length", "stop_id"))
def _sample_loop(
    config: LMConfig,
    params: Params,
    carry: Any,
    logits: Array,  # [S, V] logits of the first token to generate
    key: Array,
    temperature: Array,
    top_k: Array,
    greedy: Array,
    *,
    length: int,
    stop_id: int | None,
) -> tuple[Array, Array, Array]:
    model = LanguageModel(config)
    num_samples = logits.shape[0]

    def cond(state):
        t, _, _, done, *_ = state
        return (t < length) & ~jnp.all(done)

    def body(state):
        t, carry, logits, done, lengths, tokens, logprobs = state
        token = choose_next(logits, jax.random.fold_in(key, t), temperature, top_k, greedy)
        tokens = tokens.at[:, t].set(jnp.where(done, PAD_ID, token))
        logprobs = logprobs.at[:, t].set(jnp.where(done, 0.0, token_logprobs(logits, token)))
        lengths = lengths + (~done).astype(jnp.int32)
        if stop_id is not None:
            done = done | (token == stop_id)
        logits, carry = model.apply(params, token[:, None], carry)  # [S, 1, V]
        return t + 1, carry, logits[:, 0], done, lengths, tokens, logprobs

    state = (
        jnp.zeros((), jnp.int32),
        carry,
        logits,
        jnp.zeros((num_samples,), bool),  # done: hit the stop token
        jnp.zeros((num_samples,), jnp.int32),
        jnp.full((num_samples, length), PAD_ID, jnp.int32),
        jnp.zeros((num_samples, length), jnp.float32),
    )
    _, _, _, _, lengths, tokens, logprobs = jax.lax.while_loop(cond, body, state)
    return tokens, lengths, logprobs


def check_options(
    vocab_size: int | None, temperature: float, top_k: int, length: int, num_samples: int = 1
) -> None:
    """The errors a user gets for bad sampling options, before any compute
    (`vocab_size` None: the vocabulary is not known yet, check top_k >= 0 only);
    beam search's own are `check_beam_options`."""
    if not 0 < temperature < math.inf:  # also refuses NaN
        raise ValueError(
            f"temperature must be > 0 and finite, got {temperature}; for the most likely "
            "token at every step use greedy decoding (--greedy)"
        )
    if top_k < 0 or (vocab_size is not None and top_k > vocab_size):
        bound = "" if vocab_size is None else f" and <= {vocab_size}, the vocabulary size"
        raise ValueError(f"top_k must be >= 0 (0 = no top-k){bound}; got {top_k}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")


def _checked_ids(prime_ids: Array | np.ndarray, stop_id: int | None, vocab: int) -> np.ndarray:
    """The prime's ids as an array, and the prime and `stop_id` within the vocabulary."""
    ids = np.asarray(prime_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"prime ids out of range for a vocabulary of {vocab}")
    if stop_id is not None and not 0 <= stop_id < vocab:
        raise ValueError(f"stop_id {stop_id} out of range for a vocabulary of {vocab}")
    return ids


def generate(
    model: LanguageModel,
    params: Params,
    prime_ids: Array | np.ndarray,  # [P] int, P >= 1
    key: Array,
    *,
    length: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    stop_id: int | None = None,
) -> Generation:
    """Warms the carry over the prime, then samples `length` tokens for each of
    `num_samples` rows in one compiled loop (stopping a row at `stop_id`).

    Returns device arrays without waiting for them (call `block_until_ready`
    to time it). Calls with the same model config, shapes and `stop_id` reuse
    the compiled code; temperature, top_k, greedy and the key are traced.
    """
    vocab = model.config.vocab_size
    check_options(vocab, temperature, top_k, length, num_samples)
    ids = _checked_ids(prime_ids, stop_id, vocab)
    config = sampling_model(model).config
    carry, logits, prime_logprobs = warm_carry(model, params, ids, num_samples)
    tokens, lengths, logprobs = _sample_loop(
        config,
        params,
        carry,
        logits,
        key,
        jnp.float32(temperature),
        jnp.int32(top_k),
        jnp.bool_(greedy),
        length=length,
        stop_id=stop_id,
    )
    return Generation(tokens, lengths, logprobs, prime_logprobs)


# ----------------------------------------------------------------------------
# Beam search: the N most likely continuations, deterministic (no key).


class Beams(NamedTuple):
    """What `beam_search` returns (device arrays), best hypothesis first.

    It has `Generation`'s fields (tokens, lengths, logprobs, prime_logprobs),
    so `decode_generation` decodes it, plus the scores the beams are ranked by.
    """

    tokens: Array  # [N, L] int32 generated ids; PAD_ID at positions >= lengths
    scores: Array  # [N] float32 sum(logprobs) / lengths**length_penalty, descending;
    # -inf: no hypothesis (with stop_id, fewer distinct ones than beams can exist)
    lengths: Array  # [N] int32 generated tokens per hypothesis, the stop token included
    logprobs: Array  # [N, L] float32 log p(token | past); 0 past the end
    prime_logprobs: Array  # [P-1] float32 log p(prime[i+1] | prime[:i+1])


@functools.partial(jax.jit, static_argnames=("config", "length", "stop_id"))
def _beam_loop(
    config: LMConfig,
    params: Params,
    carry: Any,  # N rows, all warmed over the same prime
    logits: Array,  # [N, V] logits of the first token to generate
    length_penalty: Array,
    *,
    length: int,
    stop_id: int | None,
) -> tuple[Array, Array, Array, Array]:
    model = LanguageModel(config)
    beam, vocab = logits.shape
    # The token a finished beam feeds the model: its output is never used (the
    # beam has one candidate, itself), but the batched step needs a valid id.
    feed = 0 if stop_id is None else stop_id

    def cond(state):
        t, *_, done = state
        return (t < length) & ~jnp.all(done)

    def body(state):
        t, carry, logits, total, lengths, tokens, logprobs, done = state
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [N, V]
        # A live beam extends by every token; a finished one has one candidate,
        # itself (in slot 0), with its score and length unchanged.
        itself = jnp.arange(vocab) == 0
        cand_total = jnp.where(
            done[:, None], jnp.where(itself, total[:, None], -jnp.inf), total[:, None] + logp
        )  # [N, V]
        cand_len = jnp.where(done, lengths, lengths + 1)  # [N], >= 1
        # Length normalisation (score = sum log p / len**alpha) only reorders
        # hypotheses of different lengths: live candidates all have t + 1 tokens.
        cand_score = cand_total / cand_len[:, None].astype(jnp.float32) ** length_penalty
        _, idx = jax.lax.top_k(cand_score.reshape(-1), beam)  # [N], sorted, ties: lower idx
        parent, token = idx // vocab, (idx % vocab).astype(jnp.int32)
        was_done = done[parent]
        total = cand_total.reshape(-1)[idx]
        lengths = cand_len[parent]
        tokens = tokens[parent].at[:, t].set(jnp.where(was_done, PAD_ID, token))
        logprobs = logprobs[parent].at[:, t].set(jnp.where(was_done, 0.0, logp[parent, token]))
        done = was_done if stop_id is None else was_done | (token == stop_id)
        carry = jax.tree.map(lambda x: x[parent], carry)  # each beam continues its parent
        step_logits, carry = model.apply(params, jnp.where(was_done, feed, token)[:, None], carry)
        return t + 1, carry, step_logits[:, 0], total, lengths, tokens, logprobs, done

    # The N rows start as copies of one hypothesis, the prime: only row 0 is
    # live (score 0), so the first step expands it into N distinct tokens
    # instead of N copies of the same one.
    total = jnp.where(jnp.arange(beam) == 0, 0.0, -jnp.inf).astype(jnp.float32)
    state = (
        jnp.zeros((), jnp.int32),
        carry,
        logits,
        total,  # [N] sum of log p so far
        jnp.zeros((beam,), jnp.int32),  # lengths
        jnp.full((beam, length), PAD_ID, jnp.int32),
        jnp.zeros((beam, length), jnp.float32),
        jnp.zeros((beam,), bool),  # done: emitted the stop token
    )
    state = jax.lax.while_loop(cond, body, state)
    _, _, _, total, lengths, tokens, logprobs, _ = state
    scores = total / jnp.maximum(lengths, 1).astype(jnp.float32) ** length_penalty
    # The last step's top_k left the beams sorted; a stable sort keeps that order
    # and makes it explicit.
    order = jnp.argsort(-scores, stable=True)
    return tokens[order], scores[order], lengths[order], logprobs[order]


def check_beam_options(
    vocab_size: int | None,
    beam: int,
    length: int,
    *,
    length_penalty: float = 1.0,
    num_samples: int = 1,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
) -> None:
    """The errors a user gets for bad beam-search options, before any compute
    (`vocab_size` None: the vocabulary is not known yet). Beam 0 means no
    beam search (sampling); beam 1 is the one-beam search, which is greedy
    decoding (as Hugging Face's num_beams=1). With beam 0 only a length
    penalty other than the default is refused, as it would do nothing."""
    if beam < 0:
        raise ValueError(f"beam must be >= 0 (0 = no beam search), got {beam}")
    _check_length_penalty(length_penalty)
    if beam == 0:
        if length_penalty != 1.0:
            raise ValueError(
                f"length_penalty {length_penalty:g} applies to beam search only; add --beam N "
                "(N >= 1)"
            )
        return
    if greedy:
        raise ValueError(
            f"beam {beam} does not combine with greedy: beam search already takes the most "
            "likely text (greedy decoding is beam search with one beam); drop --greedy"
        )
    if temperature != 1.0 or top_k != 0:
        raise ValueError(
            f"beam {beam} scores hypotheses by the model's own log-probabilities; "
            f"temperature and top_k are for sampling (got temperature {temperature:g}, "
            f"top_k {top_k}); drop them or drop --beam"
        )
    if not 1 <= num_samples <= beam:
        raise ValueError(
            f"num_samples must be between 1 and beam ({beam}) with beam search: it prints "
            f"the top num_samples beams; got {num_samples}"
        )
    if vocab_size is not None:
        _check_beam_size(vocab_size, beam, length)


def _check_length_penalty(length_penalty: float) -> None:
    if not 0 <= length_penalty < math.inf:  # also refuses NaN
        raise ValueError(
            "length_penalty must be >= 0 and finite (score = sum log p / length**alpha: "
            f"0 = the raw sum, 1 = the mean per token), got {length_penalty}"
        )


def _check_beam_size(vocab_size: int, beam: int, length: int) -> None:
    """More beams than distinct continuations (V**length) would leave beams
    with no hypothesis at all; the vocabulary is the bound for one token."""
    distinct = vocab_size ** min(length, 64)  # exact wherever beam can exceed it
    if beam > distinct:
        raise ValueError(
            f"beam {beam} is more than the {distinct} distinct continuations of length "
            f"{length} over a vocabulary of {vocab_size}; use a beam <= {distinct}"
        )


def beam_search(
    model: LanguageModel,
    params: Params,
    prime_ids: Array | np.ndarray,  # [P] int, P >= 1
    beam: int,
    length: int,
    *,
    length_penalty: float = 1.0,
    stop_id: int | None = None,
) -> Beams:
    """The `beam` most likely continuations of the prime, up to `length` tokens.

    One compiled `lax.while_loop` over the steps with the beam as the batch of
    the model's step: each step scores the N*V one-token extensions of the N
    beams, keeps the best N (`lax.top_k`) and gathers their parents' carries.
    A hypothesis that emits `stop_id` is finished: it keeps its score, is
    padded with PAD_ID and competes with the live ones until the end. Scores
    are sum log p / length**length_penalty (0: the raw log-likelihood, which
    favours short finished hypotheses; 1: the mean per token). Deterministic:
    no key. With one beam it is greedy decoding; with beam >= V**(length-1)
    it is exact (every prefix is kept). Returns device arrays, best first;
    calls with the same model config, beam, length and stop_id reuse the
    compiled code (length_penalty is traced).
    """
    vocab = model.config.vocab_size
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    _check_length_penalty(length_penalty)
    _check_beam_size(vocab, beam, length)
    ids = _checked_ids(prime_ids, stop_id, vocab)
    config = sampling_model(model).config
    carry, logits, prime_logprobs = warm_carry(model, params, ids, beam)
    tokens, scores, lengths, logprobs = _beam_loop(
        config,
        params,
        carry,
        logits,
        jnp.float32(length_penalty),
        length=length,
        stop_id=stop_id,
    )
    return Beams(tokens, scores, lengths, logprobs, prime_logprobs)


# ----------------------------------------------------------------------------
# Text in, text out.


class Prime(NamedTuple):
    ids: np.ndarray  # [P] int32: context ids, then the prime's own ids
    num_context: int  # how many leading ids are the record-start context


def record_start_ids(tokenizer: Tokenizer) -> list[int]:
    """What the model reads before a prime: the start of a record.

    In a corpus of records (dnd_spells) every record follows "\\n␞\\n", so a
    prime read after it is the start of a new record ("spell" begins a spell
    name), and even the prime's first token gets a log-likelihood. Without a
    record separator the context is a newline, when the vocabulary has one.
    """
    has_records = tokenizer.record_separator_id is not None
    pieces = ["\n", RECORD_SEPARATOR, "\n"] if has_records else ["\n"]
    ids = [tokenizer.token_to_id(p) for p in pieces]
    return [i for i in ids if i is not None]


PRIME_FLAGS = {  # the flag that sets a prime, and the fix for unknown symbols, by CLI
    "sample": ("--prime", "; pass --allow_unk to map them to <unk>"),
    "train": ("--config.train.sample_prime", ""),
}


def encode_prime(
    tokenizer: Tokenizer,
    prime: str,
    *,
    allow_unk: bool = False,
    record_start: bool = True,
    cli: str = "sample",
) -> Prime:
    """Record-start context (if `record_start`) + the prime's ids.

    A prime with characters or words the vocabulary lacks is an error naming
    them and the fix in `cli`'s flags ("sample" or "train"); with `allow_unk`,
    a word-level vocabulary maps them to <unk>.
    """
    flag, unk_fix = PRIME_FLAGS[cli]
    unknown = tokenizer.unknown_symbols(prime)
    if unknown and not (allow_unk and tokenizer.unk_id is not None):
        what = "characters" if tokenizer.kind == "char" else "words"
        hint = (
            unk_fix
            if tokenizer.unk_id is not None
            else " (a char-level vocabulary has no <unk>)"
            if tokenizer.kind == "char"
            else " (this vocabulary has no <unk> token)"
        )
        raise ValueError(
            f"the prime {prime!r} has {what} not in the vocabulary: "
            f"{', '.join(map(repr, unknown[:20]))}{' ...' if len(unknown) > 20 else ''}{hint}; "
            f"or give another {flag} (empty: start at a record)"
        )
    context = record_start_ids(tokenizer) if record_start else []
    ids = np.concatenate([np.asarray(context, np.int32), tokenizer.encode(prime)]).astype(np.int32)
    if ids.size == 0:
        raise ValueError(
            "nothing to start from: the prime is empty and the vocabulary has no newline or "
            "record separator to start a record with; give a --prime"
        )
    return Prime(ids, len(context))


@dataclasses.dataclass(frozen=True)
class Sample:
    """One decoded sample."""

    text: str  # prime + generated text (no record start; no "\n␞" at a record end)
    ids: np.ndarray  # [n] generated ids, the stop token included
    log_likelihood: float  # sum of log p over the generated tokens (nats)
    ended: bool  # stopped at the record separator
    score: float | None = None  # beam search: log_likelihood / num_tokens**alpha; None: sampled

    @property
    def num_tokens(self) -> int:
        return int(self.ids.size)

    @property
    def mean_log_likelihood(self) -> float:
        """nats/token: comparable across samples of different lengths."""
        return self.log_likelihood / max(self.num_tokens, 1)


@dataclasses.dataclass(frozen=True)
class SampleResult:
    prime: str  # the prime as decoded from its ids (normalized, e.g. lowercased)
    prime_log_likelihood: float  # mean log p (nats/token) of the scored prime tokens
    prime_scored_tokens: int  # 0 when nothing could be scored (one token, no context)
    samples: list[Sample]


def decode_generation(
    tokenizer: Tokenizer, prime: Prime, gen: Generation, *, stop_id: int | None = None
) -> SampleResult:
    """Device arrays -> text: prime + continuation, decoded together so
    word-level spacing is right across the boundary; the stop token is dropped."""
    tokens, lengths, logprobs = jax.device_get((gen.tokens, gen.lengths, gen.logprobs))
    prime_lp = np.asarray(jax.device_get(gen.prime_logprobs))
    own = prime.ids[prime.num_context :]
    # prime_lp[i] scores prime.ids[i + 1]; the first id has no score (nothing before it).
    scored = prime_lp[max(prime.num_context, 1) - 1 :]
    samples = []
    for row, n, lp in zip(tokens, lengths, logprobs, strict=True):
        ids = row[:n]
        ended = stop_id is not None and n > 0 and ids[-1] == stop_id
        text = tokenizer.decode(np.concatenate([own, ids[:-1] if ended else ids]))
        samples.append(
            Sample(
                text=text.rstrip("\n") if ended else text,  # a record ends with "\n␞"
                ids=ids,
                log_likelihood=float(lp[:n].sum()),
                ended=bool(ended),
            )
        )
    return SampleResult(
        prime=tokenizer.decode(own),
        prime_log_likelihood=float(scored.mean()) if scored.size else float("nan"),
        prime_scored_tokens=int(scored.size),
        samples=samples,
    )


def decode_beams(
    tokenizer: Tokenizer,
    prime: Prime,
    beams: Beams,
    *,
    top: int | None = None,
    stop_id: int | None = None,
) -> SampleResult:
    """The `top` best beams (all by default) as text, best first, each with its
    score; beams that hold no hypothesis (score -inf) are left out."""
    scores = np.asarray(jax.device_get(beams.scores))[:top]
    n = int(np.isfinite(scores).sum())  # the scores are sorted: the finite ones come first
    kept = beams._replace(
        tokens=beams.tokens[:n], lengths=beams.lengths[:n], logprobs=beams.logprobs[:n]
    )
    result = decode_generation(tokenizer, prime, kept, stop_id=stop_id)
    samples = [
        dataclasses.replace(s, score=float(score))
        for s, score in zip(result.samples, scores[:n], strict=True)
    ]
    return dataclasses.replace(result, samples=samples)


def make_sampler(
    model: LanguageModel,
    tokenizer: Tokenizer,
    *,
    prime: str = "",
    length: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    stop_at_record_end: bool = False,
    allow_unk: bool = False,
    record_start: bool = True,
    cli: str = "sample",
    beam: int = 0,
    length_penalty: float = 1.0,
) -> Callable[[Params, Array], SampleResult]:
    """Checks the options and encodes the prime now (a bad prime fails before
    any training or compute); returns `sampler(params, key) -> SampleResult`.

    With `beam` >= 1 the sampler runs `beam_search` instead of drawing: its
    result holds the top `num_samples` beams, best first, each with its score
    (`length_penalty` as in `beam_search`), and the key is not used.

    Repeated calls reuse the compiled code (e.g. once per evaluation in the
    training loop): only params and key change.
    """
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{model.config.vocab_size}"
        )
    check_options(tokenizer.vocab_size, temperature, top_k, length, num_samples)
    check_beam_options(
        tokenizer.vocab_size,
        beam,
        length,
        length_penalty=length_penalty,
        num_samples=num_samples,
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
    )
    stop_id = None
    if stop_at_record_end:
        stop_id = tokenizer.record_separator_id
        if stop_id is None:
            raise ValueError(
                "stop at record end: the vocabulary has no record separator "
                f"({RECORD_SEPARATOR!r}); only corpora of records (such as dnd_spells) have one"
            )
    encoded = encode_prime(
        tokenizer, prime, allow_unk=allow_unk, record_start=record_start, cli=cli
    )
    model = sampling_model(model)

    def sampler(params: Params, key: Array) -> SampleResult:
        if beam >= 1:
            beams = beam_search(
                model,
                params,
                encoded.ids,
                beam,
                length,
                length_penalty=length_penalty,
                stop_id=stop_id,
            )
            return decode_beams(tokenizer, encoded, beams, top=num_samples, stop_id=stop_id)
        gen = generate(
            model,
            params,
            encoded.ids,
            key,
            length=length,
            num_samples=num_samples,
            temperature=temperature,
            top_k=top_k,
            greedy=greedy,
            stop_id=stop_id,
        )
        return decode_generation(tokenizer, encoded, gen, stop_id=stop_id)

    return sampler


def sample_text(
    model: LanguageModel,
    params: Params,
    tokenizer: Tokenizer,
    key: Array,
    *,
    prime: str = "",
    length: int,
    **options: Any,
) -> SampleResult:
    """One-shot `make_sampler(...)(params, key)`; options as `make_sampler`."""
    return make_sampler(model, tokenizer, prime=prime, length=length, **options)(params, key)


# ----------------------------------------------------------------------------
# Restoring a workdir: meta (config, tokenizer), then the params alone.


@dataclasses.dataclass(frozen=True)
class Restored:
    model: LanguageModel  # on the "scan" layer (see `sampling_model`)
    params: Params
    tokenizer: Tokenizer
    step: int
    meta: dict[str, Any]  # the checkpoint's JSON meta: config, val_loss, ...
    workdir: pathlib.Path
    verified: bool = True  # False: an old checkpoint without checksums, loaded unchecked
    averaged: bool = False  # True: NT-ASGD's averaged weights, as evaluation used them


# Where NT-ASGD's average of the iterates lives in a checkpoint (flat_leaves names;
# train.TrainState.opt_state is an optim.NTAverageState).
AVERAGED_PARAMS = "opt_state/averaged_params"


def params_subtree(meta: dict[str, Any]) -> str:
    """The params the training run evaluated at this checkpoint: NT-ASGD's
    average once averaging had started (its `nt_asgd` meta has a trigger
    step), else the iterate."""
    nt = meta.get("nt_asgd") or {}
    return AVERAGED_PARAMS if nt.get("trigger_step") is not None else "params"


# The params whose first dimension is the vocabulary (flat_leaves names).
VOCAB_SIZED_PARAMS = ("params/embed", "params/readout/b")


def _from_meta_or_file(
    meta: dict, key: str, path: pathlib.Path, what: str, where: str
) -> tuple[Any, str]:
    """(meta[key], where) or, if the meta lacks it, (the JSON in the file the
    training run writes into the workdir, that file's path)."""
    if meta.get(key) is not None:
        return meta[key], f"checkpoint {where}"
    if path.is_file():
        fix = "restore it from the training run, or retrain in a new --workdir"
        return workdir_lib.read_json(path, what, fix), str(path)
    raise CheckpointError(
        f"the checkpoint {where} has no {what} in its meta and {path} does not exist: it was "
        f"not written by lstm_jax.train, or the {what} was removed; cannot sample without it"
    )


def restore(workdir: str | pathlib.Path, checkpoint: str | int = "latest") -> Restored:
    """Model, params and tokenizer from a training workdir.

    Only `state.params` is read from the checkpoint (a partial restore through
    `Checkpointer.restore_params`, which verifies their checksums), into the
    structure that the saved config's model defines; the optimizer state is
    never loaded. After NT-ASGD's trigger the params read are the average of
    the iterates instead (`params_subtree`), the weights evaluation used.
    The tokenizer and config come from the checkpoint's meta (falling back to
    the workdir's tokenizer.json / config.json), and the tokenizer's size is
    checked against the saved embedding/readout shapes.
    """
    workdir = pathlib.Path(workdir)
    if workdir.is_symlink() and not workdir.exists():
        raise CheckpointError(
            f"workdir {workdir} is a symbolic link to {workdir.readlink()}, which does not exist"
        )
    if not workdir.is_dir():
        raise CheckpointError(f"workdir {workdir} does not exist")
    ckpt_dir = workdir / "checkpoints"
    if not workdir_lib.has_checkpoint(workdir):
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir}; train one first: "
            f"python -m lstm_jax.train --config configs/... --workdir {workdir}"
        )
    ckpt = Checkpointer(ckpt_dir, read_only=True)
    try:
        step = ckpt.resolve_step(checkpoint)
        meta = ckpt.restore_meta(step)
        model, tokenizer = _model_and_tokenizer(meta, workdir, str(ckpt.step_dir(step)))
        target = jax.eval_shape(model.init, jax.random.key(0))
        subtree = params_subtree(meta)
        _check_saved_shapes(ckpt, step, target, tokenizer.vocab_size, subtree)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), target
        )
        params = ckpt.restore_params(step, target, subtree)
        verified = ckpt.has_checksums(step)
    finally:
        ckpt.close()
    averaged = subtree == AVERAGED_PARAMS
    return Restored(model, params, tokenizer, step, meta, workdir, verified, averaged)


def _model_and_tokenizer(
    meta: dict, workdir: pathlib.Path, where: str
) -> tuple[LanguageModel, Tokenizer]:
    """The sampling model and tokenizer a checkpoint's meta (or workdir) describes."""
    tok_json, source = _from_meta_or_file(
        meta, "tokenizer", workdir / "tokenizer.json", "tokenizer", where
    )
    try:
        tokenizer = tokenizer_from_json(tok_json)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"the tokenizer in {source} is unreadable: {e}") from e
    config, source = _from_meta_or_file(meta, "config", workdir / "config.json", "config", where)
    try:
        model = sampling_model(build_model(config["model"], tokenizer.vocab_size))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the config in {source} does not define a model: {e}") from e
    return model, tokenizer


def _check_saved_shapes(
    ckpt: Checkpointer, step: int, target: Any, vocab_size: int, subtree: str = "params"
) -> None:
    """The saved params (and `subtree`, the params to be restored, if another)
    against the tokenizer and the model the config describes, read from the
    checkpoint's metadata before any array is."""
    where = ckpt.step_dir(step)
    shapes = ckpt.array_shapes(step)
    saved = {k: v for k, v in shapes.items() if k.startswith("params/")}
    vocab_dims = {name: shape[0] for name, shape in saved.items() if name in VOCAB_SIZED_PARAMS}
    if any(v != vocab_size for v in vocab_dims.values()):
        raise CheckpointError(
            f"the tokenizer of checkpoint {where} has {vocab_size} tokens but the "
            f"params were trained for a vocabulary of {max(vocab_dims.values())} "
            f"({', '.join(f'{k}: {saved[k]}' for k in vocab_dims)}): the tokenizer "
            "does not belong to these weights"
        )
    for prefix in dict.fromkeys(("params", subtree)):
        saved = {k: v for k, v in shapes.items() if k.startswith(f"{prefix}/")}
        expected = {k: tuple(v.shape) for k, v in flat_leaves(target, prefix).items()}
        if mismatch := shape_mismatch(saved, expected):
            raise CheckpointError(
                f"the {prefix} of checkpoint {where} do not match the model its config "
                f"describes ({mismatch})"
            )


# ----------------------------------------------------------------------------
# Command line.

FLAGS = flags.FLAGS
USAGE_ERROR = cli.EXIT_USER_ERROR  # bad options or an unusable workdir (lstm_jax/cli.py)


def define_flags() -> None:
    """The CLI's flags, defined only when run as a program: the training loop
    imports this module, and absl flags are global (train_cli.py has --workdir too)."""
    flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/ (required).")
    flags.DEFINE_string("checkpoint", "latest", "'latest', 'best' (lowest val loss) or a step.")
    flags.DEFINE_string("prime", "", "Text to start from ('' = the start of a record).")
    flags.DEFINE_integer("length", 200, "Tokens to generate per sample (at most).")
    flags.DEFINE_float(
        "temperature", 1.0, "Softmax temperature (> 0); lower = safer, higher = wilder."
    )
    flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens only (0 = all).")
    flags.DEFINE_bool("greedy", False, "Take the most likely token at every step (argmax).")
    flags.DEFINE_integer(
        "beam", 0, "Beam search with N beams (deterministic; 1 = greedy decoding); 0 = sample."
    )
    flags.DEFINE_float(
        "length_penalty",
        1.0,
        "Beam search: score = sum log p / length**ALPHA (0 = raw sum, 1 = mean per token).",
    )
    flags.DEFINE_integer(
        "num_samples", 1, "Samples drawn in parallel (one batch); with --beam, the top K beams."
    )
    flags.DEFINE_integer("seed", 0, "PRNG seed: the same seed gives the same samples.")
    flags.DEFINE_bool("stop_at_record_end", False, "End a sample at the record separator.")
    flags.DEFINE_bool("allow_unk", False, "Word-level: map unknown prime words to <unk>.")
    flags.DEFINE_bool("record_start", True, "Read the record start ('\\n␞\\n') before the prime.")
    flags.DEFINE_bool("rank", False, "Print samples by mean log-likelihood, most likely first.")
    flags.DEFINE_bool(
        "interactive", False, "Prompt for primes in a loop (empty line = record start)."
    )


def _show(text: str) -> str:
    return text.replace(RECORD_SEPARATOR, "␞")


def format_result(result: SampleResult, *, greedy: bool, rank: bool = False) -> str:
    """The CLI's report: prime likelihood, then each sample with its own."""
    lines = []
    if result.prime_scored_tokens:
        lines.append(
            f"prime {result.prime!r}: log-likelihood {result.prime_log_likelihood:.3f} "
            f"nats/token over {result.prime_scored_tokens} token(s)"
        )
    order = list(enumerate(result.samples, 1))
    if rank:  # beams by their score (already their order), samples per token
        order.sort(
            key=lambda x: -(x[1].score if x[1].score is not None else x[1].mean_log_likelihood)
        )
    for i, s in order:
        if s.score is not None:  # beam search: ranked by score already
            lines.append(
                f"--- beam {i}: {s.num_tokens} tokens{', record end' if s.ended else ''}, "
                f"score {s.score:.3f}, log-likelihood {s.mean_log_likelihood:.3f} nats/token "
                f"(total {s.log_likelihood:.1f})"
            )
            lines.append(_show(s.text))
            continue
        lines.append(
            f"--- sample {i}{' (greedy)' if greedy else ''}: {s.num_tokens} tokens"
            f"{', record end' if s.ended else ''}, log-likelihood "
            f"{s.mean_log_likelihood:.3f} nats/token (total {s.log_likelihood:.1f})"
        )
        lines.append(_show(s.text))
    return "\n".join(lines)


def _describe(r: Restored) -> str:
    c = r.model.config
    val = r.meta.get("val_loss")
    return (
        f"{r.workdir}: step {r.step}"
        + (f" (val loss {val:.3f} nats/token)" if val is not None else "")
        + (" (NT-ASGD averaged weights)" if r.averaged else "")
        + f", {r.tokenizer.kind}-level vocabulary of {r.tokenizer.vocab_size:,}, "
        f"{c.num_layers}x{c.hidden_size} {c.cell}"
    )


def interactive_loop(
    restored: Restored,
    options: dict[str, Any],
    seed: int,
    *,
    greedy: bool,
    rank: bool,
    lines: Iterator[str] | None = None,
    out: Callable[[str], None] = print,
) -> None:
    """Reads primes (one per line) until EOF or ':q'; prompt i uses fold_in(key(seed), i)."""
    if lines is None:

        def stdin_lines():
            while True:
                try:
                    yield input("prime> ")
                except EOFError:
                    return

        lines = stdin_lines()
    base = jax.random.key(seed)
    for i, line in enumerate(lines):
        if line.strip() in (":q", ":quit"):
            return
        try:
            sampler = make_sampler(restored.model, restored.tokenizer, prime=line, **options)
        except ValueError as e:
            out(f"error: {e}")
            continue
        result = sampler(restored.params, jax.random.fold_in(base, i))
        out(format_result(result, greedy=greedy, rank=rank))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    options = dict(
        length=FLAGS.length,
        num_samples=FLAGS.num_samples,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
        greedy=FLAGS.greedy,
        stop_at_record_end=FLAGS.stop_at_record_end,
        allow_unk=FLAGS.allow_unk,
        record_start=FLAGS.record_start,
        beam=FLAGS.beam,
        length_penalty=FLAGS.length_penalty,
    )
    which = FLAGS.checkpoint
    host.enable_compile_cache()  # the sampler compiles once per model and options
    check_options(None, FLAGS.temperature, FLAGS.top_k, FLAGS.length, FLAGS.num_samples)
    check_beam_options(
        None,
        FLAGS.beam,
        FLAGS.length,
        length_penalty=FLAGS.length_penalty,
        num_samples=FLAGS.num_samples,
        greedy=FLAGS.greedy,
        temperature=FLAGS.temperature,
        top_k=FLAGS.top_k,
    )
    if which not in ("latest", "best") and not which.isdigit():
        raise ValueError(f"--checkpoint must be 'latest', 'best' or a step, got {which!r}")
    restored = restore(FLAGS.workdir, which)
    print(_describe(restored))
    if not restored.verified:
        print(
            f"lstm_jax.sample: warning: checkpoint {restored.step} has no checksums (it "
            "predates them); its params are loaded unverified",
            file=sys.stderr,
        )
    if FLAGS.beam >= 1:
        print(
            f"sampling: beam search, {FLAGS.beam} beams, length penalty {FLAGS.length_penalty:g} "
            f"(deterministic: the seed is not used); the best {FLAGS.num_samples} x up to "
            f"{FLAGS.length} tokens"
        )
    else:
        how = (
            "greedy"
            if FLAGS.greedy
            else f"temperature {FLAGS.temperature:g}, top_k {FLAGS.top_k or 'off'}, "
            f"seed {FLAGS.seed}"
        )
        print(f"sampling: {how}; {FLAGS.num_samples} x up to {FLAGS.length} tokens")
    if FLAGS.interactive:
        interactive_loop(restored, options, FLAGS.seed, greedy=FLAGS.greedy, rank=FLAGS.rank)
        return
    sampler = make_sampler(restored.model, restored.tokenizer, prime=FLAGS.prime, **options)
    result = sampler(restored.params, jax.random.key(FLAGS.seed))
    print(format_result(result, greedy=FLAGS.greedy, rank=FLAGS.rank))


if __name__ == "__main__":
    define_flags()
    cli.run(main, required=["workdir"], program="lstm_jax.sample")
