"""mam-tf: Multiply-And-Max/min layers from Keras to microcontrollers.

A MAM neuron computes ``max_i(w_i x_i) + min_i(w_i x_i) + b`` instead of a sum; only two
products per neuron matter, so MAM layers survive very heavy pruning.

The package is laid out by stage, in the order data flows (imports only go down):

- :mod:`mam_tf.train`    the Keras 2 side (tf_keras + tfmot): MAMDense, the MAM op and its
  fused CPU kernel, the vanishing-contributions schedule, pruning, quantization-aware training;
- :mod:`mam_tf.deploy`   offset-CSR, the integer reference, the converter to ``.tflite``, the
  model checker, the host runtime and its binding to the C core;
- :mod:`mam_tf.device`   Cortex-M7 tooling: the firmware build, QEMU runs, instruction counts;
- :mod:`mam_tf.models`, :mod:`mam_tf.experiments`, :mod:`mam_tf.bench`, :mod:`mam_tf.cli`
  on top: the papers' models, ``mam-tf reproduce``, ``mam-tf bench``, the ``mam-tf`` command;
- :mod:`mam_tf.common`   what every stage may use: the build cache, the machine description.

The names below are imported on first use, so ``import mam_tf`` alone loads no TensorFlow.
"""
from __future__ import annotations

import importlib

from mam_tf import _moved
from mam_tf.common import extras as _extras

_extras.install()  # a missing optional module names the extra that installs it

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "MAMDense": "mam_tf.train.layers",
    "MAMLayerMixin": "mam_tf.train.layers",
    "mam_layers": "mam_tf.train.layers",
    "SelectionCounts": "mam_tf.train.schedule",
    "VanishingContributions": "mam_tf.train.schedule",
    "selection_counts": "mam_tf.train.schedule",
    "vanishing_beta": "mam_tf.train.schedule",
    "keras": "mam_tf.train.compat",
    "tf": "mam_tf.train.compat",
}
#: public submodules reachable as attributes: ``mam_tf.pruning.prune_magnitude(...)``
_SUBMODULES = {
    "pruning": "mam_tf.train.pruning",
    "quantization": "mam_tf.train.quantization",
}

__all__ = [
    "MAMDense",
    "MAMLayerMixin",
    "SelectionCounts",
    "VanishingContributions",
    "mam_layers",
    "pruning",
    "quantization",
    "selection_counts",
    "vanishing_beta",
    "__version__",
]

_moved.install()


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    elif name in _moved.MOVED_SUBMODULES:
        value = _moved.import_moved(f"mam_tf.{name}", stacklevel=3)
    else:
        raise AttributeError(f"module 'mam_tf' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC) | set(_SUBMODULES))
