"""``mam-tf export-tflm``: a converted ``.tflite`` as a folder a TFLite-Micro firmware adds as it is.

The folder holds the op sources (the C core, the Cortex-M kernels and the TFLM glue, copied from
the packaged ``tflm_ops/``), the model as an aligned ``const`` C array, a generated registration
(a ``tflite::MicroMutableOpResolver<N>`` sized to the model's distinct operators and a function
that registers exactly those), the arena size the model needs, a ``CMakeLists.txt`` a CMake
firmware project adds with one line, and a ``README.md`` saying all of this.

The arena is measured on the host with the ``tflite-micro`` wheel's interpreter: the smallest
arena it allocates and runs the model in (and what its recording allocator reports used). With a tflite-micro source tree at the wheel's commit
(``tflm_root`` / ``$MAM_TF_TFLM_ROOT``) the glue itself is built for that interpreter and the
model is measured as it is; without one, each MAM_SPARSE / MAC_SPARSE node is measured as a
FULLY_CONNECTED node of the same tensors (a stand-in whose kernel keeps the same kind of
per-node data), and the figure is labelled an estimate. A margin is added either way
(:func:`arena_margin`): the host is 64-bit, the device 32-bit, and the user's TFLM may differ
from the wheel's.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from mam_tf._native import tflm_ops_dir
from mam_tf.common.buildcache import build_key, cache_root, cached_build
from mam_tf.common.cliargs import add_out, required_out
from mam_tf.deploy import check
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import options

__all__ = ["export_tflm", "ExportResult", "RESOLVER_METHODS", "arena_margin", "measure_arena",
           "model_ops", "known_ops", "registration_files", "add_export_command"]

#: TFLite builtin operator -> the ``tflite::MicroMutableOpResolver`` method that registers it
#: (tflite-micro's ``micro_mutable_op_resolver.h``). Operators with subgraphs (IF, WHILE,
#: CALL_ONCE) and variables are left out: the exported model runs one subgraph.
RESOLVER_METHODS = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax",
    "ARG_MIN": "AddArgMin", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_TO": "AddBroadcastTo", "CAST": "AddCast", "CEIL": "AddCeil",
    "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D", "COS": "AddCos",
    "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp", "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill", "FLOOR": "AddFloor", "FULLY_CONNECTED": "AddFullyConnected",
    "GATHER": "AddGather", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "L2_NORMALIZATION": "AddL2Normalization",
    "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual",
    "LOG": "AddLog", "LOGISTIC": "AddLogistic", "LOG_SOFTMAX": "AddLogSoftmax",
    "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D", "MEAN": "AddMean",
    "MINIMUM": "AddMinimum", "MUL": "AddMul", "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize", "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin",
    "RELU": "AddRelu", "RELU6": "AddRelu6", "RESHAPE": "AddReshape",
    "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "ROUND": "AddRound",
    "RSQRT": "AddRsqrt", "SHAPE": "AddShape", "SIN": "AddSin", "SLICE": "AddSlice",
    "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV",
    "SQRT": "AddSqrt", "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference",
    "SQUEEZE": "AddSqueeze", "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub",
    "SUM": "AddSum", "SVDF": "AddSvdf", "TANH": "AddTanh", "TRANSPOSE": "AddTranspose",
    "TRANSPOSE_CONV": "AddTransposeConv", "UNPACK": "AddUnpack",
    "ZEROS_LIKE": "AddZerosLike",
}
_CUSTOM_REGISTRATION = {
    options.MAM_SPARSE: "tflite::Register_MAM_SPARSE()",
    options.MAC_SPARSE: "tflite::Register_MAC_SPARSE()",
}
#: What the folder takes from tflm_ops/ (the host-only registerer, the firmware and the tests
#: stay behind), at the same relative paths, so that sources.cmake and the includes work as
#: they are.
_COPIED = ("sources.cmake", "include/mam_sparse/core.h", "src/internal.h", "src/fixed_point.c",
           "src/format.c", "src/validate.c", "src/reference_kernels.c", "src/kernel_select.c",
           "src/cortex_m/sparse_kernels.c", "tflm/mam_sparse_op.h", "tflm/mam_sparse_op.cc")
_C_KEYWORDS = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "alignas", "alignof", "and", "asm", "bool",
    "catch", "class", "constexpr", "const_cast", "decltype", "delete", "dynamic_cast",
    "explicit", "export", "false", "friend", "mutable", "namespace", "new", "noexcept", "not",
    "nullptr", "operator", "or", "private", "protected", "public", "reinterpret_cast",
    "static_assert", "static_cast", "template", "this", "thread_local", "throw", "true", "try",
    "typeid", "typename", "using", "virtual", "wchar_t", "xor",
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Names the generated files declare themselves.
_RESERVED = {"mam_model", "RegisterOps", "OpResolver"}
_ARENA_ALIGN = 16  # TFLM aligns every arena allocation to 16 bytes (MicroArenaBufferAlignment)


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_tflm` wrote: ``out``, the folder; ``array``, the model array's C name;
    ``ops``, the model's distinct operators in the order the registration adds them;
    ``arena_recorded`` (bytes TFLM's recording allocator reports used once the model is
    allocated, on the host), ``arena_measured`` (the smallest arena TFLM's interpreter allocates
    and runs the model in, on the host), ``arena_margin``,
    ``arena_bytes`` (their sum: the constant the firmware uses) and ``arena_method``
    (``"model"``: the model as it is, the glue built for the host interpreter; ``"stand-in"``:
    FULLY_CONNECTED in place of each MAM_SPARSE / MAC_SPARSE node)."""

    out: Path
    array: str
    ops: list
    arena_recorded: int
    arena_measured: int
    arena_margin: int
    arena_bytes: int
    arena_method: str
    files: list

    @property
    def resolver_size(self) -> int:
        return len(self.ops)


def _round_up(n: int, to: int = _ARENA_ALIGN) -> int:
    return -(-int(n) // to) * to


def arena_margin(measured: int) -> int:
    """The bytes added to the host's figure: 1/8 of it, at least 1 KiB, a multiple of 16.

    The host's figure already covers TFLM's own bookkeeping on the device: the wheel is 64-bit,
    so its pointers, TfLiteEvalTensor and node structs are larger than a Cortex-M's, and the
    activation plan (the bulk for most models) is the same bytes on both. The margin covers
    what the host does not see: a TFLM of another commit than the wheel's, optimized kernels
    (CMSIS-NN) that ask for scratch buffers the reference kernels do not, and the stand-in
    estimate when the glue could not be measured."""
    return _round_up(max(1024, measured / 8))


def default_array_name(path) -> str:
    """``model.tflite`` -> ``model_tflite`` (as ``xxd -i`` names it), made a valid C identifier."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).name)
    if not name or name[0].isdigit():
        name = "model_" + name
    if name in _C_KEYWORDS or name in _RESERVED:
        name += "_data"
    return name


def _check_array_name(name: str) -> str:
    if not _IDENTIFIER.match(name or "") or name in _C_KEYWORDS:
        raise ValueError(f"--name {name!r} is not a valid C identifier (letters, digits and _, "
                         "not starting with a digit, not a C/C++ keyword)")
    if name in _RESERVED or name.startswith("__"):
        raise ValueError(f"--name {name!r} is reserved (the generated code uses it, or it starts "
                         "with __); choose another")
    return name


# ------------------------------------------------------------------------------------------
# The model's operators
# ------------------------------------------------------------------------------------------
def model_ops(model) -> list:
    """The distinct operators of subgraph 0 (builtin names, custom codes), in the order they
    first appear; ValueError naming the first one the registration cannot add."""
    sg = model.subgraphs[0]
    seen = []
    for j, op in enumerate(sg.operators or []):
        kind = fb.op_name(model, op)
        code = model.operatorCodes[op.opcodeIndex]
        custom = max(code.builtinCode, code.deprecatedBuiltinCode) == fb.schema().BuiltinOperator.CUSTOM
        if custom and kind not in _CUSTOM_REGISTRATION:
            raise ValueError(f"operator {j} is the custom op {kind!r}: export-tflm registers "
                             f"only {', '.join(_CUSTOM_REGISTRATION)} among custom ops")
        if not custom and kind not in RESOLVER_METHODS:
            raise ValueError(f"operator {j} {kind}: export-tflm does not know TFLite-Micro's "
                             "registration for this builtin operator")
        if kind not in seen:
            seen.append(kind)
    return seen


def _registration_line(kind: str) -> str:
    if kind in _CUSTOM_REGISTRATION:
        return f'resolver.AddCustom("{kind}", {_CUSTOM_REGISTRATION[kind]})'
    return f"resolver.{RESOLVER_METHODS[kind]}()"


def registration_files(ops: list, banner: str, what: str, extra: str = "") -> dict:
    """``mam_model_ops.h`` and ``mam_model_ops.cc``: ``mam_model::OpResolver``, a
    ``tflite::MicroMutableOpResolver`` with one slot per operator of ``ops``, and
    ``mam_model::RegisterOps(resolver)``, which adds exactly those (builtin names and the
    custom codes MAM_SPARSE / MAC_SPARSE, as :func:`model_ops` lists them). ``what`` names the
    list in a comment; ``extra`` is more C++ for the header's namespace."""
    op_list = ", ".join(ops)
    ops_h = f"""{banner}#ifndef MAM_MODEL_OPS_H_
#define MAM_MODEL_OPS_H_

#include <cstddef>

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"

namespace mam_model {{

// {what}: {op_list}.
constexpr unsigned int kOpCount = {len(ops)};
using OpResolver = tflite::MicroMutableOpResolver<kOpCount>;

// Adds exactly these operators to the resolver: kTfLiteOk, or the first failure.
TfLiteStatus RegisterOps(OpResolver& resolver);
{extra}
}}  // namespace mam_model

#endif  // MAM_MODEL_OPS_H_
"""
    lines = "".join(f"  if ((status = {_registration_line(k)}) != kTfLiteOk) return status;\n"
                    for k in ops)
    ops_cc = f"""{banner}#include "mam_model_ops.h"

#include "mam_sparse_op.h"

namespace mam_model {{

TfLiteStatus RegisterOps(OpResolver& resolver) {{
  TfLiteStatus status;
{lines}  return kTfLiteOk;
}}

}}  // namespace mam_model
"""
    return {"mam_model_ops.h": ops_h, "mam_model_ops.cc": ops_cc}


def known_ops() -> list:
    """Every operator the generated registration can add: the custom ops MAM_SPARSE and
    MAC_SPARSE, then the builtins of :data:`RESOLVER_METHODS` in alphabetical order."""
    return list(_CUSTOM_REGISTRATION) + sorted(RESOLVER_METHODS)


# ------------------------------------------------------------------------------------------
# The arena, measured with TFLite-Micro's recording allocator
# ------------------------------------------------------------------------------------------
_MEASURE = r"""
import contextlib, ctypes, io, json, os, re, sys, tempfile
from mam_tf.deploy.probe import set_zero_inputs
path, lib, arena, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if lib:
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
from tflite_micro.python.tflite_micro import runtime
data = open(path, "rb").read()
report = os.fdopen(os.dup(1), "w")  # the result, apart from what TFLM prints on fd 1


def run(size, record=False):
    # Builds the interpreter in `size` bytes and invokes it once: its allocation report, or
    # None when TFLite-Micro refuses the size.
    with tempfile.TemporaryFile() as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(log.fileno(), 1)  # MicroPrintf writes to one or the other
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its resource-variable count
                interp = runtime.Interpreter.from_bytes(
                    data, custom_op_registerers=["mam_tf_register_ops"] if lib else [],
                    arena_size=size,
                    intrepreter_config=runtime.InterpreterConfig.kAllocationRecording)
            set_zero_inputs(interp)
            interp.invoke()
            if record:
                interp.print_allocations()
        except RuntimeError:
            if record:
                raise
            return None
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
        log.seek(0)
        return log.read().decode("utf-8", "replace")


def works(size):
    # In a forked process: with some arenas a little too small, a kernel's Prepare crashes
    # (a failed allocation it does not check) instead of reporting an error.
    pid = os.fork()
    if pid == 0:
        os._exit(0 if run(size) is not None else 1)
    return os.waitpid(pid, 0)[1] == 0


if mode == "try":  # one size: does it work?
    report.write(json.dumps({"works": works(arena)}) + "\n")
    sys.exit(0)
text = run(arena, record=True)
total = int(re.findall(r"Arena allocation total (\d+) bytes", text)[-1])
# AllocateTensors needs more than it keeps (the memory planner's scratch, the temporary
# tensors of Prepare): the smallest arena (in 16-byte steps, TFLM's alignment) that works, by
# bisection from the recorded total.
lo, hi = total // 16 - 1, -(-total // 16)
while not works(16 * hi):
    lo, hi = hi, hi * 2
while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if works(16 * mid) else (mid, hi)
report.write(json.dumps({"recorded": total, "needed": 16 * hi}) + "\n")
"""


def _glue_library(tflm_root: str, flatbuffers_include: Optional[str]) -> Path:
    """The glue + core + registerer for the tflite-micro wheel's interpreter, built once per
    source state and TFLM tree into the cache (``tflm_ops/CMakeLists.txt``, target
    ``mam_tf_tflm_python``)."""
    ops = tflm_ops_dir()
    files = sorted(p for sub in ("include", "src", "tflm") for p in (ops / sub).rglob("*")
                   if p.is_file()) + [ops / "CMakeLists.txt", ops / "sources.cmake"]
    key = build_key(files, root=ops, parts=[tflm_root, flatbuffers_include or "",
                                            sys.executable, shutil.which("cmake") or ""])
    dest = cache_root() / f"tflm-glue-{key}"

    def build(b):
        cmake = shutil.which("cmake") or "cmake"
        args = [cmake, "-S", str(ops), "-B", str(b.dir / "build"), "-DCMAKE_BUILD_TYPE=Release",
                f"-DTFLM_ROOT={tflm_root}", f"-DPython3_EXECUTABLE={sys.executable}"]
        if flatbuffers_include:
            args.append(f"-DFLATBUFFERS_INCLUDE_DIR={flatbuffers_include}")
        b.run(args, "configuring the TFLM glue for the host interpreter")
        b.run([cmake, "--build", str(b.dir / "build"), "--target", "mam_tf_tflm_python"],
              "building the TFLM glue for the host interpreter")
        shutil.copy2(b.dir / "build" / "libmam_tf_tflm.so", b.dir / "libmam_tf_tflm.so")
        shutil.rmtree(b.dir / "build")

    cached_build(dest, build, what="the TFLM glue for the host interpreter", error=RuntimeError)
    return dest / "libmam_tf_tflm.so"


def _stand_in(model) -> bytes:
    """The model with every MAM_SPARSE / MAC_SPARSE node replaced by a FULLY_CONNECTED node
    of the same input, bias and output tensors (dense int8 weights of zeros, the node's weight
    scales, its fused activation): what the wheel's interpreter can plan without the glue."""
    s = schema = fb.schema()
    model = copy.deepcopy(model)
    sg = model.subgraphs[0]
    fc_code = None
    for op in sg.operators:
        if fb.op_name(model, op) not in _CUSTOM_REGISTRATION:
            continue
        if fc_code is None:
            code = s.OperatorCodeT()
            code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
            code.version = 1
            model.operatorCodes.append(code)
            fc_code = len(model.operatorCodes) - 1
        opts = options.parse(np.asarray(op.customOptions, np.uint8).tobytes())
        ins = [int(t) for t in op.inputs]
        values, out = sg.tensors[ins[1]], sg.tensors[int(op.outputs[0])]
        n, m = int(opts["in_features"]), int(out.shape[-1])
        buf = s.BufferT()
        buf.data = np.zeros(m * n, np.uint8)
        model.buffers.append(buf)
        w = s.TensorT()
        w.shape = np.array([m, n], np.int32)
        w.type = s.TensorType.INT8
        w.buffer = len(model.buffers) - 1
        w.name = b"stand_in_weights"
        w.quantization = copy.deepcopy(values.quantization)
        w.quantization.zeroPoint = np.zeros(len(w.quantization.scale), np.int64)
        w.quantization.quantizedDimension = 0
        sg.tensors.append(w)
        fc = s.FullyConnectedOptionsT()
        fc.fusedActivationFunction = int(opts["fused_activation_function"])
        op.opcodeIndex = fc_code
        op.inputs = np.array([ins[0], len(sg.tensors) - 1, ins[4] if len(ins) == 5 else -1],
                             np.int32)
        op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = fc
        op.customOptions = None
    fb.compact(model)
    return fb.pack(model)


def measure_arena(data: bytes, glue_library: Optional[Path] = None,
                  arena_size: Optional[int] = None):
    """The arena the model needs in TFLite-Micro (the wheel's interpreter, in a child process:
    a kernel that aborts ends only the child), as ``(recorded, needed)``: what the recording
    allocator reports as used once the model is allocated and invoked, and the smallest arena, a
    multiple of 16 bytes, in which it allocates and invokes at all (more: AllocateTensors
    borrows scratch it gives back).
    With ``arena_size``: whether the model allocates and invokes in that many bytes.
    ``glue_library``: a library exporting ``mam_tf_register_ops`` (the glue), for a model with
    MAM_SPARSE / MAC_SPARSE nodes. ValueError when the interpreter refuses the model."""
    import json

    mode = "try" if arena_size else "measure"
    if not arena_size:  # room enough to record in: the activations many times over
        sg = fb.load(data).subgraphs[0]
        activations = sum(int(np.prod(t.shape, dtype=np.int64)) * 8
                          for t in sg.tensors if t.shape is not None)
        arena_size = max(1 << 20, 4 * activations + 65536)
    with tempfile.TemporaryDirectory(prefix="mam-tf-arena-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(data)
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path),
                               str(glue_library or ""), str(arena_size), mode],
                              capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines()
                or ["no output"])[-1]
        raise ValueError(f"TFLite-Micro's interpreter could not allocate the model to measure "
                         f"its arena (exit status {proc.returncode}): {tail}")
    result = json.loads(lines[-1])
    return result["works"] if mode == "try" else (result["recorded"], result["needed"])


# ------------------------------------------------------------------------------------------
# The generated files
# ------------------------------------------------------------------------------------------
_HEX = [f"0x{b:02x}" for b in range(256)]


def _c_array(data: bytes) -> str:
    return ",\n    ".join(", ".join(map(_HEX.__getitem__, data[i:i + 16]))
                          for i in range(0, len(data), 16))


def _files(src: Path, data: bytes, array: str, ops: list, arena: dict) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    banner = (f"// Generated by `mam-tf export-tflm` from {src.name} (sha256 {digest[:16]}); "
              "export again rather than edit.\n")
    how = ("the model as it is" + (", the MAM_SPARSE glue built for the host interpreter"
                                   if arena["glue"] else "")
           if arena["method"] == "model" else
           "an estimate: each MAM_SPARSE / MAC_SPARSE node measured as a FULLY_CONNECTED node "
           "of the same tensors (export with a tflite-micro tree, --tflm-root, to measure the "
           "glue itself)")
    data_h = f"""{banner}#ifndef MAM_MODEL_DATA_H_
#define MAM_MODEL_DATA_H_

// The model, {len(data)} bytes, 16-byte aligned (TFLite-Micro reads its tensors in place).
extern const unsigned char {array}[];
extern const unsigned int {array}_len;

#endif  // MAM_MODEL_DATA_H_
"""
    data_cc = f"""{banner}#include "mam_model_data.h"

alignas(16) const unsigned char {array}[] = {{
    {_c_array(data)}
}};
const unsigned int {array}_len = {len(data)};
"""
    arena_block = f"""
// The tensor arena, measured on the host (64-bit) with TFLite-Micro's interpreter for
// {how}. kArenaRecordedBytes: what its RecordingMicroAllocator reports used once the model is
// allocated (the host's arena_used_bytes()); kArenaMeasuredBytes: the smallest arena it
// allocates and runs the model in (AllocateTensors borrows scratch it gives back).
// kArenaMarginBytes: 1/8 of that, at least 1 KiB, for what the host cannot see: a TFLM of
// another commit than the measuring one, optimized kernels (CMSIS-NN) asking for scratch
// buffers, the estimate. The host's 64-bit structs are larger than a Cortex-M's, so its
// figure bounds the device's own bookkeeping. arena_used_bytes() after AllocateTensors() is
// the device's kArenaRecordedBytes, not its need: allocation peaks above it.
constexpr size_t kArenaRecordedBytes = {arena["recorded"]};
constexpr size_t kArenaMeasuredBytes = {arena["measured"]};
constexpr size_t kArenaMarginBytes = {arena["margin"]};
constexpr size_t kArenaBytes = kArenaMeasuredBytes + kArenaMarginBytes;
"""
    ops_files = registration_files(ops, banner, "The model's distinct operators", arena_block)
    return {"mam_model_data.h": data_h, "mam_model_data.cc": data_cc,
            **ops_files,
            "CMakeLists.txt": _CMAKE, "README.md": _readme(src, data, array, ops, arena, how)}


_CMAKE = """\
# A converted MAM model for a TFLite-Micro firmware, generated by `mam-tf export-tflm`.
#
# In the firmware's CMakeLists.txt (a project with C and CXX enabled), one line:
#
#   add_subdirectory(mam_tf_model)        # this folder
#   target_link_libraries(<your firmware> PRIVATE mam_tf_model)
#
# It needs TFLite-Micro's headers, and builds nothing of TFLM itself. Tell it where they are,
# before the add_subdirectory line, in one of two ways:
#   MAM_TF_TFLM_TARGET        the name of your project's TFLM target (a library whose usage
#                             requirements carry TFLM's include folders and definitions)
#   MAM_TF_TFLM_INCLUDE_DIRS  TFLM's include folders: the tflite-micro root, flatbuffers'
#                             include/ and gemmlowp's; with MAM_TF_TFLM_DEFINITIONS, the
#                             definitions your TFLM is built with (default below)
# MAM_TF_CORE_ONLY=ON builds only the C core and its Cortex-M kernels (mam_sparse_core), for a
# firmware that calls the core without TFLM.
cmake_minimum_required(VERSION 3.16)

set(MAM_TF_TFLM_TARGET "" CACHE STRING "your project's TFLite-Micro target")
set(MAM_TF_TFLM_INCLUDE_DIRS "" CACHE STRING "TFLite-Micro's include folders (a list)")
set(MAM_TF_TFLM_DEFINITIONS "TF_LITE_STATIC_MEMORY;FLATBUFFERS_LOCALE_INDEPENDENT=0"
    CACHE STRING "the compile definitions your TFLite-Micro is built with (a list)")
option(MAM_TF_CORE_ONLY "build only the C core (no TFLM, no model)" OFF)

include(${CMAKE_CURRENT_LIST_DIR}/sources.cmake)

# The portable core and the ARMv7E-M kernels (C99; the kernels compile to nothing without
# __ARM_FEATURE_DSP). -lm: frexp at Prepare time.
add_library(mam_sparse_core STATIC ${MAM_SPARSE_CORE_SOURCES} ${MAM_SPARSE_CORTEX_M_SOURCES})
target_include_directories(mam_sparse_core PUBLIC ${MAM_SPARSE_INCLUDE_DIR})
set_target_properties(mam_sparse_core PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON)
target_link_libraries(mam_sparse_core PUBLIC m)

if(MAM_TF_CORE_ONLY)
  return()
endif()
if(NOT CMAKE_CXX_COMPILER_LOADED)
  message(FATAL_ERROR "mam_tf_model: the TFLM glue is C++17: enable CXX in your project() "
                      "(project(<name> C CXX ASM))")
endif()
if(NOT MAM_TF_TFLM_TARGET AND NOT MAM_TF_TFLM_INCLUDE_DIRS)
  message(FATAL_ERROR "mam_tf_model needs TFLite-Micro's headers: set MAM_TF_TFLM_TARGET to "
                      "your TFLM target, or MAM_TF_TFLM_INCLUDE_DIRS to the tflite-micro root, "
                      "flatbuffers' include/ and gemmlowp's folder, before add_subdirectory")
endif()
if(MAM_TF_TFLM_TARGET AND NOT TARGET ${MAM_TF_TFLM_TARGET})
  message(FATAL_ERROR "MAM_TF_TFLM_TARGET=${MAM_TF_TFLM_TARGET} is not a target of this project")
endif()

# The glue (MAM_SPARSE / MAC_SPARSE for TFLM), the registration and the model.
add_library(mam_tf_model STATIC ${MAM_SPARSE_GLUE_SOURCES}
            ${CMAKE_CURRENT_LIST_DIR}/mam_model_ops.cc ${CMAKE_CURRENT_LIST_DIR}/mam_model_data.cc)
set_target_properties(mam_tf_model PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON)
target_include_directories(mam_tf_model PUBLIC ${CMAKE_CURRENT_LIST_DIR}
                           ${MAM_SPARSE_GLUE_INCLUDE_DIR})
target_link_libraries(mam_tf_model PUBLIC mam_sparse_core)
if(MAM_TF_TFLM_TARGET)
  target_link_libraries(mam_tf_model PUBLIC ${MAM_TF_TFLM_TARGET})
else()
  target_include_directories(mam_tf_model SYSTEM PUBLIC ${MAM_TF_TFLM_INCLUDE_DIRS})
  target_compile_definitions(mam_tf_model PUBLIC ${MAM_TF_TFLM_DEFINITIONS})
endif()
"""


def _readme(src: Path, data: bytes, array: str, ops: list, arena: dict, how: str) -> str:
    regs = "\n".join(f"  {_registration_line(k)};" for k in ops)
    return f"""# {src.name} for TFLite-Micro

Generated by `mam-tf export-tflm` (export again rather than edit). The model's operators:
{", ".join(f"`{k}`" for k in ops)}.

| file | what it is |
|------|------------|
| `mam_model_data.h/.cc` | the model, `{array}` ({len(data)} bytes, `alignas(16) const`: it stays in flash) and `{array}_len` |
| `mam_model_ops.h/.cc` | `mam_model::OpResolver` (`tflite::MicroMutableOpResolver<{len(ops)}>`: one slot per distinct operator), `mam_model::RegisterOps(resolver)`, and `mam_model::kArenaBytes` |
| `include/mam_sparse/core.h`, `src/*.c`, `src/internal.h` | the portable C core of MAM_SPARSE / MAC_SPARSE (C99, no allocation, no stdio) |
| `src/cortex_m/sparse_kernels.c` | its ARMv7E-M kernels (Cortex-M4/M7/M33), bit-exact with the portable ones |
| `tflm/mam_sparse_op.h/.cc` | the TFLite-Micro glue: `tflite::Register_MAM_SPARSE()`, `tflite::Register_MAC_SPARSE()` (C++17) |
| `sources.cmake` | the source lists `CMakeLists.txt` reads |
| `CMakeLists.txt` | the targets `mam_tf_model` (glue, registration, model) and `mam_sparse_core` |

## Add it to a CMake firmware (STM32CubeMX's CMake projects included)

Copy this folder next to your `CMakeLists.txt` as `mam_tf_model/`, enable C++ in `project()`
(`project(app C CXX ASM)`), say where your TFLite-Micro headers are, and add the folder:

```cmake
set(MAM_TF_TFLM_TARGET tflm)   # your TFLM library target, or instead:
# set(MAM_TF_TFLM_INCLUDE_DIRS /path/tflite-micro /path/flatbuffers/include /usr/include/gemmlowp)
add_subdirectory(mam_tf_model)
target_link_libraries(${{CMAKE_PROJECT_NAME}} PRIVATE mam_tf_model)
```

Nothing of TFLite-Micro is built here: your project's TFLM is used.

## Compile settings that must match your TFLite-Micro build

They change TFLM's structs, so the glue must be compiled with the same ones as TFLM itself:

- `TF_LITE_STATIC_MEMORY` (always, for TFLM);
- `FLATBUFFERS_LOCALE_INDEPENDENT=0` (TFLM's setting; with 1 flexbuffers needs a locale symbol);
- `USE_TFLM_COMPRESSION` if and only if your TFLM is built with it.

With `MAM_TF_TFLM_TARGET` they come from your target; with `MAM_TF_TFLM_INCLUDE_DIRS` set
`MAM_TF_TFLM_DEFINITIONS` (default `TF_LITE_STATIC_MEMORY;FLATBUFFERS_LOCALE_INDEPENDENT=0`).
The CPU and float ABI flags (for a Cortex-M7 with its FPU: `-mcpu=cortex-m7 -mthumb
-mfpu=fpv5-d16 -mfloat-abi=hard`) come from your toolchain and must be the ones TFLM was built
with. Kernel selection: the ARMv7E-M kernels are used where the compiler sets
`__ARM_FEATURE_DSP` (any `-mcpu` of a Cortex-M4/M7/M33), the portable ones elsewhere;
`-DMAM_SPARSE_PORTABLE_ONLY` forces the portable ones (same output bytes). Whether your TFLM
uses its reference or its CMSIS-NN kernels is your TFLM build's choice (its
`OPTIMIZED_KERNEL_DIR`); MAM_SPARSE does not depend on it. Link `-lm` (the CMake target does).

## Use it

```cpp
#include "mam_model_data.h"
#include "mam_model_ops.h"
#include "tensorflow/lite/micro/micro_interpreter.h"

alignas(16) static uint8_t arena[mam_model::kArenaBytes];

mam_model::OpResolver resolver;        // MicroMutableOpResolver<{len(ops)}>
mam_model::RegisterOps(resolver);      // adds exactly:
{regs}
tflite::MicroInterpreter interpreter(tflite::GetModel({array}), resolver, arena,
                                     mam_model::kArenaBytes);
interpreter.AllocateTensors();         // kTfLiteOk, or one line through MicroPrintf
```

## Arena

`mam_model::kArenaBytes` = {arena["bytes"]} bytes: {arena["measured"]} measured + {arena["margin"]}
margin.

- Measured on the host with the `tflite-micro` Python interpreter, {how}: the smallest
  arena it allocates and runs the model in ({arena["measured"]} bytes; its
  `RecordingMicroAllocator` reports {arena["recorded"]} bytes used once the model is allocated:
  `AllocateTensors()` borrows scratch it gives back).
- The margin is 1/8 of the figure, at least 1 KiB. The host is 64-bit: TFLM's pointers, tensor
  and node structs are larger there than on a 32-bit Cortex-M, and the activation plan is the
  same bytes on both, so the host's figure bounds the device's bookkeeping. The margin covers
  what the host cannot see: a TFLM of another commit than the measuring one, optimized kernels
  (CMSIS-NN) that ask for scratch buffers, and the estimate above.
- On the device, `interpreter.arena_used_bytes()` after `AllocateTensors()` is what the model
  keeps (the device's counterpart of {arena["recorded"]}), not what allocating it needs: do not
  trim the arena to it. With the wheel, some arenas a few bytes too small crashed a kernel's
  Prepare instead of failing.

Run `mam-tf check` on a model before flashing it (export-tflm did, on this one).
"""


# ------------------------------------------------------------------------------------------
# The export
# ------------------------------------------------------------------------------------------
def _tflm_tree(tflm_root, flatbuffers_include):
    root = tflm_root or os.environ.get("MAM_TF_TFLM_ROOT") or None
    fb_inc = flatbuffers_include or os.environ.get("MAM_TF_FLATBUFFERS_INCLUDE") or None
    if root and not (Path(root) / "tensorflow/lite/micro/micro_interpreter.h").is_file():
        raise ValueError(f"--tflm-root {root}: not a tflite-micro tree (no "
                         "tensorflow/lite/micro/micro_interpreter.h)")
    return (str(Path(root).resolve()) if root else None,
            str(Path(fb_inc).resolve()) if fb_inc else None)


def export_tflm(model, out, *, name: Optional[str] = None, force: bool = False,
                tflm_root=None, flatbuffers_include=None, probe: bool = True) -> ExportResult:
    """Writes the drop-in folder for ``model`` (a ``.tflite`` path) into ``out``.

    Args:
      model: the ``.tflite`` from ``mam-tf convert``; it must pass ``mam-tf check``.
      out: the folder to write; it must not exist or be empty, unless ``force`` (then it is
        replaced, only once the new folder is complete).
      name: the model array's C name (default: from the file name, ``model.tflite`` ->
        ``model_tflite``).
      tflm_root, flatbuffers_include: a tflite-micro tree at the commit the ``tflite-micro``
        wheel was built from and flatbuffers' headers (default ``$MAM_TF_TFLM_ROOT``,
        ``$MAM_TF_FLATBUFFERS_INCLUDE``): the arena is then measured with the glue itself,
        else with a FULLY_CONNECTED stand-in (an estimate).
      probe: run each builtin operator through TFLite-Micro while checking (as ``mam-tf check``).

    ValueError, one line, for a missing or unreadable file, a model the checker refuses, an
    operator the registration does not know, an invalid name or an occupied folder.
    """
    src = Path(model)
    if not src.is_file():
        raise ValueError(f"no model file at {str(src)!r}")
    data = src.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(f"{src} is not a .tflite file (no TFL3 identifier)")
    array = _check_array_name(name) if name is not None else default_array_name(src)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out {out} is not empty (--force replaces it)")
    tflm_root, flatbuffers_include = _tflm_tree(tflm_root, flatbuffers_include)

    tfl, problems = check.check_model(data, probe=probe)
    if problems:
        more = f" (and {len(problems) - 1} more: `mam-tf check` lists them)" if len(problems) > 1 else ""
        raise ValueError(f"{src}: mam-tf check refuses it: {problems[0]}{more}")
    if len(tfl.subgraphs) != 1:
        raise ValueError(f"{src}: {len(tfl.subgraphs)} subgraphs; export-tflm takes one")
    ops = model_ops(tfl)

    has_custom = any(k in _CUSTOM_REGISTRATION for k in ops)
    if has_custom and tflm_root:
        (recorded, measured), method = measure_arena(
            data, _glue_library(tflm_root, flatbuffers_include)), "model"
    elif has_custom:
        (recorded, measured), method = measure_arena(_stand_in(tfl)), "stand-in"
    else:  # nothing of ours to stand in for
        (recorded, measured), method = measure_arena(data), "model"
    margin = arena_margin(measured)
    arena = {"recorded": recorded, "measured": measured, "margin": margin,
             "bytes": measured + margin, "method": method, "glue": has_custom and method == "model"}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ops_dir = tflm_ops_dir()
        for rel in _COPIED:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ops_dir / rel, tmp / rel)
        for rel, text in _files(src, data, array, ops, arena).items():
            (tmp / rel).write_text(text)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return ExportResult(out=out, array=array, ops=ops, arena_recorded=recorded,
                        arena_measured=measured,
                        arena_margin=margin, arena_bytes=measured + margin, arena_method=method,
                        files=files)


def _cmd_export(args):
    result = export_tflm(args.model, required_out(args), name=args.name, force=args.force,
                         tflm_root=args.tflm_root, flatbuffers_include=args.flatbuffers_include,
                         probe=args.probe)
    what = ("measured with the glue" if result.arena_method == "model"
            else "estimated with a FULLY_CONNECTED stand-in (--tflm-root measures the glue)")
    print(f"wrote {result.out}/ ({len(result.files)} files): array {result.array}, "
          f"MicroMutableOpResolver<{result.resolver_size}> ({', '.join(result.ops)}), arena "
          f"{result.arena_bytes} bytes ({result.arena_measured} {what} + {result.arena_margin} "
          "margin)")
    print(f"add it to a CMake firmware with add_subdirectory({result.out.name}); see "
          f"{result.out / 'README.md'}")
    return 0


def add_export_command(subparsers):
    p = subparsers.add_parser(
        "export-tflm",
        help="write a .tflite as a folder a TFLite-Micro / STM32Cube CMake firmware adds as it is",
        description="Writes a folder for a TFLite-Micro firmware: the MAM_SPARSE / MAC_SPARSE "
        "op sources (C core, Cortex-M kernels, TFLM glue), the model as an aligned const C "
        "array, mam_model_ops.h/.cc with a MicroMutableOpResolver<N> sized to the model's "
        "distinct operators and RegisterOps() adding exactly those, the arena size (the "
        "smallest arena TFLite-Micro's interpreter allocates and runs the model in on this PC, "
        "plus a stated margin), a "
        "CMakeLists.txt that a CMake firmware adds with add_subdirectory(), and a README.md. "
        "The model must pass `mam-tf check` first.",
    )
    p.add_argument("model", help="the .tflite from `mam-tf convert`")
    add_out(p, "the folder to write (e.g. mam_tf_model)", required=True, metavar="DIR")
    p.add_argument("--name", help="the model array's C identifier (default: from the file "
                   "name, model.tflite -> model_tflite)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is not empty (once the new folder is complete)")
    p.add_argument("--tflm-root", help="a tflite-micro tree at the tflite-micro wheel's commit "
                   "(default $MAM_TF_TFLM_ROOT): the arena is then measured with the MAM_SPARSE "
                   "glue itself, else estimated with a FULLY_CONNECTED stand-in")
    p.add_argument("--flatbuffers-include", help="flatbuffers 25.9.23's include/ for "
                   "--tflm-root (default $MAM_TF_FLATBUFFERS_INCLUDE)")
    p.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                   help="run each builtin operator through TFLite-Micro while checking the "
                   "model, as `mam-tf check` does (default: on)")
    p.set_defaults(func=_cmd_export)
