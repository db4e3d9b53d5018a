"""Checkpoints with orbax's CheckpointManager: asynchronous saves, verified restores.

One checkpoint = three items under `WORKDIR/checkpoints/<step>/`:
  state:     the arrays (params, optimizer state, step, carried state, RNG key data);
  meta:      JSON: the data position, the tokenizer, the resolved config and the
             validation loss, so a sampler needs nothing but the workdir;
  checksums: JSON: the SHA-256 of every array in `state` (over its dtype, shape
             and bytes), by leaf name ("params/embed", "opt_state/0/nu/embed", ...).

Saving is asynchronous. `save` returns once every array has been copied to host
memory: orbax's async save transfers the arrays to host before it returns (with
its default options every array is a "synchronous" transfer, see
`jax_array_handlers._serialize_arrays`), and the checksums are taken from a host
copy made here. The train step donates its state, so the next step may reuse the
device buffers at once; the files are then written, and the checksums computed,
in orbax's background thread. The next `save`, `wait_until_finished` and `close`
wait for it (and raise `CheckpointError` if it failed).

Crash safety: orbax writes each checkpoint into a temporary directory and renames
it only once all three items are complete, so a `kill -9` at any moment leaves
every earlier checkpoint intact and at worst a temporary directory that is ignored.

Integrity: a restore recomputes the checksums of the arrays it read and refuses a
mismatch (`DamagedCheckpointError`, naming the step, the damaged arrays and the
other checkpoints). Checkpoints written before checksums were stored load with a
warning that they cannot be verified. `restore_newest_good` falls back to the
newest checkpoint that verifies, for callers that ask for it.

Several processes: the checksums cover the global arrays; an array split over
processes is gathered (`process_allgather`, a collective: every process calls
`save` and the restores, as orbax requires anyway).

Kept: the latest `keep` checkpoints plus the best one by validation loss. No pickle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CHECKSUM_ALGORITHM = "sha256"
CHECKSUMS_FILE = "checksums.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the current run."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read or whose arrays fail their checksums."""


# ----------------------------------------------------------------------------
# Leaf names, host copies and checksums.


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flat_leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"params/embed": leaf, ...}: one name per leaf, the same for a TrainState
    (attributes) and the nested dicts orbax stores it as (keys)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    head = [prefix] if prefix else []
    return {"/".join(head + [_key_name(k) for k in path]): leaf for path, leaf in flat}


def shape_mismatch(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str:
    """What differs between a checkpoint's array shapes and the ones a config
    builds (both by `flat_leaves` name), in one line naming at most 4 arrays
    per kind; "" when they agree. Train and sample refuse a mismatch with it."""
    only_new = sorted(wanted.keys() - saved.keys())
    only_old = sorted(saved.keys() - wanted.keys())
    resized = sorted(k for k in wanted.keys() & saved.keys() if wanted[k] != saved[k])
    parts = []
    for label, names in (
        ("the config adds", only_new),
        ("the checkpoint has, the config not", only_old),
        ("shapes differ", [f"{k} (saved {saved[k]}, config {wanted[k]})" for k in resized]),
    ):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


def _to_host(x: Any) -> np.ndarray:
    """The global value of `x` in host memory. On a GPU this is a copy; on the CPU
    it may share the device buffer, and while it does XLA does not reuse that
    buffer for a donated argument (it copies instead), so the value stays put."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def host_arrays(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Every leaf of `tree` in host memory, by name; returns once all are copied."""
    leaves = flat_leaves(tree, prefix)
    for x in leaves.values():  # start every transfer before waiting on the first
        if isinstance(x, jax.Array) and x.is_fully_addressable:
            x.copy_to_host_async()
    return {name: _to_host(x) for name, x in leaves.items()}


def array_checksum(x: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes: a reshaped or retyped array differs too."""
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256(f"{x.dtype.name}{list(x.shape)}".encode())
    digest.update(x.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def checksums(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The `checksums` item of a checkpoint."""
    return {
        "algorithm": CHECKSUM_ALGORITHM,
        "arrays": {name: array_checksum(x) for name, x in arrays.items()},
    }


class _ChecksumsHandler(ocp.handlers.JsonCheckpointHandler):
    """The checksums item: a JSON file whose content is computed in the save's
    background thread, from host copies taken before `save` returned."""

    def __init__(self):
        super().__init__(filename=CHECKSUMS_FILE)

    async def _write(self, arrays: dict[str, np.ndarray], directory: Any) -> None:
        if jax.process_index() == 0:  # the primary host writes, as for orbax's JSON items
            (directory / CHECKSUMS_FILE).write_text(json.dumps(checksums(arrays)))

    async def async_save(self, directory, item=None, args=None):
        del item
        return [
            ocp.future.CommitFutureAwaitingContractedSignals(
                self._write(args.arrays, directory), name="lstm_jax_checksums"
            )
        ]

    def save(self, directory, item=None, args=None):
        del item
        asyncio.run(self._write(args.arrays, directory))


@ocp.args.register_with_handler(_ChecksumsHandler, for_save=True)
@dataclasses.dataclass
class _ChecksumsSave(ocp.args.CheckpointArgs):
    arrays: dict[str, np.ndarray]  # host copies, by leaf name


@ocp.args.register_with_handler(_ChecksumsHandler, for_restore=True)
@dataclasses.dataclass
class _ChecksumsRestore(ocp.args.CheckpointArgs):
    pass


# ----------------------------------------------------------------------------
# The manager.


def _val_loss(metrics: dict | None) -> float:
    """A checkpoint's recorded validation loss; inf when it has none."""
    value = (metrics or {}).get("val_loss")
    return float(value) if isinstance(value, int | float) else math.inf


def _short(error: Exception) -> str:
    """An orbax/TensorStore error in one short line (the OS's words where given)."""
    text = " ".join(str(error).split())
    for os_error in ("No space left on device", "Disk quota exceeded", "Read-only file system"):
        if os_error in text:
            return os_error
    return text[:300]


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, keep: int = 2, *, read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        # Every checkpoint records its metrics: {"val_loss": x}, or {} when it was
        # not evaluated. `best_fn` makes orbax write and read them (without it,
        # orbax records none and its best step is the latest); BestN keeps the
        # lowest val_loss across any number of resumes. Only a checkpoint with no
        # recorded metrics at all (written before they were) is kept by BestN
        # whatever its loss, so an older workdir loses nothing (`legacy_steps`).
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=max(1, keep)),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=_val_loss,
                    reverse=True,  # smaller is better (orbax's best_mode="min")
                    n=1,
                    keep_checkpoints_without_metrics=True,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_val_loss,
            best_mode="min",
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                # PyTree (not Standard) handlers: the sampler restores params alone
                # (a partial restore); the files are the same as StandardSave's.
                "state": ocp.PyTreeCheckpointHandler(),
                "meta": ocp.handlers.JsonCheckpointHandler(),
                "checksums": _ChecksumsHandler(),
            },
        )
        self._in_flight: int | None = None  # the step being written in the background
        self._warned_unverified: set[int] = set()
        legacy = self.legacy_steps()
        if legacy and not read_only:
            logging.warning(
                "checkpoints %s in %s were written without a recorded validation loss "
                "(by an older lstm_jax); they are kept until you delete them",
                legacy,
                self.directory,
            )

    # -- what exists -------------------------------------------------------

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The checkpoint with the lowest recorded validation loss; None if no
        checkpoint has one (training without evaluation)."""
        best = self.manager.best_step()
        if best is None or not math.isfinite(_val_loss(self.manager.metrics(best))):
            return None
        return best

    def legacy_steps(self) -> list[int]:
        """Checkpoints with no recorded metrics (written before they were)."""
        return [s for s in self.all_steps() if self.manager.metrics(s) is None]

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def set_aside(self, step: int) -> pathlib.Path:
        """Move checkpoint `step` out of the way (into `checkpoints-damaged/`
        beside this directory), so a run resumed from an earlier step can save
        that step again. Kept, not deleted: it may still be worth a look.
        Process 0 moves it; call `reload` on every process afterwards."""
        target = self.directory.parent / f"{self.directory.name}-damaged" / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.step_dir(step), target)
        return target

    def reload(self) -> None:
        """Read the directory's steps again (after `set_aside`)."""
        self.manager.reload()

    def has_checksums(self, step: int) -> bool:
        """False for a checkpoint written before checksums were stored."""
        return (self.step_dir(step) / "checksums").is_dir()

    def resolve_step(self, which: str | int | None = "latest") -> int:
        """'latest', 'best' or a step number -> a step that exists."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if which in (None, "latest"):
            return steps[-1]
        if which == "best":
            best = self.best_step()
            if best is None:
                raise CheckpointError(
                    f"no checkpoint in {self.directory} has a validation loss; "
                    "use --checkpoint=latest"
                )
            return best
        step = int(which)
        if step not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; have {steps}")
        return step

    # -- saving ------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict, val_loss: float | None = None) -> None:
        """Starts writing checkpoint `step`; returns once `state`'s arrays are in
        host memory (the caller may then donate or overwrite them). Waits first
        for the previous save, and raises CheckpointError if that one failed."""
        self.wait_until_finished()
        arrays = host_arrays(state)
        metrics = {} if val_loss is None else {"val_loss": float(val_loss)}
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(state),
                    meta=ocp.args.JsonSave(meta),
                    checksums=_ChecksumsSave(arrays),
                ),
                metrics=metrics,
                force=True,
            )
        except Exception as e:
            self.remove_partial()
            raise CheckpointError(
                f"cannot save checkpoint {self.step_dir(step)} ({_short(e)}); the earlier "
                f"checkpoints are kept: {self.steps_on_disk()}"
            ) from e
        self._in_flight = step

    def wait_until_finished(self) -> None:
        """Blocks until the last save is on disk; CheckpointError if it failed
        (the earlier checkpoints are then still there)."""
        step, self._in_flight = self._in_flight, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self.remove_partial()
            raise CheckpointError(
                f"writing checkpoint {self.step_dir(step)} failed ({_short(e)}); the earlier "
                f"checkpoints are kept: {self.steps_on_disk()}. Free the space or fix the disk, "
                "then rerun the same command to resume"
            ) from e
        # orbax raises a background failure once; a second look at the disk
        # catches one it only logged (one process: with several, only the
        # primary commits, and a check on it alone could hang the others).
        if step is not None and jax.process_count() == 1 and not self.step_dir(step).is_dir():
            raise CheckpointError(
                f"writing checkpoint {self.step_dir(step)} failed (orbax logged why); the "
                f"earlier checkpoints are kept: {[s for s in self.all_steps() if s != step]}"
            )

    def steps_on_disk(self) -> list[int]:
        """The finished checkpoints in the directory, read from the disk itself."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def remove_partial(self) -> list[pathlib.Path]:
        """Deletes the temporary directories of saves that did not finish
        (orbax's `*.orbax-checkpoint-tmp*`), so a failed save holds no space.
        Process 0 only: the workdir lock means no other run is writing here."""
        if jax.process_index() != 0 or not self.directory.is_dir():
            return []
        partial = [p for p in self.directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
        for p in partial:
            shutil.rmtree(p, ignore_errors=True)
        return partial

    def close(self) -> None:
        """Waits for the last save, then releases orbax's threads."""
        try:
            self.wait_until_finished()
        finally:
            self.manager.close()

    # -- restoring ---------------------------------------------------------

    def restore_meta(self, step: int) -> dict:
        """The `meta` item of checkpoint `step`: a JSON object, else damaged."""
        meta = self._restore_item(step, "meta", ocp.args.JsonRestore())
        if not isinstance(meta, dict):
            raise self._damaged(
                step,
                f"checkpoint {self.step_dir(step)} has unreadable metadata (a JSON "
                f"{type(meta).__name__}, not an object)",
            )
        return meta

    def array_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
        """The saved arrays' shapes by leaf name ("params/embed": (V, E), ...),
        read from the checkpoint's metadata alone."""
        try:
            saved = self.manager.item_metadata(step)["state"]
            tree = saved.tree if hasattr(saved, "tree") else saved
        except Exception as e:  # orbax raises several types for unreadable files
            raise self._damaged(step, f"cannot read checkpoint {self.step_dir(step)}", e) from e
        return {name: tuple(m.shape) for name, m in flat_leaves(tree).items()}

    def restore_state(self, step: int, target: Any) -> Any:
        """Restores the arrays into the structure, shapes, dtypes and shardings of
        `target` (arrays or jax.ShapeDtypeStructs), then verifies their checksums."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.PyTreeRestore(
            item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)
        )
        state = self._restore_item(step, "state", args)
        self.verify(step, state)
        return state

    def restore_params(self, step: int, target: Any, subtree: str = "params") -> Any:
        """Restores `state.params` alone (nothing else is read) into the
        structure, shapes, dtypes and shardings of `target`, verified. `subtree`:
        another params-shaped part of the state instead, by its leaf-name prefix
        (NT-ASGD's average: "opt_state/averaged_params"); every step of the path
        must be a dict key or a NamedTuple field (orbax stores tuples as lists,
        which a partial restore cannot skip into)."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        item, restore_args = abstract, ocp.checkpoint_utils.construct_restore_args(abstract)
        for key in reversed(subtree.split("/")):
            item, restore_args = {key: item}, {key: restore_args}
        args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        params = self._restore_item(step, "state", args)
        for key in subtree.split("/"):
            params = params[key]
        self.verify(step, params, prefix=subtree)
        return params

    def saved_checksums(self, step: int) -> dict[str, str] | None:
        """Leaf name -> checksum as written with the checkpoint; None if it has none."""
        if not self.has_checksums(step):
            return None
        saved = self._restore_item(step, "checksums", _ChecksumsRestore())
        if saved.get("algorithm") != CHECKSUM_ALGORITHM or not isinstance(
            saved.get("arrays"), dict
        ):
            raise self._damaged(
                step,
                f"checkpoint {self.step_dir(step)} has an unreadable checksums file "
                f"(expected {CHECKSUM_ALGORITHM} checksums)",
            )
        return saved["arrays"]

    def verify(self, step: int, tree: Any, prefix: str = "") -> bool:
        """Checks the restored `tree` (all of `state`, or its subtree `prefix`)
        against the checksums saved with checkpoint `step`. Raises
        DamagedCheckpointError on a mismatch; returns False (with a warning) for
        a checkpoint that has no checksums, True when every array matches."""
        expected = self.saved_checksums(step)
        if expected is None:
            if step not in self._warned_unverified:
                self._warned_unverified.add(step)
                logging.warning(
                    "checkpoint %s has no checksums (it was written before lstm_jax stored "
                    "them): its arrays are loaded without verification",
                    self.step_dir(step),
                )
            return False
        actual = host_arrays(tree, prefix)
        bad = [name for name, x in actual.items() if expected.get(name) != array_checksum(x)]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise self._damaged(
                step,
                f"checkpoint {self.step_dir(step)} is damaged: {len(bad)} of {len(actual)} "
                f"arrays differ from the checksums written with them ({shown})",
            )
        return True

    def restore_newest_good(
        self, target: Any, check_meta: Callable[[int, dict], None] | None = None
    ) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest checkpoint that reads and verifies,
        newest first, logging each one skipped and why; None if there is none at
        all; CheckpointError if every one is damaged. `check_meta(step, meta)`
        raises DamagedCheckpointError for a meta its caller cannot use."""
        steps = self.all_steps()
        if not steps:
            return None
        skipped = []
        for step in reversed(steps):
            try:
                meta = self.restore_meta(step)
                if check_meta is not None:
                    check_meta(step, meta)
                state = self.restore_state(step, target)
            except DamagedCheckpointError as e:
                logging.warning("skipping checkpoint %d: %s", step, e)
                skipped.append(step)
                continue
            if skipped:
                logging.warning(
                    "using checkpoint %d, the newest that verifies; skipped damaged %s",
                    step,
                    skipped,
                )
            return step, state, meta
        raise DamagedCheckpointError(
            f"every checkpoint in {self.directory} is damaged ({steps}); use a new --workdir"
        )

    def _restore_item(self, step: int, item: str, args: ocp.args.CheckpointArgs) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
        except Exception as e:  # orbax raises several types for unreadable files
            raise self._damaged(step, f"cannot read checkpoint {self.step_dir(step)}", e) from e

    def _damaged(
        self, step: int, what: str, error: Exception | None = None
    ) -> DamagedCheckpointError:
        others = [s for s in self.all_steps() if s != step]
        if error is not None:  # on one line: orbax/TensorStore messages span several
            detail = " ".join(str(error).split())[:300]
            what += f" ({type(error).__name__}: {detail}). It is corrupt or was written for "
            what += "another model"
        return DamagedCheckpointError(
            f"{what}. Other checkpoints here: {others or 'none'}; move the bad one away to "
            "use an earlier step, or use a new --workdir."
        )
