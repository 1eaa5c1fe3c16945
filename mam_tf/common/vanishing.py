"""The vanishing-contributions schedule as a function of time: shared by the tf_keras
callback (:mod:`mam_tf.train.schedule`) and the Keras 3 one (:mod:`mam_tf.keras3.training`)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["vanishing_beta", "VanishingSchedule"]

_SCHEDULES = ("linear", "exponential")
_UNITS = ("epoch", "step")


def vanishing_beta(t, length, start=1.0, schedule="linear", eps=1e-3):
    """beta after ``t`` epochs or steps of a schedule running from ``start`` to 0 over ``length``.

    linear:      start * (1 - t / length)
    exponential: start * (eps / start) ** (t / length), which reaches eps at t = length.
    Either way, a value below ``eps`` (and anything from t >= length on) snaps to exactly 0,
    so training ends in pure MAM.
    """
    if t >= length:
        return 0.0
    frac = max(0.0, float(t)) / float(length)
    if schedule == "linear":
        beta = start * (1.0 - frac)
    else:
        beta = start * math.pow(eps / start, frac) if start > eps else 0.0
    return 0.0 if beta < eps else float(beta)



class VanishingSchedule:
    """What the two Keras callbacks ``VanishingContributions`` share (mixed in before
    ``keras.callbacks.Callback``): argument checks, the layers driven, beta per epoch or per
    optimizer step, beta logged per epoch. A subclass gives :meth:`_mam_layers` (the model's
    MAM layers), :meth:`_is_mam_layer` and :meth:`_iterations` (the optimizer's step count);
    :meth:`_sync` runs before the callback reads or writes a variable (a no-op here).
    """

    def __init__(self, length, start=1.0, schedule="linear", unit="epoch", eps=1e-3,
                 layers=None, verbose=0):
        super().__init__()
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length <= 0:
            raise ValueError(f"VanishingContributions: length must be a positive integer, got {length!r}")
        if not 0.0 < float(start) <= 1.0:
            raise ValueError(f"VanishingContributions: start must be in (0, 1], got {start!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"VanishingContributions: schedule must be one of {_SCHEDULES}, got {schedule!r}")
        if unit not in _UNITS:
            raise ValueError(f"VanishingContributions: unit must be one of {_UNITS}, got {unit!r}")
        if not 0.0 < float(eps) < 1.0:
            raise ValueError(f"VanishingContributions: eps must be in (0, 1), got {eps!r}")
        self.length = int(length)
        self.start = float(start)
        self.schedule = schedule
        self.unit = unit
        self.eps = float(eps)
        self.verbose = verbose
        self._requested = layers
        self._layers = None
        self._current = None

    def _mam_layers(self):
        raise NotImplementedError

    def _is_mam_layer(self, item):
        raise NotImplementedError

    def _iterations(self):
        raise NotImplementedError

    def _sync(self):
        pass

    def beta_at(self, t):
        return vanishing_beta(t, self.length, self.start, self.schedule, self.eps)

    def _resolve_layers(self):
        found = self._mam_layers()
        if self._requested is None:
            if not found:
                raise ValueError("VanishingContributions: the model has no MAM layer to anneal")
            return found
        by_name = {layer.name: layer for layer in found}
        chosen = []
        for item in self._requested:
            if isinstance(item, str):
                if item not in by_name:
                    raise ValueError(
                        f"VanishingContributions: no MAM layer named {item!r}; "
                        f"MAM layers are {sorted(by_name)}"
                    )
                chosen.append(by_name[item])
            elif self._is_mam_layer(item):
                chosen.append(item)
            else:
                raise ValueError(f"VanishingContributions: {item!r} is not a MAM layer or a layer name")
        return chosen

    def _apply(self, t):
        beta = self.beta_at(t)
        if beta != self._current:
            self._sync()
            for layer in self._layers:
                layer.set_beta(beta)
            if self.verbose and self.unit == "epoch":
                print(f"VanishingContributions: beta = {beta:.6g}")
            self._current = beta

    def on_train_begin(self, logs=None):
        self._layers = self._resolve_layers()
        self._current = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            self._apply(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "step":
            self._sync()
            self._apply(self._iterations())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._layers:
            self._sync()
            logs["beta"] = self._layers[0].get_beta()

    def get_config(self):
        return {"length": self.length, "start": self.start, "schedule": self.schedule,
                "unit": self.unit, "eps": self.eps}
