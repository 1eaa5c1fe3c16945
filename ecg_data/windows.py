"""Windowing, resampling, scaling and splitting: what synthetic and real ECG share."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

__all__ = ["scale_windows", "cut_windows", "resample", "split_windows"]


def scale_windows(x):
    """Min-max scale each window (last axis) to [0, 1], as float32.

    Per window, for synthetic and real data alike (see ``ecg_data.synthetic`` for why). A constant
    window (no information to scale) becomes all zeros.
    """
    x = np.asarray(x, dtype=np.float64)
    lo = x.min(axis=-1, keepdims=True)
    span = x.max(axis=-1, keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return ((x - lo) / safe).astype(np.float32)


def cut_windows(signal, length, overlap=0, *, name="cut_windows"):
    """Consecutive windows ``[n, length]`` of a 1-D signal, each starting ``length - overlap``
    samples after the previous one; the incomplete tail is dropped. A view when possible."""
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise ValueError(f"{name}: signal must be 1-D; got shape {signal.shape}")
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"{name}: length is {length!r}; must be an int >= 1")
    if not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < length:
        raise ValueError(f"{name}: overlap is {overlap!r}; must be an int in [0, length={length})")
    if signal.size < length:
        raise ValueError(
            f"{name}: signal has {signal.size} samples, fewer than one window of {length}"
        )
    step = length - overlap
    n = 1 + (signal.size - length) // step
    view = np.lib.stride_tricks.sliding_window_view(signal, length)
    return view[: (n - 1) * step + 1 : step]


#: The largest up- or down-sampling factor :func:`resample` takes: ECG is recorded at
#: 100 Hz .. 10 kHz, and a rate outside such a range is a broken header, not a signal.
MAX_RATE_RATIO = 64


def _ratio(fs_in, fs_out):
    r = (Fraction(str(float(fs_out))) / Fraction(str(float(fs_in)))).limit_denominator(10_000)
    return r.numerator, r.denominator


def resample(signal, fs_in, fs_out, *, name="resample"):
    """Resample a 1-D signal from ``fs_in`` to ``fs_out`` Hz with a polyphase FIR filter
    (``scipy.signal.resample_poly``, Kaiser window; 360 -> 256 Hz is up 32, down 45).

    The signal is padded by linear extrapolation of its ends (``padtype="line"``), so a baseline
    offset does not ring at the edges.
    """
    if not (np.isfinite(fs_in) and np.isfinite(fs_out) and fs_in > 0 and fs_out > 0):
        raise ValueError(f"{name}: sampling rates must be finite and > 0; got {fs_in!r} -> "
                         f"{fs_out!r}")
    ratio = float(fs_out) / float(fs_in)
    if not 1 / MAX_RATE_RATIO <= ratio <= MAX_RATE_RATIO:
        raise ValueError(f"{name}: cannot resample {fs_in:g} Hz to {fs_out:g} Hz: the ratio "
                         f"{ratio:g} is outside 1/{MAX_RATE_RATIO}..{MAX_RATE_RATIO}")
    signal = np.asarray(signal, dtype=np.float64)
    up, down = _ratio(fs_in, fs_out)
    if up == down:
        return signal.copy()
    from scipy.signal import resample_poly

    return resample_poly(signal, up, down, padtype="line")


def split_windows(x, fractions=(0.8, 0.1, 0.1), names=("train", "val", "test")):
    """Consecutive split of the first axis into named parts (sizes rounded, the last takes the
    rest). Consecutive is enough for i.i.d. windows such as the synthetic ones."""
    if len(fractions) != len(names):
        raise ValueError(f"split_windows: {len(fractions)} fractions for {len(names)} names")
    if any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split_windows: fractions {fractions} must be >= 0 and sum to 1")
    n = len(x)
    sizes = [int(round(f * n)) for f in fractions[:-1]]
    sizes.append(n - sum(sizes))
    if sizes[-1] < 0:
        raise ValueError(f"split_windows: fractions {fractions} do not fit {n} windows")
    out, start = {}, 0
    for name, size in zip(names, sizes):
        out[name] = x[start : start + size]
        start += size
    return out
