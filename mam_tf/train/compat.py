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

# TF_USE_LEGACY_KERAS is set above, before tfcore imports TensorFlow.
from mam_tf.train.tfcore import in_save_context, in_xla_context, tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras", "in_xla_context", "in_save_context"]
