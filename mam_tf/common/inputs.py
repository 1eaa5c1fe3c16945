"""Argument checks and input batching that both Keras paths share (no Keras import)."""
from __future__ import annotations

import numpy as np

__all__ = ["check_beta", "check_units", "iter_batches"]


def check_beta(owner, value):
    """beta as a float in [0, 1]; the error names ``owner`` and the value."""
    try:
        beta = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: beta must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= beta <= 1.0:  # also rejects NaN
        raise ValueError(f"{owner}: beta must be in [0, 1], got {value!r}")
    return beta


def check_units(name, units):
    """units as a positive int; the error names the layer and the value."""
    try:
        n_units = int(units)
    except (TypeError, ValueError):
        n_units = None
    if isinstance(units, bool) or n_units is None or n_units != units or n_units <= 0:
        raise ValueError(f"MAMDense '{name}': units must be a positive integer, got {units!r}")
    return n_units


def iter_batches(data, batch_size):
    """Input batches of an array (sliced by ``batch_size``) or of an iterable of x or (x, y)."""
    if isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        arr = np.asarray(data)
        for i in range(0, len(arr), batch_size):
            yield arr[i:i + batch_size]
    else:
        for item in data:
            yield item[0] if isinstance(item, (tuple, list)) else item
