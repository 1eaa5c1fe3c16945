"""Where the C sources of the ops are: ``tflm_ops/`` (the C core, the Cortex-M kernels, the
TFLite-Micro glue, the firmware and the QEMU plugin).

A wheel or an sdist install carries them inside the package, as ``mam_tf/_native/tflm_ops``
(``setup.py`` copies the tree there when it builds); a source checkout (an editable install)
has them at the repository's root. :mod:`mam_tf.deploy.native` builds the C core from here on
first use, :mod:`mam_tf.device.mcu` the Cortex-M7 firmware.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "tflm_ops"
_CHECKOUT = Path(__file__).resolve().parents[2] / "tflm_ops"


def tflm_ops_dir() -> Path:
    """The ``tflm_ops`` tree: the one inside the installed package, else the checkout's.

    When neither is there, the packaged path, so that a caller's error names where an installed
    mam-tf should hold the sources.
    """
    for d in (_PACKAGED, _CHECKOUT):
        if (d / "CMakeLists.txt").is_file():
            return d
    return _PACKAGED
