"""The token cache (lstm_jax/data/token_cache.py): the same ids as the in-memory
tokenizers, hit / miss / rebuild, damaged entries, split files, exact resume
with and without it, and several processes sharing one entry."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import helpers
import jax
import numpy as np
import pytest

from lstm_jax import train
from lstm_jax import workdir as workdir_lib
from lstm_jax.data import corpora, token_cache, tokenizers

WORD = dict(lowercase=True, min_count=2, max_vocab=None, split="regex")
SETTINGS = [
    ("char", {}),
    ("word", WORD),
    ("word", dict(lowercase=False, min_count=1, max_vocab=40, split="whitespace")),
]
# Cuts land inside lines, next to CRLFs, a BOM and non-ASCII letters.
TEXT_A = '\ufeffThe Wizard\'s tower: 10-foot walls, 1.5 gp.\r\nΣοφία said "fly!"\r\n' * 30
TEXT_B = "A second file <UNK> and <unk>; ΟΔΟΣ İstanbul 4–6 d6+\n\x1e\nend" * 25


@pytest.fixture
def two_files(tmp_path) -> corpora.CorpusFiles:
    (tmp_path / "a.txt").write_text(TEXT_A, newline="")
    (tmp_path / "b.txt").write_text(TEXT_B)
    return corpora.corpus_files("text", str(tmp_path / "*.txt"))


def in_memory(files: corpora.CorpusFiles, kind: str, options: dict):
    """Today's path: the whole text read, the tokenizer built and encode()."""
    text = corpora.read_corpus(files).text
    tok = tokenizers.build_tokenizer(kind, text, **options)
    return tok, tok.encode(text)


@pytest.mark.parametrize("kind,options", SETTINGS)
@pytest.mark.parametrize("chunk_bytes", [7, 64, 4 << 20])
def test_ids_and_text_equal_the_in_memory_tokenizers(
    two_files, tmp_path, kind, options, chunk_bytes
):
    want_tok, want_ids = in_memory(two_files, kind, options)
    got = token_cache.prepare(
        two_files, kind, options, root=tmp_path / "cache", chunk_bytes=chunk_bytes
    )
    assert got.tokenizer == want_tok
    np.testing.assert_array_equal(np.asarray(got.part("all")), want_ids)
    assert got.tokenizer.decode(got.part("all")) == want_tok.decode(want_ids)
    assert got.ids.dtype == np.uint16 and isinstance(got.ids, np.memmap)


def test_text_pieces_join_to_the_whole_file(two_files):
    whole = corpora.read_corpus(two_files).text
    for chunk_bytes in (1, 5, 100):
        assert "".join(corpora.iter_text(two_files.files, chunk_bytes=chunk_bytes)) == whole


def test_a_bad_byte_names_its_file_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine line\n" * 100 + b"bad \xff byte\n")
    files = corpora.corpus_files("text", str(path))
    with pytest.raises(ValueError, match="at byte offset 1004"):
        token_cache.prepare(files, "char", {}, root=tmp_path / "cache", chunk_bytes=64)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # nothing half-built


def test_hit_miss_and_rebuild(two_files, tmp_path):
    root = tmp_path / "cache"
    first = token_cache.prepare(two_files, "word", WORD, root=root)
    assert first.status == "built"
    manifest = json.loads((first.directory / "manifest.json").read_text())
    assert (
        manifest["tokens"] == len(first.ids)
        and manifest["vocab_size"] == first.tokenizer.vocab_size
    )
    again = token_cache.prepare(two_files, "word", WORD, root=root)
    assert again.status == "hit" and again.directory == first.directory
    # other settings: another entry, the first one kept
    other = token_cache.prepare(two_files, "word", {**WORD, "min_count": 1}, root=root)
    assert other.status == "built" and other.directory != first.directory
    assert first.directory.is_dir()
    # a source changed in place (new mtime): read again
    source = pathlib.Path(two_files.files[1])
    source.write_text(TEXT_B + " more words")
    changed = token_cache.prepare(
        corpora.corpus_files("text", str(source.parent / "*.txt")), "word", WORD, root=root
    )
    assert changed.status == "built" and changed.directory != first.directory
    assert len(changed.ids) > len(first.ids)
    assert [p.name for p in root.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize(
    "damage,why",
    [
        (lambda e: (e / "ids.bin").write_bytes((e / "ids.bin").read_bytes()[:-2]), "has"),
        (lambda e: _flip_a_byte(e / "ids.bin"), "CRC-32"),
        (lambda e: (e / "manifest.json").write_text("{not json"), "unreadable manifest"),
        (lambda e: (e / "manifest.json").unlink(), "no manifest"),
        (lambda e: (e / "ids.bin").unlink(), "no ids.bin"),
        (lambda e: (e / "tokenizer.json").unlink(), "no tokenizer.json"),
        (lambda e: (e / "tokenizer.json").write_text("[1, 2"), "unreadable tokenizer.json"),
        (lambda e: (e / "manifest.json").write_text('{"format": 1}'), "without its fields"),
    ],
)
def test_a_damaged_entry_is_rebuilt_never_used(two_files, tmp_path, damage, why):
    root = tmp_path / "cache"
    good = token_cache.prepare(two_files, "char", {}, root=root)
    want = np.array(good.ids)
    del good
    damage(root / next(p.name for p in root.iterdir() if p.is_dir()))
    again = token_cache.prepare(two_files, "char", {}, root=root)
    assert again.status.startswith("rebuilt") and why in again.status
    np.testing.assert_array_equal(np.asarray(again.ids), want)


def _flip_a_byte(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_crashed_build_leaves_nothing_that_is_read(two_files, tmp_path):
    root = tmp_path / "cache"
    key, _ = token_cache.cache_key(
        two_files, {"tokenizer": "char", "options": {}, "encoding_errors": "strict"}
    )
    stale = root / f"{key}.tmp-crashed"
    stale.mkdir(parents=True)
    (stale / "ids.bin").write_bytes(b"\0" * 10)
    got = token_cache.prepare(two_files, "char", {}, root=root)
    assert got.status == "built" and not stale.exists()


def test_an_unwritable_cache_dir_says_how_to_go_on(two_files, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(token_cache.CacheError, match="--config.data.cache=False"):
        token_cache.prepare(two_files, "char", {}, root=blocker / "cache")


@pytest.fixture
def wiki_dir(tmp_path) -> pathlib.Path:
    d = tmp_path / "wikitext"
    d.mkdir()
    line = " = Valley = \n the river ran through the valley , and the valley was green . \n"
    for split, n, extra in (("train", 200, ""), ("valid", 20, " a zebra "), ("test", 20, " 7 ")):
        (d / f"wiki.{split}.tokens").write_text((line + extra + "\n") * n)
    return d


@pytest.mark.parametrize("kind,options", [("char", {}), ("word", {**WORD, "split": "whitespace"})])
def test_split_files_equal_the_in_memory_splits(wiki_dir, tmp_path, kind, options):
    files = corpora.corpus_files("text", str(wiki_dir))
    assert files.has_splits and [pathlib.Path(f).name for f in files.files] == [
        "wiki.train.tokens",
        "wiki.valid.tokens",
        "wiki.test.tokens",
    ]
    if kind == "char":  # "z" and "7" are in no training line: a char model cannot encode them
        with pytest.raises(ValueError, match="not in the vocabulary: 'z'"):
            token_cache.prepare(files, kind, options, root=tmp_path / "cache")
        return
    corpus = corpora.read_corpus(files)
    tok = tokenizers.build_tokenizer(kind, corpus.splits["train"], **options)
    got = token_cache.prepare(files, kind, options, root=tmp_path / "cache")
    assert got.tokenizer == tok
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(np.asarray(got.part(split)), tok.encode(corpus.splits[split]))
    assert "zebra" not in tok.tokens and tok.unk_id in np.asarray(got.part("valid"))


def test_explicit_split_paths(wiki_dir):
    files = corpora.corpus_files(
        "text",
        None,
        {
            "train": str(wiki_dir / "wiki.train.tokens"),
            "valid": str(wiki_dir / "wiki.valid.tokens"),
            "test": None,
        },
    )
    assert files.parts["test"] == [] and len(files.parts["valid"]) == 1
    with pytest.raises(ValueError, match="need data.train_path"):
        corpora.corpus_files(
            "text",
            None,
            {"train": None, "valid": str(wiki_dir / "wiki.valid.tokens"), "test": None},
        )
    with pytest.raises(ValueError, match="give the splits one way"):
        corpora.corpus_files("text", str(wiki_dir), {"train": str(wiki_dir / "wiki.train.tokens")})


def test_a_directory_without_split_files_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="wiki.train.tokens"):
        corpora.corpus_files("text", str(tmp_path))


def test_the_header_names_what_was_read(tmp_path, two_files):
    big = tmp_path / "big.txt"
    big.write_text("to be or not to be\n" * 1000)
    files = corpora.corpus_files("tiny_shakespeare", str(big))
    assert files.description == f"text from {big} (19,000 bytes)"


def config_on(path: pathlib.Path, cache_dir: pathlib.Path, **overrides):
    c = helpers.smoke(
        **{
            "data.corpus": "text",
            "data.path": str(path),
            "data.cache_dir": str(cache_dir),
            "train.num_steps": 12,
            "train.eval_every": 6,
            "train.checkpoint_every": 6,
            "train.sample_length": 0,
            **overrides,
        }
    )
    return c


@pytest.mark.slow
def test_resume_with_the_cache_equals_a_run_without_it(tmp_path, story):
    """12 steps in memory == 6 steps from the cache, restart, 6 more (bitwise)."""
    cache = tmp_path / "cache"
    without = train.train_and_evaluate(
        config_on(story, cache, **{"data.cache": False}), str(tmp_path / "a")
    )
    assert not cache.exists()
    train.train_and_evaluate(config_on(story, cache, **{"train.num_steps": 6}), str(tmp_path / "b"))
    resumed = train.train_and_evaluate(config_on(story, cache), str(tmp_path / "b"))
    assert resumed["start_step"] == 6 and resumed["val_loss"] == without["val_loss"]
    for a, b in zip(
        jax.tree.leaves(helpers.restore(tmp_path / "a", 12)),
        jax.tree.leaves(helpers.restore(tmp_path / "b", 12)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_test_split_is_scored_at_the_end(tmp_path, wiki_dir):
    c = config_on(wiki_dir, tmp_path / "cache", **{"data.word_split": "whitespace"})
    summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert summary["test_loss"] > 0 and summary["test_perplexity"] == pytest.approx(
        np.exp(summary["test_loss"]), rel=1e-6
    )


BUILD_AT_ONCE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from lstm_jax.data import corpora, token_cache
    files = corpora.corpus_files("text", sys.argv[1])
    got = token_cache.prepare(files, "word", json.loads(sys.argv[3]), root=Path(sys.argv[2]),
                              chunk_bytes=4096)
    print(json.dumps({"status": got.status, "dir": str(got.directory), "n": len(got.ids),
                      "sum": int(got.ids.astype("int64").sum())}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(5))
def test_two_processes_building_one_entry_at_once(tmp_path, attempt):
    text = tmp_path / "t.txt"
    text.write_text((TEXT_A + TEXT_B) * 200)
    root = tmp_path / "cache"
    cmd = [sys.executable, "-c", BUILD_AT_ONCE, str(text), str(root), json.dumps(WORD)]
    procs = [
        subprocess.Popen(
            cmd, cwd=helpers.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["status"] for r in results) == ["built", "hit"]
    assert len({(r["dir"], r["n"], r["sum"]) for r in results}) == 1
    assert [p.name for p in root.iterdir() if p.is_dir()] == [pathlib.Path(results[0]["dir"]).name]


@pytest.mark.slow
def test_two_training_processes_share_one_cache_and_equal_one(tmp_path, story):
    """launch/local.py -n 2 on a text corpus through a fresh cache: the same run
    as one process without the cache (each process reads only its rows)."""
    cache, wd, ref = tmp_path / "cache", tmp_path / "wd", tmp_path / "ref"
    overrides = {"data.corpus": "text", "data.path": str(story), "data.cache_dir": str(cache)}
    reference = helpers.smoke_config(**overrides, **{"data.cache": False})
    train.train_and_evaluate(reference, str(ref))
    command = helpers.train_cli(
        wd,
        *helpers.cli_overrides(**overrides),
    )
    code, out = helpers.run_local(2, command, 240)
    assert code == 0, out[-4000:]
    assert "token cache built" in out or "token cache hit" in out
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    helpers.assert_same_run(wd, ref, range(1, helpers.STEPS + 1))


def test_cache_settings_do_not_block_a_resume():
    saved = helpers.smoke(**{"data.cache": True}).to_dict()
    now = helpers.smoke(**{"data.cache": False, "data.cache_dir": "/elsewhere"}).to_dict()
    workdir_lib.check_compatible(saved, now, pathlib.Path("wd"))


def test_memory_mapped_ids_stay_on_disk_in_the_batcher(two_files, tmp_path):
    from lstm_jax.data import batching

    got = token_cache.prepare(two_files, "char", {}, root=tmp_path / "cache")
    batcher = batching.TrainBatcher(got.part("all"), batch_size=2, seq_len=8)
    assert isinstance(batcher.ids, np.memmap)
    batch = batcher.next_batch()
    assert batch.inputs.dtype == np.int32
    np.testing.assert_array_equal(batch.inputs[0], np.asarray(got.ids[:8], np.int32))


def test_the_default_root_follows_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_DATA_DIR", str(tmp_path))
    assert token_cache.cache_root(None) == tmp_path / "token_cache"
    assert token_cache.cache_root("~/x") == pathlib.Path(os.path.expanduser("~/x"))


@pytest.mark.slow
@pytest.mark.parametrize("kind,options", [s for s in SETTINGS if s[0] == "word"])
def test_a_helper_process_on_half_the_text_gives_the_same_ids(
    two_files, wiki_dir, tmp_path, kind, options
):
    want_tok, want_ids = in_memory(two_files, kind, options)
    got = token_cache.prepare(two_files, kind, options, root=tmp_path / "c1", parallel_min_bytes=0)
    assert got.tokenizer == want_tok
    np.testing.assert_array_equal(np.asarray(got.part("all")), want_ids)
    # split files: the cut falls in the training file; valid and test go to the helper
    files = corpora.corpus_files("text", str(wiki_dir))
    corpus = corpora.read_corpus(files)
    tok = tokenizers.build_tokenizer(kind, corpus.splits["train"], **options)
    got = token_cache.prepare(files, kind, options, root=tmp_path / "c2", parallel_min_bytes=0)
    assert got.tokenizer == tok
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(np.asarray(got.part(split)), tok.encode(corpus.splits[split]))


@pytest.mark.slow
def test_a_bad_byte_in_the_helpers_half_is_reported_as_in_ours(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine line\n" * 1000 + b"bad \xff byte\n")
    files = corpora.corpus_files("text", str(path))
    with pytest.raises(ValueError, match="bad.txt: not valid UTF-8 at byte offset 10004"):
        token_cache.prepare(files, "word", WORD, root=tmp_path / "cache", parallel_min_bytes=0)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def _rss_file_kb() -> int:
    status = pathlib.Path("/proc/self/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("RssFile:")).split()[1])


def test_released_pages_leave_the_resident_set(tmp_path):
    from lstm_jax.data import batching

    path = tmp_path / "ids.bin"
    np.arange(32 << 20, dtype=np.uint16).tofile(path)  # 64 MB
    ids = np.memmap(path, dtype=np.uint16, mode="r")[1:]
    before = _rss_file_kb()
    assert int(ids.astype(np.int64).sum()) > 0
    assert _rss_file_kb() - before > 50_000  # the scan mapped ~64 MB
    batching.release_pages(ids)
    assert _rss_file_kb() - before < 10_000
