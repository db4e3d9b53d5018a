"""Tests for lstm_jax.data: corpora, tokenizers, batching. No network, no GPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lstm_jax.data import batching, corpora, tokenizers
from lstm_jax.data.batching import (
    TrainBatcher,
    count_eval_tokens,
    eval_batches,
    num_eval_batches,
    split_by_fraction,
)
from lstm_jax.data.corpora import RECORD_SEPARATOR, clean_spell_markup, load_corpus
from lstm_jax.data.tokenizers import (
    CharTokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_json,
)

# ---------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dnd():
    return load_corpus("dnd_spells")


def test_dnd_spells_has_339_clean_records(dnd):
    records = dnd.text.split(f"\n{RECORD_SEPARATOR}\n")
    assert len(records) == 339
    assert dnd.text.count(RECORD_SEPARATOR) == 338  # only between records
    assert dnd.record_separator == RECORD_SEPARATOR and dnd.splits is None
    for bad in ("[[", "]]", "&Reference", "&reference", "&amp;", "&lt;", "<p>", "</p>", "@"):
        assert bad not in dnd.text, bad
    for bad in ("{", "}", "=", "#", "Foundry", "\xa0", "\xad"):
        assert bad not in dnd.text, bad
    # Sorted by slug; header "Name\nLevel N school" or "School cantrip".
    assert records[0].startswith("Acid Arrow\nLevel 2 evocation\nA shimmering green arrow")
    assert records[1].startswith("Acid Splash\nEvocation cantrip\n")
    headers = {r.split("\n")[1].split()[-1] for r in records}
    assert headers == {
        "abjuration",
        "conjuration",
        "divination",
        "enchantment",
        "evocation",
        "illusion",
        "necromancy",
        "transmutation",
        "cantrip",
    }
    assert load_corpus("dnd_spells").text == dnd.text  # deterministic


def test_dnd_spells_markup_rendered_in_context(dnd):
    by_name = {r.split("\n", 1)[0]: r for r in dnd.text.split(f"\n{RECORD_SEPARATOR}\n")}
    assert "Roll 1d6 at the end of each of your turns" in by_name["Blink"]
    assert "Each fissure is 1d10 × 10 feet deep" in by_name["Earthquake"]
    assert "requiring a DC 20 Strength (Athletics) check" in by_name["Earthquake"]
    assert "the target has the Charmed condition" in by_name["Charm Person"]
    assert "Each creature in a 20-foot-radius Sphere centered" in by_name["Fireball"]
    assert "an extra 1d6 Force damage" in by_name["Hunter's Mark"]
    assert "Spell levels blocked: 5 and lower" in by_name["Globe of Invulnerability"]
    assert "takes 5d8 Acid, Cold, Fire, Lightning, or Thunder damage" in by_name["Glyph of Warding"]
    assert "Using a Higher-Level Spell Slot. You can target" in by_name["Jump"]
    assert by_name["Magic Missile"].endswith("for each spell slot level above 1.")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("roll [[/r 1d6]] now", "roll 1d6 now"),
        ("takes [[/damage 2d4 type=acid]] damage", "takes 2d4 Acid damage"),
        ("has the &amp;Reference[Prone] condition", "has the Prone condition"),
        ("has the &Reference[prone apply=false] condition", "has the Prone condition"),
        ("into &amp;Reference[difficultterrain].", "into Difficult Terrain."),
        ("is &amp;Reference[HeavilyObscured].", "is Heavily Obscured."),
        ("has &amp;Reference[damageresistance]{Resistance} to", "has Resistance to"),
        ("a [[/save ability=wis dc=@attributes.spell.dc]] saving throw", "a Wisdom saving throw"),
        ("on a [[/save ability=con format=long]], or", "on a Constitution saving throw, or"),
        ("an [[/check ability=int skill=arc dc=@x.dc]] check", "an Intelligence (Arcana) check"),
        ("a [[/r 1d100cs&lt;26#Capsized]]{25 percent} chance", "a 25 percent chance"),
        ("The end. [[@item.level]]{Number of leaps}", "The end."),
        (
            "See below.\n\n@Embed[Compendium.x.RollTable.y rollable]{Table}\n\nNext.",
            "See below.\n\nNext.",
        ),
        ("<p>One &amp; two.</p><p>Three</p>", "One & two.\n\nThree"),
        ("Text.\n\nFoundry Note\n\nThe activity is configured.", "Text."),
        ("a [[lookup @name]] spell", "a Test Spell spell"),
    ],
)
def test_clean_spell_markup(raw, clean):
    spell = {"name": "Test Spell", "level": 3}
    assert clean_spell_markup(raw, spell) == clean


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(ValueError, match="unknown corpus 'nope'") as e:
        load_corpus("nope")
    for name in corpora.CORPORA:
        assert name in str(e.value)


def test_text_corpus_file_and_glob(tmp_path):
    (tmp_path / "b.txt").write_text("second\r\nfile")
    (tmp_path / "a.txt").write_text("\ufefffirst")
    assert load_corpus("text", str(tmp_path / "a.txt")).text == "first"
    c = load_corpus("text", str(tmp_path / "*.txt"))
    assert c.text == "first\nsecond\nfile"  # sorted, "\n"-joined, BOM and CR dropped
    assert c.splits is None and c.record_separator is None


def test_text_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match=r"--config\.data\.path="):
        load_corpus("text")
    with pytest.raises(FileNotFoundError, match="missing.txt.*does not exist"):
        load_corpus("text", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_corpus("text", str(tmp_path / "*.md"))
    with pytest.raises(ValueError, match="is a directory"):
        load_corpus("text", str(tmp_path))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        load_corpus("text", str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="takes no path"):
        load_corpus("dnd_spells", str(tmp_path))
    with pytest.raises(ValueError, match="encoding_errors='bogus' is not supported"):
        load_corpus("text", str(tmp_path / "empty.txt"), encoding_errors="bogus")


def test_text_corpus_non_utf8(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 ok")
    with pytest.raises(ValueError) as e:
        load_corpus("text", str(bad))
    msg = str(e.value)
    assert "latin1.txt" in msg and "byte offset 3" in msg
    assert "encoding_errors='replace'" in msg and "data.encoding_errors" in msg
    assert load_corpus("text", str(bad), encoding_errors="replace").text == "caf\ufffd ok"


def test_tiny_shakespeare_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_DATA_DIR", str(tmp_path / "cache"))
    # Port 9 on localhost: refused at once, no network needed.
    monkeypatch.setattr(corpora, "TINY_SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    monkeypatch.setattr(corpora, "DOWNLOAD_TIMEOUT_S", 2.0)
    with pytest.raises(corpora.DownloadError) as e:
        load_corpus("tiny_shakespeare")
    assert "--config.data.path=/path/to/input.txt" in str(e.value)
    assert not (tmp_path / "cache" / corpora.TINY_SHAKESPEARE_FILENAME).exists()


def test_tiny_shakespeare_download_cache_and_checksum(tmp_path, monkeypatch):
    import hashlib

    payload = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    source = tmp_path / "input.txt"
    source.write_bytes(payload)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LSTM_JAX_DATA_DIR", str(cache))
    monkeypatch.setattr(corpora, "TINY_SHAKESPEARE_URL", source.as_uri())
    # Wrong checksum: error, nothing written to the cache.
    with pytest.raises(corpora.DownloadError, match="sha256"):
        load_corpus("tiny_shakespeare")
    assert not cache.exists() or not any(cache.iterdir())
    # Right checksum: downloaded once, atomically, then read from the cache.
    monkeypatch.setattr(corpora, "TINY_SHAKESPEARE_SHA256", hashlib.sha256(payload).hexdigest())
    assert load_corpus("tiny_shakespeare").text == payload.decode()
    assert sorted(p.name for p in cache.iterdir()) == [corpora.TINY_SHAKESPEARE_FILENAME]
    source.unlink()  # a cache hit needs no source
    assert load_corpus("tiny_shakespeare").text == payload.decode()
    # A corrupted cache file is an error, and is not deleted.
    (cache / corpora.TINY_SHAKESPEARE_FILENAME).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="expected"):
        load_corpus("tiny_shakespeare")
    assert (cache / corpora.TINY_SHAKESPEARE_FILENAME).read_bytes() == b"tampered"
    # An explicit path skips the cache and the checksum.
    local = tmp_path / "mine.txt"
    local.write_text("ROMEO:\nhi")
    assert load_corpus("tiny_shakespeare", str(local)).text == "ROMEO:\nhi"


def test_ptb_splits(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(f" the {split} <unk> n't \n a b \n")
    c = load_corpus("ptb", str(tmp_path))
    assert set(c.splits) == {"train", "valid", "test"}
    assert c.text == c.splits["train"] == " the train <unk> n't \n a b \n"
    (tmp_path / "ptb.valid.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks ptb\.valid\.txt"):
        load_corpus("ptb", str(tmp_path))
    with pytest.raises(ValueError, match=r"--config\.data\.path="):
        load_corpus("ptb")


# ---------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_errors(tmp_path):
    text = f"Acid Arrow\nLevel 2 evocation\n{RECORD_SEPARATOR}\nÆther — 1d6"
    tok = build_tokenizer("char", text)
    assert isinstance(tok, CharTokenizer)
    assert tok.tokens == sorted(set(text)) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert tok.record_separator_id == tok.tokens.index(RECORD_SEPARATOR)
    assert tok.unk_id is None
    assert tok.unknown_symbols("Acid Zap!") == ["Z", "p", "!"]
    with pytest.raises(ValueError, match=r"'Z', 'p', '!'"):
        tok.encode("Acid Zap!")
    path = tmp_path / "vocab.json"
    tok.save(path)
    assert json.loads(path.read_text())["kind"] == "char"
    assert load_tokenizer(path) == tok
    assert np.array_equal(load_tokenizer(path).encode(text), ids)


def test_word_tokenizer_round_trip():
    text = "The target takes 4d4 acid damage, then 2d4 more.\nOn a miss, half."
    tok = build_tokenizer("word", text)
    assert isinstance(tok, WordTokenizer)
    assert tok.decode(tok.encode(text)) == text.lower() == tok.normalize(text)
    cased = build_tokenizer("word", text, lowercase=False)
    assert cased.decode(cased.encode(text)) == text


@pytest.mark.parametrize(
    "sentence",
    [
        "A 10-foot-radius Sphere (see below) deals 1d4 + 1 damage; roll 4–6.",
        'You could say, "Walk to the village." Then it ends.',
        "The wall—up to 90 feet long—appears. It can't move: spell's end!",
        "Level 2+ slots give a +10 bonus and a −2 penalty to 25,000 GP items.",
        f"Fire Bolt\nEvocation cantrip\nHot.\n{RECORD_SEPARATOR}\nNext Spell\n\nText",
    ],
)
def test_word_tokenizer_decode_spacing(sentence):
    tok = build_tokenizer("word", sentence, lowercase=False)
    assert tok.decode(tok.encode(sentence)) == sentence


def test_word_tokenizer_tokens():
    tok = build_tokenizer("word", "x")
    assert tok.pieces(f"A 10-foot Cube, 1d6.\n{RECORD_SEPARATOR}\n(can't)") == [
        "a",
        "10-foot",
        "cube",
        ",",
        "1d6",
        ".",
        "\n",
        RECORD_SEPARATOR,
        "\n",
        "(",
        "can't",
        ")",
    ]


def test_word_tokenizer_vocab_unk_and_options(tmp_path):
    text = "b a c a b a\nd ."
    tok = build_tokenizer("word", text)
    # <unk> first, then by count descending, ties alphabetical.
    assert tok.tokens == ["<unk>", "a", "b", "\n", ".", "c", "d"]
    assert tok.unk_id == 0 and tok.record_separator_id is None
    assert tok.encode("a zebra b").tolist() == [1, 0, 2]
    assert tok.unknown_symbols("a zebra b yak zebra") == ["zebra", "yak"]
    with pytest.raises(ValueError, match="'zebra'"):
        tok.encode("a zebra", strict=True)
    rare = build_tokenizer("word", text, min_count=2)
    assert rare.tokens == ["<unk>", "a", "b", "\n"]  # "\n" kept though seen once
    assert rare.encode("c").tolist() == [0]
    assert build_tokenizer("word", text, max_vocab=3).tokens == ["<unk>", "a", "\n"]
    no_unk = build_tokenizer("word", text, unk_token=None)
    assert no_unk.unk_id is None
    with pytest.raises(ValueError, match="'zebra'"):
        no_unk.encode("a zebra")
    with pytest.raises(ValueError, match="unk_token is None"):
        build_tokenizer("word", text, unk_token=None, min_count=2)
    path = tmp_path / "word.json"
    rare.save(path)
    back = load_tokenizer(path)
    assert back == rare and back.to_json() == tokenizer_from_json(rare.to_json()).to_json()
    assert build_tokenizer("word", text).tokens == tok.tokens  # deterministic


def test_word_tokenizer_whitespace_split_for_ptb():
    text = " the company 's <unk> fell N % \n mr. <unk> said \n"
    tok = build_tokenizer("word", text, split="whitespace")
    assert tok.unk_id == tok.tokens.index("<unk>") == 0
    assert tok.pieces(text)[:6] == ["the", "company", "'s", "<unk>", "fell", "n"]
    assert "mr." in tok.tokens
    assert tok.decode(tok.encode(text)) == "the company 's <unk> fell n %\nmr. <unk> said\n"


def test_build_tokenizer_unknown_kind():
    with pytest.raises(ValueError, match="valid kinds: char, word"):
        build_tokenizer("bpe", "text")


def test_tokenizers_on_dnd_corpus(dnd):
    char = build_tokenizer("char", dnd.text)
    assert char.decode(char.encode(dnd.text)) == dnd.text
    word = build_tokenizer("word", dnd.text)
    ids = word.encode(dnd.text, strict=True)
    assert word.decode(ids) == dnd.text.lower()  # the whole corpus round-trips
    assert word.record_separator_id is not None
    assert (ids == word.record_separator_id).sum() == 338


# ---------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------


def _pairs(batches):
    """Multiset of (input position) recovered from batches over arange ids."""
    out = []
    for b in batches:
        real = b.mask > 0
        assert np.array_equal(b.targets[real], b.inputs[real] + 1)
        out.extend(b.inputs[real].tolist())
    return sorted(out)


def test_split_by_fraction():
    ids = np.arange(100)
    parts = split_by_fraction(ids, (0.8, 0.1, 0.1))
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [80, 10, 10]
    assert np.array_equal(np.concatenate(list(parts.values())), ids)
    assert len(split_by_fraction(ids)["test"]) == 0
    with pytest.raises(ValueError, match="sum to <= 1"):
        split_by_fraction(ids, (0.9, 0.2, 0.0))


def test_streams_cover_each_pair_once_with_carried_state():
    B, T = 4, 5
    ids = np.arange(4 * 5 * 3 + 1 + 7)  # 3 windows per stream, 7 dropped at the end
    batcher = TrainBatcher(ids, B, T, mode="streams")
    assert batcher.steps_per_epoch == 3 and batcher.tokens_per_epoch == 60
    epoch = [batcher.next_batch() for _ in range(3)]
    assert batcher.state() == {"epoch": 1, "index": 0}
    assert _pairs(epoch) == list(range(60))
    for k, b in enumerate(epoch):
        assert b.inputs.shape == (B, T) and b.inputs.dtype == np.int32
        assert b.mask.dtype == np.float32 and b.reset.dtype == np.bool_
        assert b.reset[:, 0].all() == (k == 0) and not b.reset[:, 1:].any()
        if k:  # row r continues where it stopped: the carry is valid
            assert np.array_equal(b.inputs[:, 0], epoch[k - 1].targets[:, -1])
    again = batcher.next_batch()  # epoch 2 starts over with a reset
    assert np.array_equal(again.inputs, epoch[0].inputs) and again.reset[:, 0].all()


def test_windows_cover_each_pair_once_and_are_seeded():
    B, T = 3, 4
    ids = np.arange(6 * B * T + 1)
    batcher = TrainBatcher(ids, B, T, mode="windows", seed=1)
    assert batcher.steps_per_epoch == 6
    epoch0 = [batcher.next_batch() for _ in range(6)]
    assert _pairs(epoch0) == list(range(6 * B * T))
    assert all(b.reset[:, 0].all() and not b.reset[:, 1:].any() for b in epoch0)
    epoch1 = [batcher.next_batch() for _ in range(6)]
    assert _pairs(epoch1) == list(range(6 * B * T))
    order = lambda bs: np.concatenate([b.inputs[:, 0] for b in bs]).tolist()  # noqa: E731
    assert order(epoch0) != order(epoch1)  # a new permutation each epoch
    same = TrainBatcher(ids, B, T, mode="windows", seed=1)
    other = TrainBatcher(ids, B, T, mode="windows", seed=2)
    assert order([same.next_batch() for _ in range(6)]) == order(epoch0)
    assert order([other.next_batch() for _ in range(6)]) != order(epoch0)


@pytest.mark.parametrize("mode", ["streams", "windows"])
def test_state_restore_continues_identically(mode):
    ids = np.arange(2 * 3 * 5 + 3)
    original = TrainBatcher(ids, 2, 3, mode=mode, seed=7)
    for _ in range(7):  # past an epoch boundary (5 steps per epoch)
        original.next_batch()
    state = json.loads(json.dumps(original.state()))
    assert state == {"epoch": 1, "index": 2}
    restored = TrainBatcher(ids, 2, 3, mode=mode, seed=7)
    restored.restore(state)
    for _ in range(8):
        a, b = original.next_batch(), next(restored)
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)
    with pytest.raises(ValueError, match="does not fit"):
        restored.restore({"epoch": 0, "index": 99})


@pytest.mark.parametrize("mode", ["streams", "windows"])
def test_shards_concatenate_to_the_global_batch(mode):
    ids = np.arange(8 * 4 * 3 + 1)
    whole = TrainBatcher(ids, 8, 4, mode=mode, seed=3)
    shards = [
        TrainBatcher(ids, 8, 4, mode=mode, seed=3, shard_index=i, num_shards=4) for i in range(4)
    ]
    for _ in range(4):
        full = whole.next_batch()
        parts = [s.next_batch() for s in shards]
        assert parts[0].inputs.shape == (shards[0].local_batch_size, 4) == (2, 4)
        for field in range(4):
            assert np.array_equal(np.concatenate([p[field] for p in parts]), full[field])


def test_train_batcher_errors():
    with pytest.raises(ValueError) as e:
        TrainBatcher(np.arange(50), 8, 8)
    msg = str(e.value)
    assert "50 tokens" in msg and "at least batch_size*seq_len+1 = 65" in msg
    assert "smaller batch_size or seq_len" in msg
    with pytest.raises(ValueError, match="valid modes: streams, windows"):
        TrainBatcher(np.arange(100), 2, 2, mode="random")
    with pytest.raises(ValueError, match="not divisible by num_shards 4"):
        TrainBatcher(np.arange(100), 6, 2, num_shards=4)


@pytest.mark.parametrize(("n", "B", "T"), [(1001, 4, 16), (200, 8, 7), (20, 8, 5), (3, 4, 8)])
def test_eval_covers_each_target_once(n, B, T):
    ids = np.arange(n)
    batches = list(eval_batches(ids, B, T))
    assert len(batches) == num_eval_batches(n, B, T)
    assert all(b.inputs.shape == (B, T) and b.mask.shape == (B, T) for b in batches)
    assert sum(b.mask.sum() for b in batches) == count_eval_tokens(ids) == n - 1
    assert _pairs(batches) == list(range(n - 1))
    assert batches[0].reset[:, 0].all() and not any(b.reset.any() for b in batches[1:])
    for k in range(1, len(batches)):  # carried state: each row continues its stream
        cont = (batches[k].mask[:, 0] > 0) & (batches[k - 1].mask[:, -1] > 0)
        assert np.array_equal(batches[k].inputs[cont, 0], batches[k - 1].targets[cont, -1])


def test_eval_small_split_uses_fewer_streams():
    batches = list(eval_batches(np.arange(21), 8, 5))  # 20 targets -> 4 streams of 5
    rows_used = (sum(b.mask for b in batches).sum(axis=1) > 0).sum()
    assert rows_used == 4
    with pytest.raises(ValueError, match="at least 2 tokens"):
        list(eval_batches(np.arange(1), 8, 5))


def test_modules_use_numpy_not_jax():
    for module in (corpora, tokenizers, batching):
        source = Path(module.__file__).read_text()
        assert "import jax" not in source
