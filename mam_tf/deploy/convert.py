"""Keras -> .tflite with MAM_SPARSE custom ops (docs/operator-contract.md section 3).

How it works, and why:

1. The model is traced with every MAM layer written as TFLite builtin ops
   (RESHAPE, MUL, REDUCE_MAX, REDUCE_MIN, ADD: :func:`mam_tf.train.mam_op.mam_reduce_builtin`), so
   TFLite's own converter can run and calibrate it: the quantization parameters of every
   tensor, the MAM layers' inputs and outputs included, come from the TRUE MAM activations
   on the representative data. (TFLite cannot calibrate a graph holding an unknown custom op.)
2. In the quantized flatbuffer, the ops of each MAM layer (found by the ``mam_reduce`` name
   scope the layer traces under) are replaced by one ``MAM_SPARSE`` op: its input and output
   tensors are the calibrated ones; its weights are the layer's kernel quantized to
   symmetric int8 (per row by default) and stored in offset-CSR; its bias is int32 (int8
   mode) or int64 (16x8 mode) at scale input_scale * weight_scale; the fused activation is the
   one TFLite fused into the pattern's last ADD.
3. Tensors and buffers nothing uses any more (the dense float products' constants) are
   dropped, so the file holds only the sparse weights.

The flatbuffer is edited with the schema's generated object API (from the ``tflite-micro``
package) and the custom options are written with ``flatbuffers.flexbuffers``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses

import numpy as np

from mam_tf.common import quiet
from mam_tf.common.arrays import load_array
from mam_tf.common.cliargs import add_deprecated, add_out, required_out
from mam_tf.deploy import flatbuffer as fb
from mam_tf.train import mam_op
from mam_tf.deploy import options
from mam_tf.train.compat import keras, tf
from mam_tf.train.layers import MAMDense, mam_layers, walk_layers
from mam_tf.deploy.reference import quantize_layer
from mam_tf.deploy.offset_csr import encode

__all__ = ["convert", "Conversion", "LayerReport", "write_header", "MODES"]

MODES = ("int8", "int16x8")

# Keras layer types whose TFLite conversion the TFLM kernels support. Anything else is
# refused by name rather than producing a model the device cannot run.
_SUPPORTED = {
    "InputLayer", "Dense", "MAMDense", "Conv1D", "Conv2D", "Conv1DTranspose", "Conv2DTranspose",
    "DepthwiseConv2D", "Flatten", "Reshape", "Activation", "ReLU", "LeakyReLU", "Softmax",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Dropout", "BatchNormalization", "Add", "Subtract", "Multiply",
    "Concatenate", "UpSampling1D", "UpSampling2D", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D", "Permute", "RepeatVector",
    # a transformer encoder block: attention becomes FULLY_CONNECTED, BATCH_MATMUL, SOFTMAX
    # and TRANSPOSE; LayerNormalization MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, SUB and ADD
    "MultiHeadAttention", "EinsumDense", "LayerNormalization",
}
_WRAPPERS = {"QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer", "PruneLowMagnitude",
             "QATWrapper", "QATInput"}
_QAT = {"QuantizeWrapper", "QuantizeWrapperV2", "QATWrapper"}


@dataclasses.dataclass
class LayerReport:
    """One row of the conversion report."""

    layer: str
    op: str
    shape: tuple  # (M outputs, N inputs)
    nonzeros: int
    entries: int  # stored offset-CSR entries, dummies included
    # 2*E + 2*M + bias bytes (4*M int32, 8*M int64): docs/operator-contract.md section 2
    sparse_bytes: int
    dense_int8_bytes: int  # M*N + the same bias bytes

    def as_row(self):
        return (f"{self.layer:<20}{self.op:<12}{self.shape[0]:>6}x{self.shape[1]:<8}"
                f"{self.nonzeros:>10}{self.sparse_bytes:>14}{self.dense_int8_bytes:>14}")


@dataclasses.dataclass
class Conversion:
    """The converted model and what was done to it."""

    tflite: bytes
    mode: str
    layers: list

    def report(self) -> str:
        head = (f"{'layer':<20}{'op':<12}{'M x N':<15}{'nonzeros':>10}{'offset-CSR B':>14}"
                f"{'dense int8 B':>14}")
        lines = [head] + [r.as_row() for r in self.layers]
        lines.append("bytes: offset-CSR = 2*E + 2*M + bias (docs/operator-contract.md section 2), "
                     "E = stored entries; dense int8 = M*N + bias; bias = 4*M (int32, int8 mode) "
                     "or 8*M (int64, 16x8 mode)")
        lines.append(f"model: {len(self.tflite)} bytes ({self.mode})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Checks on the Keras side
# ------------------------------------------------------------------------------------------
def _outer(model, layer):
    """The layer itself, or the wrapper (QAT, pruning) that holds it in the model."""
    for candidate in walk_layers(model):
        if getattr(candidate, "layer", None) is layer:
            return candidate
    return layer


def _scopes(model, layer):
    """Name scopes the layer's ops trace under: its own, and its wrapper's (``quant_...``)."""
    return [layer.name] + ([_outer(model, layer).name] if _outer(model, layer) is not layer else [])


def _is_qat(model):
    return any(type(layer).__name__ in _QAT for layer in walk_layers(model))


def _check_model(model, require_mam):
    for layer in walk_layers(model):
        if layer is model or isinstance(layer, keras.Model):
            continue
        kind = type(layer).__name__
        if kind not in _SUPPORTED and kind not in _WRAPPERS:
            raise ValueError(
                f"convert: layer '{layer.name}' of type {kind} is not supported for export; "
                f"supported: {', '.join(sorted(_SUPPORTED))}"
            )
    found = mam_layers(model)
    if require_mam and not found:
        raise ValueError(f"convert: model '{model.name}' has no MAM layer, and MAM export was asked "
                         "(pass require_mam=False to convert a model without one)")
    names = [layer.name for layer in found]
    if len(set(names)) != len(names):
        raise ValueError(f"convert: MAM layer names must be unique, got {names}")
    for layer in found:
        if not isinstance(layer, MAMDense):
            raise ValueError(f"convert: MAM layer '{layer.name}' of type {type(layer).__name__} "
                             "has no MAM_SPARSE export yet")
        beta = layer.get_beta()
        if beta != 0.0:
            raise ValueError(f"MAMDense '{layer.name}': beta is {beta:g}; export needs beta == 0 "
                             "(finish the vanishing-contributions schedule, or set_beta(0) and "
                             "fine-tune)")
        for var in layer.weights:  # the variables: a QAT wrapper swaps layer.kernel for a tensor
            if not np.isfinite(var.numpy()).all():
                what = var.name.split("/")[-1].split(":")[0]
                raise ValueError(f"convert: MAMDense '{layer.name}' has non-finite {what} values")
    return found


# ------------------------------------------------------------------------------------------
# TFLite conversion of the builtin-op graph
# ------------------------------------------------------------------------------------------
def _representative(data, input_shape, limit):
    arr = np.asarray(data, np.float32)
    if arr.ndim == len(input_shape):  # one sample
        arr = arr[None]
    if tuple(arr.shape[1:]) != tuple(input_shape):
        raise ValueError(f"convert: representative data has sample shape {arr.shape[1:]}, the "
                         f"model takes {tuple(input_shape)}")
    if len(arr) == 0:
        raise ValueError("convert: representative data is empty")
    if not np.isfinite(arr).all():
        raise ValueError("convert: representative data holds non-finite values")

    def gen():
        for sample in arr[:limit]:
            yield [sample[None]]

    return gen


def _tflite_builtin(model, data, mode, float_io, calibration_samples):
    if len(model.inputs) != 1:
        raise ValueError(f"convert: model '{model.name}' has {len(model.inputs)} inputs; one is supported")
    input_shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in input_shape):
        raise ValueError(f"convert: input shape {input_shape} must be fully known (except batch)")
    with mam_op.builtin_graph():
        fn = tf.function(lambda x: model(x, training=False))
        concrete = fn.get_concrete_function(tf.TensorSpec((1,) + input_shape, tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if data is not None:  # a QAT model carries its ranges in its fake-quant ops
        conv.representative_dataset = _representative(data, input_shape, calibration_samples)
    if mode == "int8":
        if data is not None:  # (a QAT model converts in TFLite's quantization-aware mode)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8
    else:
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        io_type = tf.int16
    if not float_io:
        conv.inference_input_type = io_type
        conv.inference_output_type = io_type
    try:
        with quiet.filtered_stderr():  # TFLite's "fully_quantize: ..." banner (mam-tf only)
            return conv.convert()
    except Exception as err:  # TFLite raises ConverterError & co with long MLIR dumps
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"convert: TFLite's converter failed on model '{model.name}' "
                         f"({mode}): {first}") from err


# ------------------------------------------------------------------------------------------
# Flatbuffer surgery
# ------------------------------------------------------------------------------------------
def _in_scope(tensor, layer_name, sub=None):
    marker = f"{layer_name}/" + (f"{sub}/" if sub else "")
    return any(n.startswith(marker) or f"/{marker}" in n for n in fb.tensor_names(tensor))


def _quant(tensor):
    scales, zps = fb.quantization(tensor)
    if scales is None or len(scales) != 1:
        raise ValueError(f"convert: tensor '{tensor.name}' has no per-tensor quantization")
    return float(scales[0]), int(zps[0])


_PATTERN_OPS = {"RESHAPE", "EXPAND_DIMS", "MUL", "REDUCE_MAX", "REDUCE_MIN", "DEQUANTIZE"}


def _find_pattern(schema, model, sg, scopes):
    """The operators implementing one MAM layer, its input and output tensors, its activation.

    The pattern is found by structure, anchored on names only where TFLite keeps them: the
    ops traced under the layer's ``mam_reduce`` scope (RESHAPE, MUL, REDUCE_MAX, REDUCE_MIN;
    TFLite may fold the first two for special kernels), then the ADD of the max and the min
    (whose output may carry any name, e.g. when it is the model output), then an optional
    ADD of a constant [M] bias. In a quantization-aware model TFLite keeps the pattern in
    float between a DEQUANTIZE and a QUANTIZE (no fake-quant inside it); both belong to it.
    """
    layer_name = scopes[0]
    where = f"convert: MAM layer '{layer_name}'"
    core = [i for i, op in enumerate(sg.operators)
            if any(_in_scope(sg.tensors[t], scope, mam_op.EXPORT_SCOPE)
                   for t in op.outputs for scope in scopes)
            and fb.op_name(model, op) in _PATTERN_OPS]
    reduces = {kind: [i for i in core if fb.op_name(model, sg.operators[i]) == kind]
               for kind in ("REDUCE_MAX", "REDUCE_MIN")}
    if any(len(found) != 1 for found in reduces.values()):
        raise ValueError(f"{where}: expected one REDUCE_MAX and one REDUCE_MIN in the converted "
                         f"graph, found {len(reduces['REDUCE_MAX'])} and {len(reduces['REDUCE_MIN'])}")
    rmax = sg.operators[reduces["REDUCE_MAX"][0]].outputs[0]
    rmin = sg.operators[reduces["REDUCE_MIN"][0]].outputs[0]
    units = int(sg.tensors[rmax].shape[-1])

    def consumers(t):
        return [i for i, op in enumerate(sg.operators) if t in op.inputs]

    adds = [i for i in consumers(rmax) if i in consumers(rmin)
            and fb.op_name(model, sg.operators[i]) == "ADD"]
    if len(adds) != 1:
        raise ValueError(f"{where}: expected one ADD of its max and min, found {len(adds)}")
    core.append(adds[0])
    last = adds[0]
    out = sg.operators[last].outputs[0]
    nxt = consumers(out)
    if len(nxt) == 1 and fb.op_name(model, sg.operators[nxt[0]]) == "ADD":
        # The bias: its constant carries the layer's name (".../BiasAdd/ReadVariableOp");
        # the ADD's own output may be named after whatever consumes it.
        op = sg.operators[nxt[0]]
        other = [int(t) for t in op.inputs if t != out]
        if (len(other) == 1 and fb.is_constant(model, sg, other[0])
                and int(np.prod(sg.tensors[other[0]].shape)) == units
                and any(_in_scope(sg.tensors[t], scope)
                        for t in (other[0], *op.outputs) for scope in scopes)):
            core.append(nxt[0])
            last = nxt[0]
            out = op.outputs[0]
    act_op = last
    nxt = consumers(out)
    if len(nxt) == 1 and fb.op_name(model, sg.operators[nxt[0]]) == "QUANTIZE" \
            and fb.numpy_dtype(sg.tensors[out].type) == np.float32:
        core.append(nxt[0])
        last = nxt[0]
        out = sg.operators[last].outputs[0]
    produced = {int(t) for i in core for t in sg.operators[i].outputs}
    inputs = {int(t) for i in core for t in sg.operators[i].inputs
              if t >= 0 and int(t) not in produced and not fb.is_constant(model, sg, t)}
    if len(inputs) != 1:
        raise ValueError(f"{where}: its ops read {len(inputs)} non-constant tensors, expected 1")
    inner = produced - {int(out)}
    leaks = [i for i, op in enumerate(sg.operators) if i not in core
             and any(int(t) in inner for t in op.inputs)]
    if leaks or inner & {int(t) for t in sg.outputs}:
        raise ValueError(f"{where}: an intermediate tensor of its pattern is used elsewhere")
    for t, what in ((next(iter(inputs)), "input"), (int(out), "output")):
        if fb.numpy_dtype(sg.tensors[t].type) not in (np.int8, np.int16):
            raise ValueError(f"{where}: its {what} tensor is {fb.numpy_dtype(sg.tensors[t].type)}, "
                             "not quantized (is a fake-quant missing around the layer?)")
    act = 0
    opts = sg.operators[act_op].builtinOptions
    if opts is not None and hasattr(opts, "fusedActivationFunction"):
        act = int(opts.fusedActivationFunction)
    if act not in options.ACTIVATIONS:
        raise ValueError(f"{where}: fused activation {act} is not one MAM_SPARSE supports "
                         f"({options.ACTIVATIONS})")
    return sorted(core), inputs.pop(), int(out), act


def _check_no_mam_left(model):
    """No MAM pattern was left unspliced (a layer called twice traces a second pattern)."""
    sg = model.subgraphs[0]
    for op in sg.operators:
        if fb.op_name(model, op) in (options.MAM_SPARSE, options.MAC_SPARSE):
            continue  # its output tensor keeps the pattern's name
        for t in op.outputs:
            for name in fb.tensor_names(sg.tensors[t]):
                parts = name.split("/")
                hits = [k for k, part in enumerate(parts) if part.startswith(mam_op.EXPORT_SCOPE)]
                if hits and hits[0] > 0:
                    raise ValueError(
                        f"convert: MAM layer '{parts[hits[0] - 1]}' left a second MAM pattern "
                        f"('{name}'): a layer called more than once (shared) cannot be exported; "
                        "give each call its own layer")


def _check_integer_only(model):
    """Every op left computes on integers (QUANTIZE/DEQUANTIZE at float I/O excepted)."""
    sg = model.subgraphs[0]
    for op in sg.operators:
        kind = fb.op_name(model, op)
        if kind in ("QUANTIZE", "DEQUANTIZE"):
            continue
        for t in op.outputs:
            if fb.numpy_dtype(sg.tensors[t].type) == np.float32:
                raise ValueError(f"convert: op {kind} producing '{sg.tensors[t].name.decode()}' was "
                                 "left in float: the model is not fully quantized (a layer outside "
                                 "quantization-aware training, or an op TFLite cannot quantize)")


def _new_buffer(schema, model, array):
    buf = schema.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8).copy()
    model.buffers.append(buf)
    return len(model.buffers) - 1


def _new_tensor(schema, model, sg, name, array, tensor_type, scales=None, zero_points=None):
    t = schema.TensorT()
    t.name = name.encode()
    t.shape = np.array(array.shape, np.int32)
    t.type = tensor_type
    t.buffer = _new_buffer(schema, model, array)
    if scales is not None:
        q = schema.QuantizationParametersT()
        q.scale = np.asarray(scales, np.float32).ravel()
        q.zeroPoint = np.asarray(zero_points, np.int64).ravel()
        q.quantizedDimension = 0
        t.quantization = q
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _opcode(schema, model, custom_code):
    for i, code in enumerate(model.operatorCodes):
        if code.customCode is not None and code.customCode.decode() == custom_code:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CUSTOM
    code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = custom_code.encode()
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _builtin_opcode(schema, model, builtin):
    for i, code in enumerate(model.operatorCodes):
        if code.customCode is None and max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = builtin  # RESHAPE's code fits the deprecated int8 field
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _rows_tensor(schema, sg, like_idx, width, name):
    """A new activation tensor ``[rows, width]`` holding the elements of tensor ``like_idx``,
    with its type and quantization (a reshape keeps scale and zero point)."""
    like = sg.tensors[like_idx]
    shape = [int(d) for d in like.shape]
    total = int(np.prod(shape))
    if width <= 0 or total % width:
        raise ValueError(f"convert: layer '{name}': its tensor of shape {shape} does not hold "
                         f"rows of {width} values")
    t = schema.TensorT()
    t.name = f"{name}/rows".encode()
    t.shape = np.array([total // width, width], np.int32)
    signature = getattr(like, "shapeSignature", None)
    if signature is not None and len(signature) and int(np.min(signature)) < 0:
        t.shapeSignature = np.array([-1, width], np.int32)
    t.type = like.type
    t.buffer = 0  # no data: an activation
    t.quantization = like.quantization
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def _reshape_op(schema, model, src, dst):
    op = schema.OperatorT()
    op.opcodeIndex = _builtin_opcode(schema, model, schema.BuiltinOperator.RESHAPE)
    op.inputs = np.array([src], np.int32)
    op.outputs = np.array([dst], np.int32)
    return op


def _is_rows(sg, idx, width):
    shape = [int(d) for d in sg.tensors[idx].shape]
    return len(shape) == 2 and shape[-1] == width


def _as_rows(schema, model, sg, x_idx, n, name):
    """The input of a sparse op as ``[rows, n]`` (docs/operator-contract.md section 3): a layer
    on token inputs ``[batch, tokens, ..., n]`` reads every token as one row, as
    FULLY_CONNECTED does; TFLite also folds a Flatten into the reshape of the MAM pattern, so a
    layer after a convolution may read ``[1, 256, 64]``.
    Returns ``(tensor index, RESHAPE op or None)``: the op goes just before the sparse op."""
    if _is_rows(sg, x_idx, n):
        return x_idx, None
    rows = _rows_tensor(schema, sg, x_idx, n, name)
    return rows, _reshape_op(schema, model, x_idx, rows)


def _rows_output(schema, model, sg, y_idx, m, name):
    """The output of a sparse op as ``[rows, m]``, the shape the converter always gives it;
    where the model's tensor keeps leading dimensions (``[batch, tokens, ..., m]``), a RESHAPE
    after the sparse op restores them. Returns ``(tensor index, RESHAPE op or None)``."""
    if _is_rows(sg, y_idx, m):
        return y_idx, None
    rows = _rows_tensor(schema, sg, y_idx, m, f"{name}/out")
    return rows, _reshape_op(schema, model, rows, y_idx)


def _place(sg, index, op, before, after):
    """Puts ``op`` at ``index`` of the operators, with the RESHAPEs (or None) around it."""
    sg.operators.insert(index, op)
    if after is not None:
        sg.operators.insert(index + 1, after)
    if before is not None:
        sg.operators.insert(index, before)


def _splice_mam(schema, model, layer, mode, per_row, scopes, qat_params=None):
    sg = model.subgraphs[0]
    core, x_idx, y_idx, act = _find_pattern(schema, model, sg, scopes)
    x_t, y_t = sg.tensors[x_idx], sg.tensors[y_idx]
    in_scale, in_zp = _quant(x_t)
    out_scale, out_zp = _quant(y_t)
    dtype = np.int8 if mode == "int8" else np.int16
    bias = layer.bias.numpy() if layer.use_bias else None
    kernel, weight_scales = None, None
    if qat_params is None:
        kernel = layer.kernel.numpy()
    else:
        # The weights exactly as quantization-aware training used them: int8 values times
        # their scales, which quantize_layer divides back to the same integers.
        w = qat_params["weights"]
        weight_scales = np.asarray(w["scale"], np.float32)
        kernel = w["values"].astype(np.float64) * weight_scales.astype(np.float64)[None, :]
        bias = qat_params["bias"]
    q = quantize_layer(
        kernel, bias,
        input_scale=in_scale, input_zero_point=in_zp, output_scale=out_scale,
        output_zero_point=out_zp, activation=act, dtype=dtype, per_row=per_row,
        weight_scales=weight_scales, name=layer.name,
    )
    if qat_params is not None and not np.array_equal(q.weights, qat_params["weights"]["values"].T):
        raise AssertionError(f"convert: layer '{layer.name}': QAT weights did not survive requantization")
    csr = encode(q.weights, name=layer.name)
    m, n = csr.shape
    base = f"{layer.name}/MAM_SPARSE"
    tt = schema.TensorType
    values = _new_tensor(schema, model, sg, f"{base}/values", csr.values, tt.INT8,
                         q.weight_scales, np.zeros(q.weight_scales.size))
    offsets = _new_tensor(schema, model, sg, f"{base}/offsets", csr.offsets, tt.UINT8)
    counts = _new_tensor(schema, model, sg, f"{base}/row_counts", csr.row_counts, tt.INT16)
    bias = -1
    if q.bias is not None:
        bias_scales = (np.float32(in_scale) * q.weight_scales.astype(np.float32)).astype(np.float32)
        bias = _new_tensor(schema, model, sg, f"{base}/bias", q.bias,
                           tt.INT32 if mode == "int8" else tt.INT64,
                           bias_scales, np.zeros(bias_scales.size))
    x_rows, before = _as_rows(schema, model, sg, x_idx, n, base)
    y_rows, after = _rows_output(schema, model, sg, y_idx, m, base)
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(schema, model, options.MAM_SPARSE)
    op.inputs = np.array([x_rows, values, offsets, counts, bias], np.int32)
    op.outputs = np.array([y_rows], np.int32)
    op.customOptions = np.frombuffer(options.encode(in_features=n, activation=act), np.uint8).copy()
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    first = core[0]
    sg.operators = [o for i, o in enumerate(sg.operators) if i not in set(core)]
    _place(sg, first, op, before, after)
    nnz = int(np.count_nonzero(q.weights))
    bias_size = q.bias.dtype.itemsize if q.bias is not None else 0
    return LayerReport(layer.name, options.MAM_SPARSE, (m, n), nnz, csr.num_entries,
                       csr.nbytes(has_bias=q.bias is not None, bias_itemsize=bias_size or 4),
                       m * n + bias_size * m)


def _splice_mac(schema, model, layer, scopes):
    """Replaces the FULLY_CONNECTED of a pruned Dense layer by MAC_SPARSE, on TFLite's own
    quantized weights, bias and requantization: bit for bit what FULLY_CONNECTED computes."""
    sg = model.subgraphs[0]
    where = f"convert: Dense '{layer.name}'"
    # Found by its weights' name (the output's may be the model output's, "Identity" & co).
    found = [i for i, op in enumerate(sg.operators)
             if fb.op_name(model, op) == "FULLY_CONNECTED"
             and any(_in_scope(sg.tensors[t], scope)
                     for t in [op.inputs[1], *op.outputs] for scope in scopes)]
    if len(found) != 1:
        raise ValueError(f"{where}: expected one FULLY_CONNECTED op for it, found {len(found)}")
    k = found[0]
    fc = sg.operators[k]
    x_idx, w_idx = int(fc.inputs[0]), int(fc.inputs[1])
    b_idx = int(fc.inputs[2]) if len(fc.inputs) > 2 else -1
    if not fb.is_constant(model, sg, w_idx):
        raise ValueError(f"{where}: its weights are not a constant tensor")
    weights = fb.constant(model, sg, w_idx)
    if weights.dtype != np.int8 or weights.ndim != 2:
        raise ValueError(f"{where}: weights are {weights.dtype} {weights.shape}, not int8 [M, N]")
    act = int(getattr(fc.builtinOptions, "fusedActivationFunction", 0) or 0)
    if act not in options.ACTIVATIONS:
        raise ValueError(f"{where}: fused activation {act} is not one MAC_SPARSE supports")
    w_scales, _ = fb.quantization(sg.tensors[w_idx])
    csr = encode(weights, name=layer.name)
    m, n = csr.shape
    base = f"{layer.name}/MAC_SPARSE"
    tt = schema.TensorType
    values = _new_tensor(schema, model, sg, f"{base}/values", csr.values, tt.INT8,
                         w_scales, np.zeros(w_scales.size))
    offsets = _new_tensor(schema, model, sg, f"{base}/offsets", csr.offsets, tt.UINT8)
    counts = _new_tensor(schema, model, sg, f"{base}/row_counts", csr.row_counts, tt.INT16)
    x_rows, before = _as_rows(schema, model, sg, x_idx, n, base)
    y_rows, after = _rows_output(schema, model, sg, int(fc.outputs[0]), m, base)
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(schema, model, options.MAC_SPARSE)
    op.inputs = np.array([x_rows, values, offsets, counts, b_idx], np.int32)
    op.outputs = np.array([y_rows], np.int32)
    op.customOptions = np.frombuffer(options.encode(in_features=n, activation=act), np.uint8).copy()
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    del sg.operators[k]
    _place(sg, k, op, before, after)
    bias_size = fb.numpy_dtype(sg.tensors[b_idx].type).itemsize if b_idx >= 0 else 0
    return LayerReport(layer.name, options.MAC_SPARSE, (m, n), int(np.count_nonzero(weights)),
                       csr.num_entries, csr.nbytes(has_bias=b_idx >= 0, bias_itemsize=bias_size or 4),
                       m * n + bias_size * m)


def _sparse_dense_layers(model, below):
    """The plain Dense layers whose kernel density is below ``below``."""
    chosen = []
    for layer in walk_layers(model):
        if type(layer).__name__ != "Dense":
            continue
        kernel = next((v for v in layer.weights if "kernel" in v.name), None)
        if kernel is not None and np.count_nonzero(kernel.numpy()) < below * kernel.shape.num_elements():
            chosen.append(layer)
    return chosen


def convert(model, representative_data, mode="int8", *, per_row=True, float_io=False,
            require_mam=True, mac_sparse_below=None, calibration_samples=500,
            return_report=False):
    """Converts a Keras model with MAM layers to a .tflite holding MAM_SPARSE ops.

    Args:
      model: a functional or Sequential tf_keras model, single input, or a Keras 3 chain
        model (any backend; rebuilt as tf_keras by ``mam_tf.keras3.export``). Every MAMDense must
        have beta == 0. Inputs of any rank >= 2 convert as FULLY_CONNECTED's do: a layer on
        ``[batch, tokens, ..., N]`` becomes RESHAPE to ``[rows, N]``, the sparse op on the
        rows, and a RESHAPE back where the model keeps the leading dimensions.
      representative_data: float samples shaped like the model input (a [K, ...] array);
        up to ``calibration_samples`` of them calibrate the activations. A model trained
        quantization-aware (``mam_tf.train.quantization.quantize_model``) needs none: its
        fake-quant ranges and int8 weights are used as they are, and ``mode`` must be the
        scheme it was trained for.
      mode: ``"int8"`` (int8 activations, int8 weights, int32 bias) or ``"int16x8"``
        (int16 activations with zero point 0, int8 weights, int64 bias).
      per_row: one weight scale per output row (default) or one for the whole layer.
      float_io: keep float32 model input/output (QUANTIZE/DEQUANTIZE ops at the ends)
        instead of integer I/O.
      mac_sparse_below: also store pruned Dense layers whose weight density is below this
        fraction as MAC_SPARSE ops (offset-CSR), computing exactly what TFLite's
        FULLY_CONNECTED would; default None keeps every Dense a FULLY_CONNECTED.
      return_report: return a :class:`Conversion` (bytes + per-layer report) instead of bytes.
    """
    if mode not in MODES:
        raise ValueError(f"convert: mode must be one of {MODES}, got {mode!r}")
    model = _from_keras3(model)
    model = _strip_pruning(model)
    found = _check_model(model, require_mam)
    qat = None
    if _is_qat(model):
        from mam_tf.train.quantization import layer_quant_params

        qat = layer_quant_params(model)
        schemes = {p["scheme"] for p in qat.values()}
        if schemes != {mode}:
            raise ValueError(f"convert: model '{model.name}' was trained quantization-aware for "
                             f"{sorted(schemes)}; convert it with mode={sorted(schemes)[0]!r}, "
                             f"not {mode!r}")
    elif representative_data is None:
        raise ValueError("convert: representative data is needed to calibrate a model that was "
                         "not trained quantization-aware")
    flat = _tflite_builtin(model, representative_data, mode, float_io, calibration_samples)
    schema = fb.schema()
    tfl = fb.load(flat)
    if len(tfl.subgraphs) != 1:
        raise ValueError(f"convert: the converted model has {len(tfl.subgraphs)} subgraphs; one expected")
    reports = [_splice_mam(schema, tfl, layer, mode, per_row, _scopes(model, layer),
                           None if qat is None else qat[layer.name]) for layer in found]
    if mac_sparse_below is not None:
        if not 0.0 < mac_sparse_below <= 1.0:
            raise ValueError(f"convert: mac_sparse_below must be in (0, 1], got {mac_sparse_below}")
        reports += [_splice_mac(schema, tfl, layer, _scopes(model, layer))
                    for layer in _sparse_dense_layers(model, mac_sparse_below)]
    _check_no_mam_left(tfl)
    fb.compact(tfl)
    _check_integer_only(tfl)
    out = fb.pack(tfl)
    if return_report:
        return Conversion(out, mode, reports)
    return out


def _from_keras3(model):
    """A Keras 3 model (any backend) rebuilt as tf_keras (mam_tf.keras3.export)."""
    import sys

    if "keras" in sys.modules:  # no Keras 3 model exists before Keras 3 is imported
        from mam_tf.keras3.export import is_keras3_model, to_tf_keras

        if is_keras3_model(model):
            return to_tf_keras(model)
    return model


def _strip_pruning(model):
    if any(type(layer).__name__ == "PruneLowMagnitude" for layer in walk_layers(model)):
        from mam_tf.train.pruning import strip_pruning  # applies the held masks, unlike tfmot's

        return strip_pruning(model)
    return model


def write_header(tflite: bytes, path, name="model_data"):
    """Writes the model as an aligned C array, ``const unsigned char name[]`` and its length."""
    if not name.isidentifier():
        raise ValueError(f"write_header: {name!r} is not a valid C identifier")
    lines = [
        "// Generated by mam-tf convert. The .tflite model as a C array for TFLite-Micro.",
        "// Include it in exactly ONE source file (it defines the array).",
        "#pragma once",
        "#include <stddef.h>",
        "#ifndef __cplusplus",
        "#include <stdalign.h>",
        "#endif",
        "",
        f"// {len(tflite)} bytes; 16-byte aligned as TFLite-Micro expects for model data.",
        f"alignas(16) const unsigned char {name}[] = {{",
    ]
    for i in range(0, len(tflite), 12):
        lines.append("  " + ", ".join(f"0x{b:02x}" for b in tflite[i:i + 12]) + ",")
    lines += ["};", f"const size_t {name}_len = {len(tflite)};", ""]
    text = "\n".join(lines)
    with open(path, "w") as fh:
        fh.write(text)
    return text


# ------------------------------------------------------------------------------------------
# Command line: mam-tf convert
# ------------------------------------------------------------------------------------------
def _cmd_convert(args):
    import os

    from mam_tf.train.compat import keras as _keras

    required_out(args)
    if not os.path.exists(args.model):
        raise ValueError(f"no model at {args.model!r}")
    if args.calibration_samples < 1:
        raise ValueError(f"--calibration-samples must be >= 1, got {args.calibration_samples}")
    try:
        model = _keras.models.load_model(args.model, compile=False)
    except Exception as err:  # Keras raises assorted types for files it cannot read
        raise ValueError(f"cannot load a Keras model from {args.model!r} "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
    data = None if args.data is None else load_array(args.data, args.data_key)
    result = convert(model, data, mode=args.mode, per_row=args.per_row,
                     float_io=args.float_io, calibration_samples=args.calibration_samples,
                     mac_sparse_below=args.mac_sparse_below,
                     require_mam=args.require_mam, return_report=True)
    tmp = args.out + ".part"
    try:
        with open(tmp, "wb") as fh:
            fh.write(result.tflite)
        os.replace(tmp, args.out)  # never leave a half-written model behind
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise ValueError(f"cannot write {args.out!r}: {err.strerror or err}") from None
    print(result.report())
    print(f"wrote {args.out}")
    if args.header:
        name = args.header_name or "model_data"
        write_header(result.tflite, args.header, name=name)
        print(f"wrote {args.header} ({name}, {name}_len)")


def add_convert_command(subparsers):
    p = subparsers.add_parser(
        "convert",
        help="Keras model -> .tflite with MAM_SPARSE custom ops (int8 or 16x8)",
        description="Converts a saved Keras model (.keras, .h5 or SavedModel) holding MAMDense "
        "layers to a fully quantized .tflite in which each MAMDense is one MAM_SPARSE custom op "
        "(offset-CSR int8 weights). Activations are calibrated on the representative data; the "
        "per-layer report gives nonzeros and bytes (offset-CSR vs dense int8).",
    )
    p.add_argument("model", help="saved Keras model (.keras, .h5 or SavedModel folder)")
    p.add_argument("--data",
                   help="representative inputs: a .npy array, or a .npz (see --data-key), "
                   "shaped [samples, ...model input]; needed unless the model was trained "
                   "quantization-aware (its fake-quant ranges are used then)")
    p.add_argument("--data-key", help="array name inside the .npz (default: its only array)")
    p.add_argument("--mode", choices=MODES, default="int8",
                   help="int8: int8 activations; int16x8: int16 activations, int8 weights")
    add_out(p, "the .tflite file to write", required=True)
    add_deprecated(p, "--output", "-o/--out", dest="out")
    p.add_argument("--header", help="also write the model as a C array header (for firmware)")
    p.add_argument("--header-name", help="C identifier of the array (default model_data)")
    p.add_argument("--per-row", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output row (default), or with --no-per-row one "
                   "per layer")
    add_deprecated(p, "--per-tensor", "--no-per-row", dest="per_row", const=False)
    p.add_argument("--float-io", action="store_true",
                   help="keep float32 model input/output (quantize/dequantize on the device)")
    p.add_argument("--calibration-samples", type=int, default=500, metavar="N",
                   help="representative samples that calibrate the activations (default 500)")
    add_deprecated(p, "--samples", "--calibration-samples", dest="calibration_samples", type=int)
    p.add_argument("--mac-sparse-below", type=float, metavar="DENSITY",
                   help="store pruned Dense layers with fewer than this fraction of nonzero "
                   "weights as MAC_SPARSE ops (same results as FULLY_CONNECTED, offset-CSR storage)")
    p.add_argument("--require-mam", action=argparse.BooleanOptionalAction, default=True,
                   help="refuse a model without MAM layers (default); --no-require-mam converts "
                   "it too (a plain builtin int8 model)")
    add_deprecated(p, "--allow-no-mam", "--no-require-mam", dest="require_mam", const=False)
    p.set_defaults(func=_cmd_convert)
