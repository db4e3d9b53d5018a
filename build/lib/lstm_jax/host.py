"""Host-process settings for XLA:CPU: keep freed memory for the next step.

Every call of a compiled train step asks the C allocator for its temporaries
(activations, gradients, the optimizer's new state) and frees them at the end.
glibc's defaults hand such blocks straight back to the kernel: blocks over
the mmap threshold are `mmap`ed and `munmap`ed, the top of the heap is trimmed,
and XLA's worker threads allocate from per-thread arenas whose heaps are at
most 64 MiB, so larger blocks are `mmap`ed whatever the threshold. The next
step then touches fresh pages, and the kernel zero-fills each one in a page
fault. Measured on the 2-core dev CPU (`python -m lstm_jax.bench`'s train
step, fused LSTM): 13,700 page faults per step at Zaremba small (53 MiB),
52,000 at the seeds' size (204 MiB), 14,200 for the dnd model; with the
settings below, none, and the step ran 1.39x, 1.04x and 1.14x faster.

`retain_freed_memory()` sets glibc's `mallopt` knobs so freed blocks stay in
the process (one arena, blocks up to 1 GiB from the heap, no trimming below
2 GiB). The cost: the process keeps its peak heap instead of returning it to
the system between steps; memory-hungry neighbours see the peak, not less.
`malloc_env()` is the same settings as the environment variables glibc reads
at start-up, for a child process (the benchmark gives them to PyTorch).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# (mallopt parameter number from glibc's <malloc.h>, environment variable, value)
_SETTINGS = (
    # One arena: worker threads share the main heap, which grows with brk and
    # has no 64 MiB cap, instead of mmap-ing large blocks in per-thread arenas.
    (-8, "MALLOC_ARENA_MAX", 1),  # M_ARENA_MAX
    # Blocks up to 1 GiB come from the heap (default: 128 KiB, rising to 32 MiB).
    (-3, "MALLOC_MMAP_THRESHOLD_", 1 << 30),  # M_MMAP_THRESHOLD
    # Give the top of the heap back only beyond 2 GiB free (default 128 KiB).
    # mallopt takes a C int, so 2**31 - 1 is the largest value.
    (-1, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1),  # M_TRIM_THRESHOLD
)


def malloc_env() -> dict[str, str]:
    """The settings as environment variables, for a child process."""
    return {name: str(value) for _, name, value in _SETTINGS}


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - glibc without a loadable libc.so
        return None


def retain_freed_memory() -> bool:
    """Apply the settings to this process; False where the C library is not
    glibc (macOS, musl), which leaves the allocator as it was.

    Call it before JAX starts its thread pools (before the first computation),
    so that their threads take the one arena.
    """
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, _, value in _SETTINGS)


# XLA:CPU compiler options by dot library, passed per compiled step (the train
# and eval steps' `jax.jit(..., compiler_options=...)`), never process-wide.
# "default": XLA's own choice (YNNPACK in jax 0.12). "onednn": matmuls through
# oneDNN, YNNPACK kept for reductions only. Measured A/B in one process with
# the fused LSTM (docs/performance.md): Zaremba small 1.17x, dnd and the
# seeds' size 1.01x, char-rnn 0.97x, so it is a per-config choice.
CPU_DOT_LIBRARIES: dict[str, dict[str, bool | str]] = {
    "default": {},
    "onednn": {
        "xla_cpu_use_onednn": True,
        "xla_cpu_experimental_onednn_custom_call": True,
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
    },
}


def cpu_compiler_options(dots: str, backend: str | None = None) -> dict[str, bool | str]:
    """The compiler options for `dots` (a name in CPU_DOT_LIBRARIES) on the CPU
    backend; {} on any other backend (`backend`: jax.default_backend())."""
    if dots not in CPU_DOT_LIBRARIES:
        raise ValueError(f"unknown CPU dot library {dots!r}; valid: {sorted(CPU_DOT_LIBRARIES)}")
    if backend is None:
        import jax  # here, so that retain_freed_memory() can run before JAX starts

        backend = jax.default_backend()
    return dict(CPU_DOT_LIBRARIES[dots]) if backend == "cpu" else {}
