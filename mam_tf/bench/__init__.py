"""``mam-tf bench``: the benchmarks, each printing its baseline measured in the same run.

- :mod:`.train`  training steps, MAMDense against Dense (on :mod:`.steps`' worker processes);
- :mod:`.mcu`    MAM_SPARSE on the emulated Cortex-M7 against the MAC baselines;
- :mod:`.data`   the synthetic ECG generator against neurokit2's ECGSYN.
"""
from __future__ import annotations

import importlib


def __getattr__(name: str):
    # ``mam_tf.bench`` was the module that is now ``mam_tf.bench.steps``
    steps = importlib.import_module("mam_tf.bench.steps")
    if name in getattr(steps, "__all__", ()):
        import warnings

        from mam_tf.common.deprecation import MamTfDeprecationWarning

        warnings.warn(f"mam_tf.bench.{name} moved to mam_tf.bench.steps.{name}",
                      MamTfDeprecationWarning, stacklevel=2)
        return getattr(steps, name)
    raise AttributeError(f"module 'mam_tf.bench' has no attribute {name!r}")
