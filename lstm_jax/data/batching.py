"""Token ids -> fixed-shape [B, T] batches for truncated BPTT and for evaluation.

Every batch has the same shape and dtypes, so the jitted train / eval step
compiles once. A batch carries, besides inputs and targets:

- ``mask`` [B, T] float32: 1 for a real target, 0 for padding (eval only);
  losses are ``sum(mask * nll) / sum(mask)``.
- ``reset`` [B, T] bool: True where the recurrent carry must be zeroed BEFORE
  that step. The model applies it inside its scan, so a row can start a new
  stream (or an unrelated window) in the middle of training without a second
  compiled function and without the caller zeroing carries by hand. Every
  batch built here resets at step 0 only (a window starts a stream, never cuts
  one), and the train and eval steps rely on it unless told otherwise
  (``mid_sequence_resets``): they pass ``reset[:, 0]`` to the model as
  ``start``, which keeps oneDNN's and cuDNN's fused layers usable.

Training (`TrainBatcher`) has two modes:

- ``"streams"`` (char-rnn, Zaremba et al. 2014): the token array is cut into B
  equal contiguous streams; batch k holds window k of every stream, so the
  carry at the end of batch k is the right initial state for batch k+1
  (truncated BPTT with carried state). reset is True only at the first step of
  an epoch.
- ``"windows"``: the array is cut into non-overlapping T-step windows, served in
  a seeded random order (a fresh permutation per epoch); every window starts
  from a zero carry (reset at its first step). Less correlated batches, less
  context.

Both are deterministic functions of (ids, B, T, mode, seed, epoch, index), so a
data cursor of two ints (`state()` / `restore()`) resumes exactly.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "TRAIN_MODES",
    "Batch",
    "TrainBatcher",
    "count_eval_tokens",
    "eval_batches",
    "num_eval_batches",
    "release_pages",
    "split_by_fraction",
]

TRAIN_MODES = ("streams", "windows")


class Batch(NamedTuple):
    """One batch; all arrays [B, T] (B = this process's rows)."""

    inputs: np.ndarray  # [B, T] int32, token at step t
    targets: np.ndarray  # [B, T] int32, token at step t + 1
    mask: np.ndarray  # [B, T] float32, 1 = real target, 0 = padding
    reset: np.ndarray  # [B, T] bool, zero the carry before step t; only ever True at t = 0


def _as_ids(ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """1-D integer ids, not copied: a memory-mapped uint16 corpus stays on disk,
    and only the rows of a batch become int32 (`_gather`)."""
    ids = ids if isinstance(ids, np.ndarray) else np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"token ids must be a 1-D array, got shape {ids.shape}")
    if not ids.size:
        return ids.astype(np.int32)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
    return ids


def _gather(ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return ids[pos].astype(np.int32, copy=False)


def release_pages(ids: np.ndarray) -> None:
    """Drops the pages of a memory-mapped id file that this process has read
    from its resident set (madvise DONTNEED on a read-only file mapping): the
    data stays in the kernel's page cache, and the next read maps it again.
    Called after a scan over a whole split, so that the memory a run reports
    does not grow with the corpus. A no-op for arrays in memory."""
    mapping = getattr(ids, "_mmap", None)  # np.memmap and its slices share it
    if mapping is not None and hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_DONTNEED)


def split_by_fraction(
    ids: np.ndarray | Sequence[int], fractions: Sequence[float] = (0.95, 0.05, 0.0)
) -> dict[str, np.ndarray]:
    """Cuts ids into contiguous train / valid / test parts (char-rnn style).

    Contiguous (not shuffled) so validation text is text the model has not
    seen in any window. `fractions` need not sum to 1: the rest is unused.
    """
    ids = _as_ids(ids)
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be 3 non-negative numbers, got {tuple(fractions)}")
    if sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions must sum to <= 1, got {tuple(fractions)} = {sum(fractions)}")
    n = len(ids)
    bounds = [0]
    for f in fractions:
        bounds.append(min(n, bounds[-1] + int(n * f)))
    return {
        name: ids[bounds[i] : bounds[i + 1]] for i, name in enumerate(("train", "valid", "test"))
    }


class TrainBatcher:
    """Infinite iterator of training batches over epochs; resumable by `state()`.

    Args:
      ids: the training split, int [N].
      batch_size: the GLOBAL batch size B (rows over all processes).
      seq_len: T, steps per window (the truncated-BPTT length).
      mode: "streams" or "windows" (see the module docstring).
      seed: for "windows" mode, the permutation of epoch e comes from
        `np.random.default_rng([seed, e])`.
      shard_index, num_shards: in multi-process data parallelism, this process
        yields rows `shard_index*B/num_shards : (shard_index+1)*B/num_shards` of
        the global batch, so the shards concatenated equal the one-process batch
        (the same streams and windows, whatever the process count).
    """

    def __init__(
        self,
        ids: np.ndarray | Sequence[int],
        batch_size: int,
        seq_len: int,
        *,
        mode: str = "streams",
        seed: int = 0,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        if mode not in TRAIN_MODES:
            raise ValueError(
                f"unknown batching mode {mode!r}; valid modes: {', '.join(TRAIN_MODES)}"
            )
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
        if batch_size % num_shards:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by num_shards {num_shards} "
                "(the number of data-parallel processes); pick a multiple"
            )
        self.ids = _as_ids(ids)
        self.batch_size, self.seq_len, self.mode, self.seed = batch_size, seq_len, mode, seed
        self.shard_index, self.num_shards = shard_index, num_shards
        rows = batch_size // num_shards
        self._rows = slice(shard_index * rows, (shard_index + 1) * rows)

        need = batch_size * seq_len + 1
        if len(self.ids) < need:
            raise ValueError(
                f"the training split has {len(self.ids)} tokens, too few for one batch of "
                f"batch_size={batch_size} x seq_len={seq_len}: mode {mode!r} needs at least "
                f"batch_size*seq_len+1 = {need} tokens. Use a smaller batch_size or seq_len "
                "(--config.train.batch_size=... / --config.train.seq_len=...) or more text."
            )
        n_pairs = len(self.ids) - 1  # (input, target) pairs
        if mode == "streams":
            # B streams of L pairs each, L a multiple of T; the tail is dropped.
            self._stream_len = n_pairs // batch_size // seq_len * seq_len
            self.steps_per_epoch = self._stream_len // seq_len
        else:
            self._num_windows = n_pairs // seq_len
            self.steps_per_epoch = self._num_windows // batch_size
        self.epoch = 0
        self.index = 0  # batch index within the epoch of the NEXT batch
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    @property
    def local_batch_size(self) -> int:
        """Rows of the batches this process yields: batch_size // num_shards."""
        return self.batch_size // self.num_shards

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens one epoch trains on (all processes together)."""
        return self.steps_per_epoch * self.batch_size * self.seq_len

    def state(self) -> dict[str, int]:
        """The data cursor: JSON-serializable, saved with the checkpoint."""
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: Mapping[str, int]) -> None:
        """Continues exactly where the batcher that produced `state` was."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < self.steps_per_epoch:
            raise ValueError(
                f"data state {dict(state)} does not fit this batcher "
                f"({self.steps_per_epoch} steps per epoch); was the data or batch shape changed?"
            )
        self.epoch, self.index = epoch, index

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self._num_windows)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch_at(self, epoch: int, index: int) -> Batch:
        """The batch at (epoch, index); a pure function of the constructor arguments."""
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"index {index} not in [0, {self.steps_per_epoch})")
        T = self.seq_len
        if self.mode == "streams":
            starts = np.arange(self.batch_size)[self._rows] * self._stream_len + index * T  # [b]
            reset_first = index == 0
        else:
            windows = self._permutation(epoch)[
                index * self.batch_size : (index + 1) * self.batch_size
            ]
            starts = windows[self._rows] * T  # [b]
            reset_first = True
        pos = starts[:, None] + np.arange(T)[None, :]  # [b, T]
        b = len(starts)
        reset = np.zeros((b, T), dtype=bool)
        reset[:, 0] = reset_first
        return Batch(
            inputs=_gather(self.ids, pos),
            targets=_gather(self.ids, pos + 1),
            mask=np.ones((b, T), dtype=np.float32),
            reset=reset,
        )

    def next_batch(self) -> Batch:
        """The next batch; rolls over to the next epoch forever."""
        batch = self.batch_at(self.epoch, self.index)
        self.index += 1
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()


def _eval_layout(n_tokens: int, batch_size: int, seq_len: int) -> tuple[int, int, int]:
    """(streams, stream_len, windows) for evaluating n_tokens ids."""
    n_pairs = n_tokens - 1
    if n_pairs < 1:
        raise ValueError(f"need at least 2 tokens to evaluate, got {n_tokens}")
    streams = int(np.clip(n_pairs // seq_len, 1, batch_size))
    stream_len = -(-n_pairs // streams)  # ceil
    return streams, stream_len, -(-stream_len // seq_len)


def count_eval_tokens(ids: np.ndarray | Sequence[int] | int) -> int:
    """Number of target tokens `eval_batches` scores: every token but the first."""
    n = ids if isinstance(ids, int | np.integer) else len(ids)
    return max(int(n) - 1, 0)


def num_eval_batches(n_tokens: int, batch_size: int, seq_len: int) -> int:
    """How many batches `eval_batches` yields for n_tokens ids."""
    return _eval_layout(n_tokens, batch_size, seq_len)[2]


def eval_batches(ids: np.ndarray | Sequence[int], batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Batches that score every target token of `ids` exactly once.

    The split is cut into S contiguous streams, S = clip(pairs // seq_len, 1,
    batch_size): usually S = batch_size, but a split too small for that many
    T-step streams uses fewer (at least 1) so that each stream still has about
    T tokens of context; the unused rows are all padding. Streams are read
    window by window with the carry passed along (reset only at the first
    window). Shapes are always [batch_size, seq_len]: positions past the end of
    a stream are padding with mask 0 and id 0, so eval compiles once.
    Sum of mask over all batches == len(ids) - 1.
    """
    ids = _as_ids(ids)
    streams, stream_len, n_windows = _eval_layout(len(ids), batch_size, seq_len)
    n_pairs = len(ids) - 1
    starts = np.arange(batch_size) * stream_len  # [B]
    ends = np.where(np.arange(batch_size) < streams, np.minimum(starts + stream_len, n_pairs), 0)
    for w in range(n_windows):
        pos = starts[:, None] + w * seq_len + np.arange(seq_len)[None, :]  # [B, T]
        valid = pos < ends[:, None]  # [B, T]
        safe = np.where(valid, pos, 0)
        reset = np.zeros((batch_size, seq_len), dtype=bool)
        reset[:, 0] = w == 0
        yield Batch(
            inputs=np.where(valid, _gather(ids, safe), 0).astype(np.int32),
            targets=np.where(valid, _gather(ids, safe + 1), 0).astype(np.int32),
            mask=valid.astype(np.float32),
            reset=reset,
        )
