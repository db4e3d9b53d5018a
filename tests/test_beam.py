"""Beam search (lstm_jax.sample.beam_search) on tiny random models, against
independent references: greedy decoding, and an exhaustive search that
enumerates every continuation and scores it with one forward pass of the model.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import sample
from lstm_jax.data.tokenizers import CharTokenizer
from lstm_jax.model import LanguageModel, LMConfig


def tiny_model(vocab: int, seed: int = 0, *, stop_bias: tuple[int, float] | None = None):
    """A random 2-layer LSTM LM with peaked enough logits (init scale 1) that
    the best continuation differs from the greedy one; `stop_bias` (id, b)
    raises one token's readout bias, so that hypotheses end on it."""
    model = LanguageModel(
        LMConfig(
            vocab_size=vocab,
            hidden_size=8,
            num_layers=2,
            init_scale=1.0,
            impl="scan",
            matmul_precision="highest",
        )
    )
    params = model.init(jax.random.key(seed))
    if stop_bias is not None:
        token, bias = stop_bias
        readout = dict(params["readout"], b=params["readout"]["b"].at[token].add(bias))
        params = dict(params, readout=readout)
    return model, params


def forward_logprobs(model, params, prime, seqs) -> np.ndarray:
    """log p(seqs[m, t] | prime, seqs[m, :t]) [M, L] from one teacher-forced
    forward pass over prime + continuation (the model is causal, so what
    follows a position never changes its log-probability)."""
    seqs = np.asarray(seqs, np.int32)
    full = np.concatenate([np.tile(prime, (len(seqs), 1)), seqs], 1)
    logits, _ = jax.jit(model.apply)(params, jnp.asarray(full), model.init_carry(len(seqs)))
    predicting = logits[:, len(prime) - 1 : -1]  # [M, L, V]: the logits of each seqs[:, t]
    return np.asarray(sample.token_logprobs(predicting, jnp.asarray(seqs)))


def exhaustive(model, params, prime, length, *, stop_id=None, alpha=0.0):
    """Every distinct hypothesis of up to `length` tokens (cut after its first
    `stop_id`), with its score sum log p / len**alpha, best first."""
    vocab = model.config.vocab_size
    seqs = np.array(list(itertools.product(range(vocab), repeat=length)), np.int32)
    lp = forward_logprobs(model, params, prime, seqs)
    hyps = {}
    for seq, row in zip(seqs, lp, strict=True):
        n = length
        if stop_id is not None and (seq == stop_id).any():
            n = int(np.flatnonzero(seq == stop_id)[0]) + 1
        hyps[tuple(seq[:n])] = float(row[:n].sum()) / n**alpha
    return sorted(hyps.items(), key=lambda kv: -kv[1])


def reference_beam_search(model, params, prime, beam, length, *, stop_id=None, alpha=0.0):
    """Beam search written out in Python over lists of hypotheses: at each step
    every live hypothesis is extended by every token (its next-token log p
    from a forward pass over prime + hypothesis, no carried state), a finished
    one stands as it is, and the `beam` best by sum log p / len**alpha stay."""
    apply = jax.jit(model.apply)
    hyps = [((), 0.0, False)]  # (tokens, sum of log p, finished)
    for _ in range(length):
        if all(done for *_, done in hyps):
            break
        live = [toks for toks, _, done in hyps if not done]
        seqs = jnp.asarray([list(prime) + list(toks) for toks in live], jnp.int32)
        logits, _ = apply(params, seqs, model.init_carry(len(live)))
        logp = iter(np.asarray(jax.nn.log_softmax(logits[:, -1])))
        candidates = []
        for toks, total, done in hyps:
            if done:
                candidates.append((toks, total, True))
                continue
            for v, lp in enumerate(next(logp)):
                candidates.append((toks + (v,), total + float(lp), v == stop_id))
        candidates.sort(key=lambda c: -c[1] / len(c[0]) ** alpha)
        hyps = candidates[:beam]
    return [(toks, total / len(toks) ** alpha) for toks, total, _ in hyps]


def hypotheses(beams: sample.Beams) -> list[tuple[tuple[int, ...], float]]:
    tokens, lengths, scores = jax.device_get((beams.tokens, beams.lengths, beams.scores))
    rows = zip(tokens, lengths, scores, strict=True)
    return [(tuple(int(x) for x in t[:n]), float(s)) for t, n, s in rows]


# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_beam_is_greedy_decoding(seed):
    model, params = tiny_model(10, seed)
    prime = np.array([seed, 3, 1], np.int32)
    greedy = sample.generate(
        model, params, prime, jax.random.key(0), length=8, greedy=True, stop_id=7
    )
    for alpha in (0.0, 1.0):
        got = sample.beam_search(model, params, prime, 1, 8, length_penalty=alpha, stop_id=7)
        np.testing.assert_array_equal(got.tokens, greedy.tokens)
        np.testing.assert_array_equal(got.lengths, greedy.lengths)
        np.testing.assert_allclose(got.logprobs, greedy.logprobs, rtol=1e-6, atol=1e-6)
        n = int(got.lengths[0])
        np.testing.assert_allclose(
            got.scores[0], np.sum(greedy.logprobs) / n**alpha, rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_finds_a_likelier_text_than_greedy(seed):
    """Not a theorem (a beam can drop the greedy path and regret it), but on
    these models a beam of 4 beats greedy, and strictly for some seeds."""
    model, params = tiny_model(6, seed)
    prime = np.array([seed % 6, 2], np.int32)
    length = 7
    greedy = sample.generate(model, params, prime, jax.random.key(0), length=length, greedy=True)
    greedy_ll = float(np.sum(forward_logprobs(model, params, prime, greedy.tokens)))
    beams = sample.beam_search(model, params, prime, 4, length, length_penalty=0.0)
    own = forward_logprobs(model, params, prime, beams.tokens)  # [N, L], the model's own scores
    np.testing.assert_allclose(beams.logprobs, own, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(beams.scores, own.sum(1), rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(np.asarray(beams.scores)) <= 0)  # best first
    assert len({tuple(t) for t in np.asarray(beams.tokens)}) == 4  # distinct hypotheses
    assert float(beams.scores[0]) >= greedy_ll - 1e-5


def test_beam_beats_greedy_strictly_somewhere():
    """The test above would pass for a beam search that returned the greedy
    path: here (a fixed model) the best continuation is not the greedy one."""
    wins = 0
    for seed in range(4):
        model, params = tiny_model(6, seed)
        prime = np.array([seed % 6, 2], np.int32)
        greedy = sample.generate(model, params, prime, jax.random.key(0), length=7, greedy=True)
        beams = sample.beam_search(model, params, prime, 4, 7, length_penalty=0.0)
        wins += float(beams.scores[0]) > float(np.sum(greedy.logprobs)) + 1e-4
    assert wins >= 1


def test_beam_search_equals_the_written_out_reference():
    """Small beams, a stop token and length normalisation: the compiled search
    keeps the same hypotheses as the Python one, step for step, and the
    normalisation changes which hypotheses win (so it is tested, not idle)."""
    model, params = tiny_model(6, seed=0)
    prime = np.array([2, 4], np.int32)
    results = {}
    for alpha in (0.0, 0.6, 1.0):
        beams = sample.beam_search(model, params, prime, 3, 6, length_penalty=alpha, stop_id=5)
        got = hypotheses(beams)
        want = reference_beam_search(model, params, prime, 3, 6, stop_id=5, alpha=alpha)
        assert [h for h, _ in got] == [h for h, _ in want], alpha
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
        results[alpha] = [h for h, _ in got]
    assert results[0.0] != results[1.0]
    assert {len(h) for h in results[0.0]} == {1, 2, 3}  # alpha 0: short records win
    assert 6 in {len(h) for h in results[1.0]}  # alpha 1: long ones


@pytest.mark.parametrize("vocab,length", [(3, 4), (4, 3)])
def test_beam_of_every_prefix_is_exhaustive_search(vocab, length):
    """With beam >= V**(L-1) every prefix survives, so the beam's ranking is
    the exhaustive one; with V**L beams it holds every sequence."""
    model, params = tiny_model(vocab, seed=vocab)
    prime = np.array([0, 1], np.int32)
    want = exhaustive(model, params, prime, length)
    for beam in (vocab ** (length - 1), vocab**length):
        got = hypotheses(sample.beam_search(model, params, prime, beam, length, length_penalty=0))
        assert [h for h, _ in got] == [h for h, _ in want[:beam]]
        np.testing.assert_allclose(
            [s for _, s in got], [s for _, s in want[:beam]], rtol=1e-5, atol=1e-5
        )
    small = hypotheses(sample.beam_search(model, params, prime, 2, length, length_penalty=0))
    assert small[0][1] <= want[0][1] + 1e-5  # a narrower beam can only do as well


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_record_end_finishes_a_hypothesis(alpha):
    """A hypothesis that emits the stop token stops growing: PAD_ID and zero
    log p after it, its length counts the stop token, and its score is the sum
    of log p up to and including the stop token (over len**alpha). The beam
    that keeps every prefix ranks the hypotheses as exhaustive search does."""
    vocab, length, stop = 4, 4, 3
    model, params = tiny_model(vocab, seed=5, stop_bias=(stop, 1.5))
    prime = np.array([1, 2], np.int32)
    beams = sample.beam_search(
        model, params, prime, vocab ** (length - 1), length, length_penalty=alpha, stop_id=stop
    )
    tokens, lengths, logprobs = map(np.asarray, (beams.tokens, beams.lengths, beams.logprobs))
    ended = [n < length or row[n - 1] == stop for row, n in zip(tokens, lengths, strict=True)]
    assert 0 < sum(ended) < len(ended)  # both kinds compete
    padded = np.where(tokens == sample.PAD_ID, 0, tokens)  # any id: nothing reads past n
    own_lp = forward_logprobs(model, params, prime, padded)
    rows = zip(tokens, lengths, logprobs, own_lp, np.asarray(beams.scores), strict=True)
    for row, n, lp, own, score in rows:
        assert (row[:n] != sample.PAD_ID).all() and (row[n:] == sample.PAD_ID).all()
        assert (lp[n:] == 0).all()
        assert stop not in row[: n - 1]  # nothing follows a stop token
        np.testing.assert_allclose(lp[:n], own[:n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(score, own[:n].sum() / n**alpha, rtol=1e-5, atol=1e-5)
    want = exhaustive(model, params, prime, length, stop_id=stop, alpha=alpha)
    got = hypotheses(beams)
    assert [h for h, _ in got] == [h for h, _ in want[: len(got)]]


def test_every_beam_finished_ends_the_search_early():
    """With a stop token the model strongly prefers, all beams finish at once;
    beam 2 then keeps the two best one- or two-token records."""
    model, params = tiny_model(4, seed=1, stop_bias=(0, 6.0))
    prime = np.array([1], np.int32)
    beams = sample.beam_search(model, params, prime, 2, 6, length_penalty=0.0, stop_id=0)
    tokens, lengths = np.asarray(beams.tokens), np.asarray(beams.lengths)
    assert lengths.tolist() == [1, 2] and tokens[0, 0] == 0 and tokens[1, 1] == 0
    assert (tokens[0, 1:] == sample.PAD_ID).all() and (tokens[1, 2:] == sample.PAD_ID).all()


def test_beam_search_is_one_compiled_loop():
    model, params = tiny_model(5)
    prime = np.array([0, 1], np.int32)
    sample.beam_search(model, params, prime, 3, 5, length_penalty=1.0)
    before = sample._beam_loop._cache_size()
    params2 = jax.tree.map(lambda x: x * 1.5, params)
    sample.beam_search(model, params2, prime, 3, 5, length_penalty=0.5)
    assert sample._beam_loop._cache_size() == before  # params and alpha are traced
    carry, logits, _ = sample.warm_carry(model, params, prime, 3)
    jaxpr = jax.make_jaxpr(
        lambda p, c, z: sample._beam_loop(model.config, p, c, z, 1.0, length=5, stop_id=None)
    )(params, carry, logits)
    assert str(jaxpr).count("while[") == 1  # the steps run on the device, not in Python


# ----------------------------------------------------------------------------
# Bad options: one clear error each.


def char_model():
    tok = CharTokenizer.build("abc\n")  # 4 tokens
    model = LanguageModel(LMConfig(vocab_size=tok.vocab_size, hidden_size=8, num_layers=1))
    return model, tok


@pytest.mark.parametrize(
    "options,match",
    [
        ({"beam": -1}, r"beam must be >= 0 \(0 = no beam search\), got -1"),
        ({"beam": 3, "greedy": True}, "does not combine with greedy"),
        ({"beam": 3, "temperature": 0.7}, "temperature and top_k are for sampling"),
        ({"beam": 3, "top_k": 2}, "temperature and top_k are for sampling"),
        ({"beam": 3, "num_samples": 4}, r"num_samples must be between 1 and beam \(3\)"),
        ({"beam": 17, "length": 2}, "beam 17 is more than the 16 distinct continuations"),
        ({"beam": 5, "length": 1}, "more than the 4 distinct continuations"),
        ({"beam": 3, "length_penalty": -0.5}, "length_penalty must be >= 0 and finite"),
        ({"beam": 3, "length_penalty": float("nan")}, "length_penalty must be >= 0"),
        ({"length_penalty": 0.5}, "applies to beam search only"),
    ],
)
def test_bad_beam_options(options, match):
    model, tok = char_model()
    with pytest.raises(ValueError, match=match):
        sample.make_sampler(model, tok, **{"length": 3, **options})


def test_beam_search_function_checks_its_arguments():
    model, params = tiny_model(3)
    with pytest.raises(ValueError, match="beam must be >= 1"):
        sample.beam_search(model, params, [0], 0, 3)
    with pytest.raises(ValueError, match="more than the 9 distinct"):
        sample.beam_search(model, params, [0], 10, 2)
    with pytest.raises(ValueError, match="stop_id 3 out of range"):
        sample.beam_search(model, params, [0], 2, 2, stop_id=3)
    # beam 0 samples, beam 1 is greedy; beam 16 fits 4**2 continuations.
    model, tok = char_model()
    for beam in (0, 1, 16):
        sample.make_sampler(model, tok, length=2, beam=beam)


def test_the_sampler_with_one_beam_decodes_greedily():
    """`--beam 1` is the one-beam search, i.e. greedy decoding (Hugging Face's
    num_beams=1), not a random sample as it once was."""
    model, tok = char_model()
    params = model.init(jax.random.key(3))
    one_beam = sample.make_sampler(model, tok, length=12, beam=1)(params, jax.random.key(0))
    greedy = sample.make_sampler(model, tok, length=12, greedy=True)(params, jax.random.key(1))
    assert one_beam.samples[0].text == greedy.samples[0].text
