"""The numpy integer reference of MAM_SPARSE and MAC_SPARSE (docs/operator-contract.md, section 3).

Everything here is bit-exact with what the C core (``tflm_ops/``) and TFLite-Micro compute:

- :func:`quantize_multiplier` is TFLite's ``QuantizeMultiplier`` (frexp, round half away
  from zero, the q31 carry, flush to zero below 2^-31);
- :func:`effective_scale` is how TFLM's FULLY_CONNECTED Prepare forms the real multiplier
  from float32 scales;
- :func:`multiply_by_quantized_multiplier` is TFLite's 32-bit double-rounding
  ``MultiplyByQuantizedMultiplier`` (gemmlowp's ``SaturatingRoundingDoublingHighMul`` then
  ``RoundingDivideByPOT``), used in int8 mode;
- :func:`multiply_by_quantized_multiplier_64` is TFLM's 64-bit ``MultiplyByQuantizedMultiplier``
  (multiplier reduced to 16 bits with rounding, then one rounding shift), used in int16 mode;
- :func:`activation_range` is ``CalculateActivationRangeQuantized``.

Overflow semantics (where TFLite's C++ would be undefined, we pin down what a two's
complement machine does, and the C core does the same): int8-mode accumulators are int32
and wrap; int16-mode accumulators are int64 and wrap; the 64-bit requantization truncates
its result to int32 before the output zero point is added.

Plain numpy (no TensorFlow), vectorized, int64 intermediates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from mam_tf.deploy import options as _options
from mam_tf.deploy.offset_csr import OffsetCSR, encode

__all__ = [
    "ACTIVATIONS",
    "quantize_multiplier",
    "quantize_multipliers",
    "effective_scale",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_64",
    "activation_range",
    "mam_sparse",
    "mac_sparse",
    "mam_dense",
    "mac_dense",
    "QuantizedLayer",
    "quantize_layer",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1

#: TFLite's ActivationFunctionType values that MAM_SPARSE accepts.
ACTIVATIONS = _options.ACTIVATIONS  # the one definition, shared with the converter and C glue

#: Shift limits the kernels accept (MultiplyByQuantizedMultiplier's own contract):
#: int8 mode shifts left by at most 30 (``1 << 31`` would overflow), int16 mode by at most 7.
SHIFT_MIN = -31
SHIFT_MAX = {np.dtype(np.int8): 30, np.dtype(np.int16): 7}


# ----------------------------------------------------------------------------------------
# Scalars: multipliers and activation ranges
# ----------------------------------------------------------------------------------------
def _round_half_away(v: float) -> float:
    """std::round: to nearest, ties away from zero (exact for doubles below 2^52)."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ~= multiplier * 2^(shift - 31)``.

    Returns (multiplier in [2^30, 2^31), shift), (0, 0) for 0, and (0, 0) when the shift
    would be below -31 (TFLite flushes such tiny multipliers to zero).
    """
    real = float(real_multiplier)
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"real multiplier is {real!r}; it must be finite and >= 0")
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(_round_half_away(q * float(1 << 31)))
    if q_fixed == (1 << 31):  # rounding carried into bit 31
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def quantize_multipliers(real_multipliers) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` over an array: (int32 multipliers, int32 shifts)."""
    reals = np.atleast_1d(np.asarray(real_multipliers, np.float64))
    pairs = [quantize_multiplier(r) for r in reals]
    return (
        np.array([p[0] for p in pairs], np.int32),
        np.array([p[1] for p in pairs], np.int32),
    )


def effective_scale(input_scale, weight_scales, output_scale) -> np.ndarray:
    """The real multipliers ``input_scale * weight_scale_j / output_scale`` as TFLM forms them.

    Exactly as TFLM's FULLY_CONNECTED Prepare (CalculateOpDataFullyConnected):

    - per tensor (one weight scale): ``GetQuantizedConvolutionMultipler``, which multiplies
      the two float32 scales IN FLOAT32, widens the product to double and divides by the
      output scale as a double;
    - per row (M weight scales): the product of the scales as doubles, divided by the output
      scale as a double.

    Returns float64 [1] or [M].
    """
    w = np.atleast_1d(np.asarray(weight_scales, np.float32))
    si = np.float32(input_scale)
    so = float(np.float32(output_scale))
    if w.size == 1:
        return np.array([float(si * w[0]) / so], np.float64)
    return (float(si) * w.astype(np.float64)) / so


def activation_range(activation: int, output_scale: float, output_zero_point: int,
                     dtype=np.int8) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized`` for an int8 or int16 output."""
    dtype = _act_dtype(dtype)
    info = np.iinfo(dtype)
    qmin, qmax = int(info.min), int(info.max)
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"fused activation {activation!r} is not one of {sorted(ACTIVATIONS)} "
            "(NONE, RELU, RELU_N1_TO_1, RELU6)"
        )
    scale = np.float32(output_scale)

    def quantize(f: float) -> int:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = float(np.float32(f) / scale)  # float32 division, as TFLite
        tmp = _round_half_away(t) if math.isfinite(t) else t
        if not (-(2.0 ** 31) <= tmp < 2.0 ** 31):
            raise ValueError(
                f"activation bound {f} / output scale {float(scale)} = {t} overflows int32"
            )
        return int(output_zero_point) + int(tmp)

    if activation == 1:
        return max(qmin, quantize(0.0)), qmax
    if activation == 3:
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if activation == 2:
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    return qmin, qmax


# ----------------------------------------------------------------------------------------
# Fixed-point arithmetic, vectorized (int64 arrays holding the C values)
# ----------------------------------------------------------------------------------------
def _wrap32(v: np.ndarray) -> np.ndarray:
    """Two's complement wrap of int64 values to int32 (returned as int64)."""
    return np.asarray(v, np.int64).astype(np.int32).astype(np.int64)


def _i64(v) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp's int32 ``SaturatingRoundingDoublingHighMul``: round(a*b / 2^31), ties away
    from zero, with INT32_MIN * INT32_MIN saturating to INT32_MAX."""
    a, b = np.broadcast_arrays(_i64(a), _i64(b))
    ab = a * b  # |ab| <= 2^62: exact
    t = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    q = np.where(t >= 0, t >> 31, -((-t) >> 31))  # C's truncating division by 2^31
    overflow = (a == b) & (a == INT32_MIN)
    return np.where(overflow, INT32_MAX, q)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp's ``RoundingDivideByPOT``: x / 2^exponent rounded to nearest, ties away from
    zero (exponent in 0..31)."""
    x, e = np.broadcast_arrays(_i64(x), _i64(exponent))
    if e.size and (e.min() < 0 or e.max() > 31):
        raise ValueError(f"exponent must be in 0..31, got {int(e.min())}..{int(e.max())}")
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """TFLite's 32-bit double-rounding ``MultiplyByQuantizedMultiplier(int32_t x, ...)``.

    ``x`` holds int32 values; a positive shift first multiplies x by 2^shift (wrapping, as
    the C code does on a two's complement machine), then the doubling high multiply and a
    rounding right shift by -shift.
    """
    x, m, s = np.broadcast_arrays(_i64(x), _i64(multiplier), _i64(shift))
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(_wrap32(x << left), m), right)


def multiply_by_quantized_multiplier_64(x, multiplier, shift) -> np.ndarray:
    """TFLM's ``MultiplyByQuantizedMultiplier(int64_t x, ...)`` (double-rounding build, also
    CMSIS-NN's ``arm_nn_requantize_s64`` with ``REDUCE_MULTIPLIER``): the multiplier rounded
    to 16 bits, one rounding right shift by 15 - shift, result truncated to int32."""
    x, m, s = np.broadcast_arrays(_i64(x), _i64(multiplier), _i64(shift))
    reduced = np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - s
    if total.size and (total.min() < 1 or total.max() > 62):
        raise ValueError(f"shift must be in -47..14 for the 64-bit path, got {s.min()}..{s.max()}")
    r = x * reduced + (np.int64(1) << (total - 1))  # int64 arrays wrap like the C code
    return _wrap32(r >> total)


# ----------------------------------------------------------------------------------------
# The operators
# ----------------------------------------------------------------------------------------
def _act_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.int8), np.dtype(np.int16)):
        raise ValueError(f"activations must be int8 or int16, got {dt}")
    return dt


def _prepare(x, m, n, bias, multiplier, shift, input_zero_point, output_zero_point,
             act_min, act_max):
    x = np.asarray(x)
    dt = _act_dtype(x.dtype)
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"input shape {x.shape}: last dimension must be N = {n}")
    x2 = x.reshape(-1, n)
    info = np.iinfo(dt)
    if dt == np.int16 and (input_zero_point != 0 or output_zero_point != 0):
        raise ValueError(
            f"int16 mode needs zero points 0, got input {input_zero_point}, output {output_zero_point}"
        )
    for what, zp in (("input", input_zero_point), ("output", output_zero_point)):
        if not info.min <= int(zp) <= info.max:
            raise ValueError(f"{what} zero point {zp} outside {dt.name} range")
    mult = np.atleast_1d(np.asarray(multiplier, np.int64))
    shf = np.atleast_1d(np.asarray(shift, np.int64))
    if mult.shape != shf.shape or mult.ndim != 1 or mult.size not in (1, m):
        raise ValueError(
            f"multiplier {mult.shape} and shift {shf.shape} must both have length 1 or M = {m}"
        )
    if (mult < 0).any() or (mult > INT32_MAX).any():
        raise ValueError(f"multipliers must be in 0..2^31-1, got {mult.min()}..{mult.max()}")
    smax = SHIFT_MAX[dt]
    if (shf < SHIFT_MIN).any() or (shf > smax).any():
        raise ValueError(f"shifts must be in {SHIFT_MIN}..{smax} for {dt.name}, got {shf.min()}..{shf.max()}")
    if bias is not None:
        bias = np.asarray(bias)
        want = np.int32 if dt == np.int8 else np.int64
        if bias.shape != (m,) or bias.dtype != want:
            raise ValueError(
                f"bias must be {np.dtype(want).name} [{m}], got {bias.dtype} {bias.shape}"
            )
        bias = bias.astype(np.int64)
    lo = int(info.min) if act_min is None else int(act_min)
    hi = int(info.max) if act_max is None else int(act_max)
    if not (info.min <= lo <= hi <= info.max):
        raise ValueError(f"activation range {lo}..{hi} is not inside {dt.name}")
    return x, x2, dt, bias, mult, shf, lo, hi


def _finish(acc, x, dt, bias, mult, shf, zy, lo, hi, m):
    """acc [B, M] int64 (max+min or sum, without bias) -> output of dtype ``dt``."""
    if bias is not None:
        acc = acc + bias[None, :]
    if dt == np.int8:
        scaled = multiply_by_quantized_multiplier(_wrap32(acc), mult[None, :], shf[None, :])
    else:
        scaled = multiply_by_quantized_multiplier_64(acc, mult[None, :], shf[None, :])
    y = np.clip(_wrap32(scaled + int(zy)), lo, hi).astype(dt)
    return y.reshape(x.shape[:-1] + (m,))


def _products(x2, csr: OffsetCSR, zx: int) -> np.ndarray:
    cols = csr.columns()
    return (x2[:, cols].astype(np.int64) - int(zx)) * csr.values.astype(np.int64)[None, :]


def _segments(csr: OffsetCSR):
    rc = csr.row_counts.astype(np.int64)
    nonempty = rc > 0
    starts = (np.cumsum(rc) - rc)[nonempty]
    return rc, nonempty, starts


def mam_sparse(x, csr: OffsetCSR, bias, multiplier, shift, *, input_zero_point: int = 0,
               output_zero_point: int = 0, act_min: Optional[int] = None,
               act_max: Optional[int] = None) -> np.ndarray:
    """MAM_SPARSE on ``x`` [..., N] (int8 or int16) -> [..., M] of the same dtype.

    ``acc_j = max(S_j) + min(S_j) + bias_j`` where S_j holds ``(x[col] - zx) * w`` for the
    stored entries of row j, and 0 as well when the row stores fewer than N entries (a pruned
    weight's product). ``multiplier``/``shift``: length 1 (per tensor) or M (per row).
    ``bias``: int32 [M] (int8 mode) or int64 [M] (int16 mode), or None.
    """
    m, n = csr.shape
    x, x2, dt, bias, mult, shf, lo, hi = _prepare(
        x, m, n, bias, multiplier, shift, input_zero_point, output_zero_point, act_min, act_max)
    b = x2.shape[0]
    rc, nonempty, starts = _segments(csr)
    hi_p = np.zeros((b, m), np.int64)
    lo_p = np.zeros((b, m), np.int64)
    if starts.size:
        p = _products(x2, csr, input_zero_point)
        hi_p[:, nonempty] = np.maximum.reduceat(p, starts, axis=1)
        lo_p[:, nonempty] = np.minimum.reduceat(p, starts, axis=1)
    implicit_zero = rc < n  # some column of the row is not stored: its product 0 competes
    hi_p[:, implicit_zero] = np.maximum(hi_p[:, implicit_zero], 0)
    lo_p[:, implicit_zero] = np.minimum(lo_p[:, implicit_zero], 0)
    return _finish(hi_p + lo_p, x, dt, bias, mult, shf, output_zero_point, lo, hi, m)


def mac_sparse(x, csr: OffsetCSR, bias, multiplier, shift, *, input_zero_point: int = 0,
               output_zero_point: int = 0, act_min: Optional[int] = None,
               act_max: Optional[int] = None) -> np.ndarray:
    """MAC_SPARSE: like :func:`mam_sparse` with ``acc_j = sum(S_j) + bias_j``."""
    m, n = csr.shape
    x, x2, dt, bias, mult, shf, lo, hi = _prepare(
        x, m, n, bias, multiplier, shift, input_zero_point, output_zero_point, act_min, act_max)
    rc, nonempty, starts = _segments(csr)
    acc = np.zeros((x2.shape[0], m), np.int64)
    if starts.size:
        acc[:, nonempty] = np.add.reduceat(_products(x2, csr, input_zero_point), starts, axis=1)
    return _finish(acc, x, dt, bias, mult, shf, output_zero_point, lo, hi, m)


def _dense_products(x2, w, zx):
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ValueError(f"weights must be int8 [M, N], got {w.dtype} {w.shape}")
    return (x2.astype(np.int64)[:, None, :] - int(zx)) * w.astype(np.int64)[None, :, :]


def mam_dense(x, w_int8, bias, multiplier, shift, *, input_zero_point: int = 0,
              output_zero_point: int = 0, act_min: Optional[int] = None,
              act_max: Optional[int] = None) -> np.ndarray:
    """MAM over a dense int8 [M, N] matrix (max and min over all N products)."""
    m, n = np.shape(w_int8)
    x, x2, dt, bias, mult, shf, lo, hi = _prepare(
        x, m, n, bias, multiplier, shift, input_zero_point, output_zero_point, act_min, act_max)
    p = _dense_products(x2, w_int8, input_zero_point)
    return _finish(p.max(axis=2) + p.min(axis=2), x, dt, bias, mult, shf, output_zero_point, lo, hi, m)


def mac_dense(x, w_int8, bias, multiplier, shift, *, input_zero_point: int = 0,
              output_zero_point: int = 0, act_min: Optional[int] = None,
              act_max: Optional[int] = None) -> np.ndarray:
    """TFLM's FULLY_CONNECTED integer reference over a dense int8 [M, N] matrix."""
    m, n = np.shape(w_int8)
    x, x2, dt, bias, mult, shf, lo, hi = _prepare(
        x, m, n, bias, multiplier, shift, input_zero_point, output_zero_point, act_min, act_max)
    acc = x2.astype(np.int64) @ np.asarray(w_int8).astype(np.int64).T
    acc -= int(input_zero_point) * np.asarray(w_int8).astype(np.int64).sum(axis=1)[None, :]
    return _finish(acc, x, dt, bias, mult, shf, output_zero_point, lo, hi, m)


# ----------------------------------------------------------------------------------------
# Quantizing a float layer
# ----------------------------------------------------------------------------------------
@dataclass(eq=False)
class QuantizedLayer:
    """A float layer quantized to the integer tensors of MAM_SPARSE / MAC_SPARSE.

    ``weights`` is int8 [M, N] (rows = outputs, i.e. the Keras kernel transposed);
    ``weight_scales`` float32 [1] (per tensor) or [M] (per row); ``bias`` int32 [M]
    (int8 mode) or int64 [M] (int16 mode) or None, at scale input_scale * weight_scale_j;
    ``multiplier``/``shift`` int32 like ``weight_scales``; ``act_min``/``act_max`` the fused
    activation's clamp.
    """

    weights: np.ndarray
    weight_scales: np.ndarray
    bias: Optional[np.ndarray]
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    activation: int
    dtype: np.dtype
    multiplier: np.ndarray
    shift: np.ndarray
    act_min: int
    act_max: int
    name: Optional[str] = None

    def csr(self) -> OffsetCSR:
        return encode(self.weights, name=self.name)

    def kernel_kwargs(self) -> dict:
        """Keyword arguments for :func:`mam_sparse` & co (and their mam_tf.deploy.native twins)."""
        return dict(
            bias=self.bias, multiplier=self.multiplier, shift=self.shift,
            input_zero_point=self.input_zero_point, output_zero_point=self.output_zero_point,
            act_min=self.act_min, act_max=self.act_max,
        )

    def quantize_input(self, x_float) -> np.ndarray:
        """Float inputs to the layer's integer input (round half away from zero, clamp)."""
        info = np.iinfo(self.dtype)
        q = np.asarray(x_float, np.float64) / float(np.float32(self.input_scale))
        q = np.sign(q) * np.floor(np.abs(q) + 0.5) + self.input_zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize_output(self, y) -> np.ndarray:
        return (np.asarray(y, np.float64) - self.output_zero_point) * float(np.float32(self.output_scale))


def quantize_layer(kernel, bias, *, input_scale: float, input_zero_point: int,
                   output_scale: float, output_zero_point: int, activation: int = 0,
                   dtype: Union[str, np.dtype, type] = "int8", per_row: bool = True,
                   weight_scales: Optional[Sequence[float]] = None,
                   name: Optional[str] = None) -> QuantizedLayer:
    """Quantize a float layer for MAM_SPARSE / MAC_SPARSE.

    ``kernel`` is the KERAS kernel, float [N, M] (inputs first); it is transposed here.
    Weights are symmetric int8 in [-127, 127]: ``round(w / s_j)`` (half away from zero) with
    ``s_j = max_i |w_ji| / 127`` per row (``per_row``) or one scale for the whole matrix, a
    scale of 1.0 standing in for an all-zero row; ``weight_scales`` overrides them (e.g. the
    scales learned by quantization-aware training). The bias is quantized at
    ``float32(input_scale * s_j)`` to int32 (``dtype`` int8) or int64 (int16, the 16x8
    convention, which also needs zero points 0), clamped to that type.
    Multipliers come from :func:`effective_scale` and :func:`quantize_multiplier`,
    the clamp from :func:`activation_range`.
    """
    dt = _act_dtype(dtype)
    where = f"layer '{name}'" if name else "layer"
    k = np.asarray(kernel, np.float64)
    if k.ndim != 2:
        raise ValueError(f"{where}: kernel must be [N, M], got shape {k.shape}")
    w = k.T  # [M, N]
    m = w.shape[0]
    if dt == np.int16 and (input_zero_point != 0 or output_zero_point != 0):
        raise ValueError(
            f"{where}: int16 activations need zero points 0, got input {input_zero_point}, "
            f"output {output_zero_point}"
        )
    for what, s in (("input", input_scale), ("output", output_scale)):
        if not (np.isfinite(s) and np.float32(s) > 0):
            raise ValueError(f"{where}: {what} scale is {s}; it must be finite and > 0")
    if weight_scales is None:
        amax = np.abs(w).max(axis=1) if per_row else np.array([np.abs(w).max()])
        scales = (amax / 127.0).astype(np.float32)
        scales[scales == 0] = 1.0
    else:
        scales = np.atleast_1d(np.asarray(weight_scales, np.float32))
        if scales.ndim != 1 or scales.size not in (1, m) or not (scales > 0).all():
            raise ValueError(
                f"{where}: weight_scales must be {1} or M = {m} positive scales, got {scales}"
            )
    s_rows = np.broadcast_to(scales.astype(np.float64), (m,))[:, None]
    q = w / s_rows
    q = np.sign(q) * np.floor(np.abs(q) + 0.5)
    w_int8 = np.clip(q, -127, 127).astype(np.int8)

    bias_q = None
    if bias is not None:
        b = np.asarray(bias, np.float64)
        if b.shape != (m,):
            raise ValueError(f"{where}: bias shape {b.shape} must be ({m},)")
        bias_scale = (np.float32(input_scale) * np.broadcast_to(scales, (m,))).astype(np.float64)
        qb = b / bias_scale
        qb = np.sign(qb) * np.floor(np.abs(qb) + 0.5)
        bt = np.int32 if dt == np.int8 else np.int64
        info = np.iinfo(bt)
        qb = np.clip(qb, float(info.min), float(info.max))
        if bt == np.int64:  # the float limits of int64 round up past INT64_MAX
            qb = np.clip(qb, -(2.0 ** 63), np.nextafter(2.0 ** 63, 0))
        bias_q = qb.astype(bt)

    real = effective_scale(input_scale, scales, output_scale)
    mult, shift = quantize_multipliers(real)
    smax = SHIFT_MAX[dt]
    if (shift > smax).any():
        j = int(np.flatnonzero(shift > smax)[0])
        raise ValueError(
            f"{where}: real multiplier {real[j]} (row {j}) needs shift {int(shift[j])} > {smax}; "
            "the output scale is too small for the input and weight scales"
        )
    act_min, act_max = activation_range(activation, output_scale, output_zero_point, dt)
    return QuantizedLayer(
        weights=w_int8, weight_scales=scales, bias=bias_q,
        input_scale=float(np.float32(input_scale)), input_zero_point=int(input_zero_point),
        output_scale=float(np.float32(output_scale)), output_zero_point=int(output_zero_point),
        activation=int(activation), dtype=dt, multiplier=mult, shift=shift,
        act_min=act_min, act_max=act_max, name=name,
    )
