"""ctypes binding of the portable C core (``tflm_ops/``): the same arithmetic the device runs.

The functions here take the same arguments as their twins in :mod:`mam_tf.deploy.reference` and
return the same arrays, so tests call both and compare bit for bit; the host runtime runs
layers through this module.

Which library: ``$MAM_TF_CORE_LIB`` when set (a path to ``libmam_sparse_core.so``); else the
core is built once with CMake from ``tflm_ops/`` into ``~/.cache/mam-tf/core-<hash of the
sources and tools>/`` (``$MAM_TF_CACHE`` overrides ``~/.cache/mam-tf``; the build is
:func:`mam_tf.common.buildcache.cached_build`'s) and reused while they are unchanged.

Unlike the C kernels, which trust what Prepare validated, every call here first runs the
core's own validation (``mam_validate`` / ``mam_validate_requant``) on the arrays it is given
and raises ValueError with the core's message, so no Python call can read out of bounds.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
from ctypes import POINTER, c_char_p, c_double, c_float, c_int, c_int8, c_int16, c_int32, c_int64, c_size_t, c_uint8
from pathlib import Path
from typing import Optional

import numpy as np

from mam_tf.deploy.offset_csr import OffsetCSR
from mam_tf._native import tflm_ops_dir
from mam_tf.common.buildcache import build_key, cache_root, cached_build

__all__ = [
    "CoreBuildError",
    "STATUS",
    "library_path",
    "load",
    "quantize_multiplier",
    "effective_scale",
    "activation_range",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_64",
    "validate_layer",
    "validate_requant",
    "prepare_layer",
    "layer_desc",
    "mam_sparse",
    "mac_sparse",
    "mam_dense",
    "mac_dense",
]

#: Status codes of the core (tflm_ops/include/mam_sparse/core.h).
STATUS = {
    0: "MAM_OK", 1: "MAM_ERR_ARGUMENT", 2: "MAM_ERR_TENSOR_COUNT", 3: "MAM_ERR_TYPE",
    4: "MAM_ERR_SHAPE", 5: "MAM_ERR_LENGTH", 6: "MAM_ERR_ROW_COUNT", 7: "MAM_ERR_COLUMN",
    8: "MAM_ERR_ACTIVATION", 9: "MAM_ERR_OPTIONS", 10: "MAM_ERR_QUANT",
}
#: numpy dtype -> TfLiteType code, as the core expects.
TYPE_CODES = {
    np.dtype(np.float32): 1, np.dtype(np.int32): 2, np.dtype(np.uint8): 3,
    np.dtype(np.int64): 4, np.dtype(np.int16): 7, np.dtype(np.int8): 9,
}
TYPE_NONE = 0
TYPE_UNSUPPORTED = 99

_SOURCE_DIR = tflm_ops_dir()  # in the installed package, else the checkout's
_LIB_NAME = "libmam_sparse_core.so"


class CoreBuildError(RuntimeError):
    """The C core could not be found or built."""


# ----------------------------------------------------------------------------------------
# Finding / building the library
# ----------------------------------------------------------------------------------------
def _source_files(src: Path):
    """What the core's build reads: the CMake files at the top and every file of the core."""
    files = [src / "CMakeLists.txt", *sorted(src.glob("*.cmake"))]
    for sub in ("include", "src"):
        files += sorted(p for p in (src / sub).rglob("*") if p.is_file())
    return files


def _build_key(src: Path, extra_cmake_args=()) -> str:
    """The key of a build: the sources, the tools CMake will find, the extra arguments."""
    tools = [shutil.which("cmake") or "", os.environ.get("CC", ""), shutil.which("cc") or ""]
    return build_key(_source_files(src), root=src, parts=[*tools, *extra_cmake_args])


def build_library(src: Path = _SOURCE_DIR, dest_dir: Optional[Path] = None,
                  extra_cmake_args=()) -> Path:
    """Configure and build the core with CMake into ``dest_dir`` (default: the cache directory
    keyed by the sources, tools and arguments), unless it is built there already; returns the
    path of the shared library."""
    if not (src / "CMakeLists.txt").is_file():
        raise CoreBuildError(
            f"the C core sources are not at {src} (an installed mam-tf carries them as "
            "mam_tf/_native/tflm_ops, a checkout as tflm_ops/: reinstall mam-tf, or set "
            "$MAM_TF_CORE_LIB to a built libmam_sparse_core.so)"
        )
    cmake = shutil.which("cmake")
    if cmake is None:
        raise CoreBuildError(
            "cmake is not on PATH; install CMake (>= 3.16: pip install 'mam-tf[deploy]', or "
            "`apt-get install cmake`) and a C compiler, or set $MAM_TF_CORE_LIB to a built "
            "libmam_sparse_core.so"
        )
    dest_dir = dest_dir or (cache_root() / f"core-{_build_key(src, extra_cmake_args)}")

    def build(b):
        work = b.dir / "cmake"
        b.run([cmake, "-S", src, "-B", work, "-DCMAKE_BUILD_TYPE=Release", *extra_cmake_args],
              "configuring the C core (is a C compiler installed?)")
        b.run([cmake, "--build", work, "--target", "mam_sparse_core"], "compiling the C core")
        shutil.copy2(work / _LIB_NAME, b.dir / _LIB_NAME)
        shutil.rmtree(work)

    cached_build(dest_dir, build, what="the C core", error=CoreBuildError)
    return dest_dir / _LIB_NAME


def library_path() -> Path:
    """The shared library to load: $MAM_TF_CORE_LIB, else the cached build (built if needed)."""
    env = os.environ.get("MAM_TF_CORE_LIB")
    if env:
        p = Path(env)
        if not p.is_file():
            raise CoreBuildError(f"$MAM_TF_CORE_LIB is {env!r}, which is not a file")
        return p
    return build_library()


class _CSR(ctypes.Structure):
    _fields_ = [
        ("n", c_int32), ("m", c_int32), ("values", POINTER(c_int8)),
        ("offsets", POINTER(c_uint8)), ("row_counts", POINTER(c_int16)),
    ]


class _Requant(ctypes.Structure):
    _fields_ = [
        ("multiplier", POINTER(c_int32)), ("shift", POINTER(c_int32)), ("per_row", c_int32),
        ("input_zero_point", c_int32), ("output_zero_point", c_int32),
        ("act_min", c_int32), ("act_max", c_int32),
    ]


class _Desc(ctypes.Structure):
    _fields_ = [
        ("num_inputs", c_int32), ("num_outputs", c_int32),
        ("input_type", c_int32), ("values_type", c_int32), ("offsets_type", c_int32),
        ("row_counts_type", c_int32), ("bias_type", c_int32), ("output_type", c_int32),
        ("input_elements", c_int64), ("output_elements", c_int64),
        ("input_last_dim", c_int32), ("output_last_dim", c_int32),
        ("values_len", c_int32), ("offsets_len", c_int32), ("row_counts_len", c_int32),
        ("bias_len", c_int32),
        ("offsets", POINTER(c_uint8)), ("row_counts", POINTER(c_int16)),
        ("in_features", c_int32), ("activation", c_int32), ("version", c_int32),
        ("weight_scale_count", c_int32), ("weight_zero_point", c_int32),
        ("input_zero_point", c_int32), ("output_zero_point", c_int32),
        ("values_bytes", c_int64), ("offsets_bytes", c_int64), ("row_counts_bytes", c_int64),
        ("bias_bytes", c_int64),
        ("input_quantized", c_int32), ("output_quantized", c_int32),
        ("input_scale", c_float), ("output_scale", c_float),
        ("weight_scales", POINTER(c_float)),
    ]


#: Integer ranges of the C types the arguments go into: a value outside is refused, never
#: wrapped or clamped by ctypes.
_RANGES = {c_int32: (-2**31, 2**31 - 1), c_int64: (-2**63, 2**63 - 1)}
#: The shift ranges the core's requantization helpers are defined for (core.h).
SHIFT_MIN, SHIFT_MAX_S8, SHIFT_MAX_S16 = -31, 30, 7


def _int(name: str, value, ctype=c_int32) -> int:
    """value as a Python int that fits ctype, else ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    lo, hi = _RANGES[ctype]
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} is {v}; it must lie in {lo}..{hi} (C {ctype.__name__})")
    return v


def _int_array(name: str, values, dtype) -> np.ndarray:
    """A C-contiguous array of dtype holding exactly the given integers (no wrap, no cast
    of floats); the same object when values already is one."""
    a = np.asarray(values)
    dtype = np.dtype(dtype)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {a.dtype}")
    if a.size:
        info = np.iinfo(dtype)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            raise ValueError(f"{name} holds {lo}..{hi}; it must fit {dtype.name} "
                             f"({info.min}..{info.max})")
    return np.ascontiguousarray(a, dtype)


_LIB = None


def load() -> ctypes.CDLL:
    """Load (once) and return the core library with its prototypes declared."""
    global _LIB
    if _LIB is not None:
        return _LIB
    lib = ctypes.CDLL(str(library_path()))
    P = POINTER
    lib.mam_validate.argtypes = [P(_Desc), c_char_p, c_size_t]
    lib.mam_validate.restype = c_int
    lib.mam_prepare_requant.argtypes = [P(_Desc), P(c_int32), P(c_int32), P(_Requant),
                                        c_char_p, c_size_t]
    lib.mam_prepare_requant.restype = c_int
    lib.mam_validate_requant.argtypes = [P(_Requant), c_int32, c_int32, c_char_p, c_size_t]
    lib.mam_validate_requant.restype = c_int
    lib.mam_quantize_multiplier.argtypes = [c_double, P(c_int32), P(c_int32)]
    lib.mam_quantize_multiplier.restype = c_int
    lib.mam_effective_scale.argtypes = [c_float, c_float, c_float, c_int32]
    lib.mam_effective_scale.restype = c_double
    lib.mam_activation_range.argtypes = [c_int32, c_float, c_int32, c_int32, P(c_int32), P(c_int32)]
    lib.mam_activation_range.restype = c_int
    lib.mam_saturating_rounding_doubling_high_mul.argtypes = [c_int32, c_int32]
    lib.mam_saturating_rounding_doubling_high_mul.restype = c_int32
    lib.mam_rounding_divide_by_pot.argtypes = [c_int32, c_int32]
    lib.mam_rounding_divide_by_pot.restype = c_int32
    lib.mam_multiply_by_quantized_multiplier.argtypes = [c_int32, c_int32, c_int32]
    lib.mam_multiply_by_quantized_multiplier.restype = c_int32
    lib.mam_multiply_by_quantized_multiplier_64.argtypes = [c_int64, c_int32, c_int32]
    lib.mam_multiply_by_quantized_multiplier_64.restype = c_int32
    lib.mam_status_name.argtypes = [c_int]
    lib.mam_status_name.restype = c_char_p
    for name, xt, bt in (
        ("mam_sparse_s8", c_int8, c_int32), ("mac_sparse_s8", c_int8, c_int32),
        ("mam_sparse_s16", c_int16, c_int64), ("mac_sparse_s16", c_int16, c_int64),
    ):
        fn = getattr(lib, name)
        fn.argtypes = [P(_CSR), P(_Requant), P(bt), P(xt), c_int32, P(xt)]
        fn.restype = None
    for name, xt, bt in (
        ("mam_dense_s8", c_int8, c_int32), ("mac_dense_s8", c_int8, c_int32),
        ("mam_dense_s16", c_int16, c_int64), ("mac_dense_s16", c_int16, c_int64),
    ):
        fn = getattr(lib, name)
        fn.argtypes = [P(c_int8), c_int32, c_int32, P(_Requant), P(bt), P(xt), c_int32, P(xt)]
        fn.restype = None
    _LIB = lib
    return lib


# ----------------------------------------------------------------------------------------
# Scalars
# ----------------------------------------------------------------------------------------
def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """The core's ``mam_quantize_multiplier`` (TFLite's QuantizeMultiplier)."""
    m, s = c_int32(), c_int32()
    status = load().mam_quantize_multiplier(float(real_multiplier), ctypes.byref(m), ctypes.byref(s))
    if status:
        raise ValueError(f"real multiplier is {real_multiplier!r}; it must be finite and >= 0")
    return m.value, s.value


def effective_scale(input_scale, weight_scales, output_scale) -> np.ndarray:
    """The core's ``mam_effective_scale`` for each weight scale (per tensor if only one)."""
    w = np.atleast_1d(np.asarray(weight_scales, np.float32))
    per_row = int(w.size > 1)
    f = load().mam_effective_scale
    return np.array([f(float(input_scale), float(s), float(output_scale), per_row) for s in w])


def activation_range(activation: int, output_scale: float, output_zero_point: int,
                     dtype=np.int8) -> tuple[int, int]:
    """The core's ``mam_activation_range`` (CalculateActivationRangeQuantized)."""
    lo, hi = c_int32(), c_int32()
    code = TYPE_CODES.get(np.dtype(dtype), TYPE_UNSUPPORTED)
    status = load().mam_activation_range(_int("activation", activation), float(output_scale),
                                         _int("output_zero_point", output_zero_point),
                                         code, ctypes.byref(lo), ctypes.byref(hi))
    if status:
        raise ValueError(
            f"activation range: {STATUS[status]} for activation {activation}, output scale "
            f"{output_scale}, zero point {output_zero_point}, dtype {np.dtype(dtype).name}"
        )
    return lo.value, hi.value


def _elementwise(fn, *args, names, ranges, dtype=np.int64):
    """fn over broadcast args; each argument must lie in its (lo, hi) range (C's contract:
    the C types' ranges, and the shifts the core's helpers are defined for)."""
    arrs = []
    for a, name, (lo, hi) in zip(args, names, ranges):
        a = np.asarray(a)
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got {a.dtype}")
        if a.size and (int(a.min()) < lo or int(a.max()) > hi):
            raise ValueError(f"{name} holds {int(a.min())}..{int(a.max())}; it must lie in "
                             f"{lo}..{hi}")
        arrs.append(a.astype(np.int64))
    arrs = np.broadcast_arrays(*arrs)
    out = np.empty(arrs[0].shape, dtype)
    flat = [a.ravel() for a in arrs]
    for i in range(out.size):
        out.flat[i] = fn(*(int(a[i]) for a in flat))
    return out


_I32 = _RANGES[c_int32]
_I64 = _RANGES[c_int64]


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    return _elementwise(load().mam_saturating_rounding_doubling_high_mul, a, b,
                        names=("a", "b"), ranges=(_I32, _I32))


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """exponent in 0..31 (the core's contract)."""
    return _elementwise(load().mam_rounding_divide_by_pot, x, exponent,
                        names=("x", "exponent"), ranges=(_I32, (0, 31)))


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """The int8 mode's requantization; shift in SHIFT_MIN..SHIFT_MAX_S8."""
    return _elementwise(load().mam_multiply_by_quantized_multiplier, x, multiplier, shift,
                        names=("x", "multiplier", "shift"),
                        ranges=(_I32, _I32, (SHIFT_MIN, SHIFT_MAX_S8)))


def multiply_by_quantized_multiplier_64(x, multiplier, shift) -> np.ndarray:
    """The int16 mode's requantization; shift in SHIFT_MIN..SHIFT_MAX_S16."""
    return _elementwise(load().mam_multiply_by_quantized_multiplier_64, x, multiplier, shift,
                        names=("x", "multiplier", "shift"),
                        ranges=(_I64, _I32, (SHIFT_MIN, SHIFT_MAX_S16)))


# ----------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------
def _ptr(arr: np.ndarray, ctype):
    return arr.ctypes.data_as(POINTER(ctype))


def _call_validation(fn, *args) -> tuple[int, str]:
    buf = ctypes.create_string_buffer(512)
    status = fn(*args, buf, len(buf))
    return int(status), buf.value.decode("utf-8", "replace")


def layer_desc(csr: OffsetCSR, *, input_shape=None, input_dtype=np.int8, output_shape=None,
               output_dtype=None, bias=None, bias_dtype=None, activation: int = 0,
               version: int = 1, in_features: Optional[int] = None,
               weight_scale_count: Optional[int] = None, weight_zero_point: int = 0,
               input_zero_point: int = 0, output_zero_point: int = 0,
               num_inputs: Optional[int] = None, num_outputs: int = 1,
               input_scale: float = 1.0, output_scale: float = 1.0, weight_scales=None) -> dict:
    """The fields of the core's ``mam_layer_desc`` for a node running ``csr``.

    Defaults describe a consistent node (one batch row, no bias, scales 1); override any field
    to describe what a (possibly corrupted) model says.
    """
    m, n = csr.shape
    n_opt = n if in_features is None else in_features
    input_shape = (1, n) if input_shape is None else tuple(input_shape)
    batches = int(np.prod(input_shape[:-1])) if len(input_shape) > 1 else 1
    output_shape = (batches, m) if output_shape is None else tuple(output_shape)
    has_bias = bias is not None or bias_dtype is not None
    if bias_dtype is None and bias is not None:
        bias_dtype = np.asarray(bias).dtype
    weight_scales = (np.ones(1 if weight_scale_count is None else max(weight_scale_count, 0),
                             np.float32)
                     if weight_scales is None else np.atleast_1d(np.asarray(weight_scales, np.float32)))
    bias_len = (np.asarray(bias).shape[0] if bias is not None else m) if has_bias else 0
    bias_item = 4 if np.dtype(input_dtype) == np.int8 else 8
    return dict(
        num_inputs=(5 if has_bias else 4) if num_inputs is None else num_inputs,
        num_outputs=num_outputs,
        input_type=TYPE_CODES.get(np.dtype(input_dtype), TYPE_UNSUPPORTED),
        values_type=TYPE_CODES.get(csr.values.dtype, TYPE_UNSUPPORTED),
        offsets_type=TYPE_CODES.get(csr.offsets.dtype, TYPE_UNSUPPORTED),
        row_counts_type=TYPE_CODES.get(csr.row_counts.dtype, TYPE_UNSUPPORTED),
        bias_type=TYPE_CODES.get(np.dtype(bias_dtype), TYPE_UNSUPPORTED) if has_bias else TYPE_NONE,
        output_type=TYPE_CODES.get(np.dtype(output_dtype or input_dtype), TYPE_UNSUPPORTED),
        input_elements=int(np.prod(input_shape)), output_elements=int(np.prod(output_shape)),
        input_last_dim=int(input_shape[-1]), output_last_dim=int(output_shape[-1]),
        values_len=csr.values.shape[0], offsets_len=csr.offsets.shape[0],
        row_counts_len=csr.row_counts.shape[0],
        bias_len=bias_len,
        offsets=csr.offsets, row_counts=csr.row_counts,
        in_features=n_opt, activation=activation, version=version,
        weight_scale_count=len(weight_scales) if weight_scale_count is None else weight_scale_count,
        weight_zero_point=weight_zero_point,
        input_zero_point=input_zero_point, output_zero_point=output_zero_point,
        values_bytes=csr.values.shape[0] * csr.values.dtype.itemsize,
        bias_bytes=bias_len * bias_item if has_bias else 0,
        input_quantized=1, output_quantized=1, input_scale=input_scale,
        output_scale=output_scale, weight_scales=weight_scales,
    )


_FLOAT_FIELDS = ("input_scale", "output_scale")


def _desc(fields: dict):
    """A ``mam_layer_desc`` from fields (see :func:`layer_desc`) and the arrays it points
    into. The core reads offsets, row_counts and weight_scales: their byte sizes are those of
    the arrays themselves (so the core's own size check keeps every read inside them), and
    weight_scales must hold weight_scale_count values."""
    fields = dict(fields)
    offsets = _int_array("offsets", fields.pop("offsets"), np.uint8)
    row_counts = _int_array("row_counts", fields.pop("row_counts"), np.int16)
    scales = np.ascontiguousarray(np.atleast_1d(np.asarray(fields.pop("weight_scales", [1.0]),
                                                           np.float32)))
    count = _int("weight_scale_count", fields.get("weight_scale_count", 1))
    if count > scales.size:
        raise ValueError(f"weight_scale_count is {count} but {scales.size} weight scales are given")
    fields["offsets_bytes"] = offsets.nbytes
    fields["row_counts_bytes"] = row_counts.nbytes
    types = dict(_Desc._fields_)
    values = {}
    for k, v in fields.items():
        if k not in types:
            raise ValueError(f"mam_layer_desc has no field {k!r}")
        values[k] = float(v) if k in _FLOAT_FIELDS else _int(k, v, types[k])
    desc = _Desc(**values)
    desc.offsets = _ptr(offsets, c_uint8)
    desc.row_counts = _ptr(row_counts, c_int16)
    desc.weight_scales = _ptr(scales, c_float)
    return desc, (offsets, row_counts, scales)


def validate_layer(**fields) -> tuple[int, str]:
    """Run the core's ``mam_validate`` on a description (see :func:`layer_desc`).

    Returns (status code, one-line message; "" when the status is 0).
    """
    desc, keep = _desc(fields)
    return _call_validation(load().mam_validate, ctypes.byref(desc))


def prepare_layer(**fields) -> dict:
    """What the device's Prepare does with a node: the core's ``mam_validate``, then
    ``mam_prepare_requant``. Returns {multiplier, shift (int32 arrays), act_min, act_max};
    raises ValueError with the core's message (the glue's words) when either refuses."""
    desc, keep = _desc(fields)
    lib = load()
    status, msg = _call_validation(lib.mam_validate, ctypes.byref(desc))
    if status:
        raise ValueError(msg)
    count = desc.row_counts_len if desc.weight_scale_count > 1 else 1
    mult = np.zeros(count, np.int32)
    shift = np.zeros(count, np.int32)
    q = _Requant()
    status, msg = _call_validation(lib.mam_prepare_requant, ctypes.byref(desc),
                                   _ptr(mult, c_int32), _ptr(shift, c_int32), ctypes.byref(q))
    if status:
        raise ValueError(msg)
    return dict(multiplier=mult, shift=shift, act_min=int(q.act_min), act_max=int(q.act_max))


def _requant(m, multiplier, shift, input_zero_point, output_zero_point, act_min, act_max, dtype):
    mult = np.atleast_1d(np.asarray(multiplier))
    shf = np.atleast_1d(np.asarray(shift))
    if mult.ndim != 1 or mult.shape != shf.shape or mult.size not in (1, m):
        raise ValueError(
            f"multiplier {mult.shape} and shift {shf.shape} must both have length 1 or M = {m}"
        )
    mult = _int_array("multiplier", mult, np.int32)
    shf = _int_array("shift", shf, np.int32)
    info = np.iinfo(dtype)
    q = _Requant(
        multiplier=_ptr(mult, c_int32), shift=_ptr(shf, c_int32), per_row=int(mult.size > 1),
        input_zero_point=_int("input_zero_point", input_zero_point),
        output_zero_point=_int("output_zero_point", output_zero_point),
        act_min=_int("act_min", info.min if act_min is None else act_min),
        act_max=_int("act_max", info.max if act_max is None else act_max),
    )
    return q, (mult, shf)


def validate_requant(m: int, multiplier, shift, *, dtype=np.int8, input_zero_point: int = 0,
                     output_zero_point: int = 0, act_min=None, act_max=None) -> tuple[int, str]:
    """Run the core's ``mam_validate_requant``; returns (status, message)."""
    q, keep = _requant(m, multiplier, shift, input_zero_point, output_zero_point, act_min,
                       act_max, dtype)
    code = TYPE_CODES.get(np.dtype(dtype), TYPE_UNSUPPORTED)
    return _call_validation(load().mam_validate_requant, ctypes.byref(q), _int("m", m), code)


def _raise(status: int, msg: str):
    raise ValueError(f"{msg} ({STATUS.get(status, status)})")


# ----------------------------------------------------------------------------------------
# The operators
# ----------------------------------------------------------------------------------------
def _input(x, n):
    x = np.asarray(x)
    if x.dtype not in (np.dtype(np.int8), np.dtype(np.int16)):
        raise ValueError(f"input dtype is {x.dtype}; it must be int8 or int16")
    if x.ndim < 1:
        raise ValueError(f"input shape {x.shape}: it needs a last dimension N = {n}")
    return x


def _bias(bias):
    return None if bias is None else np.ascontiguousarray(bias)


def _run(name, weight_args, x, n, m, b, requant):
    """Validates the requantization, then calls the core's ``name``_s8/_s16 kernel on x."""
    dt = x.dtype
    q, keep = _requant(m, *requant, dt)  # keep: the arrays q points into stay alive
    status, msg = _call_validation(load().mam_validate_requant, ctypes.byref(q), m, TYPE_CODES[dt])
    if status:
        _raise(status, msg)
    xc = np.ascontiguousarray(x.reshape(-1, n))
    batches = xc.shape[0]
    out = np.empty((batches, m), dt)
    xt = c_int8 if dt == np.int8 else c_int16
    bt = c_int32 if dt == np.int8 else c_int64
    fn = getattr(load(), f"{name}_{'s8' if dt == np.int8 else 's16'}")
    fn(*weight_args, ctypes.byref(q), _ptr(b, bt) if b is not None else None,
       _ptr(xc, xt), _int("batches", batches), _ptr(out, xt))
    return out.reshape(x.shape[:-1] + (m,))


def _sparse(kind, x, csr: OffsetCSR, bias, multiplier, shift, input_zero_point,
            output_zero_point, act_min, act_max):
    m, n = _int("M", csr.shape[0]), _int("N", csr.shape[1])
    x = _input(x, n)
    dt = x.dtype
    b = _bias(bias)
    if b is not None and b.ndim != 1:
        raise ValueError(f"bias must be 1-D [M], got shape {b.shape}")
    # The arrays validated are the arrays the kernel reads: contiguous and typed once (a
    # fresh OffsetCSR converts them), then the same objects go to mam_validate and the kernel.
    same = dataclasses.replace(csr)
    values, offsets, row_counts = same.values, same.offsets, same.row_counts
    fields = layer_desc(same, input_shape=x.shape, input_dtype=dt, bias=b, in_features=n,
                        input_zero_point=input_zero_point, output_zero_point=output_zero_point)
    status, msg = validate_layer(**fields)
    if status:
        _raise(status, msg)
    w = _CSR(n=n, m=m, values=_ptr(values, c_int8), offsets=_ptr(offsets, c_uint8),
             row_counts=_ptr(row_counts, c_int16))
    return _run(f"{kind}_sparse", (ctypes.byref(w),), x, n, m, b,
                (multiplier, shift, input_zero_point, output_zero_point, act_min, act_max))


def _dense(kind, x, w_int8, bias, multiplier, shift, input_zero_point, output_zero_point,
           act_min, act_max):
    w = np.ascontiguousarray(w_int8)
    if w.dtype != np.int8 or w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"weights must be int8 [M, N] with M, N >= 1, got {w.dtype} {w.shape}")
    m, n = w.shape
    x = _input(x, n)
    dt = x.dtype
    if x.shape[-1] != n:
        raise ValueError(f"input shape {x.shape}: last dimension must be N = {n}")
    b = _bias(bias)
    want = np.dtype(np.int32 if dt == np.int8 else np.int64)
    if b is not None and (b.dtype != want or b.shape != (m,)):
        raise ValueError(f"bias must be {want.name} [{m}], got {b.dtype} {b.shape}")
    return _run(f"{kind}_dense", (_ptr(w, c_int8), m, n), x, n, m, b,
                (multiplier, shift, input_zero_point, output_zero_point, act_min, act_max))


def mam_sparse(x, csr: OffsetCSR, bias, multiplier, shift, *, input_zero_point: int = 0,
               output_zero_point: int = 0, act_min: Optional[int] = None,
               act_max: Optional[int] = None) -> np.ndarray:
    """MAM_SPARSE through the C core; same arguments and result as reference.mam_sparse."""
    return _sparse("mam", x, csr, bias, multiplier, shift, input_zero_point,
                   output_zero_point, act_min, act_max)


def mac_sparse(x, csr: OffsetCSR, bias, multiplier, shift, *, input_zero_point: int = 0,
               output_zero_point: int = 0, act_min: Optional[int] = None,
               act_max: Optional[int] = None) -> np.ndarray:
    """MAC_SPARSE through the C core; same arguments and result as reference.mac_sparse."""
    return _sparse("mac", x, csr, bias, multiplier, shift, input_zero_point,
                   output_zero_point, act_min, act_max)


def mam_dense(x, w_int8, bias, multiplier, shift, *, input_zero_point: int = 0,
              output_zero_point: int = 0, act_min: Optional[int] = None,
              act_max: Optional[int] = None) -> np.ndarray:
    """Dense MAM through the C core; same as reference.mam_dense."""
    return _dense("mam", x, w_int8, bias, multiplier, shift, input_zero_point,
                  output_zero_point, act_min, act_max)


def mac_dense(x, w_int8, bias, multiplier, shift, *, input_zero_point: int = 0,
              output_zero_point: int = 0, act_min: Optional[int] = None,
              act_max: Optional[int] = None) -> np.ndarray:
    """Dense MAC (TFLM FULLY_CONNECTED arithmetic) through the C core."""
    return _dense("mac", x, w_int8, bias, multiplier, shift, input_zero_point,
                  output_zero_point, act_min, act_max)
