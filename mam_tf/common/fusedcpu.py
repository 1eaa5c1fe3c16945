"""The fused CPU kernel without TensorFlow: ``mam_fused_cpu.cc`` built on first use
(:mod:`mam_tf.common.fusedbuild`) and called through its C ABI with ctypes, for the Keras 3
backends (PyTorch calls it directly; JAX builds it with its FFI headers and registers the XLA
FFI handlers of the same library).

Same contract as the TensorFlow op (:mod:`mam_tf.train.fused`): x [B, N] and w [N, M], float32,
contiguous, row-major; ``forward -> (y, amax, amin)`` with int32 indices, the lowest index
winning ties, and ``backward -> (dx, dw)``, each sum in the fixed order of ``mam_fused.h``
whatever the thread count. The functions here take raw addresses (any framework's buffers) and
the caller allocates the outputs.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Sequence

import numpy as np

from mam_tf.common import fusedbuild

__all__ = ["GLUE", "LIBRARY_NAME", "backward", "build", "forward", "load", "numpy_backward",
           "numpy_forward"]

GLUE = "mam_fused_cpu.cc"
LIBRARY_NAME = "mam_fused_cpu.so"
_ERROR_BYTES = 512
_P = ctypes.c_void_p
_I = ctypes.c_int64


def build(prefix: str = "cpu", flags: Sequence[str] = ()) -> Path:
    """Compiles the library unless it is cached (``flags`` e.g. add the XLA FFI handlers)."""
    return fusedbuild.build_library(GLUE, LIBRARY_NAME, prefix,
                                    flags=("-std=c++17", "-pthread", *flags))


def load(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with its C ABI declared, after its self-test."""
    lib = ctypes.CDLL(str(path))
    lib.mam_fused_forward_f32.argtypes = [_P, _P, _I, _I, _I, _P, _P, _P, _I, ctypes.c_char_p, _I]
    lib.mam_fused_backward_f32.argtypes = [_P, _P, _P, _P, _P, _I, _I, _I, _P, _P, _I,
                                           ctypes.c_char_p, _I]
    lib.mam_fused_forward_f32.restype = lib.mam_fused_backward_f32.restype = ctypes.c_int
    fusedbuild.self_test(lambda x, w: numpy_forward(lib, x, w),
                         lambda g, x, w, amax, amin: numpy_backward(lib, g, x, w, amax, amin))
    return lib


def _check(status: int, error) -> None:
    if status != 0:
        raise ValueError(error.value.decode(errors="replace"))


def forward(lib, x, w, b, n, m, y, amax, amin, threads: int) -> None:
    """Writes y, amax, amin (addresses of [b, m] float32, int32, int32) for x, w (addresses of
    [b, n] and [n, m] float32) on ``threads`` threads. Raises ValueError for bad sizes."""
    error = ctypes.create_string_buffer(_ERROR_BYTES)
    _check(lib.mam_fused_forward_f32(x, w, b, n, m, y, amax, amin, threads, error, _ERROR_BYTES),
           error)


def backward(lib, g, x, w, amax, amin, b, n, m, dx, dw, threads: int) -> None:
    """Writes dx [b, n] and dw [n, m] (addresses) from g, x, w, amax, amin (addresses). Raises
    ValueError when an index is outside [0, n)."""
    error = ctypes.create_string_buffer(_ERROR_BYTES)
    _check(lib.mam_fused_backward_f32(g, x, w, amax, amin, b, n, m, dx, dw, threads, error,
                                      _ERROR_BYTES), error)


def _addr(a: np.ndarray) -> int:
    return a.ctypes.data


def numpy_forward(lib, x, w, threads=1):
    """forward on numpy arrays: (y, amax, amin) of x [B, N] and w [N, M]."""
    x, w = (np.ascontiguousarray(a, np.float32) for a in (x, w))
    (b, n), m = x.shape, w.shape[1]
    y = np.empty((b, m), np.float32)
    amax, amin = np.empty((b, m), np.int32), np.empty((b, m), np.int32)
    forward(lib, _addr(x), _addr(w), b, n, m, _addr(y), _addr(amax), _addr(amin), threads)
    return y, amax, amin


def numpy_backward(lib, g, x, w, amax, amin, threads=1):
    """backward on numpy arrays: (dx, dw)."""
    g, x, w = (np.ascontiguousarray(a, np.float32) for a in (g, x, w))
    amax, amin = (np.ascontiguousarray(a, np.int32) for a in (amax, amin))
    (b, n), m = x.shape, w.shape[1]
    dx, dw = np.empty((b, n), np.float32), np.empty((n, m), np.float32)
    backward(lib, _addr(g), _addr(x), _addr(w), _addr(amax), _addr(amin), b, n, m, _addr(dx),
             _addr(dw), threads)
    return dx, dw
