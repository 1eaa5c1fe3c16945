"""The fused CPU kernel of MAMDense: y, argmax and argmin in one pass, and a scatter backward.

Same contract as the pure-TensorFlow reference in ``mam_tf.train.mam_op``
(docs/operator-contract.md section 1):
``forward(x, w) -> (y, amax, amin)`` with y = max_i(x*w) + min_i(x*w) (no bias), the LOWEST index
winning ties, and ``backward(g, x, w, amax, amin) -> (dx, dw)`` where a pair with
amax == amin receives its gradient twice. x is [B, N], w is [N, M] (Keras' kernel layout),
float32 only. Forward values and indices are bit-identical to the reference; gradients sum in a
fixed order (mam_fused.h): dw[i,j] over rows b ascending, dx[b,i] over units j ascending, the max
term before the min term, whatever the thread count.

How it is built: the C++ sources in ``mam_tf/train/fused_kernel`` are compiled on first use by one direct
compiler call against the installed TensorFlow (``tf.sysconfig`` flags, ``-march=native``) into
``~/.cache/mam-tf/ops-<tf version>-<hash>/`` (``$MAM_TF_CACHE`` overrides the root). The hash
covers the sources, the compiler, every flag and the CPU's feature flags, so a changed source,
TensorFlow or machine gets its own build. ``$MAM_TF_KERNEL_DIR`` builds from another directory
of the same two sources instead (another checkout's ``mam_tf/train/fused_kernel``: ``mam-tf bench train
--kernel-dir`` times two kernel versions side by side), and ``$MAM_TF_MARCH`` replaces
``-march=native`` (``MARCH_ENV``: the code paths of older CPUs, on this one). The build goes
through :func:`mam_tf.common.buildcache.cached_build` (one compile among parallel processes, a
finished directory or none, the compiler's log quoted when it fails). When any of this fails,
``available()`` is False, one ``FusedKernelWarning`` says why, and mam-tf uses the reference
path. ``MAM_TF_FUSED=0`` turns the fast path off without a warning.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np

from mam_tf.train.tfcore import in_save_context, in_xla_context, tf
from mam_tf.common.buildcache import build_key, cache_root, cached_build

__all__ = [
    "FusedKernelWarning",
    "available",
    "backward",
    "disabled",
    "forward",
    "unavailable_reason",
    "usable",
]

KERNEL_DIR = Path(__file__).resolve().parent / "fused_kernel"
KERNEL_DIR_ENV = "MAM_TF_KERNEL_DIR"
SOURCES = ("mam_fused.h", "mam_fused_op.cc")
LIBRARY_NAME = "mam_fused_op.so"
# -ffp-contract=off: a product must stay a rounded multiply (no FMA into the backward's sums),
# so that fused and reference agree bit for bit. -march=native: the cache key holds the CPU.
CXXFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC", "-w")
#: Another -march than native for the build (e.g. x86-64-v3: AVX2, x86-64-v2: SSE4.2), to run
#: the code paths of other CPUs on this one. A level this CPU cannot execute kills the process
#: with an illegal instruction when the library loads: a knob for testing, not for speed.
MARCH_ENV = "MAM_TF_MARCH"
BUILD_TIMEOUT_S = 600


class FusedKernelWarning(RuntimeWarning):
    """The fused kernel cannot be used; MAMDense falls back to the (slower) reference path."""


_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "reason": None}
_disabled = 0  # depth of disabled() blocks, process-wide (tracing may happen on other threads)




def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    return f"{platform.machine()} {platform.processor()} {flags}"


def _cxxflags() -> tuple:
    march = os.environ.get(MARCH_ENV, "").strip()
    if not march:
        return CXXFLAGS
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", march):
        raise RuntimeError(f"${MARCH_ENV} is {march!r}; give a -march value such as x86-64-v3")
    return tuple(f"-march={march}" if flag == "-march=native" else flag for flag in CXXFLAGS)


def _build_command(cxx: str, source: Path, output: Path) -> list[str]:
    return [
        cxx, *_cxxflags(), *tf.sysconfig.get_compile_flags(), str(source), "-o", str(output),
        *tf.sysconfig.get_link_flags(),
    ]


def missing_sources(path) -> list[str]:
    """The kernel sources (``SOURCES``) that directory ``path`` lacks."""
    return [name for name in SOURCES if not (Path(path) / name).is_file()]


def kernel_dir() -> Path:
    """Where the sources are: this package's ``kernels``, or ``$MAM_TF_KERNEL_DIR``."""
    override = os.environ.get(KERNEL_DIR_ENV)
    if not override:
        return KERNEL_DIR
    path = Path(override).expanduser().resolve()
    missing = missing_sources(path)
    if missing:
        raise RuntimeError(f"${KERNEL_DIR_ENV} is {override!r}, which lacks {', '.join(missing)}")
    return path


def library_dir(cxx: str) -> Path:
    """The cache directory of the library for this TensorFlow, compiler, sources and CPU."""
    key = build_key([kernel_dir() / name for name in SOURCES], parts=[
        " ".join(_build_command(cxx, Path("src"), Path("out"))), _cpu_signature()])
    return cache_root() / f"ops-{tf.__version__}-{key}"


def build() -> Path:
    """Compiles the op library unless it is cached; returns its path. Raises on failure."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (tried $CXX, c++, g++, clang++)")

    def compile_into(b):
        command = _build_command(cxx, kernel_dir() / "mam_fused_op.cc", b.dir / LIBRARY_NAME)
        b.run(command, f"compiling the fused CPU kernel with {Path(cxx).name}",
              timeout=BUILD_TIMEOUT_S)

    final = cached_build(library_dir(cxx), compile_into, what="the fused CPU kernel",
                         error=RuntimeError)
    return final / LIBRARY_NAME


def _self_test(module) -> None:
    """A few exact values through both ops, to catch a miscompiled library before it trains."""
    x = np.array([[1.0, -2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    w = np.array([[1.0, 2.0], [1.0, -1.0], [1.0, 0.5], [5.0, 1.0]], np.float32)
    y, amax, amin = (t.numpy() for t in module.mam_fused_forward(x, w))
    dx, dw = (t.numpy() for t in module.mam_fused_backward(np.ones((2, 2), np.float32), x, w,
                                                           amax, amin))
    ok = (np.array_equal(y, [[1.0, 2.0], [0.0, 0.0]])  # unit 1 of row 0: a tie, index 0 wins
          and np.array_equal(amax, [[2, 0], [0, 0]]) and np.array_equal(amin, [[1, 3], [0, 0]])
          and np.array_equal(dx, [[2.0, 1.0, 1.0, 1.0], [6.0, 0.0, 0.0, 0.0]])  # row 1: twice
          and np.array_equal(dw, [[0.0, 1.0], [-2.0, 0.0], [3.0, 0.0], [0.0, 0.0]]))
    if not ok:
        raise RuntimeError("the compiled library failed its self-test (wrong values)")


def _load():
    with tf.init_scope():  # the first call may come while a graph is traced: test eagerly
        module = tf.load_op_library(str(build()))
        _self_test(module)
    return module


def available() -> bool:
    """Whether the fused kernel can run here: builds and loads it on the first call (cached).

    When it cannot, warns once (``FusedKernelWarning``, with the reason) and returns False.
    ``MAM_TF_FUSED=0`` in the environment makes it False without a warning.
    """
    if os.environ.get("MAM_TF_FUSED", "1") == "0":
        return False
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                _state["module"] = _load()
            except Exception as e:  # noqa: BLE001  any failure means: use the reference path
                _state["reason"] = f"{type(e).__name__}: {e}"
                warnings.warn(
                    "mam_tf: the fused CPU kernel is unavailable, MAMDense uses the pure-"
                    f"TensorFlow reference path (correct, much slower). Reason: {_state['reason']}"
                    " (set MAM_TF_FUSED=0 to use the reference path without this warning)",
                    FusedKernelWarning, stacklevel=2)
    return _state["module"] is not None


def unavailable_reason() -> str | None:
    """Why the last ``available()`` check failed, or None."""
    return _state["reason"]


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
    if not available():
        raise RuntimeError(f"mam_tf.train.fused: the fused kernel is unavailable ({_state['reason']})")
    return _state["module"]


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
