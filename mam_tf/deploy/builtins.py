"""What TFLite-Micro's builtin kernels assume of their operators, checked before they run.

TFLite-Micro's kernels test some of their preconditions (``TF_LITE_ENSURE``: the interpreter
reports an error) and only assert others (``TFLITE_DCHECK``: the process aborts, or, in a
build without DCHECKs, the kernel computes with wrong parameters). :func:`operator_problem`
states, for each builtin operator a converted model holds (FULLY_CONNECTED, CONV_2D,
DEPTHWISE_CONV_2D, MAX_POOL_2D, AVERAGE_POOL_2D, QUANTIZE, DEQUANTIZE, RESHAPE), the
preconditions of its TFLite-Micro kernel (``tensorflow/lite/micro/kernels/*_common.cc`` and the
reference kernels they call, at the tflite-micro commit in third_party/README.md): the tensor
types it takes, zero points and scales, shapes and option values. Other builtin operators are
left to TFLite-Micro and to :mod:`mam_tf.deploy.probe`, which runs the kernels in a child
process where an abort becomes a refusal.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import reference
from mam_tf.deploy.node import element_count

__all__ = ["CHECKED_OPERATORS", "operator_problem", "elements"]

#: The builtin operators whose kernel preconditions :func:`operator_problem` states.
CHECKED_OPERATORS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D",
                     "AVERAGE_POOL_2D", "QUANTIZE", "DEQUANTIZE", "RESHAPE")

_QUANTIZED = ("INT8", "INT16")
#: fused activations TFLite-Micro's CalculateActivationRange(Quantized) knows
_ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6")


def elements(t) -> int:
    """Elements of a tensor's shape, as TFLite-Micro counts them (a scalar holds one)."""
    return element_count(t)


def _names(enum) -> dict:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


class _Op:
    """One operator's tensors as the rules read them."""

    def __init__(self, sg, ins, outs, buffers=None):
        self.sg, self.ins, self.outs, self.sg_buffers = sg, ins, outs, buffers
        self.types = _names(fb.schema().TensorType)

    def tensor(self, i):
        return self.sg.tensors[i]

    def label(self, i) -> str:
        return f"tensor {i} '{fb.tensor_name(self.sg.tensors[i])}'"

    def type(self, i) -> str:
        return self.types.get(self.sg.tensors[i].type, str(self.sg.tensors[i].type))

    def shape(self, i) -> list:
        t = self.sg.tensors[i]
        return [] if t.shape is None else [int(d) for d in t.shape]

    def quant(self, i):
        """(scales, zero points) as float64 / int64 arrays; empty when not quantized."""
        q = self.sg.tensors[i].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return np.zeros(0), np.zeros(0, np.int64)
        zps = np.zeros(0, np.int64) if q.zeroPoint is None else np.asarray(q.zeroPoint, np.int64)
        return np.asarray(q.scale, np.float64), zps

    def quantized_dim(self, i) -> int:
        q = self.sg.tensors[i].quantization
        return 0 if q is None else int(q.quantizedDimension)


def _activation(options, what) -> Optional[str]:
    act = getattr(options, "fusedActivationFunction", 0) if options is not None else 0
    name = _names(fb.schema().ActivationFunctionType).get(act)
    if name not in _ACTIVATIONS:
        return f"{what} fused activation {name or act} is not one TFLite-Micro computes " \
               f"({', '.join(_ACTIVATIONS)})"
    return None


def _quantized_io(op: _Op, i, role) -> Optional[str]:
    """An int8 / int16 activation needs one scale and one zero point (int16: zero point 0,
    TFLite's 16x8 scheme, which the kernels' int16 paths assume)."""
    scales, zps = op.quant(i)
    if len(scales) != 1 or len(zps) != 1:
        return (f"{role} {op.label(i)} is {op.type(i)} with {len(scales)} scales and "
                f"{len(zps)} zero points; it needs one of each")
    if op.type(i) == "INT16" and zps[0] != 0:
        return f"{role} {op.label(i)} is INT16 with zero point {zps[0]}; int16 activations " \
               "have zero point 0"
    return None


def _weights(op: _Op, i, channels, channel_dim, role="filter") -> Optional[str]:
    """Quantized weights: symmetric (every zero point 0: the kernels assert it and compute
    as if it held), one scale or one per output channel along ``channel_dim``."""
    scales, zps = op.quant(i)
    if len(scales) == 0:
        return f"{role} {op.label(i)} is {op.type(i)} without quantization parameters"
    if np.any(zps != 0):
        j = int(np.argmax(zps != 0))
        return (f"{role} {op.label(i)} has zero point {zps[j]} (channel {j}); TFLite-Micro's "
                "kernels take symmetric weights, every zero point 0")
    if len(scales) > 1:
        if len(scales) != channels or op.quantized_dim(i) != channel_dim:
            return (f"{role} {op.label(i)} has {len(scales)} scales along dimension "
                    f"{op.quantized_dim(i)}; per-channel weights need {channels} along "
                    f"dimension {channel_dim}")
    return None


def _bias(op: _Op, k, units, act_type) -> Optional[str]:
    if len(op.ins) <= k or op.ins[k] < 0:
        return None
    b = op.ins[k]
    if elements(op.tensor(b)) != units:
        return f"bias {op.label(b)} holds {elements(op.tensor(b))} elements, not {units}"
    allowed = {"FLOAT32": ("FLOAT32",), "INT8": ("INT32",), "INT16": ("INT32", "INT64")}
    if act_type in allowed and op.type(b) not in allowed[act_type]:
        return f"bias {op.label(b)} is {op.type(b)}; with {act_type} inputs it must be " \
               f"{' or '.join(allowed[act_type])}"
    return None


#: the shifts TFLite's MultiplyByQuantizedMultiplier takes: int8 kernels (int32 accumulator,
#: ``x << shift`` must not overflow) and int16 kernels (int64 accumulator: it asserts the range)
_SHIFTS = {"INT8": (-31, 30), "INT16": (-31, 7)}


def _requantization(op: _Op, x, w, y, per_channel_doubles) -> Optional[str]:
    """The multipliers input scale x weight scale / output scale, as the kernel's Prepare forms
    them, must give shifts its requantization takes."""
    if op.type(x) not in _SHIFTS:
        return None
    (sx,), _ = op.quant(x)
    (sy,), _ = op.quant(y)
    sw, _ = op.quant(w)
    with np.errstate(all="ignore"):  # a zero or huge scale: the multiplier says so below
        if per_channel_doubles or len(sw) > 1:
            reals = np.float64(sx) * sw.astype(np.float32).astype(np.float64) / np.float64(sy)
        else:
            reals = reference.effective_scale(sx, sw, sy)
    lo, hi = _SHIFTS[op.type(x)]
    for c, real in enumerate(np.atleast_1d(reals)):
        if not np.isfinite(real) or real < 0:
            return f"input, filter and output scales make multiplier {real} (channel {c})"
        _, shift = reference.quantize_multiplier(float(real))
        if not lo <= shift <= hi:
            return (f"input scale {sx:g} x filter scale {float(sw[min(c, len(sw) - 1)]):g} / "
                    f"output scale {sy:g} is {real:g} (channel {c}): shift {shift} is outside "
                    f"the {lo}..{hi} that {op.type(x)} requantization takes")
    return None


def _accumulator_range(op: _Op, k, inputs) -> Optional[str]:
    """int16 kernels accumulate in int64 and assert |sum| < 2^47 before requantizing: the
    bias plus the largest sum of products must stay inside it."""
    if len(op.ins) <= k or op.ins[k] < 0 or op.type(op.ins[k]) != "INT64":
        return None
    t = op.tensor(op.ins[k])
    raw = op.sg_buffers[t.buffer].data if op.sg_buffers is not None else None
    if raw is None or len(raw) != 8 * elements(t):
        return None  # no constant, or one whose size the tensor checks refuse
    bias = np.frombuffer(np.asarray(raw, np.uint8).tobytes(), np.int64)
    worst = int(np.abs(bias.astype(object)).max()) + inputs * 32768 * 128
    if worst >= 1 << 47:
        return (f"bias {op.label(op.ins[k])} holds {int(np.abs(bias.astype(object)).max())}; "
                f"with {inputs} products of int16 x int8 the int64 accumulator can leave the "
                "+-2^47 that the int16 kernels assume")
    return None


def _same_types(op: _Op, x, y) -> Optional[str]:
    if op.type(x) != op.type(y):
        return f"input {op.label(x)} is {op.type(x)} but output {op.label(y)} is {op.type(y)}"
    return None


def _arity(op: _Op, n_in, n_out, optional_last=False) -> Optional[str]:
    ok_in = len(op.ins) in ((n_in - 1, n_in) if optional_last else (n_in,))
    required = op.ins[: n_in - 1] if optional_last else op.ins
    if not ok_in or len(op.outs) != n_out or any(t < 0 for t in required):
        return f"takes {n_in}{' (the last optional)' if optional_last else ''} inputs and " \
               f"{n_out} output; has {op.ins} -> {op.outs}"
    return None


def _fully_connected(op: _Op, options) -> Optional[str]:
    problem = _arity(op, 3, 1, optional_last=True)
    if problem:
        return problem
    x, w, y = op.ins[0], op.ins[1], op.outs[0]
    wshape = op.shape(w)
    if len(wshape) != 2 or wshape[1] < 1:
        return f"filter {op.label(w)} has shape {wshape}; it must be [units, in]"
    units, n = wshape
    if elements(op.tensor(x)) % n:
        return (f"input {op.label(x)} holds {elements(op.tensor(x))} elements, not a "
                f"multiple of the filter's {n} columns")
    batches = elements(op.tensor(x)) // n
    yshape = op.shape(y)
    if elements(op.tensor(y)) != batches * units or not yshape or yshape[-1] != units:
        return (f"output {op.label(y)} has shape {yshape}; the input and filter make "
                f"[{batches}, {units}]")
    return (_same_types(op, x, y) or _filter_type(op, x, w) or _activation(options, "its")
            or _weights_format(options) or _quantized_pair(op, x, y)
            or (_weights(op, w, units, 0) if op.type(x) in _QUANTIZED else None)
            or _bias(op, 2, units, op.type(x))
            or _requantization(op, x, w, y, per_channel_doubles=False)
            or _accumulator_range(op, 2, n))


def _weights_format(options) -> Optional[str]:
    fmt = getattr(options, "weightsFormat", 0) if options is not None else 0
    if fmt != 0:
        name = _names(fb.schema().FullyConnectedOptionsWeightsFormat).get(fmt, fmt)
        return f"weights format {name} is not DEFAULT, the only one TFLite-Micro reads"
    return None


def _filter_type(op: _Op, x, w) -> Optional[str]:
    takes = {"FLOAT32": ("FLOAT32",), "INT8": ("INT8", "INT4"), "INT16": ("INT8",)}
    if op.type(x) not in takes:
        return f"input {op.label(x)} is {op.type(x)}; TFLite-Micro takes " \
               f"{', '.join(takes)} here"
    if op.type(w) not in takes[op.type(x)]:
        return f"filter {op.label(w)} is {op.type(w)}; with {op.type(x)} inputs it must be " \
               f"{' or '.join(takes[op.type(x)])}"
    return None


def _quantized_pair(op: _Op, x, y) -> Optional[str]:
    if op.type(x) not in _QUANTIZED:
        return None
    return _quantized_io(op, x, "input") or _quantized_io(op, y, "output")


def _conv(op: _Op, options, depthwise) -> Optional[str]:
    problem = _arity(op, 3, 1, optional_last=True)
    if problem:
        return problem
    x, w, y = op.ins[0], op.ins[1], op.outs[0]
    for role, i in (("input", x), ("filter", w), ("output", y)):
        if len(op.shape(i)) != 4:
            return f"{role} {op.label(i)} has shape {op.shape(i)}; it must have 4 dimensions"
    (_, _, _, depth), (_, _, _, fdepth), out_depth = op.shape(x), op.shape(w), op.shape(y)[3]
    if depthwise:
        mult = getattr(options, "depthMultiplier", 1) if options is not None else 1
        if fdepth != out_depth or mult < 1 or out_depth != depth * mult:
            return (f"filter {op.label(w)} has {fdepth} channels, output {op.label(y)} "
                    f"{out_depth}; a depthwise convolution of {depth} input channels with "
                    f"depth multiplier {mult} makes {depth * max(mult, 0)}")
        channels, channel_dim = fdepth, 3
    else:
        if fdepth < 1 or depth % fdepth:
            return (f"filter {op.label(w)} reads {fdepth} input channels; input "
                    f"{op.label(x)} has {depth}, which must be a multiple of it")
        if op.shape(w)[0] != out_depth:
            return (f"filter {op.label(w)} has {op.shape(w)[0]} output channels but output "
                    f"{op.label(y)} has {out_depth}")
        channels, channel_dim = out_depth, 0
    problem = _window(options, ("strideW", "strideH", "dilationWFactor", "dilationHFactor"))
    return (problem or _same_types(op, x, y) or _filter_type(op, x, w)
            or _activation(options, "its") or _quantized_pair(op, x, y)
            or (_weights(op, w, channels, channel_dim) if op.type(x) in _QUANTIZED else None)
            or _bias(op, 2, out_depth, op.type(x))
            or _requantization(op, x, w, y, per_channel_doubles=True)
            or _accumulator_range(op, 2, int(np.prod(op.shape(w)[1:])) if not depthwise
                                  else int(np.prod(op.shape(w)[1:3]))))


def _window(options, fields) -> Optional[str]:
    if options is None:
        return "has no options"
    padding = getattr(options, "padding", 0)
    if padding not in (0, 1):
        return f"padding {padding} is neither SAME nor VALID"
    for field in fields:
        value = getattr(options, field, 1)
        if value < 1:
            return f"option {field} is {value}; it must be at least 1"
    return None


def _pool(op: _Op, options) -> Optional[str]:
    problem = _arity(op, 1, 1)
    if problem:
        return problem
    x, y = op.ins[0], op.outs[0]
    for role, i in (("input", x), ("output", y)):
        if len(op.shape(i)) != 4:
            return f"{role} {op.label(i)} has shape {op.shape(i)}; it must have 4 dimensions"
    if op.shape(x)[0] != op.shape(y)[0] or op.shape(x)[3] != op.shape(y)[3]:
        return (f"input {op.label(x)} has shape {op.shape(x)} and output {op.label(y)} "
                f"{op.shape(y)}: batch and channels must agree")
    problem = (_window(options, ("strideW", "strideH", "filterWidth", "filterHeight"))
               or _same_types(op, x, y) or _activation(options, "its"))
    if problem:
        return problem
    if op.type(x) not in ("FLOAT32", "INT8", "INT16"):
        return f"input {op.label(x)} is {op.type(x)}; TFLite-Micro pools FLOAT32, INT8, INT16"
    if op.type(x) in _QUANTIZED:
        problem = _quantized_pair(op, x, y)
        if problem:
            return problem
        (sx,), (zx,) = op.quant(x)
        (sy,), (zy,) = op.quant(y)
        if abs(sx - sy) > 1e-6 or zx != zy:
            return (f"input {op.label(x)} (scale {sx}, zero point {zx}) and output "
                    f"{op.label(y)} (scale {sy}, zero point {zy}) must be quantized alike")
    return None


_QUANTIZE_PAIRS = {("FLOAT32", "INT8"), ("FLOAT32", "INT16"), ("FLOAT32", "UINT8"),
                   ("INT16", "INT8"), ("INT8", "INT8"), ("INT8", "UINT8"), ("UINT8", "INT8"),
                   ("INT8", "INT16"), ("INT8", "INT32"), ("INT16", "INT16"), ("INT16", "INT32"),
                   ("INT32", "INT8"), ("INT32", "INT16")}


def _quantize(op: _Op, options) -> Optional[str]:
    problem = _arity(op, 1, 1)
    if problem:
        return problem
    x, y = op.ins[0], op.outs[0]
    if op.shape(x) != op.shape(y):  # the kernel asserts matching shapes, not only sizes
        return (f"input {op.label(x)} has shape {op.shape(x)} but output {op.label(y)} "
                f"{op.shape(y)}; they must be the same")
    if (op.type(x), op.type(y)) not in _QUANTIZE_PAIRS:
        return f"quantizes {op.type(x)} to {op.type(y)}, which TFLite-Micro does not"
    scales, zps = op.quant(y)
    if len(scales) != 1 or len(zps) != 1:
        return f"output {op.label(y)} has {len(scales)} scales; QUANTIZE writes one"
    if op.type(x) != "FLOAT32":
        scales_in, _ = op.quant(x)
        if len(scales_in) != 1:
            return f"input {op.label(x)} has {len(scales_in)} scales; requantizing reads one"
    return None


def _dequantize(op: _Op, options) -> Optional[str]:
    problem = _arity(op, 1, 1)
    if problem:
        return problem
    x, y = op.ins[0], op.outs[0]
    if op.shape(x) != op.shape(y):
        return (f"input {op.label(x)} has shape {op.shape(x)} but output {op.label(y)} "
                f"{op.shape(y)}; they must be the same")
    if op.type(x) not in ("INT8", "INT16", "UINT8") or op.type(y) != "FLOAT32":
        return f"dequantizes {op.type(x)} to {op.type(y)}; TFLite-Micro takes INT8, INT16 " \
               "or UINT8 to FLOAT32"
    scales, zps = op.quant(x)
    if len(scales) != 1 or len(zps) != 1:
        return f"input {op.label(x)} has {len(scales)} scales; DEQUANTIZE reads one"
    return None


def _reshape(op: _Op, options) -> Optional[str]:
    if len(op.ins) not in (1, 2) or len(op.outs) != 1 or op.ins[0] < 0:
        return f"takes the input (and a shape) and one output; has {op.ins} -> {op.outs}"
    x, y = op.ins[0], op.outs[0]
    if elements(op.tensor(x)) != elements(op.tensor(y)):
        return (f"input {op.label(x)} holds {elements(op.tensor(x))} elements but output "
                f"{op.label(y)} {elements(op.tensor(y))}")
    return _same_types(op, x, y)


_RULES = {
    "FULLY_CONNECTED": _fully_connected,
    "CONV_2D": lambda op, options: _conv(op, options, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda op, options: _conv(op, options, depthwise=True),
    "MAX_POOL_2D": _pool,
    "AVERAGE_POOL_2D": _pool,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "RESHAPE": _reshape,
}


def operator_problem(sg, kind: str, op, ins: list, outs: list, buffers=None) -> Optional[str]:
    """The first precondition of TFLite-Micro's ``kind`` kernel that the operator breaks, in
    words naming the tensor or option and its value; None if it keeps them all (or ``kind``
    is not among :data:`CHECKED_OPERATORS`). Tensor indices must be in range; ``buffers``
    (the model's) lets the rules read constant values (an int64 bias)."""
    rule = _RULES.get(kind)
    if rule is None:
        return None
    return rule(_Op(sg, ins, outs, buffers), op.builtinOptions)
