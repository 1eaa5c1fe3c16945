"""The Keras 2 side (TensorFlow + tf_keras + tensorflow-model-optimization): everything that
trains a MAM layer.

- :mod:`.compat`        the one place that chooses Keras 2 (``tf_keras``) and reads TensorFlow's
  private graph state;
- :mod:`.layers`        ``MAMDense``, a drop-in for ``Dense`` with the MAC -> MAM blend ``beta``;
- :mod:`.mam_op`        the MAM reduction (max + min of the products) and its routed gradient;
- :mod:`.fused` with ``fused_kernel/``  the fused C++ TensorFlow op the CPU runs it on;
- :mod:`.schedule`      the vanishing-contributions schedule and selection counts;
- :mod:`.pruning`       one-shot, global and iterative pruning with fixed masks (tfmot);
- :mod:`.quantization`  quantization-aware training (tfmot), int8 and int16x8.

Nothing here knows about export: :mod:`mam_tf.deploy` reads these layers.
"""
from mam_tf.train.compat import keras, tf  # noqa: F401  (sets up Keras 2 before anything else)
from mam_tf.train.layers import MAMDense, MAMLayerMixin, mam_layers
from mam_tf.train import pruning, quantization
from mam_tf.train.schedule import (
    SelectionCounts,
    VanishingContributions,
    selection_counts,
    vanishing_beta,
)

__all__ = ["MAMDense", "MAMLayerMixin", "mam_layers", "pruning", "quantization",
           "SelectionCounts", "VanishingContributions", "selection_counts", "vanishing_beta"]
