"""A training workdir, as the runs that share it see it:

    WORKDIR/lock           one live run at a time (`lock_workdir`, flock)
    WORKDIR/config.json    the resolved config (`read_saved_config`)
    WORKDIR/checkpoints/   orbax steps (lstm_jax/checkpoint.py); each one's meta
                           holds META_FIELDS (`newest_meta`, `check_meta_fields`)

and whether a resumed run may continue an earlier one (`check_compatible`:
the fields that define what is computed must match). lstm_jax.train checks
these before any compute; lstm_jax.sample reads the same files.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
from typing import Any

import jax
from absl import logging

from lstm_jax import config as config_lib
from lstm_jax.checkpoint import Checkpointer, CheckpointError, DamagedCheckpointError

# Fields that must match for a workdir's checkpoint to be resumed; the rest
# (num_steps, eval/log cadence, learning rate schedule...) may change.
COMPAT_SECTIONS = ("seed", "data", "model")
COMPAT_FIELDS = ("optim.name", "train.batch_size", "train.seq_len")
# Free to change on resume: how the same math is computed, not what it computes.
COMPAT_EXEMPT = (
    "model.impl",
    "model.unroll",
    "model.matmul_precision",
    "data.cache",  # the cache gives the ids the in-memory path gives
    "data.cache_dir",
)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compat_view(config: dict) -> dict:
    """The dotted fields of `config` that a resumed run must share; the data
    path compared as an absolute path, so `data/x.txt` and `./data/x.txt` agree."""
    flat = _flatten(config)
    view = {
        k: v
        for k, v in flat.items()
        if (k.split(".")[0] in COMPAT_SECTIONS or k in COMPAT_FIELDS) and k not in COMPAT_EXEMPT
    }
    for key in ("data.path", "data.train_path", "data.valid_path", "data.test_path"):
        if view.get(key):
            view[key] = str(pathlib.Path(view[key]).expanduser().resolve())
    return view


def check_compatible(saved: dict, current: dict, workdir: pathlib.Path) -> None:
    # A field added since the checkpoint was written reads as its default (which
    # leaves the old behaviour unchanged), so an older run still resumes.
    try:
        old = compat_view(config_lib.complete(saved).to_dict())
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"the config saved with the checkpoint in {workdir} is malformed "
            f"({' '.join(str(e).split())[:200]}); use a new --workdir"
        ) from e
    new = compat_view(current)
    diffs = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old | new)
        if old.get(k) != new.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"the checkpoint in {workdir} was trained with a different config "
            f"({'; '.join(diffs)}). Refusing to resume or overwrite it: use a new --workdir, "
            "or restore the original settings."
        )


def has_checkpoint(workdir: pathlib.Path) -> bool:
    ckpt_dir = workdir / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def check_workdir(workdir: pathlib.Path) -> None:
    """A workdir must be a directory we can write (or a path we can create)."""
    for p in (workdir, *workdir.parents):
        if p.is_symlink() and not p.exists():
            raise NotADirectoryError(
                f"--workdir {workdir}: {p} is a symbolic link to {p.readlink()}, which does not "
                "exist; create that directory, or pick another --workdir"
            )
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(
                    f"--workdir {workdir}: {p} is a file, not a directory; pick another --workdir"
                )
            break


class WorkdirBusyError(CheckpointError):
    """Another live run holds the workdir's lock."""


LOCK_FILE = "lock"


def lock_workdir(workdir: pathlib.Path) -> Any:
    """One run per workdir: an advisory lock (flock) on WORKDIR/lock, held
    by process 0 until it exits. The kernel drops it when the process dies, by
    any signal including SIGKILL, so it is never stale. Returns the open file
    that holds it (None on other processes, which share process 0's run)."""
    if jax.process_index() != 0:
        return None
    import fcntl  # POSIX; imported here so the module still imports elsewhere

    workdir.mkdir(parents=True, exist_ok=True)
    handle = open(workdir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise WorkdirBusyError(
            f"{workdir} is in use by another run ({holder}); wait for it to end, or "
            "use another --workdir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


# What a train checkpoint's meta must hold, and of which JSON type.
META_FIELDS = {"step": int, "data_state": dict, "tokenizer": dict, "config": dict}


def newest_meta(ckpt: Checkpointer, fallback: bool) -> dict | None:
    """The newest checkpoint's metadata (None: no checkpoint), checked for the
    fields a resume reads. Unreadable: DamagedCheckpointError, or with
    `fallback` the next newest that reads (the state's own fallback follows in
    `restore_checkpoint`, which sets the newer ones aside)."""
    hint = " Or resume from the newest good one: --config.train.restore_fallback=True."
    for step in reversed(ckpt.all_steps()):
        try:
            meta = ckpt.restore_meta(step)
            check_meta_fields(ckpt, step, meta)
            return meta
        except DamagedCheckpointError as e:
            if not fallback:
                raise DamagedCheckpointError(f"{e}{hint}") from e
            logging.warning("skipping checkpoint %d: %s", step, e)
    if fallback and ckpt.all_steps():
        raise DamagedCheckpointError(
            f"every checkpoint in {ckpt.directory} is damaged ({ckpt.all_steps()}); use a "
            "new --workdir"
        )
    return None


def check_meta_fields(ckpt: Checkpointer, step: int, meta: dict) -> None:
    """DamagedCheckpointError unless `meta` has every field a resume reads."""
    bad = [k for k, kind in META_FIELDS.items() if not isinstance(meta.get(k), kind)]
    if bad:
        raise DamagedCheckpointError(
            f"checkpoint {ckpt.step_dir(step)} has unreadable metadata (missing or "
            f"malformed: {', '.join(bad)}); move it away to use an earlier step, or "
            "use a new --workdir."
        )


def read_saved_config(path: pathlib.Path) -> dict:
    """An earlier run's config.json, as a complete config dict; a file of the
    wrong shape is named in one line (CheckpointError)."""
    saved = read_json(path)
    sections = ("data", "model", "train", "optim")
    problem = None
    if not isinstance(saved, dict):
        problem = f"a JSON {type(saved).__name__}, not an object"
    elif missing := [k for k in sections if not isinstance(saved.get(k), dict)]:
        problem = f"no {', '.join(missing)} section(s)"
    else:
        try:
            return config_lib.complete(saved).to_dict()
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            problem = f"a field of the wrong type ({' '.join(str(e).split())[:200]})"
    raise CheckpointError(
        f"{path} is not an lstm_jax config ({problem}); restore it from a backup, or delete "
        "it (the checkpoints' own copies are used), or use a new --workdir"
    )


def read_json(
    path: pathlib.Path,
    what: str = "",
    fix: str = "restore it from a backup or use a new --workdir",
) -> Any:
    """The JSON in a workdir file; unreadable: one CheckpointError naming the
    file (`what` it is) and `fix`."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        name = f"the {what} file {path}" if what else str(path)
        raise CheckpointError(f"cannot read {name} ({e}); {fix}") from e


def newest_checkpoint(directory: pathlib.Path) -> str:
    """The newest finished checkpoint as "step N in DIR" (orbax renames a step's
    directory into place only once it is whole), read from the directory alone."""
    try:
        steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    except OSError:
        steps = []
    return f"step {steps[-1]} in {directory}" if steps else f"none in {directory}"
