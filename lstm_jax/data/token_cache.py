"""Tokenize once: a file corpus's token ids in one flat file, memory-mapped by
every later run (as nanoGPT's prepare.py writes train.bin / val.bin once).

The first run streams the corpus in pieces of a few MB (`corpora.iter_text`),
so building takes memory for the vocabulary, never for the corpus:

- word: one pass. Each piece's words get provisional ids (the order of first
  appearance) that go to a scratch file while their counts add up; then the
  vocabulary is ranked from the counts (`WordTokenizer.from_counts`, the same
  rule as `WordTokenizer.build`) and the scratch ids are renumbered into it.
- char: two passes. The first counts code points, the second looks them up.

The ids are the ones `build_tokenizer(...).encode(text)` gives for the whole
text (tests/test_token_cache.py checks it), so a run with the cache and one
without train on the same batches.

A cache entry is a directory named by a key over everything the ids depend on:

- the source files (resolved path, size and modification time: a file changed
  in place keeps its path but not its mtime, so it is read again; a file
  copied with its mtime kept, and changed, is not noticed);
- the tokenizer settings, the encoding-error rule and the corpus name.

It holds `ids.bin` (uint16 when the vocabulary fits, else uint32),
`tokenizer.json` and `manifest.json` (sources, settings, the split
boundaries, the ids' size and CRC-32), written last. An entry is built in a
temporary directory and renamed into place whole, under a lock file, so a
second process waits for the first and then reads its entry; a crashed build
leaves only a temporary directory, which the next build removes. Every load
checks the manifest, the size and the CRC-32 of `ids.bin` (about 0.25 s per GB
of ids); an entry that fails is deleted and built again, never trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lstm_jax.data import corpora, tokenizers

__all__ = ["CacheError", "Prepared", "cache_root", "prepare"]

FORMAT = 1
_IDS, _TOKENIZER, _MANIFEST = "ids.bin", "tokenizer.json", "manifest.json"
_SCRATCH = "provisional.u32"
_MANIFEST_FIELDS = ("dtype", "tokens", "bounds", "ids_bytes", "ids_crc32")
_BLOCK = 1 << 24  # ids per block when renumbering, hashing and counting (16M)


class CacheError(RuntimeError):
    """The token cache cannot be used (a directory that cannot be written)."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A corpus as token ids.

    tokenizer: built on the training text.
    ids: all the ids, memory-mapped read-only (parts in the order of `bounds`).
    bounds: part -> (start, stop) in `ids`: "all" for a corpus to split by
      fraction, else "train", "valid", "test".
    description: what was read (paths and bytes).
    status: "hit", "built", or "rebuilt (why)".
    directory: the cache entry.
    """

    tokenizer: tokenizers.Tokenizer
    ids: np.ndarray
    bounds: dict[str, tuple[int, int]]
    description: str
    status: str
    directory: Path

    def part(self, name: str) -> np.ndarray:
        start, stop = self.bounds[name]
        return self.ids[start:stop]


def cache_root(configured: str | None = None) -> Path:
    """`data.cache_dir`, or <the corpora's data dir>/token_cache."""
    if configured:
        return Path(os.path.expanduser(configured)).absolute()
    return corpora.data_dir() / "token_cache"


def _source_record(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(files: corpora.CorpusFiles, settings: dict[str, Any]) -> tuple[str, dict]:
    """The entry's name and what it was made from (sources, settings)."""
    identity = {
        "format": FORMAT,
        "corpus": files.name,
        "sources": {
            part: [_source_record(f) for f in names] for part, names in files.parts.items()
        },
        "settings": settings,
    }
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24], identity


def _crc32_of(path: Path) -> int:
    """CRC-32 of a file, read in blocks (no memory map: its pages would count
    in the process's resident memory)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(64 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _check_entry(entry: Path, key: str) -> str | None:
    """None if the entry is whole, else why not."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return "a manifest of another format"
    if manifest.get("key") != key or not all(k in manifest for k in _MANIFEST_FIELDS):
        return "a manifest of another key, or without its fields"
    ids = entry / _IDS
    try:
        size = ids.stat().st_size
    except FileNotFoundError:
        return f"no {_IDS}"
    if size != manifest["ids_bytes"]:
        return f"{_IDS} has {size:,} bytes, the manifest says {manifest['ids_bytes']:,}"
    if _crc32_of(ids) != manifest["ids_crc32"]:
        return f"{_IDS} does not match its CRC-32"
    try:
        tokenizers.load_tokenizer(entry / _TOKENIZER)
    except FileNotFoundError:
        return f"no {_TOKENIZER}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {_TOKENIZER} ({e})"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock (flock) on `path`: one process builds an entry while
    the others wait, then read it."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(
    files: corpora.CorpusFiles,
    kind: str,
    options: dict[str, Any],
    *,
    encoding_errors: str = "strict",
    root: Path,
    chunk_bytes: int = 4 << 20,
    parallel_min_bytes: int = 64 << 20,
) -> Prepared:
    """The corpus's ids from the cache under `root`, built first if missing or damaged.

    `kind`, `options`: as for `tokenizers.build_tokenizer`. A word corpus of
    `parallel_min_bytes` or more is tokenized by two processes, this one and a
    helper, each on half of it (the regular expression holds the GIL). Raises CacheError
    when `root` cannot be written, ValueError for text the tokenizer refuses
    (as `encode` would)."""
    settings = {"tokenizer": kind, "options": options, "encoding_errors": encoding_errors}
    key, identity = cache_key(files, settings)
    entry = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = root / f"{key}.lock"
        lock.touch(exist_ok=True)
    except OSError as e:
        raise CacheError(
            f"cannot write the token cache in {root} ({e.strerror or e}); give a writable "
            "directory with --config.data.cache_dir=..., or turn the cache off with "
            "--config.data.cache=False"
        ) from None
    with _locked(lock):
        status = "hit"
        if entry.exists():
            problem = _check_entry(entry, key)
            if problem is not None:
                logging.warning("token cache %s is damaged (%s); building it again", entry, problem)
                shutil.rmtree(entry)
                status = f"rebuilt ({problem})"
        if not entry.exists():
            for stale in root.glob(f"{key}.tmp-*"):  # a build that crashed
                shutil.rmtree(stale, ignore_errors=True)
            _build(
                entry,
                key,
                identity,
                files,
                kind,
                options,
                encoding_errors,
                chunk_bytes,
                parallel_min_bytes,
            )
            status = "built" if status == "hit" else status
    return _open(entry, files.description, status)


def _open(entry: Path, description: str, status: str) -> Prepared:
    manifest = json.loads((entry / _MANIFEST).read_text())
    tokenizer = tokenizers.load_tokenizer(entry / _TOKENIZER)
    dtype = np.dtype(manifest["dtype"])
    if manifest["tokens"]:
        ids = np.memmap(entry / _IDS, dtype=dtype, mode="r")
    else:
        ids = np.zeros(0, dtype)
    bounds = {k: tuple(v) for k, v in manifest["bounds"].items()}
    return Prepared(tokenizer, ids, bounds, description, status, entry)


# ---------------------------------------------------------------------------
# Building an entry


def _build(
    entry: Path,
    key: str,
    identity: dict,
    files: corpora.CorpusFiles,
    kind: str,
    options: dict[str, Any],
    encoding_errors: str,
    chunk_bytes: int,
    parallel_min_bytes: int,
) -> None:
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{key}.tmp-"))
    try:
        # the vocabulary comes from the training text: all of it when the corpus
        # is split by fraction afterwards (as the in-memory path does)
        counted = ("all",) if not files.has_splits else ("train",)
        if kind not in tokenizers.TOKENIZERS:
            raise ValueError(
                f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(tokenizers.TOKENIZERS)}"
            )
        reading = _Reading(_segments(files), counted, encoding_errors, chunk_bytes)
        if kind == "word":
            built = _WordBuilder(options).write(tmp, reading, files.description, parallel_min_bytes)
        else:
            built = _CharBuilder(options).write(tmp, reading, files.description)
        tokenizer, bounds, dtype, text_chars = built
        tokenizer.save(tmp / _TOKENIZER)
        ids_path = tmp / _IDS
        manifest = {
            **identity,
            "format": FORMAT,
            "key": key,
            "dtype": dtype.name,
            "tokens": sum(stop - start_ for start_, stop in bounds.values()),
            "bounds": bounds,
            "ids_bytes": ids_path.stat().st_size,
            "ids_crc32": _crc32_of(ids_path),
            "text_chars": text_chars,
            "vocab_size": tokenizer.vocab_size,
            "build_seconds": round(time.perf_counter() - start, 2),
        }
        for name in (_IDS, _TOKENIZER):  # on disk before the manifest says it is whole
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.rename(tmp, entry)  # whole, or not there at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info(
        "token cache: built %s (%s tokens, %.1f s)",
        entry,
        f"{manifest['tokens']:,}",
        manifest["build_seconds"],
    )


def _ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _empty_text_error(description: str) -> ValueError:
    return ValueError(f"{description}: the training text is empty (no text to train on)")


@dataclasses.dataclass(frozen=True)
class _Segment:
    """Bytes [begin, end) of one file of a part; `join`: a newline goes before
    it (the part's files are joined by one, as `corpora.read_text_files` does)."""

    part: str
    path: str
    begin: int
    end: int
    join: bool


def _segments(files: corpora.CorpusFiles) -> list[_Segment]:
    return [
        _Segment(part, name, 0, os.path.getsize(name), i > 0)
        for part, names in files.parts.items()
        for i, name in enumerate(names)
    ]


def _halves(segments: list[_Segment]) -> tuple[list[_Segment], list[_Segment]]:
    """The segments cut in two near the middle byte, just after a newline."""
    total = sum(s.end - s.begin for s in segments)
    seen = 0
    for i, seg in enumerate(segments):
        size = seg.end - seg.begin
        if seen + size > total // 2:
            with open(seg.path, "rb") as f:
                f.seek(seg.begin + total // 2 - seen)
                window = f.read(1 << 20)
            newline = window.find(b"\n")
            if newline < 0:  # no newline in the next MB: cut between files
                return segments[: i + 1], segments[i + 1 :]
            cut = seg.begin + total // 2 - seen + newline + 1
            first = dataclasses.replace(seg, end=cut)
            second = dataclasses.replace(seg, begin=cut, join=False)
            return [*segments[:i], first], [second, *segments[i + 1 :]]
        seen += size
    return segments, []


@dataclasses.dataclass(frozen=True)
class _Reading:
    """What to read, and how: the segments in order, the parts whose tokens
    make the vocabulary, the decoding rule, the piece size."""

    segments: list[_Segment]
    counted: tuple[str, ...]
    encoding_errors: str
    chunk_bytes: int

    @property
    def parts(self) -> list[str]:
        return list(dict.fromkeys(s.part for s in self.segments))

    def texts(self, part: str | None = None) -> Iterator[tuple[str, str]]:
        """(part, text) pieces of the segments (of one part, if given), in order."""
        for seg in self.segments:
            if part is not None and seg.part != part:
                continue
            if seg.join:
                yield seg.part, "\n"
            for text in corpora.iter_file_text(
                seg.path,
                seg.begin,
                seg.end,
                encoding_errors=self.encoding_errors,
                chunk_bytes=self.chunk_bytes,
            ):
                yield seg.part, text

    def to_json(self) -> dict[str, Any]:
        return {
            "segments": [dataclasses.asdict(s) for s in self.segments],
            "counted": list(self.counted),
            "encoding_errors": self.encoding_errors,
            "chunk_bytes": self.chunk_bytes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Reading:
        return cls(
            [_Segment(**s) for s in d["segments"]],
            tuple(d["counted"]),
            d["encoding_errors"],
            d["chunk_bytes"],
        )


class _WordBuilder:
    """One pass: provisional ids to a scratch file, counts alongside; then the
    vocabulary, and the scratch ids renumbered into it. With a helper process,
    each reads half the text and the helper's ids are renumbered into ours."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.proto = tokenizers.WordTokenizer(
            [options.get("unk_token", tokenizers.UNK) or " "],
            lowercase=options.get("lowercase", True),
            split=options.get("split", "regex"),
            unk_token=options.get("unk_token", tokenizers.UNK),
        )
        self.index: dict[str, int] = {}  # normalized piece -> provisional id
        self.raw_index: dict[str, int] = {}  # piece as written -> provisional id
        self.counts = np.zeros(0, np.int64)  # provisional id -> count in the counted parts
        self.any_text = False
        self.text_chars = 0

    def _provisional(self, text: str, count: bool) -> np.ndarray:
        raw = self.proto.raw_pieces(text)
        # pieces as written -> provisional ids; only a piece not seen before costs
        # a Python step (its normalized form looked up), the rest are C-level maps
        for piece in set(raw).difference(self.raw_index):
            self.raw_index[piece] = self.index.setdefault(
                self.proto.normalize_piece(piece), len(self.index)
            )
        ids = np.fromiter(map(self.raw_index.__getitem__, raw), np.int64, len(raw))
        if count:
            self._add_counts(np.bincount(ids, minlength=len(self.index)))
        return ids.astype(np.uint32)

    def _add_counts(self, counts: np.ndarray, at: np.ndarray | None = None) -> None:
        """counts[i] added to provisional id i (or to at[i])."""
        if len(self.counts) < len(self.index):
            grown = np.zeros(len(self.index), np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        if at is None:
            self.counts[: len(counts)] += counts
        else:
            np.add.at(self.counts, at, counts)

    def read(self, reading: _Reading, scratch) -> dict[str, int]:
        """Provisional ids of `reading`'s text into the open file `scratch`; the
        tokens of each part."""
        tokens = dict.fromkeys(reading.parts, 0)
        for part, text in reading.texts():
            counted = part in reading.counted
            self.text_chars += len(text)
            self.any_text = self.any_text or (counted and bool(text.strip()))
            ids = self._provisional(text, count=counted)
            scratch.write(ids.tobytes())
            tokens[part] += len(ids)
        return tokens

    def write(self, tmp: Path, reading: _Reading, description: str, parallel_min_bytes: int):
        first, second = reading.segments, []
        total = sum(s.end - s.begin for s in reading.segments)
        if total >= parallel_min_bytes and (os.cpu_count() or 1) > 1:
            first, second = _halves(reading.segments)
        helper = None
        if second:
            helper = _Helper(
                tmp / "helper", dataclasses.replace(reading, segments=second), self.options
            )
        scratch_path = tmp / _SCRATCH
        try:
            with open(scratch_path, "wb") as scratch:
                tokens = self.read(dataclasses.replace(reading, segments=first), scratch)
                if helper is not None:
                    for part, n in self._merge(helper.result(), scratch).items():
                        tokens[part] = tokens.get(part, 0) + n
        finally:
            if helper is not None:
                helper.close()
        if not self.any_text:
            raise _empty_text_error(description)
        bounds, n = {}, 0
        for part in reading.parts:
            bounds[part] = [n, n + tokens.get(part, 0)]
            n += tokens.get(part, 0)
        return self._renumber(tmp, scratch_path, n, bounds)

    def _merge(self, helper_dir: Path, scratch) -> dict[str, int]:
        """The helper's pieces into our index, its counts into ours, its ids
        (renumbered) after ours; returns its tokens per part."""
        done = json.loads((helper_dir / "pieces.json").read_text())
        table = np.fromiter(
            (self.index.setdefault(p, len(self.index)) for p in done["pieces"]),
            np.int64,
            len(done["pieces"]),
        )
        self._add_counts(np.asarray(done["counts"], np.int64), at=table)
        self.any_text = self.any_text or done["any_text"]
        self.text_chars += done["text_chars"]
        n = sum(done["tokens"].values())
        ids_path = helper_dir / _SCRATCH
        for start in range(0, n, _BLOCK):
            block = np.fromfile(ids_path, np.uint32, min(_BLOCK, n - start), offset=4 * start)
            scratch.write(table[block].astype(np.uint32).tobytes())
        return done["tokens"]

    def _renumber(self, tmp: Path, scratch: Path, n: int, bounds: dict):
        pieces = list(self.index)
        counts = dict(zip(pieces, self.counts.tolist(), strict=False))
        tokenizer = tokenizers.WordTokenizer.from_counts(counts, **self.options)
        unk = -1 if tokenizer.unk_id is None else tokenizer.unk_id
        ids = (tokenizer.token_to_id(p) for p in pieces)
        table = np.fromiter((unk if i is None else i for i in ids), np.int64, len(pieces))
        dtype = _ids_dtype(tokenizer.vocab_size)
        with open(tmp / _IDS, "wb") as out:
            for start in range(0, n, _BLOCK):
                block = np.fromfile(scratch, np.uint32, min(_BLOCK, n - start), offset=4 * start)
                final = table[block]
                if (final < 0).any():  # only where a split file has words train lacks
                    unknown = [pieces[i] for i in np.unique(block[final < 0])[:20]]
                    raise ValueError(
                        f"text has words not in the vocabulary: {', '.join(map(repr, unknown))} "
                        "(and unk_token is None)"
                    )
                out.write(final.astype(dtype).tobytes())
        scratch.unlink()
        return tokenizer, bounds, dtype, self.text_chars


class _Helper:
    """A second process that reads half a word corpus (`python -m
    lstm_jax.data.token_cache SPEC`): its pieces and counts as JSON, its ids
    as a raw uint32 file. Nothing is pickled."""

    def __init__(self, directory: Path, reading: _Reading, options: dict[str, Any]):
        directory.mkdir()
        self.directory = directory
        spec = directory / "spec.json"
        spec.write_text(json.dumps({"reading": reading.to_json(), "options": options}))
        env = dict(os.environ)  # finds this lstm_jax wherever the helper starts
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lstm_jax.data.token_cache", str(spec)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self) -> Path:
        _, err = self.proc.communicate()
        if self.proc.returncode:
            lines = [x for x in err.strip().splitlines() if x.strip()]
            raise ValueError(lines[-1].removeprefix("ValueError: ") if lines else "helper failed")
        return self.directory

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _helper_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    reading = _Reading.from_json(spec["reading"])
    builder = _WordBuilder(spec["options"])
    directory = Path(spec_path).parent
    try:
        with open(directory / _SCRATCH, "wb") as scratch:
            tokens = builder.read(reading, scratch)
    except ValueError as e:
        print(f"ValueError: {e}", file=sys.stderr)
        sys.exit(2)
    done = {
        "pieces": list(builder.index),
        "counts": builder.counts.tolist() + [0] * (len(builder.index) - len(builder.counts)),
        "tokens": tokens,
        "any_text": builder.any_text,
        "text_chars": builder.text_chars,
    }
    (directory / "pieces.json").write_text(json.dumps(done))


class _CharBuilder:
    """Two passes: code points counted, then looked up."""

    def __init__(self, options: dict[str, Any]):
        if options:
            raise ValueError(f"the char tokenizer takes no options, got {sorted(options)}")

    @staticmethod
    def _code_points(text: str) -> np.ndarray:
        if text.isascii():
            return np.frombuffer(text.encode("ascii"), np.uint8)
        return np.frombuffer(text.encode("utf-32-le"), np.uint32)

    def write(self, tmp: Path, reading: _Reading, description: str):
        seen = np.zeros(128, np.int64)  # code point -> count
        text_chars, any_text = 0, False
        for part in reading.counted:
            for _, text in reading.texts(part):
                text_chars += len(text)
                any_text = any_text or bool(text.strip())
                counts = np.bincount(self._code_points(text))
                if len(counts) > len(seen):
                    seen = np.concatenate([seen, np.zeros(len(counts) - len(seen), np.int64)])
                seen[: len(counts)] += counts
        if not any_text:
            raise _empty_text_error(description)
        vocab = np.flatnonzero(seen)  # code points, sorted: CharTokenizer.build's order
        tokenizer = tokenizers.CharTokenizer([chr(c) for c in vocab])
        table = np.full(len(seen), -1, np.int64)
        table[vocab] = np.arange(len(vocab))
        dtype = _ids_dtype(tokenizer.vocab_size)
        bounds = {part: [0, 0] for part in reading.parts}
        n = 0
        with open(tmp / _IDS, "wb") as out:
            for part in reading.parts:
                bounds[part][0] = n
                for _, text in reading.texts(part):
                    if part not in reading.counted:
                        text_chars += len(text)
                    cps = self._code_points(text).astype(np.int64)
                    ids = table[np.minimum(cps, len(table) - 1)]
                    ids[cps >= len(table)] = -1  # beyond every training character
                    if (ids < 0).any():
                        unknown = tokenizer.unknown_symbols(text)
                        raise ValueError(
                            "text has characters not in the vocabulary: "
                            f"{', '.join(map(repr, unknown))}"
                        )
                    out.write(ids.astype(dtype).tobytes())
                    n += len(ids)
                bounds[part][1] = n
        return tokenizer, bounds, dtype, text_chars


if __name__ == "__main__":
    _helper_main(sys.argv[1])
