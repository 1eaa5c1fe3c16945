"""The machine a measurement ran on, described once for every benchmark and experiment: the CPU
model and vector ISA, cores, memory, the load average, and the Python, numpy and TensorFlow
versions. :func:`describe` gives the record that goes into JSON, :func:`line` the one line a
benchmark prints."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Optional

__all__ = ["describe", "line", "load_average", "cpus_usable", "memory_bytes", "PeakMemory"]


def _cpuinfo() -> tuple[Optional[str], set]:
    """The CPU model name and feature flags from /proc/cpuinfo (None and {} where it is absent)."""
    model, flags = None, set()
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = text.partition(":")
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
            if model and flags:
                break
    return model, flags


def _isa(flags: set) -> str:
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                       ("asimd", "NEON")):
        if flag in flags:
            return name
    return platform.machine()


def load_average() -> Optional[list]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01; None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpus_usable() -> Optional[int]:
    """The cores this process may run on (its affinity), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def memory_bytes() -> Optional[int]:
    """The physical memory, in bytes; None where it cannot be read."""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None without it."""
    with contextlib.suppress(OSError, ValueError):
        for text in _STATUS.read_text().splitlines():
            if text.startswith(field + ":"):
                return int(text.split()[1]) * 1024
    return None


class PeakMemory:
    """The peak resident memory (RSS) of this process over a ``with`` block (Linux).

    On entry the kernel's high-water mark of the process's RSS (``VmHWM``) is reset to the
    current RSS (``5`` written to ``/proc/self/clear_refs``, Linux 4.0 on); on exit it is the
    largest RSS the process reached inside the block, every thread's allocations included.
    :meth:`record` gives ``{"rss_start_bytes", "peak_rss_bytes"}``, or None where the kernel
    offers neither file (another OS, a restricted /proc). One block at a time per process: the
    reset is process-wide."""

    def __init__(self):
        self.start: Optional[int] = None
        self.peak: Optional[int] = None

    def __enter__(self):
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            return self
        self.start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.start is not None:
            self.peak = _status_bytes("VmHWM")

    def record(self) -> Optional[dict]:
        if self.start is None or self.peak is None:
            return None
        return {"rss_start_bytes": self.start, "peak_rss_bytes": max(self.peak, self.start)}


def describe(tensorflow: bool = False) -> dict:
    """The machine and software of this process, as a JSON-ready dict.

    The TensorFlow version is included when TensorFlow is imported already, or imported here
    when ``tensorflow`` is True; numpy's whenever numpy is installed.
    """
    model, flags = _cpuinfo()
    info = {
        "platform": platform.platform(),
        "arch": platform.machine(),
        "processor": model or platform.processor() or platform.machine(),
        "isa": _isa(flags),
        "cpus": os.cpu_count(),
        "cpus_usable": cpus_usable(),
        "memory_bytes": memory_bytes(),
        "load_average": load_average(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(ImportError):
        import numpy

        info["numpy"] = numpy.__version__
    if tensorflow and "tensorflow" not in sys.modules:
        with contextlib.suppress(ImportError):
            import tensorflow  # noqa: F401
    if "tensorflow" in sys.modules:
        info["tensorflow"] = sys.modules["tensorflow"].__version__
    return info


def line(info: Optional[dict] = None, label: str = "machine") -> str:
    """One line for a benchmark's header: ``machine: <CPU>, <ISA>, 2 cores (2 usable),
    7.8 GiB, load average 0.52 0.40 0.31; Python 3.11.2, numpy 1.26.4, TensorFlow 2.15.1``."""
    m = describe() if info is None else info
    usable = m.get("cpus_usable")
    cores = f"{m['cpus']} cores" + (f" ({usable} usable)" if usable not in (None, m["cpus"])
                                    else "")
    parts = [m["processor"], m["isa"], cores]
    if m.get("memory_bytes"):
        parts.append(f"{m['memory_bytes'] / 2**30:.1f} GiB")
    if m.get("load_average"):
        parts.append("load average " + " ".join(f"{v:.2f}" for v in m["load_average"]))
    versions = [f"Python {m['python']}"] + [f"{name} {m[key]}" for key, name in
                                            (("numpy", "numpy"), ("tensorflow", "TensorFlow"))
                                            if key in m]
    return f"{label}: {', '.join(parts)}; {', '.join(versions)}"
