"""The "onednn" layer: an LSTM layer run by oneDNN's fused RNN primitive on CPU.

PyTorch's CPU `nn.LSTM` is fast because it calls this primitive, which computes
each step's gates inside the threads' GEMM blocks and runs a whole layer at
~90% of the machine's best matmul rate; XLA-compiled loops ("fused") reach
~75-80% (docs/performance.md, runs 6-7). This module calls the same primitive
from JAX through the XLA FFI, so a JAX model can use it too:

    xs, h0, c0, w_x, w_h, b --forward FFI--> hs, h_T, c_T, workspace
    + cotangents            --backward FFI-> d xs, d h0, d c0, d w_x, d w_h, d b

wrapped in one `jax.custom_vjp`. Parameters, layouts and the gate order
(i, f, g, o) are ours unchanged (lstm_jax/layers/native/onednn_lstm.cc says how
they map onto oneDNN's). The primitive has no mid-sequence reset, so a layer with
a reset mask, a GRU or vanilla RNN, a non-fp32 input or a non-CPU backend takes
the exact "fused" path instead, with one warning per reason (as the "cudnn"
layer does on GPU). Variable-length rows (`seq_lengths`) need no reset here:
`lengths.held_layer` holds the carry through the padding with saturated gates.

oneDNN is an optional dependency (`pip install -e '.[onednn]'`, the
`onednn-cpu-gomp` wheels: the library and its headers); the small C++ file is
compiled with the system's g++ on first use and cached under
$XDG_CACHE_HOME/lstm_jax (~/.cache/lstm_jax), keyed by a hash of the source,
the compiler command and the jax version.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.cells import LSTM, Cell, LSTMCarry, Params
from lstm_jax.layers.fallback import warn_fallback
from lstm_jax.layers.fused import fused_layer_time_major

Array = jax.Array
SOURCE = Path(__file__).parent / "native" / "onednn_lstm.cc"
FORWARD_TARGET = "lstm_jax_onednn_forward"
BACKWARD_TARGET = "lstm_jax_onednn_backward"
INSTALL_HINT = "install it with: pip install -e '.[onednn]' (the onednn-cpu-gomp wheels)"


class OnednnUnavailable(RuntimeError):
    """oneDNN or a C++ compiler is missing, or the extension failed to build."""


def installed() -> bool:
    """Whether the oneDNN wheels are installed (without building anything)."""
    try:
        onednn_prefix()
    except OnednnUnavailable:
        return False
    return True


def onednn_prefix() -> Path:
    """The prefix the oneDNN wheels installed into (lib/libdnnl.so, include/)."""
    for prefix in (Path(sys.prefix), Path(sys.base_prefix)):
        if (prefix / "lib" / "libdnnl.so").exists() and (
            prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
        ).exists():
            return prefix
    raise OnednnUnavailable(
        f"oneDNN (libdnnl.so and its headers) not found under {sys.prefix}; {INSTALL_HINT}"
    )


def _compile_command(prefix: Path, out: Path) -> list[str]:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise OnednnUnavailable(
            f"no C++ compiler ({cxx!r}) to build the oneDNN layer; install g++ or set CXX"
        )
    lib = prefix / "lib"
    return [
        cxx, "-O2", "-std=c++17", "-shared", "-fPIC",
        "-isystem", jax.ffi.include_dir(), "-isystem", str(prefix / "include"),
        str(SOURCE), "-o", str(out),
        f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}",
    ]  # fmt: skip


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "lstm_jax"


def build() -> Path:
    """Compile the extension unless a build of this exact source is cached."""
    prefix = onednn_prefix()
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(jax.__version__.encode())
    key.update(" ".join(_compile_command(prefix, Path("out"))).encode())
    path = _cache_dir() / f"onednn_lstm-{key.hexdigest()[:16]}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_so = Path(tmp) / path.name
        done = subprocess.run(_compile_command(prefix, tmp_so), capture_output=True, text=True)
        if done.returncode != 0:
            raise OnednnUnavailable(f"building {SOURCE.name} failed:\n{done.stderr[-4000:]}")
        os.replace(tmp_so, path)  # atomic: a concurrent build never sees half a file
    return path


@functools.cache
def _library() -> ctypes.CDLL:
    """Build (or reuse) the extension, load it, and register its FFI targets."""
    lib = ctypes.CDLL(str(build()))
    lib.lstm_jax_onednn_workspace_bytes.restype = ctypes.c_int64
    lib.lstm_jax_onednn_workspace_bytes.argtypes = [ctypes.c_int64] * 4
    handlers = {
        FORWARD_TARGET: lib.LstmJaxOnednnForward,
        BACKWARD_TARGET: lib.LstmJaxOnednnBackward,
    }
    for name, handler in handlers.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    return lib


def load() -> None:
    """Build (or reuse) and load the extension now; OnednnUnavailable, naming
    the problem, when it cannot."""
    _library()


def _workspace_bytes(t: int, b: int, d: int, h: int) -> int:
    n = _library().lstm_jax_onednn_workspace_bytes(t, b, d, h)
    if n < 0:
        raise OnednnUnavailable(f"oneDNN has no LSTM for T={t}, B={b}, D={d}, H={h}")
    return n


def _forward(params: Params, xs: Array, h0: Array, c0: Array):
    t, b, d = xs.shape
    h = h0.shape[-1]
    f32 = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    outs = (f32((t, b, h)), f32((b, h)), f32((b, h)))
    outs += (jax.ShapeDtypeStruct((_workspace_bytes(t, b, d, h),), jnp.uint8),)
    return jax.ffi.ffi_call(FORWARD_TARGET, outs, vmap_method="sequential")(
        xs, h0, c0, params["w_x"], params["w_h"], params["b"]
    )  # hs, h_T, c_T, workspace


@jax.custom_vjp
def _lstm_layer(params: Params, xs: Array, h0: Array, c0: Array):
    """-> ((h_T, c_T), hs [T, B, H]); params {w_x [D, 4H], w_h [H, 4H], b [4H]}."""
    hs, h_last, c_last, _ = _forward(params, xs, h0, c0)
    return (h_last, c_last), hs


def _lstm_layer_fwd(params, xs, h0, c0):
    hs, h_last, c_last, workspace = _forward(params, xs, h0, c0)
    return ((h_last, c_last), hs), (params, xs, h0, c0, hs, h_last, c_last, workspace)


def _lstm_layer_bwd(saved, cotangents):
    params, xs, h0, c0, hs, h_last, c_last, workspace = saved
    (d_h_last, d_c_last), d_hs = cotangents
    outs = tuple(
        jax.ShapeDtypeStruct(x.shape, jnp.float32)
        for x in (xs, h0, c0, params["w_x"], params["w_h"], params["b"])
    )
    # under vmap, one call per row of the mapped axis (the primitive has no batch of layers)
    backward = jax.ffi.ffi_call(BACKWARD_TARGET, outs, vmap_method="sequential")
    d_xs, d_h0, d_c0, d_w_x, d_w_h, d_b = backward(
        xs, h0, c0, params["w_x"], params["w_h"], params["b"],
        hs, h_last, c_last, workspace, d_hs, d_h_last, d_c_last,
    )  # fmt: skip
    return {"w_x": d_w_x, "w_h": d_w_h, "b": d_b}, d_xs, d_h0, d_c0


_lstm_layer.defvjp(_lstm_layer_fwd, _lstm_layer_bwd)


def _why_not_onednn(cell: Cell, params: Params, xs: Array, reset: Array | None) -> str | None:
    """Why oneDNN's primitive cannot compute exactly this layer; None when it can."""
    if not isinstance(cell, LSTM):
        return f"oneDNN's primitive is used for the LSTM only, not {cell.name}"
    if reset is not None:
        return "oneDNN's LSTM primitive has no mid-sequence reset (a reset mask was given)"
    if jax.default_backend() != "cpu":
        return f"oneDNN runs on the CPU backend only (backend: {jax.default_backend()})"
    if not (xs.dtype == jnp.float32 and all(params[k].dtype == jnp.float32 for k in params)):
        return f"the oneDNN layer computes in float32, got {xs.dtype} inputs"
    return None


def computes(cell: Cell, params: Params, xs: Array) -> bool:
    """Whether the primitive computes this layer (without a reset mask) exactly."""
    return _why_not_onednn(cell, params, xs, None) is None


def onednn_layer_time_major(
    cell: Cell,
    params: Params,
    xs: Array,  # [T, B, D]
    carry: Any,
    reset: Array | None = None,  # [T, B] bool
    *,
    unroll: int = 1,
) -> tuple[Any, Array]:
    """Drop-in for `scan.scan_layer_time_major` (the "onednn" layer).

    Raises OnednnUnavailable, naming the fix, when oneDNN is not installed;
    layers the primitive cannot compute exactly run as "fused"."""
    _library()  # fail early and clearly if oneDNN is missing
    reason = _why_not_onednn(cell, params, xs, reset)
    if reason is not None:
        warn_fallback("onednn", "fused", reason)
        return fused_layer_time_major(cell, params, xs, carry, reset, unroll=unroll)
    layer_params = {k: params[k] for k in ("w_x", "w_h", "b")}
    (h, c), hs = _lstm_layer(layer_params, xs, carry.h, carry.c)
    return LSTMCarry(h, c), hs
