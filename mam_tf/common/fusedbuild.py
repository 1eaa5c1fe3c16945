"""How the fused CPU kernel of the MAM op is built and loaded, for every framework that runs it.

The sources are in ``mam_tf/train/fused_kernel`` (``$MAM_TF_KERNEL_DIR`` builds from another
directory of the same files instead): the numeric core ``mam_fused.h`` and the framework-free
driver ``mam_fused_driver.h``, with one glue source per library: ``mam_fused_op.cc`` (the
TensorFlow op, :mod:`mam_tf.train.fused`) and ``mam_fused_cpu.cc`` (a plain C ABI for PyTorch
and, built with JAX's FFI headers, XLA FFI handlers for JAX: :mod:`mam_tf.keras3`). Each
library is compiled on first use by one direct compiler call into
``~/.cache/mam-tf/<prefix>-<hash>/`` (``$MAM_TF_CACHE`` overrides the root) through
:func:`mam_tf.common.buildcache.cached_build`. The hash covers the headers and the glue source,
the compiler, every flag and the CPU's feature flags, so a changed source, framework or machine
gets its own build. ``$MAM_TF_MARCH`` replaces ``-march=native`` (the code paths of older CPUs,
on this one).

:class:`LazyKernel` is the one way a library is loaded: on the first ``available()`` call,
under a lock, once per process; a failure warns once (:class:`FusedKernelWarning`, with the
reason) and the caller uses its reference path. ``MAM_TF_FUSED=0`` turns every fused path off
without a warning. Nothing here imports a framework.
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
from typing import Callable, Optional, Sequence

import numpy as np

from mam_tf.common.buildcache import build_key, cache_root, cached_build

__all__ = [
    "CXXFLAGS",
    "FusedKernelWarning",
    "KERNEL_DIR",
    "KERNEL_DIR_ENV",
    "LazyKernel",
    "MARCH_ENV",
    "build_library",
    "compiler",
    "fused_enabled",
    "kernel_dir",
    "library_dir",
    "missing_sources",
    "self_test",
]

KERNEL_DIR = Path(__file__).resolve().parents[1] / "train" / "fused_kernel"
KERNEL_DIR_ENV = "MAM_TF_KERNEL_DIR"
#: The headers of this version's glue sources. A kernel directory must hold the core
#: (``REQUIRED``) and the glue built from it; an older checkout's directory (``--kernel-dir``)
#: may lack the driver, whose code its glue then holds itself. Every header present is hashed.
HEADERS = ("mam_fused.h", "mam_fused_driver.h")
REQUIRED = ("mam_fused.h",)
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


def fused_enabled() -> bool:
    """False when ``MAM_TF_FUSED=0`` turns the fused paths off."""
    return os.environ.get("MAM_TF_FUSED", "1") != "0"


def compiler() -> Optional[str]:
    """The C++ compiler: ``$CXX``, else the first of c++, g++, clang++ on the PATH."""
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


def cxxflags(flags: Optional[Sequence[str]] = None) -> tuple:
    """``flags`` (default ``CXXFLAGS``) with ``-march=native`` replaced by ``$MAM_TF_MARCH``
    when that is set."""
    flags = CXXFLAGS if flags is None else flags
    march = os.environ.get(MARCH_ENV, "").strip()
    if not march:
        return tuple(flags)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", march):
        raise RuntimeError(f"${MARCH_ENV} is {march!r}; give a -march value such as x86-64-v3")
    return tuple(f"-march={march}" if flag == "-march=native" else flag for flag in flags)


def missing_sources(path, glue: str = "mam_fused_op.cc") -> list[str]:
    """The sources of the library built from ``glue`` that directory ``path`` lacks."""
    return [name for name in (*REQUIRED, glue) if not (Path(path) / name).is_file()]


def kernel_dir(glue: str = "mam_fused_op.cc") -> Path:
    """Where the sources are: ``KERNEL_DIR``, or ``$MAM_TF_KERNEL_DIR`` (which must hold
    ``mam_fused.h`` and ``glue``)."""
    override = os.environ.get(KERNEL_DIR_ENV)
    if not override:
        return KERNEL_DIR
    path = Path(override).expanduser().resolve()
    missing = missing_sources(path, glue)
    if missing:
        raise RuntimeError(f"${KERNEL_DIR_ENV} is {override!r}, which lacks {', '.join(missing)}")
    return path


def _command(cxx: str, flags: Sequence[str], source: Path, output: Path,
             link: Sequence[str]) -> list[str]:
    return [cxx, *flags, str(source), "-o", str(output), *link]


def library_dir(cxx: str, glue: str, prefix: str, flags: Sequence[str],
                link: Sequence[str] = ()) -> Path:
    """The cache directory of the library built from ``glue`` with these flags, on this CPU."""
    source_dir = kernel_dir(glue)
    key = build_key([*sorted(source_dir.glob("*.h")), source_dir / glue], parts=[
        " ".join(_command(cxx, flags, Path("src"), Path("out"), link)), _cpu_signature()])
    return cache_root() / f"{prefix}-{key}"


def build_library(glue: str, library: str, prefix: str, *, flags: Sequence[str] = (),
                  link: Sequence[str] = (), what: str = "the fused CPU kernel") -> Path:
    """Compiles ``glue`` (with ``CXXFLAGS``, then ``flags``; ``link`` after the source) into
    ``library`` unless that is cached; returns the library's path. Raises RuntimeError, naming
    the reason (no compiler, the compiler's log), on failure."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (tried $CXX, c++, g++, clang++)")
    all_flags = (*cxxflags(), *flags)

    def compile_into(b):
        command = _command(cxx, all_flags, kernel_dir(glue) / glue, b.dir / library, link)
        b.run(command, f"compiling {what} with {Path(cxx).name}", timeout=BUILD_TIMEOUT_S)

    final = cached_build(library_dir(cxx, glue, prefix, all_flags, link), compile_into,
                         what=what, error=RuntimeError)
    return final / library


class LazyKernel:
    """A fused library loaded on first use: ``load()`` builds, loads and self-tests it and
    returns what the caller keeps (a module, a ctypes library), or raises.

    ``available()`` calls ``load`` once per process (under a lock); when it raises, warns once
    (``FusedKernelWarning``: "the fused CPU kernel is unavailable, MAMDense uses <fallback>",
    with the reason) and stays False. ``MAM_TF_FUSED=0`` makes it False without a warning.
    """

    def __init__(self, load: Callable[[], object], fallback: str):
        self._load = load
        self.fallback = fallback
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forgets the outcome of the last load (tests: a state in which it was never tried)."""
        self.tried, self.loaded, self.reason = False, None, None

    def available(self) -> bool:
        if not fused_enabled():
            return False
        with self._lock:
            if not self.tried:
                self.tried = True
                try:
                    self.loaded = self._load()
                except Exception as e:  # noqa: BLE001  any failure means: use the reference path
                    self.reason = f"{type(e).__name__}: {e}"
                    warnings.warn(
                        "mam_tf: the fused CPU kernel is unavailable, MAMDense uses the "
                        f"{self.fallback} (correct, much slower). Reason: {self.reason} (set "
                        "MAM_TF_FUSED=0 to use that path without this warning)",
                        FusedKernelWarning, stacklevel=3)
        return self.loaded is not None

    def get(self):
        """What ``load`` returned; raises RuntimeError when the library is unavailable."""
        if not self.available():
            raise RuntimeError(f"the fused CPU kernel is unavailable ({self.reason})")
        return self.loaded


def self_test(forward_fn, backward_fn) -> None:
    """Raises unless ``forward_fn(x, w)`` and ``backward_fn(g, x, w, amax, amin)`` (numpy
    float32 / int32 in, array-likes out) give a few exact values: a miscompiled library or a
    broken binding is caught before it trains."""
    x = np.array([[1.0, -2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    w = np.array([[1.0, 2.0], [1.0, -1.0], [1.0, 0.5], [5.0, 1.0]], np.float32)
    g = np.ones((2, 2), np.float32)
    expected = ([[1.0, 2.0], [0.0, 0.0]],  # unit 1 of row 0: a tie, index 0 wins
                [[2, 0], [0, 0]], [[1, 3], [0, 0]],
                [[2.0, 1.0, 1.0, 1.0], [6.0, 0.0, 0.0, 0.0]],  # row 1: every pair twice
                [[0.0, 1.0], [-2.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    y, amax, amin = (np.asarray(t) for t in forward_fn(x, w))
    dx, dw = (np.asarray(t) for t in backward_fn(g, x, w, amax.astype(np.int32),
                                                 amin.astype(np.int32)))
    if not all(np.array_equal(a, e) for a, e in zip((y, amax, amin, dx, dw), expected)):
        raise RuntimeError("the compiled library failed its self-test (wrong values)")
