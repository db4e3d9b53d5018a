"""host.retain_freed_memory: freed blocks stay in the process, so a buffer
allocated again after a free costs no page faults (what each train step does)."""

import os
import platform
import subprocess
import sys

import pytest

from lstm_jax import host

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)

# malloc, touch and free a 64 MiB block 5 times; print the minor page faults
# of the last 4 rounds (the first one may grow the heap).
FAULTS = """
import ctypes, resource, sys
if sys.argv[1] == "retain":
    from lstm_jax import host
    assert host.retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def round_trip():
    block = libc.malloc(64 * 2**20)
    ctypes.memset(block, 1, 64 * 2**20)
    libc.free(block)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_trip()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
# At least one fault per 2 MiB (a transparent huge page) per round when the
# block goes back to the kernel; 16,384 with 4 KiB pages.
RETURNED = 4 * 32


def page_faults(mode: str, env: dict[str, str] | None = None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_a_freed_block_is_reused_without_page_faults():
    default = page_faults("default")
    assert default >= RETURNED  # glibc: munmap, then fresh zeroed pages
    assert page_faults("retain") < RETURNED // 4  # kept: the same pages again


@pytest.mark.slow
def test_malloc_env_names_the_same_settings():
    env = host.malloc_env()
    assert env == {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
        "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1),
    }
    # The same settings through the environment, in a fresh interpreter.
    assert page_faults("env", env) < RETURNED // 4
