"""A MAM_SPARSE / MAC_SPARSE node of a .tflite as the device's Prepare sees it.

:func:`prepare` follows the TFLM glue's Init and Prepare (``tflm_ops/tflm/mam_sparse_op.cc``)
step by step, in the same order and with the same words: the custom options as Init parses
them (:func:`mam_tf.deploy.options.parse`), the tensor counts, the required tensors, the constants,
then the C core's ``mam_validate`` and ``mam_prepare_requant``, which the glue calls too. So
the host runtime (and ``mam-tf check``) refuse exactly what the device refuses, with one
implementation of the checks. Where the device reads ``TfLiteTensor::bytes`` (computed by
TFLite-Micro from the shape) the host gives the core the model buffer's real length, which
is stricter: a constant whose buffer disagrees with its shape is refused here, and by the
model checker (:mod:`mam_tf.deploy.check`) before flashing.

Without the C core (no compiler here) the numpy reference's own checks stand in
(options, offset-CSR layout, quantization); they refuse corrupted layouts too, in other words.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import options
from mam_tf.deploy import reference
from mam_tf.deploy.offset_csr import OffsetCSR, layout_error

__all__ = ["SparseNode", "prepare", "tflite_type_code"]

_TFLITE_TYPE = {  # schema TensorType -> TfLiteType (TFLM's ConvertTensorType)
    0: 1, 1: 10, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 9: 9, 10: 11, 11: 12, 12: 13,
    13: 14, 14: 15, 15: 16, 16: 17, 17: 18, 18: 19,
}


def tflite_type_code(tensor_type: int) -> int:
    """The TfLiteType number of a schema TensorType (what ``tensor->type`` holds in TFLM)."""
    return _TFLITE_TYPE.get(int(tensor_type), 99)


@dataclass
class SparseNode:
    """What Prepare leaves for Eval."""

    kind: str
    input: int
    output: int
    csr: OffsetCSR
    bias: Optional[np.ndarray]
    multiplier: np.ndarray
    shift: np.ndarray
    act_min: int
    act_max: int
    input_zero_point: int
    output_zero_point: int
    dtype: np.dtype
    output_shape: list


def element_count(t) -> int:
    """TFLite-Micro's element count of a flatbuffer tensor (``BytesRequiredForTensor``): the
    product of its dimensions as stored, negative ones included; 1 when it has no shape (a
    scalar). A negative count is refused where the core checks it (``mam_validate``)."""
    n = 1
    for d in ([] if t.shape is None else t.shape):
        n *= int(d)
    return n


def _last_dim(t) -> int:
    return int(t.shape[-1]) if t.shape is not None and len(t.shape) else 1


def _clamp32(v: int) -> int:
    return max(-2**31, min(2**31 - 1, v))


def _data(model, t) -> bytes:
    buf = model.buffers[t.buffer].data
    return b"" if buf is None else np.asarray(buf, np.uint8).tobytes()


def _scales(t):
    """(scales or None, zero points): TFLM's view of a tensor's affine quantization."""
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None, np.zeros(0, np.int64)
    zps = np.zeros(0, np.int64) if q.zeroPoint is None else np.asarray(q.zeroPoint, np.int64)
    return np.asarray(q.scale, np.float32), zps


def prepare(model, sg, op_index: int) -> SparseNode:
    """The node of operator ``op_index`` prepared as the device prepares it; ValueError,
    naming the operator, with the device's message when the device would refuse it."""
    op = sg.operators[op_index]
    kind = fb.op_name(model, op)
    outs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
    out_name = (sg.tensors[outs[0]].name or b"").decode("utf-8", "replace") \
        if outs and 0 <= outs[0] < len(sg.tensors) else "?"
    where = f"operator {op_index} {kind} (output '{out_name}')"
    try:
        return _prepare(model, sg, op, kind)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _prepare(model, sg, op, kind) -> SparseNode:
    try:
        from mam_tf.deploy import native

        native.load()
    except Exception:
        native = None
    opts = options.parse(None if op.customOptions is None
                         else np.asarray(op.customOptions, np.uint8).tobytes())
    ins = [int(t) for t in (op.inputs if op.inputs is not None else [])]
    outs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
    counts = dict(num_inputs=len(ins), num_outputs=len(outs), in_features=opts["in_features"],
                  activation=opts["fused_activation_function"], version=opts["version"])
    if (len(ins) not in (4, 5)) or len(outs) != 1:
        if native is not None:
            status, msg = native.validate_layer(offsets=[], row_counts=[], weight_scales=[],
                                              weight_scale_count=0, **counts)
            raise ValueError(msg)
        validate(dict(counts, offsets=[], row_counts=[]))  # refuses on the counts, first
    for i in ins + outs:
        if i >= len(sg.tensors) or i < -1:
            raise ValueError(f"tensor index {i} is out of range (the subgraph has "
                             f"{len(sg.tensors)} tensors)")
    x_i, v_i, o_i, r_i = ins[:4]
    b_i = ins[4] if len(ins) == 5 else -1
    if min(x_i, v_i, o_i, r_i, outs[0]) < 0:
        raise ValueError("MAM_SPARSE: input, values, offsets, row_counts and output are required")
    t = sg.tensors
    x_t, v_t, o_t, r_t, y_t = t[x_i], t[v_i], t[o_i], t[r_i], t[outs[0]]
    b_t = t[b_i] if b_i >= 0 else None
    for tensor, name in ((v_t, "values"), (o_t, "offsets"), (r_t, "row_counts"), (b_t, "bias")):
        if tensor is not None and element_count(tensor) != 0 and not _data(model, tensor):
            raise ValueError(f"MAM_SPARSE: {name} must be a constant tensor of the model")

    w_scales, w_zps = _scales(v_t)
    x_s, x_zp = _scales(x_t)
    y_s, y_zp = _scales(y_t)
    nonzero = w_zps[w_zps != 0]
    raw_off, raw_rc = _data(model, o_t), _data(model, r_t)
    m = _clamp32(element_count(r_t))
    fields = dict(
        counts,
        input_type=tflite_type_code(x_t.type), values_type=tflite_type_code(v_t.type),
        offsets_type=tflite_type_code(o_t.type), row_counts_type=tflite_type_code(r_t.type),
        bias_type=tflite_type_code(b_t.type) if b_t is not None else 0,
        output_type=tflite_type_code(y_t.type),
        input_elements=element_count(x_t), output_elements=element_count(y_t),
        input_last_dim=_clamp32(_last_dim(x_t)), output_last_dim=_clamp32(_last_dim(y_t)),
        values_len=_clamp32(element_count(v_t)), offsets_len=_clamp32(element_count(o_t)),
        row_counts_len=m, bias_len=_clamp32(element_count(b_t)) if b_t is not None else 0,
        values_bytes=len(_data(model, v_t)), offsets_bytes=len(raw_off),
        row_counts_bytes=len(raw_rc), bias_bytes=len(_data(model, b_t)) if b_t is not None else 0,
        # the arrays the core reads: the buffers' own bytes (an odd length padded by one
        # byte it never reads: the byte count above is the buffer's)
        offsets=np.frombuffer(raw_off, np.uint8),
        row_counts=np.frombuffer(raw_rc + b"\0" * (len(raw_rc) % 2), np.int16),
        weight_scale_count=0 if w_scales is None else len(w_scales),
        weight_scales=np.zeros(0, np.float32) if w_scales is None else w_scales,
        weight_zero_point=int(nonzero[0]) if nonzero.size else 0,
        input_zero_point=int(x_zp[0]) if x_s is not None and x_zp.size else 0,
        output_zero_point=int(y_zp[0]) if y_s is not None and y_zp.size else 0,
        input_quantized=int(x_s is not None), output_quantized=int(y_s is not None),
        input_scale=float(x_s[0]) if x_s is not None else 0.0,
        output_scale=float(y_s[0]) if y_s is not None else 0.0,
    )
    for k in ("weight_zero_point", "input_zero_point", "output_zero_point"):
        if not -2**31 <= fields[k] < 2**31:  # TFLM keeps zero points in int32 fields
            raise ValueError(f"MAM_SPARSE: {k.replace('_', ' ')} {fields[k]} does not fit int32")
    if native is not None:
        req = native.prepare_layer(**fields)
    else:
        req = _prepare_without_core(fields)
    n = opts["in_features"]
    csr = OffsetCSR(np.frombuffer(_data(model, v_t), np.int8), fields["offsets"],
                    fields["row_counts"][:m], (m, n))
    bias = None
    if b_t is not None:
        bias = np.frombuffer(_data(model, b_t), fb.numpy_dtype(b_t.type))
    return SparseNode(
        kind=kind, input=x_i, output=outs[0], csr=csr, bias=bias,
        multiplier=req["multiplier"], shift=req["shift"], act_min=req["act_min"],
        act_max=req["act_max"], input_zero_point=fields["input_zero_point"],
        output_zero_point=fields["output_zero_point"], dtype=fb.numpy_dtype(x_t.type),
        output_shape=[int(d) for d in y_t.shape])


_TYPE_NAMES = {0: "none", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}
_INT8, _INT16, _INT32, _INT64, _UINT8 = 9, 7, 2, 4, 3


def _type_name(code: int) -> str:
    return _TYPE_NAMES.get(code, "an unsupported type")


def validate(fields: dict) -> None:
    """The C core's ``mam_validate`` (tflm_ops/src/validate.c) rule by rule, in its order and with
    its words, for when the core cannot be built: raises ValueError naming the first rule a
    node's description (the fields of :func:`mam_tf.deploy.native.layer_desc`) breaks.
    tests/test_validation_parity.py runs both on every rule."""
    f = dict(fields)
    f.setdefault("offsets_bytes", len(f["offsets"]))
    f.setdefault("row_counts_bytes", 2 * len(f["row_counts"]))

    def fail(msg):
        raise ValueError(f"MAM_SPARSE: {msg}")

    def check_type(what, got, want):
        if got != want:
            fail(f"{what} tensor is {_type_name(got)} (type {got}); it must be {_type_name(want)}")

    if f["num_outputs"] != 1:
        fail(f"node has {f['num_outputs']} outputs; it must have 1")
    if f["num_inputs"] not in (4, 5):
        fail(f"node has {f['num_inputs']} inputs; it must have 4, or 5 with a bias")
    if f["version"] != options.VERSION:
        fail(f"custom option version is {f['version']}; this kernel reads {options.VERSION}")
    if f["in_features"] < 1:
        fail(f"custom option in_features is {f['in_features']}; it must be >= 1")
    if f["activation"] not in options.ACTIVATIONS:
        fail(f"fused_activation_function is {f['activation']}; known: 0 NONE, 1 RELU, "
             "2 RELU_N1_TO_1, 3 RELU6")
    if f["input_type"] not in (_INT8, _INT16):
        fail(f"input tensor is {_type_name(f['input_type'])} (type {f['input_type']}); "
             "it must be int8 or int16")
    is_s8 = f["input_type"] == _INT8
    check_type("output", f["output_type"], f["input_type"])
    check_type("values", f["values_type"], _INT8)
    check_type("offsets", f["offsets_type"], _UINT8)
    check_type("row_counts", f["row_counts_type"], _INT16)
    has_bias = f["bias_type"] != 0
    if has_bias and f["num_inputs"] != 5:
        fail(f"a bias is given but the node has {f['num_inputs']} inputs")
    if has_bias:
        check_type("bias", f["bias_type"], _INT32 if is_s8 else _INT64)

    n, m = f["in_features"], f["row_counts_len"]
    if f["input_last_dim"] != n:
        fail(f"input last dimension is {f['input_last_dim']} but in_features is {n}")
    if f["input_elements"] < 0 or f["input_elements"] % n:
        fail(f"input holds {f['input_elements']} elements, not a multiple of N = {n}")
    batches = f["input_elements"] // n
    if batches > 2**31 - 1:
        fail(f"input has {batches} rows; at most {2**31 - 1} are supported")
    if m < 1:
        fail(f"row_counts has {m} entries; M must be >= 1")
    if f["output_last_dim"] != m:
        fail(f"output last dimension is {f['output_last_dim']} but row_counts says M = {m}")
    if f["output_elements"] != batches * m:
        fail(f"output holds {f['output_elements']} elements; B * M = {batches} * {m} = "
             f"{batches * m}")
    if has_bias and f["bias_len"] != m:
        fail(f"bias has {f['bias_len']} entries; M = {m}")

    if f["values_len"] < 0 or f["offsets_len"] < 0:
        fail(f"negative tensor length (values {f['values_len']}, offsets {f['offsets_len']})")
    if f["values_len"] != f["offsets_len"]:
        fail(f"values has {f['values_len']} entries but offsets has {f['offsets_len']}")
    for name, got, need, present in (
            ("values", f["values_bytes"], f["values_len"], True),
            ("offsets", f["offsets_bytes"], f["offsets_len"], True),
            ("row_counts", f["row_counts_bytes"], 2 * m, True),
            ("bias", f["bias_bytes"], (4 if is_s8 else 8) * f["bias_len"], has_bias)):
        if present and got != need:
            fail(f"{name} holds {got} bytes; its shape needs {need}")
    row_counts = np.asarray(f["row_counts"], np.int64)[:m]
    problem = layout_error(f["offsets"], row_counts, f["values_len"], n)
    if problem:
        fail(problem)

    count, ws = f["weight_scale_count"], np.asarray(f["weight_scales"], np.float32)
    if count not in (1, m):
        fail(f"values has {count} scales; it must have 1 (per tensor) or M = {m} (per row)")
    if f["weight_zero_point"] != 0:
        fail(f"values zero point is {f['weight_zero_point']}; weights must be symmetric (0)")
    zmin, zmax = (-128, 127) if is_s8 else (0, 0)
    if not (zmin <= f["input_zero_point"] <= zmax and zmin <= f["output_zero_point"] <= zmax):
        fail(f"zero points (input {f['input_zero_point']}, output {f['output_zero_point']}) "
             f"must lie in {zmin}..{zmax} for {_type_name(f['input_type'])} activations")
    scales = np.float32([f["input_scale"], f["output_scale"]])
    if not (f["input_quantized"] and f["output_quantized"]
            and np.all(np.isfinite(scales) & (scales > 0))):
        fail("input and output need a per-tensor quantization scale > 0")
    for j in range(count):
        empty = row_counts[j] == 0 if count > 1 else f["values_len"] == 0
        if not (np.isfinite(ws[j]) and (ws[j] > 0 or (ws[j] == 0 and empty))):
            fail(f"weight scale {j} is not a finite value > 0")


def _prepare_without_core(fields: dict) -> dict:
    """The device's Prepare without the C core: :func:`validate`, then the numpy reference's
    requantization (mam_prepare_requant's twin)."""
    validate(fields)
    ws = np.asarray(fields["weight_scales"], np.float32)[:fields["weight_scale_count"]]
    real = reference.effective_scale(fields["input_scale"], ws, fields["output_scale"])
    mult, shift = reference.quantize_multipliers(real)
    dtype = np.int8 if fields["input_type"] == _INT8 else np.int16
    lo, hi = reference.activation_range(fields["activation"], fields["output_scale"],
                                        fields["output_zero_point"], dtype)
    return dict(multiplier=mult, shift=shift, act_min=lo, act_max=hi)
