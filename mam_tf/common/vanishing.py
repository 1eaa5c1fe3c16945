"""The vanishing-contributions schedule as a function of time: shared by the tf_keras
callback (:mod:`mam_tf.train.schedule`) and the Keras 3 one (:mod:`mam_tf.keras3.training`)."""
from __future__ import annotations

import math

__all__ = ["vanishing_beta"]

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
