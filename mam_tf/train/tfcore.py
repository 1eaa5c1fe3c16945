"""What the MAM op and its fused kernel need from TensorFlow, and nothing from Keras.

Importing this module imports TensorFlow alone: it neither imports ``tf_keras`` nor sets
``TF_USE_LEGACY_KERAS``, so the Keras 3 layers (:mod:`mam_tf.keras3`, TensorFlow backend) can
run the fused kernel without switching the process to Keras 2. :mod:`mam_tf.train.compat`
chooses Keras 2 for the tf_keras side and re-exports these names.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Private TensorFlow modules, imported here and nowhere else.
from tensorflow.python.ops import control_flow_util as _control_flow_util  # noqa: E402
from tensorflow.python.saved_model import save_context as _save_context  # noqa: E402

__all__ = ["tf", "in_xla_context", "in_save_context"]


def in_xla_context() -> bool:
    """True while tracing a function that XLA will compile (``tf.function(jit_compile=True)``,
    Keras ``jit_compile``): ops without an XLA kernel, like the fused MAM op, cannot go there.

    TensorFlow marks such graphs with an XLA control-flow context that has no public accessor.
    """
    return _control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def in_save_context() -> bool:
    """True while ``tf.saved_model.save`` (or Keras' SavedModel export) traces functions: what
    is traced there must load without mam-tf's compiled op library."""
    return _save_context.in_save_context()
