"""The one place that decides which Keras mam-tf uses.

tensorflow-model-optimization needs Keras 2, which ships as the ``tf_keras`` package for
TensorFlow >= 2.16. mam-tf builds its layers on ``tf_keras`` directly, so ``import mam_tf``
works without the user setting ``TF_USE_LEGACY_KERAS`` first. We still set that variable
(only if the user has not, and only before TensorFlow is imported) so that ``tf.keras`` and
tfmot resolve to the same Keras 2 as our layers.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

# Private TensorFlow modules, imported here and nowhere else.
from tensorflow.python.ops import control_flow_util as _control_flow_util  # noqa: E402
from tensorflow.python.saved_model import save_context as _save_context  # noqa: E402

__all__ = ["tf", "keras", "in_xla_context", "in_save_context"]


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
