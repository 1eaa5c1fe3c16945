"""Training that diverges stops with a message, instead of writing NaN weights and results.

``model.fit(..., callbacks=[StopOnDivergence("mwscas train mam seed 3")])`` raises
:class:`TrainingDiverged` at the first batch whose loss (or the first epoch whose validation
loss) is NaN or infinite, naming the run, the epoch and the batch. Keras' own
``TerminateOnNaN`` only stops training quietly, leaving the caller with NaN weights to save.
"""
from __future__ import annotations

import math

from mam_tf.train.compat import keras

__all__ = ["StopOnDivergence", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names where."""


class StopOnDivergence(keras.callbacks.Callback):
    """Raises :class:`TrainingDiverged` on a non-finite loss.

    Args:
      where: what is training, for the message (e.g. ``"mwscas train mam seed 3"``).
      keys: the logged values that must stay finite (those present are checked).
    """

    def __init__(self, where: str, keys=("loss", "val_loss")):
        super().__init__()
        self.where, self.keys, self._epoch = where, tuple(keys), 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _check(self, logs, when):
        for key in self.keys:
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDiverged(f"{self.where}: {key} is {float(value)} at epoch "
                                       f"{self._epoch + 1}{when}; training diverged (lower "
                                       "the learning rate, or check the data for NaN)")

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f", batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, "")
