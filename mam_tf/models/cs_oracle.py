"""The compressed-sensing Deep Neural Oracle of seed 000 (BioCAS 2022).

The oracle reads the m measurements ``y = A x`` of an n-sample window and outputs, for each of
the n wavelet coefficients of x, the probability that it belongs to the support; x is then
recovered by least squares on the predicted support (``ecg_data.least_squares_reconstruction``).
Architecture as the group's DNO code: ``m -> 2n -> 2n -> n``, ReLU hidden layers, sigmoid
outputs, trained with binary cross-entropy on ``ecg_data.support_labels``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["cs_oracle", "predict_support", "KINDS"]

KINDS = ("mac", "mam")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"cs_oracle: {name} must be a positive integer, got {value!r}")
    return int(value)


def cs_oracle(m, n, kind="mac", *, hidden=None, activation="relu", beta=1.0, seed=None,
              name=None):
    """A Deep Neural Oracle ``m -> hidden... -> n`` (sigmoid outputs), MAC or MAM hidden layers.

    Args:
      m: measurements per window (the input size).
      n: window length = number of wavelet coefficients (the output size).
      kind: ``"mac"`` (Dense hidden layers) or ``"mam"`` (``MAMDense`` hidden layers, the
        seed's MAM^2 = max + min neurons; the output layer stays a Dense).
      hidden: widths of the hidden layers (default ``(2n, 2n)``, the seed's oracle).
      activation: activation of the hidden layers.
      beta: initial blend of the MAM layers (1.0 = start as MAC; anneal it to 0 with
        ``mam_tf.VanishingContributions`` while training). Ignored for ``kind="mac"``.
      seed: if given, ``keras.utils.set_random_seed(seed)`` first (reproducible weights).
      name: model name (default ``"<kind>_cs_oracle"``).
    Returns:
      An uncompiled functional Keras model; its hidden layers are named ``hidden_1``,
      ``hidden_2``, ... and its output layer ``support``.
    """
    from mam_tf.train.compat import keras
    from mam_tf.train.layers import MAMDense

    m = _positive_int("m", m)
    n = _positive_int("n", n)
    if kind not in KINDS:
        raise ValueError(f"cs_oracle: kind must be one of {KINDS}, got {kind!r}")
    hidden = (2 * n, 2 * n) if hidden is None else tuple(hidden)
    if not hidden:
        raise ValueError("cs_oracle: hidden is empty; the oracle needs at least one hidden layer")
    hidden = tuple(_positive_int("each hidden width", h) for h in hidden)
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    inp = keras.Input((m,), name="measurements")
    h = inp
    for i, width in enumerate(hidden, start=1):
        if kind == "mam":
            h = MAMDense(width, activation=activation, beta=beta, name=f"hidden_{i}")(h)
        else:
            h = keras.layers.Dense(width, activation=activation, name=f"hidden_{i}")(h)
    out = keras.layers.Dense(n, activation="sigmoid", name="support")(h)
    return keras.Model(inp, out, name=name or f"{kind}_cs_oracle")


def predict_support(probabilities, max_size, threshold=0.5):
    """Support from oracle outputs: coefficients with probability > ``threshold``, at most
    ``max_size`` of them (the most probable), bool ``[N, n]``.

    ``max_size`` is normally m (least squares on more than m columns is underdetermined).
    """
    p = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    max_size = _positive_int("max_size", max_size)
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(p.shape[1])[None, :].repeat(len(p), 0), axis=1)
    return (p > threshold) & (rank < max_size)
