"""A watchdog for the train loop: a run that makes no progress ends, loudly.

A multi-process step that never finishes (a collective one process never
joins) blocks the main thread inside C++, where neither the loop nor Python's
signal handlers run: SIGTERM from SLURM or the launcher would then be ignored
until SIGKILL, and the allocation would burn to its time limit.

The watchdog is a daemon thread. The loop calls `beat(where)` at every step
and phase; when no beat comes for `timeout_s` seconds the thread

  1. writes every thread's stack to stderr (`faulthandler`),
  2. writes one line saying that the run hung, where, and the newest finished
     checkpoint (orbax renames a checkpoint into place only once it is whole,
     so that one is intact; a half-written one is a `*.orbax-checkpoint-tmp-*`
     directory that the next run ignores),
  3. ends the process with `EXIT_HUNG` (`os._exit`: no Python cleanup, which
     would wait on the stuck collective).

Signals: `signal.set_wakeup_fd` makes the C-level handler write each signal's
number to a socket at once, from whatever thread the kernel picked, even while
the main thread is stuck. The watchdog reads it, and from then on the main
thread has `grace_s` seconds of no progress to save and exit as usual (the
Python handler, lstm_jax.cli.StopSignal); otherwise the watchdog ends the process with
128 + the signal's number, as a shell reports a process killed by it.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

# lstm_jax.train's exit codes (train_cli.py): 0 done, 2 user error, 3 non-finite loss, 4 hung
EXIT_HUNG = 4


class Watchdog:
    """`with Watchdog(timeout_s, newest_checkpoint) as dog: ... dog.beat("step 5")`.

    `timeout_s` 0 turns the no-progress timeout off (the signal grace stays).
    `newest_checkpoint()` names the newest finished checkpoint for the last line.
    `exit_fn`: how the process ends (`os._exit`; a test passes a recorder).
    """

    def __init__(
        self,
        timeout_s: float,
        newest_checkpoint: Callable[[], str] = lambda: "none",
        *,
        grace_s: float = 60.0,
        program: str = "lstm_jax.train",
        poll_s: float = 0.5,
        exit_fn: Callable[[int], None] = os._exit,
    ):
        if timeout_s < 0 or grace_s <= 0:
            raise ValueError(f"watchdog timeout must be >= 0 and grace > 0: {timeout_s}, {grace_s}")
        self.timeout_s, self.grace_s = float(timeout_s), float(grace_s)
        self.newest_checkpoint = newest_checkpoint
        self.program, self.poll_s, self.exit_fn = program, poll_s, exit_fn
        self.fired: int | None = None  # the exit code, once fired
        self.where = "start-up"
        self.last_beat = time.monotonic()
        self.signum: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup_fd: int | None = None

    def beat(self, where: str) -> None:
        """Progress: the main thread reached `where` (a step, a phase)."""
        self.where = where
        self.last_beat = time.monotonic()

    def __enter__(self) -> Watchdog:
        if threading.current_thread() is threading.main_thread():
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._sockets = (reader, writer)
            self._old_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self.beat(self.where)
        self._thread = threading.Thread(target=self._watch, name="lstm_jax-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sockets is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd if self._old_wakeup_fd is not None else -1)
            for s in self._sockets:
                s.close()
            self._sockets = None

    def _signals_received(self) -> list[int]:
        if self._sockets is None:
            return []
        try:
            return list(self._sockets[0].recv(64))
        except (BlockingIOError, InterruptedError):
            return []

    def _watch(self) -> None:
        signalled_at = 0.0
        while not self._stop.wait(self.poll_s):
            for signum in self._signals_received():
                if signum in (signal.SIGTERM, signal.SIGINT) and self.signum is None:
                    self.signum, signalled_at = signum, time.monotonic()
            now = time.monotonic()
            idle = now - self.last_beat
            if self.signum is not None and now - max(self.last_beat, signalled_at) > self.grace_s:
                name = signal.Signals(self.signum).name
                self._fire(
                    f"got {name}, then no progress for {self.grace_s:g} s (at {self.where})",
                    128 + self.signum,
                )
            if self.timeout_s and idle > self.timeout_s:
                self._fire(
                    f"no progress for {idle:.0f} s (train.watchdog_s={self.timeout_s:g}) at "
                    f"{self.where}: the run hung",
                    EXIT_HUNG,
                )

    def _fire(self, what: str, code: int) -> None:
        try:
            print(f"{self.program}: watchdog: stacks of every thread follow", file=sys.stderr)
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            try:
                newest = self.newest_checkpoint()
            except Exception as e:  # the last line must come out whatever happens
                newest = f"unknown ({type(e).__name__})"
            print(
                f"{self.program}: {what}; exiting with {code}. Newest finished checkpoint "
                f"kept: {newest}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            self.fired = code
            self._stop.set()
            self.exit_fn(code)
