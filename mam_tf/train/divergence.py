"""Training that diverges stops with a message, instead of writing NaN weights and results.

``model.fit(..., callbacks=[StopOnDivergence("mwscas train mam seed 3")])`` raises
:class:`TrainingDiverged` at the first batch whose loss (or the first epoch whose validation
loss) is NaN or infinite, naming the run, the epoch and the batch. Keras' own
``TerminateOnNaN`` only stops training quietly, leaving the caller with NaN weights to save.
The check is :class:`mam_tf.common.divergence.DivergenceCheck`, shared with the Keras 3
callback (:class:`mam_tf.keras3.training.StopOnDivergence`).
"""
from __future__ import annotations

from mam_tf.common.divergence import DivergenceCheck, TrainingDiverged
from mam_tf.train.compat import keras

__all__ = ["StopOnDivergence", "TrainingDiverged"]


class StopOnDivergence(DivergenceCheck, keras.callbacks.Callback):
    """Raises :class:`TrainingDiverged` on a non-finite loss.

    Args:
      where: what is training, for the message (e.g. ``"mwscas train mam seed 3"``).
      keys: the logged values that must stay finite (those present are checked).
    """
