"""Host-process settings: the persistent compilation cache, and (XLA:CPU)
keeping freed memory for the next step.

Every call of a compiled train step asks the C allocator for its temporaries
(activations, gradients, the optimizer's new state) and frees them at the end.
glibc's defaults hand such blocks straight back to the kernel: blocks over
the mmap threshold are `mmap`ed and `munmap`ed, the top of the heap is trimmed,
and XLA's worker threads allocate from per-thread arenas whose heaps are at
most 64 MiB, so larger blocks are `mmap`ed whatever the threshold. The next
step then touches fresh pages, and the kernel zero-fills each one in a page
fault, tens of thousands per step at the word-level sizes; with the settings
below, none (the measured effect on step time: docs/performance.md).

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
import os
import pathlib
import platform

# The persistent compilation cache: a resume, a sample or a second run with the
# same shapes loads its compiled steps from disk instead of compiling again.
COMPILE_CACHE_ENV = "LSTM_JAX_COMPILE_CACHE"  # a directory, or "off"


def compile_cache_dir() -> pathlib.Path | None:
    """$LSTM_JAX_COMPILE_CACHE if set ("off", "0" or "" turn the cache off),
    else $XDG_CACHE_HOME/lstm_jax/jax (by default ~/.cache/lstm_jax/jax)."""
    value = os.environ.get(COMPILE_CACHE_ENV)
    if value is not None:
        off = value.strip().lower() in ("", "0", "off", "none", "false")
        return None if off else pathlib.Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "lstm_jax" / "jax"


def enable_compile_cache(num_processes: int = 1) -> tuple[pathlib.Path | None, str]:
    """Turn on JAX's persistent compilation cache in `compile_cache_dir()`,
    caching every compiled program whatever its compile time. A directory the
    user gave JAX itself (JAX_COMPILATION_CACHE_DIR) wins. Returns the
    directory in use (None when the cache is off) and one line for the log.

    A multi-process run (`num_processes` > 1, known after
    `jax.distributed.initialize`) never uses the cache, not even a directory
    given to JAX itself. A cached program there deadlocks the first train step
    (jax/jaxlib 0.12.1, CPU with gloo collectives; docs/scaling.md, "The
    compilation cache and several processes"): JAX's cache key includes the
    device topology's fingerprint, which differs from process to process, so
    only process 0 finds its entry while the others compile afresh, and the
    loaded executable's fingerprint differs from the compiled one's. The
    processes then run the "same" step as two different executables, whose
    collectives never meet. Compiling in every process is what a cold cache
    did, and it never hung.
    """
    import jax

    if num_processes > 1:
        jax.config.update("jax_enable_compilation_cache", False)
        return None, (
            f"compile cache off: {num_processes} processes (a cached executable deadlocks "
            "a multi-process step; docs/scaling.md)"
        )
    if jax.config.jax_compilation_cache_dir:
        directory = pathlib.Path(jax.config.jax_compilation_cache_dir)
        return directory, f"compile cache {directory}"
    directory = compile_cache_dir()
    if directory is None:
        return None, f"compile cache off ({COMPILE_CACHE_ENV}=off)"
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory, f"compile cache {directory}"


def versions() -> str:
    """The versions that decide what is compiled, for the first log line and
    the summary: "jax 0.12.1, jaxlib 0.12.1"."""
    import jax
    import jaxlib

    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}"


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
# oneDNN, YNNPACK kept for reductions only. It helps at some sizes and not at
# others (A/B in docs/performance.md), so it is a per-config choice.
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


def seconds_since_process_start() -> float | None:
    """Wall time since this process started (Linux: /proc), i.e. interpreter
    start-up plus imports when called at the top of `main`; None elsewhere."""
    try:
        # Field 22 of /proc/self/stat is the start time in clock ticks after boot;
        # the fields are counted after the parenthesised command name.
        after_name = pathlib.Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start = int(after_name[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(pathlib.Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start)
