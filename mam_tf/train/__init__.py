"""The Keras 2 side (TensorFlow + tf_keras + tensorflow-model-optimization): everything that
trains a MAM layer.

- :mod:`.compat`        the one place that chooses Keras 2 (``tf_keras``);
- :mod:`.tfcore`        TensorFlow without Keras: what the MAM op and the fused kernel need,
  including TensorFlow's private graph state;
- :mod:`.layers`        ``MAMDense``, a drop-in for ``Dense`` with the MAC -> MAM blend ``beta``;
- :mod:`.mam_op`        the MAM reduction (max + min of the products) and its routed gradient;
- :mod:`.fused` with ``fused_kernel/``  the fused C++ TensorFlow op the CPU runs it on;
- :mod:`.schedule`      the vanishing-contributions schedule and selection counts;
- :mod:`.pruning`       one-shot, global and iterative pruning with fixed masks (tfmot);
- :mod:`.quantization`  quantization-aware training (tfmot), int8 and int16x8.

Nothing here knows about export: :mod:`mam_tf.deploy` reads these layers.
"""
import importlib

#: public name -> the module that defines it. Imported on first use (PEP 562), so that
#: ``mam_tf.train.fused`` and ``mam_tf.train.mam_op`` (TensorFlow only, through :mod:`.tfcore`)
#: load without tf_keras for the Keras 3 layers; every module here that needs Keras 2 imports
#: :mod:`.compat` itself, which still chooses Keras 2 before TensorFlow is imported.
_PUBLIC = {
    "keras": "mam_tf.train.compat",
    "tf": "mam_tf.train.compat",
    "MAMDense": "mam_tf.train.layers",
    "MAMLayerMixin": "mam_tf.train.layers",
    "mam_layers": "mam_tf.train.layers",
    "SelectionCounts": "mam_tf.train.schedule",
    "VanishingContributions": "mam_tf.train.schedule",
    "selection_counts": "mam_tf.train.schedule",
    "vanishing_beta": "mam_tf.train.schedule",
}
_SUBMODULES = ("pruning", "quantization")

__all__ = ["MAMDense", "MAMLayerMixin", "mam_layers", "pruning", "quantization",
           "SelectionCounts", "VanishingContributions", "selection_counts", "vanishing_beta"]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC) | set(_SUBMODULES))
