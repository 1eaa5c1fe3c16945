"""Training that diverges stops with a message: the check shared by the tf_keras callback
(:class:`mam_tf.train.divergence.StopOnDivergence`) and the Keras 3 one
(:class:`mam_tf.keras3.training.StopOnDivergence`)."""
from __future__ import annotations

import math

__all__ = ["TrainingDiverged", "DivergenceCheck"]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names where."""


class DivergenceCheck:
    """The body of a Keras callback (either Keras) that raises :class:`TrainingDiverged` at
    the first batch whose loss (or the first epoch whose validation loss) is NaN or infinite,
    naming the run, the epoch and the batch.

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
