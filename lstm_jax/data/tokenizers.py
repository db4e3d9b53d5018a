"""Char and word tokenizers with a JSON vocabulary.

Both are deterministic functions of the training text (the same text gives the
same ids on every machine and every run), so a vocabulary saved next to a
checkpoint is all the sampler needs to turn ids back into text.

- `CharTokenizer`: one id per distinct character, sorted by code point (as
  char-rnn / min-char-rnn). An unknown character is an error: there is no
  sensible fallback symbol, and silently dropping it would hide a bad prime.
- `WordTokenizer`: words, numbers ("1d6", "10-foot", "4–6"), punctuation marks,
  "\\n" and the record separator are tokens; rare words map to ``<unk>``.
  `decode` puts spaces back by simple rules, so generated text reads naturally.

`build_tokenizer(kind, text, **options)` is the one place a kind is looked up.
"""

from __future__ import annotations

import abc
import collections
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lstm_jax.data.corpora import RECORD_SEPARATOR

__all__ = [
    "TOKENIZERS",
    "UNK",
    "CharTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "tokenizer_from_json",
]

UNK = "<unk>"
_FORMAT_VERSION = 1


class Tokenizer(abc.ABC):
    """Maps text <-> int32 ids through a fixed token list (id -> token)."""

    kind: ClassVar[str]
    tokens: list[str]
    unk_id: int | None

    def __init__(self, tokens: Sequence[str]):
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokenizer tokens must be unique")
        if not tokens:
            raise ValueError("tokenizer needs at least one token (was the text empty?)")
        self.tokens = list(tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        """Number of ids; the model's embedding and softmax size."""
        return len(self.tokens)

    @property
    def record_separator_id(self) -> int | None:
        """Id of `RECORD_SEPARATOR` (the sampler stops there), or None."""
        return self._ids.get(RECORD_SEPARATOR)

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    @abc.abstractmethod
    def encode(self, text: str, strict: bool = False) -> np.ndarray:
        """text -> ids, int32 [N]."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """ids -> text."""

    @abc.abstractmethod
    def unknown_symbols(self, text: str) -> list[str]:
        """Symbols of `text` the vocabulary lacks, in order of first appearance."""

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict that `tokenizer_from_json` turns back into self."""

    def _tokens_of(self, ids: Iterable[int] | np.ndarray) -> list[str]:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)]
            raise ValueError(
                f"ids out of range for a vocabulary of {self.vocab_size}: {bad[:5].tolist()}"
            )
        return [self.tokens[i] for i in ids.tolist()]

    def save(self, path: str | Path) -> None:
        """Writes the vocabulary as JSON (never pickle), e.g. next to a checkpoint."""
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=True, indent=1) + "\n")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_json() == other.to_json()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]


class CharTokenizer(Tokenizer):
    """One id per character; the vocabulary is the sorted set of the text's characters."""

    kind = "char"

    def __init__(self, tokens: Sequence[str]):
        if any(len(t) != 1 for t in tokens):
            raise ValueError("char tokenizer tokens must be single characters")
        super().__init__(tokens)
        self.unk_id = None

    @classmethod
    def build(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    def encode(self, text: str, strict: bool = False) -> np.ndarray:
        """text -> int32 [len(text)]. Unknown characters raise (strict or not)."""
        del strict  # a char vocabulary has no <unk>: every unknown char is an error
        try:
            return np.fromiter((self._ids[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError:
            unknown = self.unknown_symbols(text)
            raise ValueError(
                f"text has characters not in the vocabulary: {', '.join(map(repr, unknown))}"
            ) from None

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return "".join(self._tokens_of(ids))

    def unknown_symbols(self, text: str) -> list[str]:
        return list(dict.fromkeys(c for c in text if c not in self._ids))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": _FORMAT_VERSION, "tokens": self.tokens}


# A word token: an optional sign, then letters/digits joined by internal
# hyphens, apostrophes, en dashes ("10-foot", "can't", "4–6") or by . , : between
# digits ("1.5", "25,000"), then an optional trailing "+" ("level 2+").
_WORD = r"[+\-−]?\w+(?:[-'’–]\w+|(?<=\d)[.,:](?=\d)\d+)*(?:\+(?!\w))?"
_TOKEN_PATTERN = rf"{re.escape(RECORD_SEPARATOR)}|\n|{_WORD}|[^\s\w]"

# decode: no space before closing marks, none after opening ones, none on either
# side of joiners and line breaks.
_NO_SPACE_BEFORE = frozenset(".,;:!?)]}%'’”")
_NO_SPACE_AFTER = frozenset("([{“‘")
_LINE_BREAKS = frozenset({"\n", RECORD_SEPARATOR})
_JOINERS = _LINE_BREAKS | {"—", "–", "-", "/"}
_SPLITS = ("regex", "whitespace")


class WordTokenizer(Tokenizer):
    """Word-level tokenizer: words, numbers, punctuation, "\\n" and the record separator.

    Options (fixed at build time, saved in the JSON):
      lowercase: fold case before counting and encoding (halves the vocabulary
        of a small corpus like the SRD spells).
      split: "regex" (default; punctuation becomes its own token) or
        "whitespace" (text already tokenized, as PTB: split on spaces only).
      unk_token: the token for rare/unknown words, or None for no such token
        (then an unknown word is an error).
    """

    kind = "word"

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        lowercase: bool = True,
        split: str = "regex",
        unk_token: str | None = UNK,
    ):
        if split not in _SPLITS:
            raise ValueError(f"unknown word split {split!r}; valid: {', '.join(_SPLITS)}")
        super().__init__(tokens)
        self.lowercase = lowercase
        self.split = split
        self.unk_token = unk_token
        self.unk_id = self._ids.get(unk_token) if unk_token is not None else None
        literal = f"{re.escape(unk_token)}|" if unk_token else ""
        self._regex = re.compile(literal + _TOKEN_PATTERN)
        if unk_token is not None and self.unk_id is None:
            raise ValueError(f"unk_token {unk_token!r} is not in the tokens")

    @classmethod
    def build(
        cls,
        text: str,
        *,
        lowercase: bool = True,
        min_count: int = 1,
        max_vocab: int | None = None,
        split: str = "regex",
        unk_token: str | None = UNK,
    ) -> WordTokenizer:
        """Builds the vocabulary of `text`.

        Order: `unk_token` first (id 0), then tokens by count, descending, ties
        alphabetically, so the ids do not depend on dict or set order. Tokens
        seen fewer than `min_count` times, or beyond `max_vocab` ids (counting
        the unk token), map to `unk_token`. "\\n" and the record separator are
        always kept: the text's structure must survive a small vocabulary.
        """
        proto = cls([unk_token or " "], lowercase=lowercase, split=split, unk_token=unk_token)
        return cls.from_counts(
            collections.Counter(proto.pieces(text)),
            lowercase=lowercase,
            min_count=min_count,
            max_vocab=max_vocab,
            split=split,
            unk_token=unk_token,
        )

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        *,
        lowercase: bool = True,
        min_count: int = 1,
        max_vocab: int | None = None,
        split: str = "regex",
        unk_token: str | None = UNK,
    ) -> WordTokenizer:
        """The vocabulary `build` makes, from the counts of the text's pieces
        (`pieces`): a corpus too big to hold can be counted chunk by chunk."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_vocab is not None and max_vocab < 2:
            raise ValueError(f"max_vocab must be >= 2 or None, got {max_vocab}")
        counts = {t: n for t, n in counts.items() if n > 0}
        specials = [unk_token] if unk_token is not None else []
        counts.pop(unk_token, None)
        structural = [t for t in ("\n", RECORD_SEPARATOR) if t in counts]
        ranked = sorted(
            (t for t, n in counts.items() if n >= min_count and t not in structural),
            key=lambda t: (-counts[t], t),
        )
        if max_vocab is not None:
            ranked = ranked[: max(0, max_vocab - len(specials) - len(structural))]
        kept = set(ranked) | set(structural)
        if unk_token is None and len(kept) < len(counts):
            raise ValueError(
                "min_count/max_vocab drop words but unk_token is None, so they could not be "
                "encoded; keep an unk_token or raise the limits"
            )
        tokens = specials + sorted(kept, key=lambda t: (-counts[t], t))
        return cls(tokens, lowercase=lowercase, split=split, unk_token=unk_token)

    def pieces(self, text: str) -> list[str]:
        """text -> token strings (before the vocabulary lookup)."""
        raw = self.raw_pieces(text)
        if not self.lowercase:
            return raw
        return [self.normalize_piece(p) for p in raw]

    def raw_pieces(self, text: str) -> list[str]:
        """text -> token strings as written (`pieces` before lowercasing). Text cut
        at a newline or a space gives the same pieces in two parts as in one."""
        if self.split == "whitespace":
            # RS counts as whitespace for str.split, so cut it (and "\n") out first.
            parts = re.split(f"(\n|{re.escape(RECORD_SEPARATOR)})", text)
            return [q for part in parts for q in ([part] if part in _LINE_BREAKS else part.split())]
        return self._regex.findall(text)

    def normalize_piece(self, piece: str) -> str:
        """One raw piece as the vocabulary knows it (lowercased, unless it is the unk token)."""
        if not self.lowercase or piece == self.unk_token:
            return piece
        return piece.lower()

    def normalize(self, text: str) -> str:
        """What `decode(encode(text))` gives when every word is in the vocabulary."""
        return self._join(self.pieces(text))

    def encode(self, text: str, strict: bool = False) -> np.ndarray:
        """text -> int32 [N]. Unknown words map to `unk_token`; strict=True raises instead."""
        pieces = self.pieces(text)
        unknown = [p for p in pieces if p not in self._ids]
        if unknown and (strict or self.unk_id is None):
            unknown = list(dict.fromkeys(unknown))
            shown = ", ".join(map(repr, unknown[:20])) + (" ..." if len(unknown) > 20 else "")
            raise ValueError(f"text has {len(unknown)} words not in the vocabulary: {shown}")
        unk = -1 if self.unk_id is None else self.unk_id
        return np.fromiter(
            (self._ids.get(p, unk) for p in pieces), dtype=np.int32, count=len(pieces)
        )

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self._join(self._tokens_of(ids))

    def _join(self, tokens: Sequence[str]) -> str:
        if self.split == "whitespace":
            # Pre-tokenized text: single spaces, none next to a line break.
            spaced = [
                " " + t if i and t not in _LINE_BREAKS and tokens[i - 1] not in _LINE_BREAKS else t
                for i, t in enumerate(tokens)
            ]
            return "".join(spaced)
        out: list[str] = []
        open_quote = False  # '"' alternates between opening and closing
        prev = None
        for t in tokens:
            space = prev is not None
            if t == '"':
                if open_quote:
                    space = False
                open_quote = not open_quote
            elif t in _NO_SPACE_BEFORE or t in _JOINERS:
                space = False
            if prev is not None and (
                prev in _NO_SPACE_AFTER
                or prev in _JOINERS
                or (prev == '"' and open_quote and t != '"')
            ):
                space = False
            if t in _LINE_BREAKS:
                open_quote = False
            out.append(" " + t if space else t)
            prev = t
        return "".join(out)

    def unknown_symbols(self, text: str) -> list[str]:
        return list(dict.fromkeys(p for p in self.pieces(text) if p not in self._ids))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": _FORMAT_VERSION,
            "lowercase": self.lowercase,
            "split": self.split,
            "unk_token": self.unk_token,
            "tokens": self.tokens,
        }


# kind -> class. The one place a tokenizer kind is looked up.
TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "word": WordTokenizer}


def build_tokenizer(kind: str, text: str, **options: Any) -> Tokenizer:
    """Builds a tokenizer of `kind` ("char" or "word") from training text.

    Options are those of the kind's `build` (word: lowercase, min_count,
    max_vocab, split, unk_token; char: none).
    """
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(TOKENIZERS)}")
    if not text:
        raise ValueError("cannot build a tokenizer from empty text")
    return TOKENIZERS[kind].build(text, **options)  # type: ignore[attr-defined]


def tokenizer_from_json(d: dict[str, Any]) -> Tokenizer:
    """Inverse of `Tokenizer.to_json`."""
    kind = d.get("kind")
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(TOKENIZERS)}")
    if d.get("version", _FORMAT_VERSION) > _FORMAT_VERSION:
        raise ValueError(f"tokenizer JSON version {d['version']} is newer than this code")
    if kind == "char":
        return CharTokenizer(d["tokens"])
    return WordTokenizer(
        d["tokens"],
        lowercase=d.get("lowercase", True),
        split=d.get("split", "regex"),
        unk_token=d.get("unk_token", UNK),
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Reads a tokenizer saved with `Tokenizer.save`."""
    return tokenizer_from_json(json.loads(Path(path).read_text()))
