"""The model checker: is a .tflite safe to hand to TFLite-Micro (here or on the device)?

TFLite-Micro trusts its model: it does not verify the flatbuffer, and it takes every length
from a tensor's shape, never from its buffer. One flipped bit in a shape makes a kernel read
past a weight buffer. :func:`check_model` looks at everything a reader follows, before any
reader does:

- the flatbuffer itself: every table, vtable, vector and string lies inside the file, offsets
  are aligned, strings end in NUL (a truncated or spliced file is refused, never parsed
  past its end);
- every constant tensor's buffer is as long as its shape times its type's size; shapes are
  non-negative; quantization arrays have matching lengths, finite scales > 0, zero points
  inside their type, a valid quantized dimension;
- every operator's opcode, every tensor index (operators, subgraph inputs/outputs,
  signatures), every buffer index is in range; every tensor an operator reads is a constant,
  a subgraph input or the output of an earlier operator; nothing writes a constant or writes
  a tensor twice;
- every MAM_SPARSE / MAC_SPARSE op passes the device's own Prepare checks
  (:mod:`mam_tf.deploy.node`: its custom options, tensors, E and columns, scales).

The host runtime runs it on every model; ``mam-tf check model.tflite`` runs it before
flashing (exit 0, or 1 with one line per problem). ``mam-tf fuzz N`` runs the corruption
fuzzer (:mod:`mam_tf.deploy.fuzz`).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import struct
import threading
from pathlib import Path

import numpy as np

from mam_tf.deploy import builtins
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import options
from mam_tf.deploy.node import element_count

__all__ = ["check_model", "check_file", "verify_flatbuffer", "add_check_command"]

#: Bytes per element of each schema TensorType (INT4 packs two per byte; None: unsized).
_ITEMSIZE = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "STRING": None,
             "BOOL": 1, "INT16": 2, "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16,
             "UINT64": 8, "RESOURCE": None, "VARIANT": None, "UINT32": 4, "UINT16": 2,
             "INT4": 0.5, "BFLOAT16": 2}
_ZP_RANGE = {"INT8": (-128, 127), "UINT8": (0, 255), "INT16": (-32768, 32767)}
_MAX_TABLES = 1_000_000  # as flatbuffers' own Verifier: shared subtrees cannot explode
_MAX_ELEMENTS = 2**31 - 1


class _Bad(Exception):
    """The flatbuffer does not verify."""


# ------------------------------------------------------------------------------------------
# The flatbuffer: the schema's own reader, every step of it checked
# ------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_STATE = threading.local()


@functools.lru_cache(maxsize=None)
def _checked_table_class():
    import flatbuffers.number_types as N
    import flatbuffers.table

    base = flatbuffers.table.Table
    u32, i32, u16 = struct.Struct("<I"), struct.Struct("<i"), struct.Struct("<H")

    class CheckedTable(base):
        """flatbuffers' Table, refusing any position outside the file (as the C++ Verifier)."""

        __slots__ = ("_objlen", "_vt", "_vtlen")

        def __init__(self, buf, pos):
            if len(buf) and not 0 <= pos <= len(buf) - 4:  # before the base refuses it unnamed
                raise _Bad(f"a table at byte {pos} is misaligned or outside the file "
                           f"({len(buf)} bytes)")
            super().__init__(buf, pos)
            self._vt = self._vtlen = self._objlen = 0
            if len(buf):  # a blank union table is filled (and checked) by Union()
                self._verify()

        def _u32(self, off):
            if off < 0 or off + 4 > len(self.Bytes):
                raise _Bad(f"offset {off} points outside the file ({len(self.Bytes)} bytes)")
            return u32.unpack_from(self.Bytes, off)[0]

        def _verify(self):
            n, p = len(self.Bytes), self.Pos
            _STATE.tables += 1
            if _STATE.tables > _MAX_TABLES:
                raise _Bad(f"more than {_MAX_TABLES} tables (shared or looping subtrees)")
            if p < 0 or p % 4 or p + 4 > n:
                raise _Bad(f"a table at byte {p} is misaligned or outside the file ({n} bytes)")
            vt = p - i32.unpack_from(self.Bytes, p)[0]
            if vt < 0 or vt % 2 or vt + 4 > n:
                raise _Bad(f"the table at byte {p} has its vtable outside the file")
            vtlen, objlen = u16.unpack_from(self.Bytes, vt)[0], u16.unpack_from(self.Bytes, vt + 2)[0]
            if vtlen < 4 or vtlen % 2 or vt + vtlen > n or objlen < 4 or p + objlen > n:
                raise _Bad(f"the table at byte {p} has a vtable of {vtlen} bytes / an object of "
                           f"{objlen} bytes that do not fit the file")
            self._vt, self._vtlen, self._objlen = vt, vtlen, objlen

        def Offset(self, vtableOffset):
            if vtableOffset >= self._vtlen:
                return 0
            fo = u16.unpack_from(self.Bytes, self._vt + vtableOffset)[0]
            if fo and fo + 1 > self._objlen:
                raise _Bad(f"a field of the table at byte {self.Pos} lies outside the table")
            return fo

        def Indirect(self, off):
            return off + self._u32(off)

        def String(self, off):
            s = off + self._u32(off)
            if s % 4:
                raise _Bad(f"a string at byte {s} is misaligned")
            length = self._u32(s)
            end = s + 4 + length
            if end + 1 > len(self.Bytes) or self.Bytes[end] != 0:
                raise _Bad(f"a string at byte {s} runs past the file or lacks its NUL")
            return bytes(self.Bytes[s + 4:end])

        def _vector(self, off, itemsize=1):
            v = self.Pos + off
            v += self._u32(v)
            if v % 4:
                raise _Bad(f"a vector at byte {v} is misaligned")
            length = self._u32(v)
            if v + 4 + length * itemsize > len(self.Bytes):
                raise _Bad(f"a vector of {length} elements at byte {v} runs past the file")
            return v, length

        def VectorLen(self, off):
            return self._vector(off)[1]

        def Vector(self, off):
            return self._vector(off)[0] + 4

        def GetVectorAsNumpy(self, flags, off):
            v, length = self._vector(off, flags.bytewidth)
            return np.frombuffer(self.Bytes, N.to_numpy_type(flags), count=length, offset=v + 4)

        def Union(self, t2, off):
            t2.Bytes = self.Bytes
            t2.Pos = self.Pos + off + self._u32(self.Pos + off)
            t2._verify()

        def Get(self, flags, off):
            if off < 0 or off + flags.bytewidth > len(self.Bytes):
                raise _Bad(f"a value at byte {off} lies outside the file")
            return base.Get(self, flags, off)

    return base, CheckedTable


@contextlib.contextmanager
def _checked_reads():
    import flatbuffers.table

    with _LOCK:
        base, checked = _checked_table_class()
        flatbuffers.table.Table = checked
        _STATE.tables = 0
        try:
            yield
        finally:
            flatbuffers.table.Table = base


def verify_flatbuffer(data: bytes):
    """The model (``ModelT``) read with every offset checked; ValueError if it does not verify."""
    data = bytes(data)
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes: too short for a .tflite flatbuffer")
    if data[4:8] != b"TFL3":
        raise ValueError(f"no .tflite identifier (bytes 4..8 are {data[4:8]!r}, not b'TFL3')")
    buf = bytearray(data)
    try:
        with _checked_reads():
            return fb.schema().ModelT.InitFromPackedBuf(buf, 0)
    except _Bad as err:
        raise ValueError(f"the flatbuffer does not verify: {err}") from None
    except RecursionError:
        raise ValueError("the flatbuffer does not verify: nested too deeply") from None
    except Exception as err:  # the schema's reader on a structure it cannot follow
        raise ValueError(f"the flatbuffer does not verify: {type(err).__name__}: {err}") from None


# ------------------------------------------------------------------------------------------
# The model's content
# ------------------------------------------------------------------------------------------
def _enum_names(enum) -> dict:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def _tensor_label(sg, i, k=None) -> str:
    where = f"subgraph {k} " if k else ""
    return f"{where}tensor {i} '{fb.tensor_name(sg.tensors[i])}'"


def _sparse_owned(model, sg) -> set:
    """Tensors only MAM_SPARSE / MAC_SPARSE ops read as weights (inputs 1..4): the device's
    own checks (mam_tf.deploy.node) judge them, in the device's words."""
    owned, other = set(), set()
    for op in sg.operators:
        ins = [int(t) for t in (op.inputs if op.inputs is not None else [])]
        custom = _op_kind(model, op) in (options.MAM_SPARSE, options.MAC_SPARSE)
        for pos, t in enumerate(ins):
            (owned if custom and pos >= 1 else other).add(t)
    return owned - other


def _op_kind(model, op):
    codes = model.operatorCodes or []
    if not 0 <= op.opcodeIndex < len(codes):
        return None
    try:
        return fb.op_name(model, op)
    except Exception:
        return None


def _check_tensor(model, sg, k, i, owned, problems) -> bool:
    """Appends the tensor's problems; False when it cannot even be looked at further (no
    type, no shape, no buffer)."""
    s = fb.schema()
    t = sg.tensors[i]
    label = _tensor_label(sg, i, k)
    type_name = _enum_names(s.TensorType).get(t.type)
    if type_name is None:
        problems.append(f"{label}: unknown type {t.type}")
        return False
    shape = [] if t.shape is None else [int(d) for d in t.shape]
    if any(d < 0 for d in shape):
        problems.append(f"{label}: shape {shape} has a negative dimension")
        return False
    elements = int(np.prod(shape, dtype=object)) if shape else 1
    if elements > _MAX_ELEMENTS:
        problems.append(f"{label}: shape {shape} holds {elements} elements (more than 2^31 - 1)")
        return False
    if not 0 <= t.buffer < len(model.buffers or []):
        problems.append(f"{label}: buffer {t.buffer} does not exist ({len(model.buffers or [])} "
                        "buffers)")
        return False
    buf = model.buffers[t.buffer]
    if (buf.offset or 0) != 0 or (buf.size or 0) != 0:
        problems.append(f"{label}: buffer {t.buffer} points outside the flatbuffer "
                        f"(offset {buf.offset}, size {buf.size}); not supported")
        return False
    if t.sparsity is not None:
        problems.append(f"{label}: sparsity parameters are not supported by TFLite-Micro")
    nbytes = 0 if buf.data is None else len(buf.data)
    if elements == 0 and not nbytes and i not in owned:
        # an empty activation: no microcontroller model has one, and TFLite-Micro's builtin
        # kernels do not expect them (a MAM_SPARSE layer with every weight pruned has empty
        # values/offsets: those are judged by the op's own checks)
        problems.append(f"{label}: shape {shape} holds no element")
        return False
    size = _ITEMSIZE.get(type_name)
    if i not in owned and nbytes and size is not None:
        need = int(np.ceil(elements * size))
        if nbytes != need:
            problems.append(f"{label}: its buffer holds {nbytes} bytes; shape {shape} of "
                            f"{type_name} needs {need}")
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0 or i in owned:
        if i in owned and q is not None and q.scale is not None and q.zeroPoint is not None \
                and len(q.zeroPoint) != len(q.scale):
            problems.append(f"{label}: {len(q.scale)} scales but {len(q.zeroPoint)} zero points")
        return True
    scales = np.asarray(q.scale, np.float64)
    zps = np.zeros(0, np.int64) if q.zeroPoint is None else np.asarray(q.zeroPoint, np.int64)
    if len(zps) != len(scales):
        problems.append(f"{label}: {len(scales)} scales but {len(zps)} zero points")
        return True
    bad = ~(np.isfinite(scales) & (scales >= 0))
    zero = scales == 0
    if zero.any() and nbytes:
        # TFLite gives an all-zero channel of a constant the scale 0: allowed there only
        try:
            values = np.frombuffer(bytes(buf.data), fb.numpy_dtype(t.type)).reshape(shape)
            along = (np.moveaxis(values, int(q.quantizedDimension), 0)
                     if len(scales) > 1 else values).reshape(len(scales), -1)
            zero &= np.any(along != 0, axis=1)
        except (ValueError, IndexError):
            pass  # a buffer that does not fit its shape is reported above
    bad |= zero
    if bad.any():
        j = int(np.argmax(bad))
        problems.append(f"{label}: scale {j} is {scales[j]}; scales must be finite and > 0 "
                        "(0 only for an all-zero channel of a constant)")
    if type_name in _ZP_RANGE and len(zps):
        lo, hi = _ZP_RANGE[type_name]
        if zps.min() < lo or zps.max() > hi:
            problems.append(f"{label}: zero points {zps.min()}..{zps.max()} do not fit "
                            f"{type_name} ({lo}..{hi})")
    if len(scales) > 1:
        qd = int(q.quantizedDimension)
        if not 0 <= qd < len(shape) or shape[qd] != len(scales):
            problems.append(f"{label}: {len(scales)} scales along dimension {qd} of shape {shape}")
    return True


def _check_subgraph(model, sg, k, problems):
    from mam_tf.deploy import node

    n = len(sg.tensors or [])
    sg.tensors = sg.tensors or []
    owned = _sparse_owned(model, sg)
    if not all([_check_tensor(model, sg, k, i, owned, problems) for i in range(n)]):
        return  # indices into nothing: the operators cannot be followed
    where = f"subgraph {k}: " if k else ""
    ins = [int(t) for t in (sg.inputs if sg.inputs is not None else [])]
    outs = [int(t) for t in (sg.outputs if sg.outputs is not None else [])]
    for what, idx in (("input", ins), ("output", outs)):
        for t in idx:
            if not 0 <= t < n:
                problems.append(f"{where}model {what} tensor index {t} is out of range ({n} tensors)")
                return
    if len(set(ins)) != len(ins):
        problems.append(f"{where}model inputs {ins} name a tensor twice")
    constant = {i for i in range(n) if fb.is_constant(model, sg, i)}
    written = set(ins) | {i for i in range(n) if sg.tensors[i].isVariable}
    for t in ins:
        if t in constant:
            problems.append(f"{where}model input {_tensor_label(sg, t)} is a constant")
    codes = model.operatorCodes or []
    for j, op in enumerate(sg.operators or []):
        kind = _op_kind(model, op)
        if kind is None:
            problems.append(f"{where}operator {j}: opcode index {op.opcodeIndex} is not a known "
                            f"operator ({len(codes)} operator codes)")
            continue
        label = f"{where}operator {j} {kind}"
        op_ins = [int(t) for t in (op.inputs if op.inputs is not None else [])]
        op_outs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
        inter = [int(t) for t in (op.intermediates if op.intermediates is not None else [])]
        bad = [t for t in op_ins if not -1 <= t < n] + [t for t in op_outs + inter
                                                         if not 0 <= t < n]
        if bad:
            problems.append(f"{label}: tensor index {bad[0]} is out of range ({n} tensors)")
            continue
        if not op_outs:
            problems.append(f"{label}: no outputs")
        shape_problem = builtins.operator_problem(sg, kind, op, op_ins, op_outs,
                                                  model.buffers)
        if shape_problem:
            problems.append(f"{label}: {shape_problem}")
        sparse = kind in (options.MAM_SPARSE, options.MAC_SPARSE)
        if sparse:
            try:
                node.prepare(model, sg, j)
            except ValueError as err:
                problems.append(f"{where}{err}")
        if op.customOptionsFormat not in (0, None):
            problems.append(f"{label}: custom options format {op.customOptionsFormat} is not "
                            "FLEXBUFFERS")
        for pos, t in enumerate(op_ins):
            if t < 0 or t in written or t in constant or (sparse and pos >= 1):
                continue
            problems.append(f"{label} reads {_tensor_label(sg, t)}, which is neither a constant, "
                            "a model input nor written by an earlier operator")
        for t in op_outs:
            if t in constant:
                problems.append(f"{label} writes {_tensor_label(sg, t)}, a constant")
            elif t in written:
                problems.append(f"{label} writes {_tensor_label(sg, t)}, which is already written")
            written.add(t)
    for t in outs:
        if t in constant:
            problems.append(f"{where}model output {_tensor_label(sg, t)} is a constant")
        elif t not in written:
            problems.append(f"{where}model output {_tensor_label(sg, t)} is never written")


def _check_content(model) -> list:
    s = fb.schema()
    problems = []
    if model.version != 3:
        problems.append(f"schema version is {model.version}; TFLite-Micro reads version 3")
    if not model.subgraphs:
        problems.append("the model has no subgraph")
        return problems
    builtin = _enum_names(s.BuiltinOperator)
    for c, code in enumerate(model.operatorCodes or []):
        op = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        # the schema keeps both fields: deprecated_builtin_code is builtin_code below 127
        # (PLACEHOLDER_FOR_GREATER_OP_CODES) and 127 above; TFLite-Micro runs the larger one
        if int(code.deprecatedBuiltinCode) != min(int(code.builtinCode), 127):
            problems.append(f"operator code {c}: builtin code {code.builtinCode} and deprecated "
                            f"builtin code {code.deprecatedBuiltinCode} disagree")
        elif op not in builtin:
            problems.append(f"operator code {c}: builtin code {op} is not a TFLite operator")
        elif op == s.BuiltinOperator.CUSTOM:
            if not code.customCode:
                problems.append(f"operator code {c}: a custom operator without a name")
            else:
                try:
                    code.customCode.decode("utf-8")
                except UnicodeDecodeError:
                    problems.append(f"operator code {c}: custom name {code.customCode!r} is not "
                                    "UTF-8")
    if problems:
        return problems
    nbuf = len(model.buffers or [])
    for md in model.metadata or []:
        if not 0 <= md.buffer < nbuf:
            problems.append(f"metadata '{fb.tensor_name(md)}': buffer {md.buffer} does not exist")
    for sig in model.signatureDefs or []:
        if not 0 <= sig.subgraphIndex < len(model.subgraphs):
            key = (sig.signatureKey or b"").decode("utf-8", "replace")
            problems.append(f"signature '{key}': subgraph {sig.subgraphIndex} does not exist")
            continue
        n = len(model.subgraphs[sig.subgraphIndex].tensors or [])
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            if not 0 <= tm.tensorIndex < n:
                problems.append(f"signature entry '{fb.tensor_name(tm)}': tensor index "
                                f"{tm.tensorIndex} is out of range ({n} tensors)")
    for k, sg in enumerate(model.subgraphs):
        _check_subgraph(model, sg, k, problems)
    return problems


def _normalize(model):
    """Absent vectors read as None: make them empty, so every check walks lists."""
    model.buffers = model.buffers or []
    model.operatorCodes = model.operatorCodes or []
    model.subgraphs = model.subgraphs or []
    for sg in model.subgraphs:
        sg.tensors = sg.tensors or []
        sg.operators = sg.operators or []
        sg.inputs = np.zeros(0, np.int32) if sg.inputs is None else sg.inputs
        sg.outputs = np.zeros(0, np.int32) if sg.outputs is None else sg.outputs
        for op in sg.operators:
            op.inputs = np.zeros(0, np.int32) if op.inputs is None else op.inputs
            op.outputs = np.zeros(0, np.int32) if op.outputs is None else op.outputs
    return model


def check_model(data: bytes, probe: bool = False):
    """(the model object or None, [one line per problem]): an empty list means TFLite-Micro
    and the MAM_SPARSE kernels can be given this model.

    With ``probe=True``, a model that passes the static checks also has its builtin operators
    run through TFLite-Micro in a child process (:mod:`mam_tf.deploy.probe`, a few seconds):
    what aborts there is refused, naming the operator. ``probe="auto"`` does so only when the
    model holds a builtin operator outside :data:`mam_tf.deploy.builtins.CHECKED_OPERATORS`,
    whose preconditions the static checks do not know."""
    try:
        model = verify_flatbuffer(data)
    except ValueError as err:
        return None, [str(err)]
    try:
        problems = _check_content(_normalize(model))
    except RecursionError:
        return None, ["the model is nested too deeply to check"]
    if not problems and (probe is True or (probe == "auto" and _unchecked_builtins(model))):
        from mam_tf.deploy import probe as _probe

        problems = _probe.probe_model(model)
    return model, problems


def _unchecked_builtins(model) -> bool:
    """Whether a builtin operator of subgraph 0 lies outside what the static rules know."""
    known = set(builtins.CHECKED_OPERATORS) | {options.MAM_SPARSE, options.MAC_SPARSE}
    return any(fb.op_name(model, op) not in known for op in model.subgraphs[0].operators or [])


def check_file(path, probe: bool = False) -> list:
    """Problems of a .tflite file, each line prefixed by the file's name."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        return [f"{path}: cannot read it ({err.strerror})"]
    return [f"{path}: {p}" for p in check_model(data, probe=probe)[1]]


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def _cmd_check(args):
    failed = 0
    for path in args.models:
        problems = check_file(path, probe=args.probe)
        for line in problems:
            print(line)
        if problems:
            failed += 1
        elif not args.quiet:
            print(f"{path}: ok")
    return 1 if failed else 0


def add_check_command(subparsers):
    p = subparsers.add_parser(
        "check", help="check a .tflite before running or flashing it",
        description="Checks .tflite files as the host runtime does before anything reaches "
        "TFLite-Micro: the flatbuffer verifies (nothing outside the file), every constant "
        "tensor's buffer matches its shape and type, quantization parameters are consistent, "
        "every operator's tensor/opcode/buffer index is valid, and every MAM_SPARSE / "
        "MAC_SPARSE op passes the device's own Prepare checks, and every builtin operator keeps "
        "the preconditions its TFLite-Micro kernel assumes (types, zero points, scales, shapes, "
        "options). TFLite-Micro itself checks none of this: run it before flashing. Then, "
        "unless --no-probe, each builtin operator is run once through TFLite-Micro in a child "
        "process, where a kernel that aborts is refused by name. Exit status 0 when every "
        "file is fine, 1 with one line per problem otherwise.",
    )
    p.add_argument("models", nargs="+", help=".tflite files")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing for good files")
    p.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                   help="run each builtin operator through TFLite-Micro in a child process "
                   "(a few seconds a model; default: on)")
    p.set_defaults(func=_cmd_check)
