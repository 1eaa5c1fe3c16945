"""mam-tf: Multiply-And-Max/min layers from Keras to microcontrollers.

A MAM neuron computes ``max_i(w_i x_i) + min_i(w_i x_i) + b`` instead of a sum; only two
products per neuron matter, so MAM layers survive very heavy pruning.
"""
from mam_tf._compat import keras, tf  # noqa: F401  (sets up Keras 2 before anything else)
from mam_tf.layers import MAMDense, MAMLayerMixin, mam_layers
from mam_tf import pruning, quantization  # noqa: E402  (modules: mam_tf.pruning.prune_magnitude, ...)
from mam_tf.training import (
    SelectionCounts,
    VanishingContributions,
    selection_counts,
    vanishing_beta,
)

__version__ = "0.1.0"
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
