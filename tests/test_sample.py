"""Sampling: the compiled generator against step-by-step Python loops, the
checkpoint restore, the text API, the CLI, and the error for each bad input.

One tiny word-level model is trained once (configs/dnd.py:smoke, 10 steps) and
shared by every test; its logits are nearly flat, which makes the equivalence
tests strict (a small numerical difference would flip a sampled token).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import helpers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lstm_jax import checkpoint, optim, sample, train
from lstm_jax.checkpoint import CheckpointError
from lstm_jax.data.corpora import RECORD_SEPARATOR
from lstm_jax.data.tokenizers import CharTokenizer
from lstm_jax.model import LanguageModel, LMConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
LENGTH = 12  # tokens generated in most tests: one compiled loop shared by them
SAMPLES = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    c = helpers.smoke("dnd:smoke")
    c.train.num_steps = 10
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    wd = tmp_path_factory.mktemp("sample") / "wd"
    train.train_and_evaluate(c, str(wd))
    return wd


@pytest.fixture(scope="module")
def restored(workdir) -> sample.Restored:
    return sample.restore(workdir)


@pytest.fixture(scope="module")
def prime(restored) -> sample.Prime:
    return sample.encode_prime(restored.tokenizer, "spell of the")


def python_loop(model, params, prime_ids, key, length, num_samples, choose):
    """The reference: run the prime, then one jitted model step per token in a
    Python loop; `choose(logits [S, V], key_t) -> ids [S]` picks each token."""
    step = jax.jit(lambda p, tok, carry: model.apply(p, tok, carry))
    ids = jnp.tile(jnp.asarray(prime_ids)[None], (num_samples, 1))
    logits, carry = step(params, ids, model.init_carry(num_samples))
    logits = logits[:, -1]
    tokens, logprobs = [], []
    for t in range(length):
        tok = jnp.asarray(choose(logits, jax.random.fold_in(key, t)), jnp.int32)
        tokens.append(np.asarray(tok))
        logprobs.append(np.asarray(jax.nn.log_softmax(logits)[jnp.arange(num_samples), tok]))
        logits, carry = step(params, tok[:, None], carry)
        logits = logits[:, 0]
    return np.stack(tokens, 1), np.stack(logprobs, 1)


def gen(restored, prime, seed=0, **kw):
    kw = {"length": LENGTH, "num_samples": SAMPLES, **kw}
    return sample.generate(restored.model, restored.params, prime.ids, jax.random.key(seed), **kw)


# ----------------------------------------------------------------------------
# Restore.


def test_restore_reads_the_saved_params(workdir, restored):
    """The partial (params-only) restore equals a full TrainState restore."""
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
    meta = ckpt.restore_meta(10)
    config = ml_collections.ConfigDict(meta["config"])
    model = train.build_model(config, restored.tokenizer.vocab_size)
    target = train.init_state(config, model, optim.make_optimizer(config.optim, 10), 8)
    full = ckpt.restore_state(10, target)
    ckpt.close()
    assert restored.step == 10
    assert restored.tokenizer.to_json() == meta["tokenizer"]
    assert restored.model.config.impl == "scan"
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(restored.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sample.restore(workdir, "best").step == 10


# ----------------------------------------------------------------------------
# The generator against Python loops.


def test_prime_carry_equals_running_the_model_over_the_prime(restored, prime):
    model, params = restored.model, restored.params
    carry, next_logits, prime_lp = sample.warm_carry(model, params, prime.ids, num_samples=3)
    ids = jnp.asarray(prime.ids)[None]  # [1, P]
    apply = jax.jit(model.apply)
    logits, full_carry = apply(params, ids, model.init_carry(1))
    step_carry = model.init_carry(1)
    for t in range(ids.shape[1]):  # one token at a time
        _, step_carry = apply(params, ids[:, t : t + 1], step_carry)
    for got, want, stepped in zip(
        jax.tree.leaves(carry),
        jax.tree.leaves(full_carry),
        jax.tree.leaves(step_carry),
        strict=True,
    ):
        assert got.shape[0] == 3
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(want, stepped, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(next_logits[1], logits[0, -1], rtol=1e-5, atol=1e-6)
    logp = jax.nn.log_softmax(logits[0, :-1])
    want_lp = logp[jnp.arange(ids.shape[1] - 1), ids[0, 1:]]
    np.testing.assert_allclose(prime_lp, want_lp, rtol=1e-5, atol=1e-6)


def test_greedy_is_deterministic_and_equals_python_argmax(restored, prime):
    a = gen(restored, prime, seed=0, greedy=True)
    b = gen(restored, prime, seed=1, greedy=True)  # the key does not matter
    np.testing.assert_array_equal(a.tokens, b.tokens)
    want, want_lp = python_loop(
        restored.model,
        restored.params,
        prime.ids,
        jax.random.key(0),
        LENGTH,
        SAMPLES,
        lambda logits, key: np.argmax(np.asarray(logits), axis=-1),
    )
    np.testing.assert_array_equal(a.tokens, want)
    np.testing.assert_allclose(a.logprobs, want_lp, rtol=1e-5, atol=1e-5)
    assert (np.asarray(a.lengths) == LENGTH).all()


def test_compiled_sampler_equals_python_loop_with_the_same_keys(restored, prime):
    key = jax.random.key(7)
    got = gen(restored, prime, seed=7, temperature=0.8, top_k=50)
    want, want_lp = python_loop(
        restored.model,
        restored.params,
        prime.ids,
        key,
        LENGTH,
        SAMPLES,
        jax.jit(lambda logits, k: sample.choose_next(logits, k, 0.8, 50, False)),
    )
    np.testing.assert_array_equal(got.tokens, want)
    np.testing.assert_allclose(got.logprobs, want_lp, rtol=1e-5, atol=1e-5)
    # The samples in the batch are different draws, not copies.
    assert len({tuple(row) for row in np.asarray(got.tokens)}) > 1


def test_sampling_with_a_seed_is_reproducible_and_seeds_differ(restored, prime):
    a = gen(restored, prime, seed=3)
    b = gen(restored, prime, seed=3)
    c = gen(restored, prime, seed=4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


def test_low_temperature_approaches_greedy(restored, prime):
    greedy = gen(restored, prime, greedy=True)
    cold = gen(restored, prime, seed=5, temperature=1e-5)
    np.testing.assert_array_equal(cold.tokens, greedy.tokens)
    # The smoke model is close to uniform; sharpen its readout so that the
    # temperature visibly moves samples from the likely to the unlikely.
    sharp = dict(
        restored.params, readout=jax.tree.map(lambda x: 30 * x, restored.params["readout"])
    )
    sharp_restored = sample.Restored(**{**vars(restored), "params": sharp})
    mean_lp = [
        float(np.mean(gen(sharp_restored, prime, seed=5, **kw).logprobs))
        for kw in ({"greedy": True}, {"temperature": 0.1}, {"temperature": 1.0}, {"temperature": 3})
    ]
    assert mean_lp[0] >= mean_lp[1] > mean_lp[2] > mean_lp[3], mean_lp


def test_top_k_1_equals_greedy(restored, prime):
    np.testing.assert_array_equal(
        gen(restored, prime, seed=9, top_k=1).tokens, gen(restored, prime, greedy=True).tokens
    )


def test_top_k_samples_only_the_k_most_likely_and_logprobs_are_the_models(restored, prime):
    """Teacher-force prime + sample through the model: every sampled token is
    among the k largest logits, and the reported log p are the model's own."""
    k = 5
    got = gen(restored, prime, seed=2, top_k=k, temperature=2.0)
    model, params = restored.model, restored.params
    seq = np.concatenate([np.tile(prime.ids, (SAMPLES, 1)), np.asarray(got.tokens)], 1)
    logits, _ = model.apply(params, jnp.asarray(seq), model.init_carry(SAMPLES))
    logits = np.asarray(logits[:, len(prime.ids) - 1 : -1])  # [S, N, V] predicting the samples
    rank = (logits > np.take_along_axis(logits, np.asarray(got.tokens)[..., None], -1)).sum(-1)
    assert rank.max() < k
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
    want = np.take_along_axis(logp, np.asarray(got.tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(got.logprobs, want, rtol=1e-4, atol=1e-4)


def test_top_k_filter_keeps_the_k_largest():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    out = np.asarray(sample.top_k_filter(logits, 2))
    np.testing.assert_array_equal(np.isfinite(out), [[0, 1, 0, 1], [1, 1, 0, 0]])


def test_stop_token_ends_each_sample(restored, prime):
    """A row stops at its first stop token (kept, counted); the rest is padding."""
    free = gen(restored, prime, seed=1)
    tokens = np.asarray(free.tokens)
    stop = int(tokens[0, 3])
    got = gen(restored, prime, seed=1, stop_id=stop)
    for row, got_row, n, lp in zip(
        tokens, np.asarray(got.tokens), got.lengths, got.logprobs, strict=True
    ):
        hits = np.flatnonzero(row == stop)
        want_n = hits[0] + 1 if hits.size else LENGTH
        assert n == want_n
        np.testing.assert_array_equal(got_row[:n], row[:n])
        assert (got_row[n:] == sample.PAD_ID).all() and (np.asarray(lp)[n:] == 0).all()
    decoded = sample.decode_generation(restored.tokenizer, prime, got, stop_id=stop)
    assert decoded.samples[0].ended and decoded.samples[0].num_tokens == int(got.lengths[0])


# ----------------------------------------------------------------------------
# Text API, training-loop use, CLI.


def test_sampler_decodes_text_and_does_not_recompile(restored):
    sampler = sample.make_sampler(
        restored.model,
        restored.tokenizer,
        prime="Spell",
        length=LENGTH,
        num_samples=SAMPLES,
        stop_at_record_end=True,
    )
    first = sampler(restored.params, jax.random.key(0))
    before = sample._sample_loop._cache_size(), sample._warm._cache_size()
    params2 = jax.tree.map(lambda x: x * 1.0, restored.params)  # new arrays, same shapes
    second = sampler(params2, jax.random.key(1))
    assert (sample._sample_loop._cache_size(), sample._warm._cache_size()) == before
    assert first.prime == "spell" and first.prime_scored_tokens == 1  # scored after "\n␞\n"
    assert np.isfinite(first.prime_log_likelihood)
    for s in first.samples + second.samples:
        assert s.text.startswith("spell") and RECORD_SEPARATOR not in s.text
        assert s.mean_log_likelihood < 0 and 1 <= s.num_tokens <= LENGTH
    rs = restored.tokenizer.record_separator_id
    assert all(s.ended == (s.ids[-1] == rs) for s in first.samples)


def test_beam_sampler_returns_the_top_beams_ranked_and_ignores_the_key(restored):
    """make_sampler(beam=N): the top num_samples beams of `beam_search` as text,
    best first, each score its mean log-likelihood (length penalty 1), the
    same for every key; format_result prints them as beams."""
    sampler = sample.make_sampler(
        restored.model,
        restored.tokenizer,
        prime="spell",
        length=LENGTH,
        num_samples=3,
        beam=4,
        stop_at_record_end=True,
    )
    first = sampler(restored.params, jax.random.key(0))
    again = sampler(restored.params, jax.random.key(1))  # deterministic: the key is unused
    assert [(s.text, s.score) for s in again.samples] == [(s.text, s.score) for s in first.samples]
    assert len(first.samples) == 3
    scores = [s.score for s in first.samples]
    assert scores == sorted(scores, reverse=True)
    prime_ids = sample.encode_prime(restored.tokenizer, "spell").ids
    beams = sample.beam_search(
        restored.model,
        restored.params,
        prime_ids,
        4,
        LENGTH,
        stop_id=restored.tokenizer.record_separator_id,
    )
    tokens, lengths = np.asarray(beams.tokens)[:3], np.asarray(beams.lengths)[:3]
    for s, ids, n in zip(first.samples, tokens, lengths, strict=True):
        np.testing.assert_array_equal(s.ids, ids[:n])
        assert s.text.startswith("spell") and RECORD_SEPARATOR not in s.text
        assert s.score == pytest.approx(s.mean_log_likelihood, rel=1e-5)
    text = sample.format_result(first, greedy=False)
    assert text.count("--- beam") == 3 and "--- beam 1:" in text and "score " in text


def test_record_start_context(restored):
    tok = restored.tokenizer
    with_start = sample.encode_prime(tok, "spell")
    assert tok.decode(with_start.ids) == f"\n{RECORD_SEPARATOR}\nspell"
    assert with_start.num_context == 3
    bare = sample.encode_prime(tok, "spell", record_start=False)
    assert bare.num_context == 0 and tok.decode(bare.ids) == "spell"
    assert sample.encode_prime(tok, "").num_context == 3  # empty prime = start of a record


def test_interactive_loop(restored):
    out = []
    sample.interactive_loop(
        restored,
        {"length": LENGTH, "num_samples": SAMPLES},
        0,
        greedy=False,
        rank=True,
        lines=iter(["spell", "xyzzy spell", ":q", "never read"]),
        out=out.append,
    )
    assert len(out) == 2
    assert out[0].count("--- sample") == SAMPLES and "spell" in out[0]
    assert out[1].startswith("error:") and "'xyzzy'" in out[1]


@pytest.mark.slow
def test_cli(workdir):
    relative = os.path.relpath(workdir, ROOT)  # as a user types it
    cmd = [sys.executable, "-m", "lstm_jax.sample", "--workdir", relative]
    ok = subprocess.run(
        [*cmd, "--prime", "spell", "--length", "6", "--num_samples", "2", "--stop_at_record_end"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert "step 10" in ok.stdout and ok.stdout.count("--- sample") == 2
    assert "prime 'spell': log-likelihood" in ok.stdout
    bad = subprocess.run([*cmd, "--temperature", "0"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "temperature must be > 0" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_beam(workdir):
    cmd = [sys.executable, "-m", "lstm_jax.sample", "--workdir", str(workdir)]
    ok = subprocess.run(
        [*cmd, "--prime", "spell", "--length", "6", "--beam", "3", "--num_samples", "2"]
        + ["--stop_at_record_end", "--length_penalty", "0.5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert "beam search, 3 beams, length penalty 0.5 (deterministic" in ok.stdout
    assert ok.stdout.count("--- beam") == 2 and "--- beam 1:" in ok.stdout
    bad = subprocess.run(
        [*cmd, "--beam", "3", "--greedy"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("lstm_jax.sample: error: beam 3 does not combine with greedy")


# ----------------------------------------------------------------------------
# Bad input.


def test_prime_with_unknown_words_names_them(restored):
    with pytest.raises(ValueError, match=r"'xyzzy', 'plugh'.*--allow_unk"):
        sample.encode_prime(restored.tokenizer, "spell xyzzy of plugh")
    ids = sample.encode_prime(restored.tokenizer, "spell xyzzy", allow_unk=True).ids
    assert ids[-1] == restored.tokenizer.unk_id


def test_prime_with_unknown_characters_names_them():
    tok = CharTokenizer.build("abc\n")
    model = LanguageModel(LMConfig(vocab_size=tok.vocab_size, hidden_size=8, num_layers=1))
    with pytest.raises(ValueError, match=r"characters not in the vocabulary: 'x', 'z'.*no <unk>"):
        sample.make_sampler(model, tok, prime="abxz", length=3)
    with pytest.raises(ValueError, match="no record separator"):
        sample.make_sampler(model, tok, prime="ab", length=3, stop_at_record_end=True)
    assert sample.encode_prime(tok, "").ids.tolist() == [tok.token_to_id("\n")]


@pytest.mark.parametrize(
    "options,match",
    [
        ({"temperature": 0.0}, "temperature must be > 0.*greedy"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"temperature": float("nan")}, "temperature must be > 0"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_k": 100_000}, "top_k .*<= 1914"),
        ({"length": 0}, "length must be >= 1"),
    ],
)
def test_bad_sampling_options(restored, options, match):
    with pytest.raises(ValueError, match=match):
        sample.make_sampler(restored.model, restored.tokenizer, **{"length": 5, **options})


def test_missing_or_empty_workdir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        sample.restore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in .*lstm_jax.train"):
        sample.restore(tmp_path / "empty")


def test_missing_checkpoint_step(workdir):
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        sample.restore(workdir, 7)


def _edited_copy(workdir: pathlib.Path, dest: pathlib.Path, edit) -> pathlib.Path:
    shutil.copytree(workdir, dest)
    path = dest / "checkpoints" / "10" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return dest


def test_checkpoint_without_a_tokenizer(workdir, tmp_path):
    wd = _edited_copy(workdir, tmp_path / "wd", lambda m: m.pop("tokenizer"))
    assert sample.restore(wd).tokenizer.vocab_size == 1914  # falls back to tokenizer.json
    (wd / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        sample.restore(wd)


def test_tokenizer_that_does_not_match_the_params(workdir, tmp_path):
    def drop_a_token(meta):
        meta["tokenizer"]["tokens"] = meta["tokenizer"]["tokens"][:-1]

    wd = _edited_copy(workdir, tmp_path / "wd", drop_a_token)
    with pytest.raises(CheckpointError, match="1913 tokens .* vocabulary of 1914.*does not belong"):
        sample.restore(wd)


def test_config_that_does_not_match_the_params(workdir, tmp_path):
    def bigger(meta):
        meta["config"]["model"]["hidden_size"] = 48

    wd = _edited_copy(workdir, tmp_path / "wd", bigger)
    with pytest.raises(CheckpointError, match="do not match the model its config describes"):
        sample.restore(wd)
