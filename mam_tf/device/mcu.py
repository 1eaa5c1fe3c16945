"""The Cortex-M7 under QEMU: build the firmware, run kernels and models, count instructions.

One bare-metal firmware (``tflm_ops/firmware``) runs MAM_SPARSE / MAC_SPARSE (portable C and
the ARMv7E-M kernels), the dense kernels and, when given, CMSIS-NN's fully connected kernels on
QEMU's ``mps2-an500`` (a Cortex-M7), reading its cases from a file through semihosting, so one
binary serves every case. A small TCG plugin of the project counts the instructions executed
between two marker functions around each kernel call, exactly. With a TFLite-Micro library
built for Cortex-M7, a second firmware runs whole converted models (:func:`run_model`).

Counts are instructions; QEMU models no caches, no wait states, no dual issue, no load-use or
multiply latencies. ``mam-tf bench mcu`` (:mod:`mam_tf.bench.mcu`) builds its tables on this.

Builds: the firmware (arm-none-eabi-gcc, CMake toolchain file) and the plugin (host C
compiler) are built once into ``~/.cache/mam-tf/mcu-<hash of the sources and options>/``
(``$MAM_TF_CACHE`` overrides ``~/.cache/mam-tf``) by
:func:`mam_tf.common.buildcache.cached_build` (a file lock, an atomic rename). CMSIS-NN: a static library built for Cortex-M7 by CMSIS-NN's own build, passed as
``cmsis_nn_lib`` / ``cmsis_nn_include`` (or ``$MAM_TF_CMSIS_NN_LIB`` /
``$MAM_TF_CMSIS_NN_INCLUDE``); nothing of CMSIS-NN is part of this project.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mam_tf.deploy.offset_csr import OffsetCSR
from mam_tf._native import tflm_ops_dir
from mam_tf.common.buildcache import build_key as _hash_key, cache_root, cached_build

__all__ = [
    "McuBuild", "McuError", "KernelCall", "KERNEL_IDS", "toolchain_available", "build", "build_key",
    "run_calls", "run_kernel", "count_loop", "count_by_trace", "run_model",
]

_OPS = tflm_ops_dir()  # in the installed package, else the checkout's
_FW = _OPS / "firmware"
QEMU = "qemu-system-arm"
GCC = "arm-none-eabi-gcc"

#: (kernel, variant, act_bits) -> the firmware's kernel id (tflm_ops/firmware/mcu_case.h).
KERNEL_IDS = {
    ("mam_sparse", "portable", 8): 10, ("mam_sparse", "portable", 16): 11,
    ("mac_sparse", "portable", 8): 12, ("mac_sparse", "portable", 16): 13,
    ("mam_sparse", "optimized", 8): 20, ("mam_sparse", "optimized", 16): 21,
    ("mac_sparse", "optimized", 8): 22, ("mac_sparse", "optimized", 16): 23,
    ("mac_dense", "portable", 8): 30, ("mac_dense", "portable", 16): 31,
    ("mam_dense", "portable", 8): 32, ("mam_dense", "portable", 16): 33,
    ("cmsis_fc", "cmsis", 8): 40, ("cmsis_fc", "cmsis", 16): 41,
}
_EMPTY, _LOOP = 0, 1
#: The C function each (kernel, variant, act_bits) runs, for its code size.
_SYMBOLS = {
    ("mam_sparse", "portable"): "mam_sparse_s{b}_portable",
    ("mac_sparse", "portable"): "mac_sparse_s{b}_portable",
    ("mam_sparse", "optimized"): "mam_sparse_s{b}_armv7em",
    ("mac_sparse", "optimized"): "mac_sparse_s{b}_armv7em",
    ("mac_dense", "portable"): "mac_dense_s{b}",
    ("mam_dense", "portable"): "mam_dense_s{b}",
    ("cmsis_fc", "cmsis"): "arm_fully_connected_s{b}",
}
_EXIT = {2: "a file could not be opened, read or written", 3: "a malformed case file",
         4: "a kernel this build does not have", 5: "the arrays do not fit the 16 MiB pool",
         6: "a kernel reported an error"}


class McuError(RuntimeError):
    """The firmware could not be built or run."""


# ----------------------------------------------------------------------------------------
# Toolchain and build
# ----------------------------------------------------------------------------------------
def toolchain_available() -> tuple[bool, str]:
    """(True, "") when the firmware can be built and run here, else (False, why not)."""
    for tool, pkg in ((GCC, "gcc-arm-none-eabi"), (QEMU, "qemu-system-arm"),
                      ("cmake", "cmake"), ("cc", "gcc")):
        if shutil.which(tool) is None:
            return False, f"{tool} is not on PATH (Debian: apt-get install {pkg})"
    specs = subprocess.run([GCC, "-print-file-name=rdimon.specs"], capture_output=True, text=True)
    if not os.path.isabs(specs.stdout.strip()):
        return False, ("arm-none-eabi-gcc has no newlib semihosting (rdimon.specs); Debian: "
                       "apt-get install libnewlib-arm-none-eabi")
    helptext = subprocess.run([QEMU, "-help"], capture_output=True, text=True).stdout
    if "-plugin" not in helptext:
        return False, f"{QEMU} was built without TCG plugin support (-plugin)"
    return True, ""


@dataclass
class McuBuild:
    """A built firmware and counting plugin."""

    elf: Path
    plugin: Path
    optimized: bool
    cmsis_nn: bool
    begin: int
    end: int
    symbols: dict = field(default_factory=dict)  # function name -> code bytes
    callees: dict = field(default_factory=dict)  # function name -> functions it branches to
    model_elf: Optional[Path] = None  # the whole-model firmware, when built with a TFLM library
    model_markers: tuple = ()  # mcu_mark_begin, mcu_mark_end in model_elf (its own addresses)
    size: tuple = ()  # arm-none-eabi-size of the bench firmware: text, data, bss

    def has(self, kernel: str, variant: str) -> bool:
        if variant == "optimized":
            return self.optimized
        if variant == "cmsis":
            return self.cmsis_nn
        return True

    def code_bytes(self, kernel: str, variant: str, act_bits: int) -> Optional[int]:
        """Thumb code of the kernel's function and of every function it calls or branches to
        (transitively), as linked in the firmware (sizes from arm-none-eabi-nm)."""
        name = _SYMBOLS[(kernel, variant)].format(b=act_bits)
        if name not in self.symbols:
            return None
        seen, todo = set(), [name]
        while todo:
            f = todo.pop()
            if f not in seen and f in self.symbols:
                seen.add(f)
                todo += self.callees.get(f, [])
        return sum(self.symbols[f] for f in seen)


def _cmsis_paths(lib=None, include=None):
    lib = lib or os.environ.get("MAM_TF_CMSIS_NN_LIB") or None
    include = include or os.environ.get("MAM_TF_CMSIS_NN_INCLUDE") or None
    if lib and not include:
        raise McuError("CMSIS-NN: a library was given without its include folder "
                       "(--cmsis-nn-include / $MAM_TF_CMSIS_NN_INCLUDE)")
    if lib and not Path(lib).is_file():
        raise McuError(f"CMSIS-NN: library {lib!r} is not a file")
    return (str(Path(lib).resolve()), str(Path(include).resolve())) if lib else (None, None)


def _tflm_paths(lib=None, root=None, flatbuffers_include=None):
    lib = lib or os.environ.get("MAM_TF_TFLM_LIB") or None
    if not lib:
        return None
    root = root or os.environ.get("MAM_TF_TFLM_ROOT")
    fb_inc = flatbuffers_include or os.environ.get("MAM_TF_FLATBUFFERS_INCLUDE")
    if not root or not fb_inc:
        raise McuError("TFLite-Micro: a library was given without its source tree "
                       "($MAM_TF_TFLM_ROOT) or flatbuffers headers ($MAM_TF_FLATBUFFERS_INCLUDE)")
    if not Path(lib).is_file():
        raise McuError(f"TFLite-Micro: library {lib!r} is not a file")
    return tuple(str(Path(p).resolve()) for p in (lib, root, fb_inc))


_BUILD_FORMAT = b"4"  # bump when what a build records changes


def _model_registration() -> dict:
    """The model firmware's mam_model_ops.h/.cc: export-tflm's registration, with every
    operator export-tflm knows, so that the firmware runs any model export-tflm exports."""
    from mam_tf.deploy import export

    return export.registration_files(
        export.known_ops(), "// Generated by mam_tf.device.mcu for the model firmware.\n",
        "Every operator `mam-tf export-tflm` registers")


def _build_key(cmsis_lib, cmsis_include, tflm=None) -> str:
    files = sorted(_OPS.glob("*.cmake"))  # the source lists the firmware includes
    for sub in ("include", "src", "tflm", "firmware"):
        files += sorted(p for p in (_OPS / sub).rglob("*") if p.is_file())
    parts = [_BUILD_FORMAT, shutil.which("cmake") or "", shutil.which(GCC) or ""]
    if tflm:
        parts += [text for _, text in sorted(_model_registration().items())]
    for lib, extra in ((tflm[0] if tflm else None, tflm), (cmsis_lib, cmsis_include)):
        if lib:  # a library the user built: its path, size and time stand for its contents
            st = Path(lib).stat()
            parts.append(f"{lib}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}")
    return _hash_key(files, root=_OPS, parts=parts)


def _run_tool(cmd, what, cwd=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise McuError(f"{what} failed (`{' '.join(map(str, cmd))}` exited {proc.returncode}):\n"
                       f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _load_build(dest: Path) -> McuBuild:
    info = json.loads((dest / "build.json").read_text())
    return McuBuild(elf=dest / "mam_bench.elf", plugin=dest / "libmam_insn_count.so",
                    optimized=info["optimized"], cmsis_nn=info["cmsis_nn"],
                    begin=info["begin"], end=info["end"], symbols=info["symbols"],
                    callees=info["callees"],
                    model_elf=dest / "mam_model.elf" if info.get("model") else None,
                    model_markers=tuple(info.get("model_markers") or ()),
                    size=tuple(info["size"]))


def _markers(nm_output: str, elf: Path) -> tuple[int, int]:
    """The addresses of mcu_mark_begin and mcu_mark_end in ``arm-none-eabi-nm`` output of
    ``elf``. Each firmware has its own: they depend on what it links and in which order."""
    addr = {}
    for line in nm_output.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            addr[parts[-1]] = int(parts[0], 16)
    missing = [m for m in ("mcu_mark_begin", "mcu_mark_end") if m not in addr]
    if missing:
        raise McuError(f"{elf.name} has no {' / '.join(missing)} symbol")
    return addr["mcu_mark_begin"] & ~1, addr["mcu_mark_end"] & ~1


def _describe(run, fw: Path) -> dict:
    """What build.json records of the firmware built in ``fw``: its configuration, the bench
    firmware's symbols, size, call graph and markers, and the model firmware's own markers.
    ``run(cmd, step, log_stdout=...)`` runs a tool and returns its stdout."""
    cfg = dict(line.split("=", 1) for line in
               (fw / "mam_bench.cfg").read_text().split() if "=" in line)
    bench = fw / "mam_bench.elf"
    nm = run(["arm-none-eabi-nm", "-S", str(bench)], "reading symbols", log_stdout=False)
    symbols = {}
    for line in nm.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            symbols[parts[3]] = int(parts[1], 16)
    begin, end = _markers(nm, bench)
    size = run(["arm-none-eabi-size", str(bench)], "arm-none-eabi-size", log_stdout=False)
    text, data_b, bss = (int(v) for v in size.splitlines()[1].split()[:3])
    callees, current = {}, None
    dis = run(["arm-none-eabi-objdump", "-d", str(bench)], "disassembling", log_stdout=False)
    for line in dis.splitlines():
        if line.endswith(">:"):
            current = line.split("<", 1)[1][:-2]
            callees[current] = []
        elif current and "\t" in line and "<" in line:
            op = line.split("\t")[2].split()[0] if line.count("\t") >= 2 else ""
            target = line.rsplit("<", 1)[1].rstrip(">").split("+")[0]
            if op.startswith(("bl", "b.", "b")) and target != current:
                callees[current].append(target)
    model = cfg.get("model") == "1"
    model_markers = None
    if model:
        elf = fw / "mam_model.elf"
        model_markers = _markers(run(["arm-none-eabi-nm", str(elf)], "reading model symbols",
                                     log_stdout=False), elf)
    return {"optimized": cfg.get("optimized") == "1", "cmsis_nn": cfg.get("cmsis_nn") == "1",
            "begin": begin, "end": end, "symbols": symbols, "callees": callees,
            "model": model, "model_markers": model_markers, "size": [text, data_b, bss]}


def _build_into(b, cmsis_lib, cmsis_include, tflm=None):
    """Builds the firmware and the plugin in ``b.dir`` (a :class:`buildcache.Builder`)."""
    cmake = shutil.which("cmake")
    fw, pl, out = b.dir / "fw", b.dir / "plugin", b.dir  # out: what the build keeps
    args = [cmake, "-S", str(_FW), "-B", str(fw), "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_TOOLCHAIN_FILE={_FW / 'cmake' / 'arm-none-eabi-cortex-m7.cmake'}"]
    if cmsis_lib:
        args += [f"-DCMSIS_NN_LIB={cmsis_lib}", f"-DCMSIS_NN_INCLUDE={cmsis_include}"]
    if tflm:
        ops = b.dir / "model_ops"
        ops.mkdir()
        for name, text in _model_registration().items():
            (ops / name).write_text(text)
        args += [f"-DTFLM_LIB={tflm[0]}", f"-DTFLM_ROOT={tflm[1]}",
                 f"-DFLATBUFFERS_INCLUDE_DIR={tflm[2]}", f"-DMAM_MODEL_OPS_DIR={ops}"]
    b.run(args, "configuring the Cortex-M7 firmware")
    try:
        b.run([cmake, "--build", str(fw)], "building the Cortex-M7 firmware")
    except McuError as err:
        missing = sorted(set(re.findall(r"undefined reference to `tflite::Register_(\w+)\(\)'",
                                        b.log.read_text(errors="replace")))) if tflm else []
        if not missing:
            raise
        raise McuError(f"TFLite-Micro library {tflm[0]} has no kernel for {', '.join(missing)}: "
                       "the model firmware registers every operator `mam-tf export-tflm` knows; "
                       "build TFLM's whole microlite library (docs/deployment.md)\n"
                       f"{err}") from None
    b.run([cmake, "-S", str(_FW / "plugin"), "-B", str(pl), "-DCMAKE_BUILD_TYPE=Release"],
          "configuring the QEMU counting plugin")
    b.run([cmake, "--build", str(pl)], "building the QEMU counting plugin")
    info = _describe(b.run, fw)
    shutil.copy2(fw / "mam_bench.elf", out / "mam_bench.elf")
    shutil.copy2(pl / "libmam_insn_count.so", out / "libmam_insn_count.so")
    if info["model"]:
        shutil.copy2(fw / "mam_model.elf", out / "mam_model.elf")
    (out / "build.json").write_text(json.dumps(dict(info, cmsis_nn_lib=cmsis_lib)))
    shutil.rmtree(fw)
    shutil.rmtree(pl)
    if tflm:
        shutil.rmtree(b.dir / "model_ops")


def build_key(cmsis_nn_lib=None, cmsis_nn_include=None, tflm_lib=None, tflm_root=None,
              flatbuffers_include=None) -> str:
    """The key of the build :func:`build` would use with these arguments now: a hash of the
    kernel and firmware sources and of the libraries given. Results counted on the firmware
    that are cached elsewhere hold it, so that a kernel change redoes them."""
    lib, inc = _cmsis_paths(cmsis_nn_lib, cmsis_nn_include)
    return _build_key(lib, inc, _tflm_paths(tflm_lib, tflm_root, flatbuffers_include))


def build(cmsis_nn_lib=None, cmsis_nn_include=None, tflm_lib=None, tflm_root=None,
          flatbuffers_include=None) -> McuBuild:
    """Build (once per source state) the firmware and the plugin; returns the build.

    With a TFLite-Micro static library built for Cortex-M7 (``tflm_lib`` or
    ``$MAM_TF_TFLM_LIB``, with ``$MAM_TF_TFLM_ROOT`` and ``$MAM_TF_FLATBUFFERS_INCLUDE``) also
    the whole-model firmware (:func:`run_model`)."""
    ok, why = toolchain_available()
    if not ok:
        raise McuError(f"cannot build the Cortex-M7 firmware: {why}")
    lib, inc = _cmsis_paths(cmsis_nn_lib, cmsis_nn_include)
    tflm = _tflm_paths(tflm_lib, tflm_root, flatbuffers_include)
    dest = cache_root() / f"mcu-{_build_key(lib, inc, tflm)}"  # build_key() with these arguments
    cached_build(dest, lambda b: _build_into(b, lib, inc, tflm), what="the Cortex-M7 firmware",
                 error=McuError)
    return _load_build(dest)


# ----------------------------------------------------------------------------------------
# Running kernels
# ----------------------------------------------------------------------------------------
@dataclass
class KernelCall:
    """One kernel call: ``kernel`` in {"mam_sparse", "mac_sparse", "mac_dense", "mam_dense",
    "cmsis_fc"}, ``variant`` in {"portable", "optimized", "cmsis"}; ``x`` int8 or int16
    [batches, N]; ``csr`` for the sparse kernels, ``weights`` (int8 [M, N]) for the dense ones;
    the requantization as mam_tf.deploy.native takes it."""

    kernel: str
    variant: str
    x: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    csr: Optional[OffsetCSR] = None
    weights: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    input_zero_point: int = 0
    output_zero_point: int = 0
    act_min: Optional[int] = None
    act_max: Optional[int] = None
    skew: tuple = (0, 0)  # bytes past an 8-byte boundary for values and offsets (0..7)

    def shape(self):
        return self.csr.shape if self.csr is not None else self.weights.shape


def _array(a) -> bytes:
    data = b"" if a is None else np.ascontiguousarray(a).tobytes()
    return struct.pack("<I", len(data)) + data + b"\0" * (-len(data) % 4)


def _job(kernel_id, m=0, n=0, batches=0, per_row=0, has_bias=0, zx=0, zy=0, lo=0, hi=0,
         arrays=(None,) * 8, skew=(0, 0)) -> bytes:
    head = struct.pack("<10I6I", kernel_id, m, n, batches, per_row, has_bias,
                       *(v & 0xFFFFFFFF for v in (zx, zy, lo, hi)), *skew, *([0] * 4))
    return head + b"".join(_array(a) for a in arrays)


def _encode_call(c: KernelCall) -> tuple[bytes, int, np.dtype, tuple]:
    x = np.asarray(c.x)
    if x.dtype not in (np.dtype(np.int8), np.dtype(np.int16)) or x.ndim != 2:
        raise ValueError(f"mcu: input must be int8 or int16 [batches, N], got {x.dtype} {x.shape}")
    bits = 8 if x.dtype == np.int8 else 16
    key = (c.kernel, c.variant, bits)
    if key not in KERNEL_IDS:
        raise ValueError(f"mcu: no kernel {c.kernel!r} variant {c.variant!r} for int{bits}")
    m, n = c.shape()
    if x.shape[1] != n:
        raise ValueError(f"mcu: input has {x.shape[1]} columns, the weights {n}")
    mult = np.atleast_1d(np.asarray(c.multiplier, np.int32))
    shf = np.atleast_1d(np.asarray(c.shift, np.int32))
    bias = None
    if c.bias is not None:
        bias = np.asarray(c.bias, np.int32 if bits == 8 else np.int64)
    info = np.iinfo(x.dtype)
    lo = info.min if c.act_min is None else int(c.act_min)
    hi = info.max if c.act_max is None else int(c.act_max)
    sparse = c.kernel.endswith("_sparse")
    if sparse:
        c.csr.check()
        arrays = (c.csr.values, c.csr.offsets, c.csr.row_counts, None)
    else:
        w = np.ascontiguousarray(c.weights, np.int8)
        arrays = (None, None, None, w)
    arrays += (mult, shf, bias, x)
    data = _job(KERNEL_IDS[key], m, n, x.shape[0], int(mult.size > 1), int(bias is not None),
                int(c.input_zero_point), int(c.output_zero_point), lo, hi, arrays,
                tuple(int(v) for v in c.skew))
    return data, x.shape[0] * m, x.dtype, (x.shape[0], m)


def _qemu(elf: Path, *options: str) -> list:
    """The QEMU command that runs ``elf`` on the mps2-an500 with semihosting."""
    return [QEMU, "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", *options, "-kernel", str(elf)]


def _counting(b: McuBuild, markers: tuple) -> tuple:
    """QEMU options that load the counting plugin watching ``markers`` (begin, end), which
    must be the addresses of the markers in the ELF that QEMU runs."""
    begin, end = markers
    return ("-plugin", f"{b.plugin},begin={begin:#x},end={end:#x},out=counts.txt")


def _run_qemu(b: McuBuild, jobs: Sequence[bytes], timeout: float):
    with tempfile.TemporaryDirectory(prefix="mam-mcu-") as tmp:
        tmp = Path(tmp)
        (tmp / "mcu_in.bin").write_bytes(b"MCU1" + struct.pack("<I", len(jobs)) + b"".join(jobs))
        cmd = _qemu(b.elf, *_counting(b, (b.begin, b.end)))
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise McuError(f"QEMU ran longer than {timeout:.0f} s on {len(jobs)} jobs") from None
        if proc.returncode != 0:
            raise McuError(f"the firmware exited {proc.returncode} "
                           f"({_EXIT.get(proc.returncode, 'see its output')}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        lines = (tmp / "counts.txt").read_text().split("\n")
        counts = [int(v) for v in lines if v.strip().isdigit()]
        if len(counts) != len(jobs) or any(v.startswith("error") for v in lines):
            raise McuError(f"the counting plugin saw {len(counts)} kernel calls for "
                           f"{len(jobs)} jobs: {lines[:5]}")
        return counts, (tmp / "mcu_out.bin").read_bytes()


def run_calls(calls: Sequence[KernelCall], b: Optional[McuBuild] = None,
              timeout: float = 600.0) -> list[tuple[np.ndarray, int]]:
    """Runs every call in one QEMU run; returns [(output, instructions)] in order.

    ``instructions`` is the count between the markers less the markers' own overhead,
    measured in the same run as an empty function call (which executes 1 instruction): the
    kernel from its first instruction to its return, plus the few instructions that set up
    its arguments.
    """
    b = b or build()
    for c in calls:
        if not b.has(c.kernel, c.variant):
            raise McuError(f"mcu: this firmware build has no {c.variant} {c.kernel} "
                           + ("(no CMSIS-NN library given)" if c.variant == "cmsis"
                              else "(no src/cortex_m/sparse_kernels.c)"))
    encoded = [_encode_call(c) for c in calls]
    counts, out = _run_qemu(b, [_job(_EMPTY)] + [e[0] for e in encoded], timeout)
    overhead = counts[0] - 1
    results, pos = [], 0
    for (data, size, dt, shape), count in zip(encoded, counts[1:]):
        nbytes = size * dt.itemsize
        y = np.frombuffer(out[pos:pos + nbytes], dt).reshape(shape).copy()
        pos += nbytes
        results.append((y, count - overhead))
    if pos != len(out):
        raise McuError(f"the firmware wrote {len(out)} output bytes, {pos} expected")
    return results


def run_kernel(kernel: str, variant: str, x, *, csr: Optional[OffsetCSR] = None, weights=None,
               bias=None, multiplier, shift, input_zero_point: int = 0,
               output_zero_point: int = 0, act_min=None, act_max=None,
               b: Optional[McuBuild] = None) -> tuple[np.ndarray, int]:
    """Runs one kernel call in QEMU; returns (output [batches, M], instructions)."""
    x = np.asarray(x)
    call = KernelCall(kernel, variant, x.reshape(-1, x.shape[-1]), multiplier, shift, csr=csr,
                      weights=weights, bias=bias, input_zero_point=input_zero_point,
                      output_zero_point=output_zero_point, act_min=act_min, act_max=act_max)
    return run_calls([call], b)[0]


def count_loop(iterations: Sequence[int], b: Optional[McuBuild] = None) -> list[int]:
    """Instructions counted around a hand-written loop of ``n`` iterations (``subs``, ``bne``;
    2n + 1 instructions with its return) for each n, less the marker overhead: a known truth
    for the counter (the count also holds the 2 instructions that load n)."""
    b = b or build()
    counts, _ = _run_qemu(b, [_job(_EMPTY)] + [_job(_LOOP, n=int(n)) for n in iterations], 60)
    return [c - (counts[0] - 1) for c in counts[1:]]


def count_by_trace(calls: Sequence[KernelCall], b: Optional[McuBuild] = None) -> list[int]:
    """The same counts as :func:`run_calls` by a second, independent method (slow; small
    cases only): QEMU translates one instruction per block (``-singlestep``), chains none and
    logs every block it executes (``-d nochain,exec``); the log lines after each begin marker up
    to and including the end marker are the instructions. No plugin is involved."""
    b = b or build()
    jobs = [_job(_EMPTY)] + [_encode_call(c)[0] for c in calls]
    with tempfile.TemporaryDirectory(prefix="mam-mcu-trace-") as tmp:
        tmp = Path(tmp)
        (tmp / "mcu_in.bin").write_bytes(b"MCU1" + struct.pack("<I", len(jobs)) + b"".join(jobs))
        _run_tool(_qemu(b.elf, "-singlestep", "-d", "nochain,exec", "-D", "trace.log"),
                  "QEMU with an execution trace", cwd=tmp)
        begin, end = f"/{b.begin:08x}/", f"/{b.end:08x}/"
        counts, n = [], None
        with open(tmp / "trace.log") as fh:
            for line in fh:
                if not line.startswith("Trace"):
                    continue
                if begin in line:
                    n = 0
                elif n is not None:
                    n += 1
                    if end in line:
                        counts.append(n)
                        n = None
    return [c - (counts[0] - 1) for c in counts[1:]]


def run_model(tflite, x_raw, b: Optional[McuBuild] = None, timeout: float = 600.0) -> dict:
    """Runs a converted .tflite through TFLite-Micro (with the MAM_SPARSE / MAC_SPARSE glue) on
    the emulated Cortex-M7, one Invoke per sample of ``x_raw`` (the model input's integer type,
    [samples, ...]). Needs a build with a TFLite-Micro library (:func:`build`).

    Returns ``output`` (the model output's type, [samples, ...]), ``ops``: [(op name,
    instructions of its Invoke in the first sample)] and ``arena_used`` (bytes). An op's count
    runs from the profiler's BeginEvent to its EndEvent: the op's Invoke and the interpreter's
    few instructions around it."""
    from mam_tf.deploy import flatbuffer as fb

    b = b or build()
    if b.model_elf is None:
        raise McuError("run_model needs a TFLite-Micro library built for Cortex-M7: "
                       "set $MAM_TF_TFLM_LIB, $MAM_TF_TFLM_ROOT, $MAM_TF_FLATBUFFERS_INCLUDE")
    data = Path(tflite).read_bytes() if not isinstance(tflite, (bytes, bytearray)) else bytes(tflite)
    model = fb.load(data)
    sg = model.subgraphs[0]
    t_in, t_out = sg.tensors[int(sg.inputs[0])], sg.tensors[int(sg.outputs[0])]
    in_dt, out_dt = fb.numpy_dtype(t_in.type), fb.numpy_dtype(t_out.type)
    x = np.ascontiguousarray(x_raw, in_dt)
    per_sample = int(np.prod(t_in.shape)) * x.dtype.itemsize
    if x.size * x.dtype.itemsize != per_sample * x.shape[0]:
        raise ValueError(f"run_model: samples of shape {x.shape[1:]} do not fill the model "
                         f"input {list(t_in.shape)}")
    with tempfile.TemporaryDirectory(prefix="mam-mcu-model-") as tmp:
        tmp = Path(tmp)
        (tmp / "model.tflite").write_bytes(data)
        (tmp / "model_in.bin").write_bytes(struct.pack("<II", x.shape[0], per_sample) + x.tobytes())
        cmd = _qemu(b.model_elf, *_counting(b, b.model_markers))
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            # A failed TFLITE_CHECK in a TFLite-Micro built with TF_LITE_MCU_DEBUG_LOG (as TFLM's
            # make builds it for cortex_m_generic) prints "HALTED" and spins forever.
            raise McuError(f"the model firmware did not finish in {timeout:.0f} s: a failed "
                           "TFLite-Micro check halts the processor in an endless loop; "
                           "`mam-tf check` on the host names the operator whose kernel "
                           "aborts") from None
        if proc.returncode != 0:
            raise McuError(f"the model firmware exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        names = [line.split(" ", 2)[2] for line in proc.stdout.splitlines()
                 if line.startswith("op ")]
        arena = [int(line.split()[1]) for line in proc.stdout.splitlines()
                 if line.startswith("arena_used ")]
        counts = [int(v) for v in (tmp / "counts.txt").read_text().split("\n") if v.isdigit()]
        y = np.frombuffer((tmp / "model_out.bin").read_bytes(), out_dt)
    return dict(output=y.reshape((x.shape[0],) + tuple(int(d) for d in t_out.shape[1:])),
                ops=list(zip(names, counts[:len(names)])), arena_used=arena[0] if arena else None)


