"""The fused CPU kernel of MAMDense: y, argmax and argmin in one pass, and a scatter backward.

Same contract as the pure-TensorFlow reference in ``mam_tf.train.mam_op``
(docs/operator-contract.md section 1):
``forward(x, w) -> (y, amax, amin)`` with y = max_i(x*w) + min_i(x*w) (no bias), the LOWEST index
winning ties, and ``backward(g, x, w, amax, amin) -> (dx, dw)`` where a pair with
amax == amin receives its gradient twice. x is [B, N], w is [N, M] (Keras' kernel layout),
float32 only. Forward values and indices are bit-identical to the reference; gradients sum in a
fixed order (mam_fused.h): dw[i,j] over rows b ascending, dx[b,i] over units j ascending, the max
term before the min term, whatever the thread count.

How it is built: :mod:`mam_tf.common.fusedbuild` compiles ``mam_fused_op.cc`` (the TensorFlow
glue around the framework-free driver and core of ``mam_tf/train/fused_kernel``) on first use
against the installed TensorFlow (``tf.sysconfig`` flags, ``-march=native``) into
``~/.cache/mam-tf/ops-<tf version>-<hash>/``; read there what the hash covers and what
``$MAM_TF_KERNEL_DIR`` (``mam-tf bench train --kernel-dir`` times two kernel versions side by
side) and ``$MAM_TF_MARCH`` do. When any of this fails, ``available()`` is False, one
``FusedKernelWarning`` says why, and mam-tf uses the reference path. ``MAM_TF_FUSED=0`` turns
the fast path off without a warning.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from mam_tf.common import fusedbuild
from mam_tf.common.fusedbuild import (  # noqa: F401  (public here too)
    KERNEL_DIR, KERNEL_DIR_ENV, MARCH_ENV, FusedKernelWarning, kernel_dir, missing_sources)
from mam_tf.train.tfcore import in_save_context, in_xla_context, tf

__all__ = [
    "FusedKernelWarning",
    "available",
    "backward",
    "disabled",
    "forward",
    "unavailable_reason",
    "usable",
]

GLUE = "mam_fused_op.cc"
SOURCES = (*fusedbuild.HEADERS, GLUE)
LIBRARY_NAME = "mam_fused_op.so"

_lock = threading.Lock()
_disabled = 0  # depth of disabled() blocks, process-wide (tracing may happen on other threads)


def _tf_flags() -> tuple:
    return tuple(tf.sysconfig.get_compile_flags()), tuple(tf.sysconfig.get_link_flags())


def library_dir(cxx: str) -> Path:
    """The cache directory of the library for this TensorFlow, compiler, sources and CPU."""
    flags, link = _tf_flags()
    return fusedbuild.library_dir(cxx, GLUE, f"ops-{tf.__version__}",
                                  (*fusedbuild.cxxflags(), *flags), link)


def build() -> Path:
    """Compiles the op library unless it is cached; returns its path. Raises on failure."""
    flags, link = _tf_flags()
    return fusedbuild.build_library(GLUE, LIBRARY_NAME, f"ops-{tf.__version__}", flags=flags,
                                    link=link)


def _self_test(module) -> None:
    """A few exact values through both ops, to catch a miscompiled library before it trains."""
    fusedbuild.self_test(lambda x, w: [t.numpy() for t in module.mam_fused_forward(x, w)],
                         lambda *a: [t.numpy() for t in module.mam_fused_backward(*a)])


def _load():
    with tf.init_scope():  # the first call may come while a graph is traced: test eagerly
        module = tf.load_op_library(str(build()))
        _self_test(module)
    return module


#: The TensorFlow op library, loaded on first use (``loader.reset()`` forgets the outcome).
loader = fusedbuild.LazyKernel(lambda: _load(), "pure-TensorFlow reference path")


def available() -> bool:
    """Whether the fused kernel can run here: builds and loads it on the first call (cached).

    When it cannot, warns once (``FusedKernelWarning``, with the reason) and returns False.
    ``MAM_TF_FUSED=0`` in the environment makes it False without a warning.
    """
    return loader.available()


def unavailable_reason() -> str | None:
    """Why the last ``available()`` check failed, or None."""
    return loader.reason


@contextlib.contextmanager
def disabled():
    """Within this block ``usable`` is False, so MAM runs (and graphs trace) on the reference
    path: to compare the two, or to rule the kernel out while debugging."""
    global _disabled
    with _lock:
        _disabled += 1
    try:
        yield
    finally:
        with _lock:
            _disabled -= 1


_gpu_visible: list = []


def _on_cpu(x) -> bool:
    device = getattr(x, "device", "") or ""
    if device:
        return "CPU" in device.upper()
    if not _gpu_visible:
        _gpu_visible.append(bool(tf.config.list_logical_devices("GPU")))
    return not _gpu_visible[0]


def usable(x, w) -> bool:
    """Whether ``forward``/``backward`` should take these tensors: float32 on the CPU, not inside
    an XLA-compiled function (the op has no XLA kernel), not traced for a SavedModel (which must
    load without this library), not ``disabled()``, and the library available. The dispatcher
    in ``mam_tf.train.mam_op`` sends everything else to the reference path, also the GPU path (XLA)."""
    return (not _disabled and _is_float32(x) and _is_float32(w) and not in_xla_context()
            and not in_save_context() and _on_cpu(x) and available())


def _is_float32(t) -> bool:
    dtype = getattr(t, "dtype", None)
    return dtype is not None and tf.as_dtype(dtype) == tf.float32


def _module():
    try:
        return loader.get()
    except RuntimeError as e:
        raise RuntimeError(f"mam_tf.train.fused: {e}") from None


def _float32(name: str, t) -> tf.Tensor:
    t = tf.convert_to_tensor(t)
    if t.dtype != tf.float32:
        raise TypeError(f"mam_tf.train.fused: {name} is {t.dtype.name}; the fused kernel takes float32 "
                        "only (mam_tf.train.mam_op' reference path takes the other float types)")
    return t


def forward(x, w):
    """(y, amax, amin) for x [B, N] and w [N, M], float32; y has no bias."""
    return _module().mam_fused_forward(_float32("x", x), _float32("w", w))


def backward(g, x, w, amax, amin):
    """(dx, dw): the gradient of forward's y, given g = dL/dy [B, M] and forward's indices."""
    return _module().mam_fused_backward(
        _float32("g", g), _float32("x", x), _float32("w", w),
        tf.convert_to_tensor(amax, tf.int32), tf.convert_to_tensor(amin, tf.int32))
