"""TensorFlow's start-up noise kept off a command's stderr (``mam-tf`` without ``--verbose``).

TensorFlow writes its banners from C++ straight to file descriptor 2: the absl lines it logs
before absl is initialised ("oneDNN custom operations are on", "Could not find cuda drivers",
which ``TF_CPP_MIN_LOG_LEVEL`` does not reach), "failed call to cuInit" on a machine without a
GPU, and the TFLite converter's "fully_quantize: ..." line. :func:`quiet_tensorflow` sets the
log levels before TensorFlow is imported; the caller then imports it (and runs the converter)
inside :func:`filtered_stderr`, which captures descriptor 2 and writes back every line that is
not such noise, so nothing else a library prints is lost.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

__all__ = ["NOISE", "is_noise", "filtered_stderr", "quiet_tensorflow", "enable", "is_enabled"]

#: One line of TensorFlow's own noise: an absl/glog record of severity I or W (or an E record
#: about CUDA on a machine without it), absl's notice about logging before its initialisation,
#: and the TFLite converter's quantization banner.
NOISE = re.compile(
    r"(?:[IW]\d{4} \d+:\d+:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|E\d{4} \d+:\d+:\d+\.\d+\s+\d+ \S+:\d+\] .*(?:cuInit|CUDA|cuda)"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|fully_quantize: \d+, inference_type: "
    r"|To enable the following instructions: .*rebuild TensorFlow)"
)
#: Python packages whose warnings are TensorFlow's, not the user's
_TF_MODULES = r"(?:tensorflow|tf_keras|keras|tensorflow_model_optimization|absl|h5py)(?:\.|$)"

_enabled = False


def is_noise(line: str) -> bool:
    return NOISE.match(line) is not None


def enable(on: bool = True) -> None:
    """Turns :func:`filtered_stderr` on (the ``mam-tf`` default) or off (``--verbose``)."""
    global _enabled
    _enabled = on


def is_enabled() -> bool:
    """Whether :func:`filtered_stderr` filters (what a process started for this one
    repeats)."""
    return _enabled


@contextlib.contextmanager
def filtered_stderr():
    """While enabled, captures file descriptor 2 and writes back its lines that are not
    :data:`NOISE` when the block ends (also when it raises)."""
    if not _enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True)
                    if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_tensorflow() -> None:
    """Before TensorFlow is imported: its C++ log level at errors (unless the user set
    ``TF_CPP_MIN_LOG_LEVEL``), its Python loggers at errors, its Python warnings off, and
    :func:`filtered_stderr` enabled."""
    enable(True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=_TF_MODULES)
