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
from mam_tf.deploy.offset_csr import OffsetCSR

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


def _elements(t) -> int:
    """TFLM's flat size: 1 for a scalar, -1 for a shape no tensor can have."""
    n = 1
    for d in ([] if t.shape is None else t.shape):
        d = int(d)
        if d < 0:
            return -1
        n *= d
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
        raise ValueError(f"MAM_SPARSE: node has {len(ins)} inputs and {len(outs)} outputs")
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
        if tensor is not None and _elements(tensor) != 0 and not _data(model, tensor):
            raise ValueError(f"MAM_SPARSE: {name} must be a constant tensor of the model")

    w_scales, w_zps = _scales(v_t)
    x_s, x_zp = _scales(x_t)
    y_s, y_zp = _scales(y_t)
    nonzero = w_zps[w_zps != 0]
    raw_off, raw_rc = _data(model, o_t), _data(model, r_t)
    m = _clamp32(_elements(r_t))
    fields = dict(
        counts,
        input_type=tflite_type_code(x_t.type), values_type=tflite_type_code(v_t.type),
        offsets_type=tflite_type_code(o_t.type), row_counts_type=tflite_type_code(r_t.type),
        bias_type=tflite_type_code(b_t.type) if b_t is not None else 0,
        output_type=tflite_type_code(y_t.type),
        input_elements=_elements(x_t), output_elements=_elements(y_t),
        input_last_dim=_clamp32(_last_dim(x_t)), output_last_dim=_clamp32(_last_dim(y_t)),
        values_len=_clamp32(_elements(v_t)), offsets_len=_clamp32(_elements(o_t)),
        row_counts_len=m, bias_len=_clamp32(_elements(b_t)) if b_t is not None else 0,
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
        req = _prepare_without_core(fields, opts, kind)
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


def _prepare_without_core(fields, opts, kind) -> dict:
    """The numpy reference's checks and requantization, when the C core cannot be built."""
    if opts["version"] != options.VERSION or opts["in_features"] < 1 \
            or opts["fused_activation_function"] not in options.ACTIVATIONS:
        raise ValueError(f"MAM_SPARSE: custom options {opts} are out of range")
    if fields["input_type"] not in (7, 9) or fields["output_type"] != fields["input_type"]:
        raise ValueError("MAM_SPARSE: input and output must both be int8 or int16")
    if fields["values_type"] != 9 or fields["offsets_type"] != 3 or fields["row_counts_type"] != 7:
        raise ValueError("MAM_SPARSE: values, offsets and row_counts must be int8, uint8, int16")
    m, n = fields["row_counts_len"], opts["in_features"]
    if fields["row_counts_bytes"] != 2 * m or fields["offsets_bytes"] != fields["offsets_len"] \
            or fields["values_bytes"] != fields["values_len"]:
        raise ValueError("MAM_SPARSE: a constant's buffer disagrees with its shape")
    OffsetCSR(np.zeros(fields["values_len"], np.int8), fields["offsets"],
              fields["row_counts"][:m], (m, n)).check()
    if fields["input_last_dim"] != n or fields["output_last_dim"] != m:
        raise ValueError("MAM_SPARSE: input/output shapes do not fit N and M")
    if not fields["input_quantized"] or not fields["output_quantized"]:
        raise ValueError("MAM_SPARSE: input and output need a per-tensor quantization scale > 0")
    ws = fields["weight_scales"]
    empty = (fields["row_counts"][:m] == 0) if len(ws) > 1 else fields["values_len"] == 0
    if len(ws) not in (1, m) or not np.all(np.isfinite(ws) & ((ws > 0) | ((ws == 0) & empty))):
        raise ValueError("MAM_SPARSE: weight scales must be 1 or M finite values > 0")
    real = reference.effective_scale(fields["input_scale"], ws, fields["output_scale"])
    mult, shift = reference.quantize_multipliers(real)
    dtype = np.int8 if fields["input_type"] == 9 else np.int16
    lo, hi = reference.activation_range(opts["fused_activation_function"],
                                        fields["output_scale"], fields["output_zero_point"], dtype)
    return dict(multiplier=mult, shift=shift, act_min=lo, act_max=hi)
