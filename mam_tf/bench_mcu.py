"""The kernels on an emulated Cortex-M7: outputs and exact instruction counts under QEMU.

``mam-tf bench mcu`` and the tests run MAM_SPARSE / MAC_SPARSE (portable C and the ARMv7E-M
kernels), the dense MAC and, when given, CMSIS-NN's fully connected kernels in one bare-metal
firmware (``tflm_ops/firmware``) on QEMU's ``mps2-an500`` (a Cortex-M7). A small TCG plugin of
the project counts the instructions executed between two marker functions around each kernel
call. The firmware reads its cases from a file through semihosting, so one binary serves every
case.

Counts are instructions, exactly and repeatably; QEMU models no caches, no wait states, no
dual issue, no load-use or multiply latencies, so any time or energy derived from them is an
estimate under a stated cycles-per-instruction (CPI) assumption.

Builds: the firmware (arm-none-eabi-gcc, CMake toolchain file) and the plugin (host C
compiler) are built once into ``~/.cache/mam-tf/mcu-<hash of the sources and options>/``
(``$MAM_TF_CACHE`` overrides ``~/.cache/mam-tf``), under a file lock, published by an atomic
rename. CMSIS-NN: a static library built for Cortex-M7 by CMSIS-NN's own build, passed as
``cmsis_nn_lib`` / ``cmsis_nn_include`` (or ``$MAM_TF_CMSIS_NN_LIB`` /
``$MAM_TF_CMSIS_NN_INCLUDE``); nothing of CMSIS-NN is part of this project.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mam_tf.sparse import OffsetCSR

__all__ = [
    "McuBuild", "KernelCall", "toolchain_available", "build", "run_calls", "run_kernel",
    "bench_layer", "bench_model", "add_bench_command", "KERNEL_IDS",
]

_OPS = Path(__file__).resolve().parent.parent / "tflm_ops"
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

# Seed 004's operating point and the chip it names.
CLOCK_HZ = 180e6
POWER_W = 99.5e-3
SRAM_BYTES = 512 * 1024  # STM32F767ZI
CPI = 1.0
CPI_RANGE = (0.5, 2.0)   # 0.5: the M7's dual-issue peak; 2.0: stalls (load-use, wait states)


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


_BUILD_FORMAT = b"3"  # bump when what a build records changes


def _build_key(cmsis_lib, cmsis_include, tflm=None) -> str:
    h = hashlib.sha256(_BUILD_FORMAT)
    if tflm:
        st = Path(tflm[0]).stat()
        h.update(f"{tflm}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    files = []
    for sub in ("include", "src", "firmware"):
        files += sorted(p for p in (_OPS / sub).rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(_OPS)).encode() + b"\0" + f.read_bytes() + b"\0")
    if cmsis_lib:
        st = Path(cmsis_lib).stat()
        h.update(f"{cmsis_lib}\0{st.st_size}\0{st.st_mtime_ns}\0{cmsis_include}".encode())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    return Path(os.environ.get("MAM_TF_CACHE", Path.home() / ".cache" / "mam-tf"))


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
                    size=tuple(info["size"]))


def _do_build(dest: Path, cmsis_lib, cmsis_include, tflm=None):
    cmake = shutil.which("cmake")
    with tempfile.TemporaryDirectory(prefix="build-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        fw, pl, out = tmp / "fw", tmp / "plugin", tmp / "out"
        args = [cmake, "-S", str(_FW), "-B", str(fw), "-DCMAKE_BUILD_TYPE=Release",
                f"-DCMAKE_TOOLCHAIN_FILE={_FW / 'cmake' / 'arm-none-eabi-cortex-m7.cmake'}"]
        if cmsis_lib:
            args += [f"-DCMSIS_NN_LIB={cmsis_lib}", f"-DCMSIS_NN_INCLUDE={cmsis_include}"]
        if tflm:
            args += [f"-DTFLM_LIB={tflm[0]}", f"-DTFLM_ROOT={tflm[1]}",
                     f"-DFLATBUFFERS_INCLUDE_DIR={tflm[2]}"]
        _run_tool(args, "configuring the Cortex-M7 firmware")
        _run_tool([cmake, "--build", str(fw)], "building the Cortex-M7 firmware")
        _run_tool([cmake, "-S", str(_FW / "plugin"), "-B", str(pl), "-DCMAKE_BUILD_TYPE=Release"],
                  "configuring the QEMU counting plugin")
        _run_tool([cmake, "--build", str(pl)], "building the QEMU counting plugin")
        cfg = dict(line.split("=", 1) for line in
                   (fw / "mam_bench.cfg").read_text().split() if "=" in line)
        nm = _run_tool(["arm-none-eabi-nm", "-S", str(fw / "mam_bench.elf")], "reading symbols")
        symbols, addr = {}, {}
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] in "tT":
                symbols[parts[3]] = int(parts[1], 16)
            if len(parts) >= 3:
                addr[parts[-1]] = int(parts[0], 16)
        size = _run_tool(["arm-none-eabi-size", str(fw / "mam_bench.elf")], "arm-none-eabi-size")
        text, data_b, bss = (int(v) for v in size.splitlines()[1].split()[:3])
        callees, current = {}, None
        dis = _run_tool(["arm-none-eabi-objdump", "-d", str(fw / "mam_bench.elf")], "disassembling")
        for line in dis.splitlines():
            if line.endswith(">:"):
                current = line.split("<", 1)[1][:-2]
                callees[current] = []
            elif current and "\t" in line and "<" in line:
                op = line.split("\t")[2].split()[0] if line.count("\t") >= 2 else ""
                target = line.rsplit("<", 1)[1].rstrip(">").split("+")[0]
                if op.startswith(("bl", "b.", "b")) and target != current:
                    callees[current].append(target)
        out.mkdir()
        shutil.copy2(fw / "mam_bench.elf", out / "mam_bench.elf")
        shutil.copy2(pl / "libmam_insn_count.so", out / "libmam_insn_count.so")
        if cfg.get("model") == "1":
            shutil.copy2(fw / "mam_model.elf", out / "mam_model.elf")
        (out / "build.json").write_text(json.dumps({
            "optimized": cfg.get("optimized") == "1", "cmsis_nn": cfg.get("cmsis_nn") == "1",
            "begin": addr["mcu_mark_begin"] & ~1, "end": addr["mcu_mark_end"] & ~1,
            "symbols": symbols, "callees": callees, "cmsis_nn_lib": cmsis_lib,
            "model": cfg.get("model") == "1", "size": [text, data_b, bss],
        }))
        try:  # a reader sees a whole build or none
            os.replace(out, dest)
        except OSError:
            if not (dest / "build.json").is_file():
                raise


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
    root = _cache_root()
    dest = root / f"mcu-{_build_key(lib, inc, tflm)}"
    if (dest / "build.json").is_file():
        return _load_build(dest)
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait and reuse it
        if not (dest / "build.json").is_file():
            _do_build(dest, lib, inc, tflm)
    return _load_build(dest)


# ----------------------------------------------------------------------------------------
# Running kernels
# ----------------------------------------------------------------------------------------
@dataclass
class KernelCall:
    """One kernel call: ``kernel`` in {"mam_sparse", "mac_sparse", "mac_dense", "mam_dense",
    "cmsis_fc"}, ``variant`` in {"portable", "optimized", "cmsis"}; ``x`` int8 or int16
    [batches, N]; ``csr`` for the sparse kernels, ``weights`` (int8 [M, N]) for the dense ones;
    the requantization as mam_tf.core takes it."""

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

    def shape(self):
        return self.csr.shape if self.csr is not None else self.weights.shape


def _array(a) -> bytes:
    data = b"" if a is None else np.ascontiguousarray(a).tobytes()
    return struct.pack("<I", len(data)) + data + b"\0" * (-len(data) % 4)


def _job(kernel_id, m=0, n=0, batches=0, per_row=0, has_bias=0, zx=0, zy=0, lo=0, hi=0,
         arrays=(None,) * 8) -> bytes:
    head = struct.pack("<10I6I", kernel_id, m, n, batches, per_row, has_bias,
                       *(v & 0xFFFFFFFF for v in (zx, zy, lo, hi)), *([0] * 6))
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
                int(c.input_zero_point), int(c.output_zero_point), lo, hi, arrays)
    return data, x.shape[0] * m, x.dtype, (x.shape[0], m)


def _run_qemu(b: McuBuild, jobs: Sequence[bytes], timeout: float):
    with tempfile.TemporaryDirectory(prefix="mam-mcu-") as tmp:
        tmp = Path(tmp)
        (tmp / "mcu_in.bin").write_bytes(b"MCU1" + struct.pack("<I", len(jobs)) + b"".join(jobs))
        cmd = [QEMU, "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native",
               "-plugin", f"{b.plugin},begin={b.begin:#x},end={b.end:#x},out=counts.txt",
               "-kernel", str(b.elf)]
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
        _run_tool([QEMU, "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
                   "-semihosting-config", "enable=on,target=native", "-singlestep",
                   "-d", "nochain,exec", "-D", "trace.log", "-kernel", str(b.elf)],
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
    from mam_tf import flatbuffer as fb

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
        cmd = [QEMU, "-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native",
               "-plugin", f"{b.plugin},begin={b.begin:#x},end={b.end:#x},out=counts.txt",
               "-kernel", str(b.model_elf)]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
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


# ----------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------
def host_output(c: KernelCall) -> np.ndarray:
    """What the host core (mam_tf.core) computes for the same call: the truth to compare."""
    from mam_tf import core

    kw = dict(input_zero_point=c.input_zero_point, output_zero_point=c.output_zero_point,
              act_min=c.act_min, act_max=c.act_max)
    if c.kernel in ("mam_sparse", "mac_sparse"):
        fn = core.mam_sparse if c.kernel == "mam_sparse" else core.mac_sparse
        return fn(c.x, c.csr, c.bias, c.multiplier, c.shift, **kw)
    fn = core.mam_dense if c.kernel == "mam_dense" else core.mac_dense
    return fn(c.x, c.weights, c.bias, c.multiplier, c.shift, **kw)


def _op_data_bytes(m, per_row):
    # multiplier + shift (one pair, or one per row) and the 7 words of mam_requant
    return 8 * (m if per_row else 1) + 28


def _estimates(instructions):
    t = instructions * CPI / CLOCK_HZ
    return dict(time_us=t * 1e6, energy_uj=t * POWER_W * 1e6,
                time_us_range=[instructions * c / CLOCK_HZ * 1e6 for c in CPI_RANGE])


def _record(c: KernelCall, instructions, b: McuBuild, remaining, **extra):
    x = np.asarray(c.x)
    bits = 8 if x.dtype == np.int8 else 16
    m, n = c.shape()
    per_row = np.atleast_1d(c.multiplier).size > 1
    bias_b = 0 if c.bias is None else m * (4 if bits == 8 else 8)
    if c.kernel.endswith("_sparse"):
        entries = c.csr.num_entries
        weight_b = c.csr.nbytes(has_bias=False)
    else:
        entries = m * n
        weight_b = m * n
    nbytes = weight_b + bias_b + _op_data_bytes(m, per_row)
    act_b = (x.shape[0] * (n + m)) * x.dtype.itemsize
    return dict(
        kernel=c.kernel, variant=c.variant, act_bits=bits, rows=m, cols=n, batches=x.shape[0],
        remaining=float(remaining), entries=int(entries), instructions=int(instructions),
        instr_per_entry=instructions / max(entries, 1), instr_per_row=instructions / m,
        bytes=int(nbytes), activation_bytes=int(act_b),
        code_bytes=b.code_bytes(c.kernel, c.variant, bits),
        fits_sram=bool(nbytes + act_b <= SRAM_BYTES), **_estimates(instructions), **extra)


def random_layer(rows, cols, remaining, act_bits, seed=0, per_row=False, bias=True):
    """A seeded random int8 layer with exactly round(remaining * rows * cols) nonzero weights,
    its requantization (a plausible per-tensor or per-row scale) and one input sample."""
    from mam_tf import reference

    rng = np.random.default_rng(seed)
    w = rng.integers(1, 128, size=(rows, cols)) * rng.choice([-1, 1], size=(rows, cols))
    keep = np.zeros(rows * cols, bool)
    keep[rng.permutation(rows * cols)[: int(round(remaining * rows * cols))]] = True
    w = np.where(keep.reshape(rows, cols), w, 0).astype(np.int8)
    dt = np.int8 if act_bits == 8 else np.int16
    info = np.iinfo(dt)
    x = rng.integers(info.min, info.max + 1, size=(1, cols)).astype(dt)
    zx, zy = (-3, 5) if act_bits == 8 else (0, 0)
    acc = 127.0 * info.max * max(1.0, np.sqrt(remaining * cols))
    scales = (rng.uniform(0.5, 1.5, rows) if per_row else np.ones(1)) * info.max / acc
    mult, shift = reference.quantize_multipliers(scales)
    bvals = None
    if bias:
        bvals = rng.integers(-int(acc) // 4, int(acc) // 4, size=rows).astype(
            np.int32 if act_bits == 8 else np.int64)
    return w, x, bvals, mult, shift, zx, zy


DEFAULT_REMAINING = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)


def bench_layer(rows=128, cols=16384, remaining=DEFAULT_REMAINING, act_bits=(16, 8), seed=0,
                b: Optional[McuBuild] = None, check=True, progress=True) -> list[dict]:
    """Instruction counts of every kernel on one random layer per (act_bits, remaining).

    The sparse kernels (MAM and MAC, portable and, where built, optimized) run at each
    remaining fraction; the dense MAC and CMSIS-NN (when built in) once per act_bits on the
    same matrix at 100% (their work does not depend on zeros). With ``check`` every output is
    compared with the host core's and a mismatch raises.
    """
    from mam_tf.sparse import encode

    b = b or build()
    variants = ["portable"] + (["optimized"] if b.optimized else [])
    todo = [(bits, r) for bits in act_bits for r in remaining]
    records = []
    try:
        from tqdm import tqdm
        it = tqdm(todo, desc="mcu bench", unit="layer", disable=not progress)
    except ImportError:
        it = todo
    for bits, r in it:
        w, x, bias, mult, shift, zx, zy = random_layer(rows, cols, r, bits, seed)
        csr = encode(w)
        kw = dict(bias=bias, input_zero_point=zx, output_zero_point=zy)
        calls = [KernelCall(k, v, x, mult, shift, csr=csr, **kw)
                 for k in ("mam_sparse", "mac_sparse") for v in variants]
        if r == max(remaining):
            calls.append(KernelCall("mac_dense", "portable", x, mult, shift, weights=w, **kw))
            if b.cmsis_nn:
                calls.append(KernelCall("cmsis_fc", "cmsis", x, mult, shift, weights=w, **kw))
        results = run_calls(calls, b)
        for c, (y, count) in zip(calls, results):
            if check:
                want = host_output(c)
                if not np.array_equal(y, want):
                    bad = int(np.count_nonzero(y != want))
                    raise McuError(f"mcu: {c.variant} {c.kernel} int{bits} at {r:.0%} gave "
                                   f"{bad} outputs that differ from the host core")
            records.append(_record(c, count, b, r if c.kernel.endswith("_sparse") else 1.0,
                                   checked=bool(check)))
    return records


def bench_model(tflite, b: Optional[McuBuild] = None, seed=0, check=True) -> list[dict]:
    """The same figures for every MAM_SPARSE / MAC_SPARSE op of a converted model, with its
    real matrices (a random input of the op's type and zero point; the count does not depend
    on the values), beside the dense MAC (and CMSIS-NN when built in) on the decoded matrix."""
    from mam_tf import flatbuffer as fb
    from mam_tf import options
    from mam_tf.runtime import _SparseStep

    b = b or build()
    data = Path(tflite).read_bytes()
    model = fb.load(data)
    sg = model.subgraphs[0]
    rng = np.random.default_rng(seed)
    variants = ["portable"] + (["optimized"] if b.optimized else [])
    records = []
    for i, op in enumerate(sg.operators):
        kind = fb.op_name(model, op)
        if kind not in (options.MAM_SPARSE, options.MAC_SPARSE):
            continue
        step = _SparseStep(model, sg, op, kind)
        m, n = step.csr.shape
        info = np.iinfo(step.dtype)
        x = rng.integers(info.min, info.max + 1, size=(1, n)).astype(step.dtype)
        kw = dict(bias=step.bias, input_zero_point=step.in_zp, output_zero_point=step.out_zp,
                  act_min=step.act_min, act_max=step.act_max)
        name = sg.tensors[step.output].name.decode()
        kernel = "mam_sparse" if kind == options.MAM_SPARSE else "mac_sparse"
        calls = [KernelCall(kernel, v, x, step.multiplier, step.shift, csr=step.csr, **kw)
                 for v in variants]
        dense = step.csr.decode()
        calls.append(KernelCall("mac_dense", "portable", x, step.multiplier, step.shift,
                                weights=dense, **kw))
        per_row = np.atleast_1d(step.multiplier).size > 1
        if b.cmsis_nn and not (per_row and step.dtype == np.int16):
            calls.append(KernelCall("cmsis_fc", "cmsis", x, step.multiplier, step.shift,
                                    weights=dense, **kw))
        kept = np.count_nonzero(dense) / dense.size
        for c, (y, count) in zip(calls, run_calls(calls, b)):
            if check and c.kernel != "cmsis_fc" and not np.array_equal(y, host_output(c)):
                raise McuError(f"mcu: {c.variant} {c.kernel} of op {i} ('{name}') differs "
                               "from the host core")
            records.append(_record(c, count, b, kept, op_index=i, op_name=name,
                                   checked=bool(check and c.kernel != "cmsis_fc")))
    if not records:
        raise ValueError(f"mcu: {tflite} holds no MAM_SPARSE / MAC_SPARSE op")
    return records


def fit_rows(records) -> dict:
    """Least-squares instructions = a * entries + c * rows + k over the remaining fractions
    of one (kernel, variant, act_bits): (a per entry, c per row) where the rows are fixed,
    so c * rows + k is reported as the per-row cost (call cost included)."""
    fits = {}
    groups = {}
    for r in records:
        if r["kernel"].endswith("_sparse"):
            groups.setdefault((r["kernel"], r["variant"], r["act_bits"], r["rows"]), []).append(r)
    for (k, v, bits, rows), rs in groups.items():
        if len({r["entries"] for r in rs}) < 2:
            continue
        e = np.array([r["entries"] for r in rs], float)
        y = np.array([r["instructions"] for r in rs], float)
        slope, icpt = np.polyfit(e, y, 1)
        fits[(k, v, bits)] = (float(slope), float(icpt) / rows)
    return fits


# ----------------------------------------------------------------------------------------
# Output: table, JSON, plot
# ----------------------------------------------------------------------------------------
def _label(r):
    return {"mam_sparse": "MAM_SPARSE", "mac_sparse": "MAC_SPARSE", "mac_dense": "dense MAC",
            "mam_dense": "dense MAM", "cmsis_fc": "CMSIS-NN FC"}[r["kernel"]] + (
        "" if r["variant"] == "cmsis" else f" {r['variant']}")


def format_table(records, out=print):
    """Prints the records as a table (markdown), then the per-entry / per-row fit."""
    out(f"| act | kernel | kept | entries | instructions | per entry | per row | est. ms "
        f"(CPI {CPI:g}) | est. uJ | bytes | code B | fits 512 kB |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        out(f"| int{r['act_bits']} | {_label(r)} | {r['remaining']:.0%} | {r['entries']} | "
            f"{r['instructions']} | {r['instr_per_entry']:.2f} | {r['instr_per_row']:.0f} | "
            f"{r['time_us'] / 1e3:.3f} | {r['energy_uj']:.1f} | {r['bytes']} | "
            f"{r['code_bytes'] or '-'} | {'yes' if r['fits_sram'] else 'no'} |")
    fits = fit_rows(records)
    if fits:
        out("\nfit over the kept fractions, instructions = a * entries + b * rows:")
        for (k, v, bits), (a, per_row) in sorted(fits.items()):
            out(f"  int{bits} {k} {v}: a = {a:.2f} per entry, b = {per_row:.0f} per row")


def format_summary(records, out=print):
    """Instructions per stored entry (per weight for dense kernels) by kept fraction, one table
    per activation width, with the per-entry / per-row fit of each sparse kernel."""
    fits = fit_rows(records)
    for bits in sorted({r["act_bits"] for r in records}, reverse=True):
        rs = [r for r in records if r["act_bits"] == bits]
        kept = sorted({r["remaining"] for r in rs if r["kernel"].endswith("_sparse")}, reverse=True)
        out(f"int{bits} activations, {rs[0]['rows']} x {rs[0]['cols']}: instructions per stored "
            "entry (dense: per weight)")
        out("| kernel | " + " | ".join(f"{k:.0%}" for k in kept) + " | fit: per entry | fit: per row |")
        out("|---" * (len(kept) + 3) + "|")
        seen = []
        for r in rs:
            if (r["kernel"], r["variant"]) not in seen:
                seen.append((r["kernel"], r["variant"]))
        for k, v in seen:
            cells = {r["remaining"]: r["instr_per_entry"] for r in rs
                     if r["kernel"] == k and r["variant"] == v}
            fit = fits.get((k, v, bits))
            if k.endswith("_sparse"):
                row = [f"{cells[x]:.2f}" if x in cells else "" for x in kept]
            else:
                row = [f"{next(iter(cells.values())):.2f} (all weights)"] + [""] * (len(kept) - 1)
            out(f"| {_label({'kernel': k, 'variant': v})} | " + " | ".join(row) + " | "
                + (f"{fit[0]:.2f} | {fit[1]:.0f}" if fit else " | ") + " |")
        out("")


def plot(records, path):
    """Instructions and estimated time vs weights kept, MAM vs MAC (after seed 004 Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits_all = sorted({r["act_bits"] for r in records}, reverse=True)
    fig, axes = plt.subplots(len(bits_all), 2, figsize=(11, 4 * len(bits_all)), squeeze=False)
    style = {("mam_sparse", "portable"): ("tab:red", "--", "o"),
             ("mam_sparse", "optimized"): ("tab:red", "-", "o"),
             ("mac_sparse", "portable"): ("tab:blue", "--", "s"),
             ("mac_sparse", "optimized"): ("tab:blue", "-", "s"),
             ("mac_dense", "portable"): ("tab:gray", ":", None),
             ("cmsis_fc", "cmsis"): ("black", ":", None)}
    for row, bits in enumerate(bits_all):
        rs = [r for r in records if r["act_bits"] == bits]
        xs = sorted({r["remaining"] for r in rs if r["kernel"].endswith("_sparse")})
        for col, (key, scale, ylabel) in enumerate(
                (("instructions", 1.0, "instructions per layer"),
                 ("time_us", 1e-3, f"estimated time, ms (CPI {CPI:g}, {CLOCK_HZ / 1e6:.0f} MHz)"))):
            ax = axes[row][col]
            for (k, v), (color, ls, marker) in style.items():
                pts = sorted((r["remaining"], r[key] * scale) for r in rs
                             if r["kernel"] == k and r["variant"] == v)
                if not pts:
                    continue
                lab = _label({"kernel": k, "variant": v})
                if k.endswith("_sparse"):
                    ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], ls=ls,
                            marker=marker, color=color, label=lab)
                else:
                    ax.axhline(pts[0][1], ls=ls, color=color, label=f"{lab} (all weights)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([x * 100 for x in xs])
            ax.set_xticklabels([f"{x * 100:g}" for x in xs])
            ax.set_xlabel("weights kept, %")
            ax.set_ylabel(ylabel)
            ax.set_title(f"int{bits} activations, {rs[0]['rows']} x {rs[0]['cols']}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Cortex-M7 (QEMU mps2-an500): instructions counted; time is an estimate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _machine_lines(b: McuBuild):
    import platform

    qv = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    gv = subprocess.run([GCC, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return [
        f"host: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} (counts do not depend on it)",
        f"target: Cortex-M7 on {qv} -M mps2-an500; {gv} -O2 "
        "-mcpu=cortex-m7 -mthumb -mfpu=fpv5-d16 -mfloat-abi=hard",
        f"optimized kernels: {'built' if b.optimized else 'not in this tree'}; CMSIS-NN: "
        + ("given" if b.cmsis_nn else "not given")
        + f"; bench firmware (arm-none-eabi-size): text {b.size[0]} B, data {b.size[1]} B, "
        f"bss {b.size[2]} B",
        f"estimates: {CLOCK_HZ / 1e6:.0f} MHz, {POWER_W * 1e3:.1f} mW, CPI {CPI:g} assumed "
        f"(range {CPI_RANGE[0]:g}-{CPI_RANGE[1]:g}: dual-issue peak to stalls); QEMU models no "
        "caches, wait states, dual issue or latencies",
    ]


def _cmd_mcu(args):
    try:
        b = build(args.cmsis_nn_lib, args.cmsis_nn_include)
    except McuError as err:
        print(f"mam-tf bench mcu: {err}")
        return 1
    for line in _machine_lines(b):
        print(line)
    if args.model:
        records = bench_model(args.model, b, check=not args.no_check)
    else:
        rows, cols = (16, 1024) if args.quick else (args.rows, args.cols)
        remaining = args.remaining or DEFAULT_REMAINING
        print(f"layer: {cols} -> {rows} (random pruning, seed {args.seed}), kept "
              f"{', '.join(f'{r:.0%}' for r in remaining)}, int{' and int'.join(map(str, args.act_bits))} "
              "activations, batch 1")
        records = bench_layer(rows, cols, remaining, tuple(args.act_bits), args.seed, b,
                              check=not args.no_check)
    if not args.no_check:
        print("outputs: every kernel's output equals the host core's (mam_tf.core), byte for byte"
              + ("; CMSIS-NN's are compared in the tests" if args.model and b.cmsis_nn else ""))
    print()
    if not args.model:
        format_summary(records)
    format_table(records)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "mcu.json").write_text(json.dumps(records, indent=1))
        plot(records, out / "mcu.png")
        print(f"\nwrote {out / 'mcu.json'} and {out / 'mcu.png'}")
    return 0


def add_bench_command(subparsers):
    """Adds ``mcu`` to a ``bench`` sub-command's subparsers."""
    p = subparsers.add_parser(
        "mcu", help="kernels on an emulated Cortex-M7 (QEMU): exact instruction counts",
        description=__doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2],
        epilog=f"Estimates: {CLOCK_HZ / 1e6:.0f} MHz and {POWER_W * 1e3:.1f} mW (seed 004's "
        f"operating point), CPI {CPI:g} (range {CPI_RANGE[0]:g}-{CPI_RANGE[1]:g}); 'fits' "
        f"compares CSR + bias + op data + activations with the STM32F767ZI's 512 kB SRAM. "
        "Without arm-none-eabi-gcc, newlib and qemu-system-arm it says which is missing.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=128, help="output rows M (default 128)")
    p.add_argument("--cols", type=int, default=16384, help="input columns N (default 16384)")
    p.add_argument("--remaining", type=float, nargs="+", default=None,
                   help="fractions of weights kept (default 1 .5 .2 .1 .05 .02 .01)")
    p.add_argument("--act-bits", type=int, nargs="+", choices=(8, 16), default=[16, 8],
                   help="activation widths (default 16 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random layer")
    p.add_argument("--quick", action="store_true", help="a small 1024 -> 16 layer (tests)")
    p.add_argument("--model", help="a converted .tflite: every MAM_SPARSE / MAC_SPARSE op")
    p.add_argument("--out", help="folder for mcu.json and mcu.png")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing outputs with the host core")
    p.add_argument("--cmsis-nn-lib", help="CMSIS-NN static library built for Cortex-M7 "
                   "(default $MAM_TF_CMSIS_NN_LIB)")
    p.add_argument("--cmsis-nn-include", help="CMSIS-NN Include/ folder "
                   "(default $MAM_TF_CMSIS_NN_INCLUDE)")
    p.set_defaults(func=_cmd_mcu)
    return p
