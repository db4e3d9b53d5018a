"""The watchdog (lstm_jax/watchdog.py) in the test process: its exit is
recorded instead of taken. The end-to-end cases (a planted hang in a real
two-process run, SIGTERM to a stuck process) are in tests/test_stress.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from lstm_jax import watchdog


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_no_progress_fires_with_stacks_and_the_newest_checkpoint(capfd):
    codes = []
    dog = watchdog.Watchdog(
        0.5, lambda: "step 7 in /w/checkpoints", poll_s=0.05, exit_fn=codes.append
    )
    with dog:
        dog.beat("step 3")
        assert wait_until(lambda: codes)
    assert codes == [watchdog.EXIT_HUNG]
    err = capfd.readouterr().err
    assert "stacks of every thread follow" in err
    assert "test_watchdog.py" in err  # this thread's stack, from faulthandler
    assert "no progress for" in err and "at step 3: the run hung" in err
    assert "Newest finished checkpoint kept: step 7 in /w/checkpoints" in err


def test_beats_keep_it_quiet():
    codes = []
    with watchdog.Watchdog(0.5, poll_s=0.05, exit_fn=codes.append) as dog:
        for step in range(20):
            dog.beat(f"step {step}")
            time.sleep(0.05)  # 1 s in all, twice the timeout, but never 0.5 s idle
    assert codes == []


def test_zero_timeout_is_off():
    codes = []
    with watchdog.Watchdog(0, poll_s=0.05, exit_fn=codes.append):
        time.sleep(0.4)
    assert codes == []


def test_a_signal_gives_the_main_thread_a_grace_period(capfd):
    """SIGTERM reaches the watchdog through the wakeup fd even when Python's
    handler does not run; without progress it ends the process with 128 + 15."""
    codes = []
    old = signal.signal(signal.SIGTERM, lambda *a: None)  # the handler train.py installs
    try:
        with watchdog.Watchdog(0, grace_s=0.3, poll_s=0.05, exit_fn=codes.append) as dog:
            dog.beat("step 9")
            os.kill(os.getpid(), signal.SIGTERM)
            assert wait_until(lambda: codes)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert codes == [128 + signal.SIGTERM]
    assert "got SIGTERM, then no progress for 0.3 s (at step 9)" in capfd.readouterr().err


def test_progress_after_a_signal_is_left_to_finish():
    codes = []
    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        with watchdog.Watchdog(0, grace_s=0.5, poll_s=0.05, exit_fn=codes.append) as dog:
            os.kill(os.getpid(), signal.SIGTERM)
            for i in range(16):  # the save goes on, beating, for 0.8 s
                dog.beat(f"saving {i}")
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert codes == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="watchdog"):
        watchdog.Watchdog(-1)
    with pytest.raises(ValueError, match="watchdog"):
        watchdog.Watchdog(10, grace_s=0)
