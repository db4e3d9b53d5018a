"""What the command lines share: a user error is one line on stderr and exit
code 2, not a traceback (`--verbose` shows the traceback); SIGINT/SIGTERM ask a
run to save and stop (`StopSignal`).

    python -m lstm_jax.train --config configs/dnd.py --config.model.cell=lstmm
    lstm_jax.train: error: unknown cell 'lstmm'; valid cells: ['gru', ...]
      (--verbose shows the traceback)

A user error is a bad flag or config value, a name that is not in a registry,
a missing or unreadable file, a checkpoint that does not fit. Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

import jax
from absl import app, flags
from absl import logging as absl_logging

from lstm_jax.checkpoint import CheckpointError

EXIT_USER_ERROR = 2

# Raised by the library for bad input: lstm_jax.config.validate and the
# registries (ValueError, KeyError), the corpus readers (OSError and
# UnicodeDecodeError, a ValueError), the checkpointer (CheckpointError).
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FileExistsError,
    CheckpointError,
)

# A full or failing disk: the user's to fix, reported in one line like a user error.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)

FLAGS = flags.FLAGS


def message(error: BaseException) -> str:
    """The error's text without the quotes KeyError adds."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])
    return str(error)


class _DropLibraryTracebacks(logging.Filter):
    """Drops the error reports that orbax's background threads and asyncio log
    with tracebacks: the CLI re-raises each such failure as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        library = "/orbax/" in record.pathname or record.name == "asyncio"
        return not (library and record.levelno >= logging.ERROR)


def _closed_loop_callback(exc: BaseException | None) -> bool:
    """A library's callback into an asyncio loop that orbax already closed
    (TensorStore completing a read that a failed restore abandoned)."""
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def quiet_library_errors() -> None:
    """Install `_DropLibraryTracebacks` on absl's and asyncio's log output, and
    drop the tracebacks of callbacks into a closed event loop, which arrive
    from library threads after a failed restore; every other exception is
    reported as before."""
    drop = _DropLibraryTracebacks()
    absl_logging.get_absl_handler().addFilter(drop)
    logging.getLogger("asyncio").addFilter(drop)
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind, exc, tb):
        if not _closed_loop_callback(exc):
            excepthook(kind, exc, tb)

    def on_unraisable(unraisable):
        if not _closed_loop_callback(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable


def fail(text: str, code: int = EXIT_USER_ERROR, *, program: str | None = None) -> None:
    """Print `program: error: text` on stderr and exit with `code`."""
    program = program or _program
    print(f"{program}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


_program = "lstm_jax"
_HINT = "  (--verbose shows the traceback)"


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's parse, with a bad flag or config override as a clean error.
    ml_collections raises AttributeError for an unknown config key."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
        if "--verbose" in argv:
            raise
        text = message(e).replace("\\n", " ").strip("'\"")
        print(f"{_program}: error: {text}\n{_HINT}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], None], *, required: Sequence[str], program: str) -> None:
    """`absl.app.run(main)` with user errors (USER_ERRORS) reported in one
    line and exit code 2; the traceback only with --verbose."""
    global _program
    _program = program
    if "verbose" not in FLAGS:
        flags.DEFINE_bool("verbose", False, "On an error, print the full traceback.")
    flags.mark_flags_as_required(list(required))

    def guarded(argv: list[str]) -> None:
        if not FLAGS.verbose:
            quiet_library_errors()
        try:
            main(argv)
        except (*USER_ERRORS, OSError) as e:
            if FLAGS.verbose or not (isinstance(e, USER_ERRORS) or e.errno in DISK_ERRORS):
                raise
            text = message(e)
            if isinstance(e, OSError) and e.errno in DISK_ERRORS:
                where = f" ({e.filename})" if e.filename else ""
                text = (
                    f"{e.strerror}{where}; free the space or fix the disk, then rerun the "
                    "same command (a training run resumes from its newest checkpoint)"
                )
            print(f"{program}: error: {text}\n{_HINT}", file=sys.stderr, flush=True)
            # The error is reported: exit now, without the interpreter's
            # teardown, in which reads it abandoned (orbax's and TensorStore's
            # callbacks into a closed event loop) print tracebacks of their own.
            # Checkpoints are written atomically and the workdir lock is the
            # kernel's, so nothing is left half-done.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_USER_ERROR)

    app.run(guarded, flags_parser=_parse_flags)


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits.

    A save is collective, so with several processes all must stop at the same
    step. Each process feeds its flag into the train step (`stop_flag`), which
    reduces it with the step's other collectives; every process reads the
    result at the same log steps, so all agree without a collective of their
    own. One process stops at the step it sees its flag. A second SIGINT quits
    at once (KeyboardInterrupt): checkpoints are written atomically, so the
    newest finished one is kept. A process stuck where this handler cannot run
    is ended by the watchdog (lstm_jax/watchdog.py).
    """

    def __init__(self, program: str = "lstm_jax.train"):
        self.program = program
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if jax.process_index() == 0:
            print(
                f"{self.program}: got {signal.Signals(signum).name}; finishing the step or "
                "save in progress, saving a checkpoint, then exiting (Ctrl-C again quits "
                "without saving; the newest finished checkpoint is kept)",
                file=sys.stderr,
                flush=True,
            )

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
