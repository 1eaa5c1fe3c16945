"""Reading and editing .tflite flatbuffers with the schema's generated object API.

The schema module comes from the ``tflite-micro`` package (the same schema TFLite-Micro reads).
Shared by the converter (which splices MAM_SPARSE in) and the host runtime (which cuts a
model into the parts TFLite-Micro runs and the parts the MAM_SPARSE core runs).
"""
from __future__ import annotations

import numpy as np

__all__ = ["schema", "load", "pack", "op_name", "tensor_names", "is_constant", "constant",
           "compact", "quantization", "tensor_name"]


def schema():
    from tflite_micro.tensorflow.lite.python import schema_py_generated

    return schema_py_generated


_BUILTIN_NAMES: dict = {}


def load(data):
    """The model object (``ModelT``) of .tflite bytes."""
    return schema().ModelT.InitFromPackedBuf(bytearray(data), 0)


def pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_name(model, op) -> str:
    """BUILTIN name ("MUL", "FULLY_CONNECTED", ...) or the custom code ("MAM_SPARSE")."""
    s = schema()
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == s.BuiltinOperator.CUSTOM:
        return code.customCode.decode()
    if not _BUILTIN_NAMES:
        _BUILTIN_NAMES.update({v: k for k, v in vars(s.BuiltinOperator).items()
                               if not k.startswith("_")})
    return _BUILTIN_NAMES[builtin]


def tensor_names(tensor) -> list:
    """A tensor's name split into the TF op names TFLite fused into it (';'-separated)."""
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    return name.split(";")


def tensor_name(tensor) -> str:
    """A tensor's name as text (undecodable bytes replaced, never an exception)."""
    name = tensor.name
    if name is None:
        return ""
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def is_constant(model, sg, idx) -> bool:
    if idx < 0:
        return False
    buf = model.buffers[sg.tensors[idx].buffer]
    return buf.data is not None and len(buf.data) > 0


_NUMPY_TYPES = {
    "FLOAT32": np.float32, "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16,
    "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
}


def numpy_dtype(tensor_type):
    names = {v: k for k, v in vars(schema().TensorType).items() if not k.startswith("_")}
    name = names.get(tensor_type)
    if name not in _NUMPY_TYPES:
        raise ValueError(f"tensor type {name or tensor_type} is not supported here")
    return np.dtype(_NUMPY_TYPES[name])


def constant(model, sg, idx) -> np.ndarray:
    """The value of a constant tensor, typed and shaped."""
    t = sg.tensors[idx]
    data = model.buffers[t.buffer].data
    raw = np.zeros(0, np.uint8) if data is None else np.asarray(data, np.uint8)
    arr = np.frombuffer(raw.tobytes(), numpy_dtype(t.type))
    shape = [] if t.shape is None else [int(d) for d in t.shape]
    return arr.reshape(shape) if shape else arr


def quantization(tensor):
    """(scales float32 array, zero points int64 array), or (None, None) when not quantized."""
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None, None
    return np.asarray(q.scale, np.float32), np.asarray(q.zeroPoint, np.int64)


def compact(model):
    """Drops tensors no operator or subgraph I/O uses, then unused buffers and opcodes.

    Metadata keeps its buffers; signature entries follow their tensors' new indices (an entry
    whose tensor is gone is dropped).
    """
    used_buffers = {0} | {int(md.buffer) for md in (model.metadata or [])}
    remaps = []
    for sg in model.subgraphs:
        keep = sorted({int(t) for op in sg.operators for t in list(op.inputs) + list(op.outputs)
                       if t >= 0} | {int(t) for t in sg.inputs} | {int(t) for t in sg.outputs})
        remap = {old: new for new, old in enumerate(keep)}
        sg.tensors = [sg.tensors[i] for i in keep]
        for op in sg.operators:
            op.inputs = np.array([remap[int(t)] if t >= 0 else -1 for t in op.inputs], np.int32)
            op.outputs = np.array([remap[int(t)] for t in op.outputs], np.int32)
        sg.inputs = np.array([remap[int(t)] for t in sg.inputs], np.int32)
        sg.outputs = np.array([remap[int(t)] for t in sg.outputs], np.int32)
        used_buffers.update(t.buffer for t in sg.tensors)
        remaps.append(remap)
    for sig in model.signatureDefs or []:
        remap = remaps[sig.subgraphIndex]
        for attr in ("inputs", "outputs"):
            kept = [tm for tm in (getattr(sig, attr) or []) if int(tm.tensorIndex) in remap]
            for tm in kept:
                tm.tensorIndex = remap[int(tm.tensorIndex)]
            setattr(sig, attr, kept)
    keep_b = sorted(used_buffers)
    remap_b = {old: new for new, old in enumerate(keep_b)}
    model.buffers = [model.buffers[i] for i in keep_b]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = remap_b[t.buffer]
    for md in model.metadata or []:
        md.buffer = remap_b[int(md.buffer)]
    used_codes = sorted({op.opcodeIndex for sg in model.subgraphs for op in sg.operators})
    remap_c = {old: new for new, old in enumerate(used_codes)}
    model.operatorCodes = [model.operatorCodes[i] for i in used_codes]
    for sg in model.subgraphs:
        for op in sg.operators:
            op.opcodeIndex = remap_c[op.opcodeIndex]
