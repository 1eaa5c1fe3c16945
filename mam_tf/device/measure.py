"""Measuring the kernels on the emulated Cortex-M7: instruction counts of a layer or a model.

:func:`bench_layer` counts every kernel on a seeded random layer per kept fraction;
:func:`bench_model` counts every MAM_SPARSE / MAC_SPARSE op of a converted ``.tflite`` with its
real matrices. Each record holds the counts, the bytes the op stores, and time and energy
estimated from the counts under a stated cycles-per-instruction (CPI) assumption at seed 004's
operating point (:data:`CLOCK_HZ`, :data:`POWER_W`). Every output is compared with the host
core's (:mod:`mam_tf.deploy.native`) unless ``check=False``.

The machinery underneath (build, run, count) is :mod:`mam_tf.device.mcu`; the tables, the plot
and the command line of ``mam-tf bench mcu`` are :mod:`mam_tf.bench.mcu`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from mam_tf.device.mcu import KernelCall, McuBuild, McuError, build, run_calls

__all__ = [
    "CLOCK_HZ", "POWER_W", "SRAM_BYTES", "CPI", "CPI_RANGE", "DEFAULT_REMAINING",
    "host_output", "random_layer", "bench_layer", "bench_model", "fit_rows", "estimates",
    "sparse_ops_on_device",
]

# Seed 004's operating point and the chip it names.
CLOCK_HZ = 180e6
POWER_W = 99.5e-3
SRAM_BYTES = 512 * 1024  # STM32F767ZI
CPI = 1.0
CPI_RANGE = (0.5, 2.0)   # 0.5: the M7's dual-issue peak; 2.0: stalls (load-use, wait states)


def host_output(c: KernelCall) -> np.ndarray:
    """What the host core (mam_tf.deploy.native) computes for the same call: the truth to compare."""
    from mam_tf.deploy import native

    kw = dict(input_zero_point=c.input_zero_point, output_zero_point=c.output_zero_point,
              act_min=c.act_min, act_max=c.act_max)
    if c.kernel in ("mam_sparse", "mac_sparse"):
        fn = native.mam_sparse if c.kernel == "mam_sparse" else native.mac_sparse
        return fn(c.x, c.csr, c.bias, c.multiplier, c.shift, **kw)
    fn = native.mam_dense if c.kernel == "mam_dense" else native.mac_dense
    return fn(c.x, c.weights, c.bias, c.multiplier, c.shift, **kw)


def _op_data_bytes(m, per_row):
    # multiplier + shift (one pair, or one per row) and the 7 words of mam_requant
    return 8 * (m if per_row else 1) + 28


def estimates(instructions):
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
        kernel=c.kernel, variant=c.variant, act_bits=bits, units=m, inputs=n, batches=x.shape[0],
        remaining=float(remaining), entries=int(entries), instructions=int(instructions),
        instr_per_entry=instructions / max(entries, 1), instr_per_row=instructions / m,
        bytes=int(nbytes), activation_bytes=int(act_b),
        code_bytes=b.code_bytes(c.kernel, c.variant, bits),
        fits_sram=bool(nbytes + act_b <= SRAM_BYTES), **estimates(instructions), **extra)


def random_layer(rows, cols, remaining, act_bits, seed=0, per_row=False, bias=True):
    """A seeded random int8 layer with exactly round(remaining * rows * cols) nonzero weights,
    its requantization (a plausible per-tensor or per-row scale) and one input sample."""
    from mam_tf.deploy import reference

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


def bench_layer(units=128, inputs=16384, remaining=DEFAULT_REMAINING, act_bits=(16, 8), seed=0,
                b: Optional[McuBuild] = None, check=True, progress=True) -> list[dict]:
    """Instruction counts of every kernel on one random layer (``inputs`` -> ``units``) per
    (act_bits, remaining); its records give the sizes as ``units`` (the weight matrix's rows) and
    ``inputs``.

    The sparse kernels (MAM and MAC, portable and, where built, optimized) run at each
    remaining fraction; the dense MAC and CMSIS-NN (when built in) once per act_bits on the
    same matrix at 100% (their work does not depend on zeros). With ``check`` every output is
    compared with the host core's and a mismatch raises.
    """
    from mam_tf.deploy.offset_csr import encode

    rows, cols = units, inputs
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
    # The fixed cost of a row, measured directly: the same layer with every row empty (no
    # entry: the row's set-up, bias and requantization only). The fit's per-row figure holds
    # it plus what grows with a row's length slower than linearly: the MAM kernels' updates of
    # a running max or min (about ln(entries) of each per random row) and the tails.
    fixed = {}
    for bits in act_bits:
        w, x, bias, mult, shift, zx, zy = random_layer(rows, cols, 0.0, bits, seed)
        kw = dict(bias=bias, input_zero_point=zx, output_zero_point=zy)
        calls = [KernelCall(k, v, x, mult, shift, csr=encode(w), **kw)
                 for k in ("mam_sparse", "mac_sparse") for v in variants]
        for c, (y, count) in zip(calls, run_calls(calls, b)):
            if check and not np.array_equal(y, host_output(c)):
                raise McuError(f"mcu: {c.variant} {c.kernel} int{bits} on empty rows differs "
                               "from the host core")
            fixed[(c.kernel, c.variant, bits)] = count / rows
    for rec in records:  # the fit over the kept fractions: cost per entry and per row
        key = (rec["kernel"], rec["variant"], rec["act_bits"])
        fit = fit_rows(records).get(key)
        if fit:
            rec["fit_per_entry"], rec["fit_per_row"] = fit
        if key in fixed:
            rec["empty_row"] = fixed[key]
    return records


def bench_model(tflite, b: Optional[McuBuild] = None, seed=0, check=True,
                log=print) -> list[dict]:
    """The same figures for every MAM_SPARSE / MAC_SPARSE op of a converted model, with its
    real matrices (a random input of the op's type and zero point: the portable kernels' count
    does not depend on the values, the ARMv7E-M MAM kernels' moves slightly with them, as
    their max/min updates do), beside the dense MAC (and CMSIS-NN when built in) on the
    decoded matrix."""
    from mam_tf.deploy import flatbuffer as fb
    from mam_tf.deploy import options
    from mam_tf.deploy import node

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
        step = node.prepare(model, sg, i)  # the device's Prepare, checks included
        m, n = step.csr.shape
        info = np.iinfo(step.dtype)
        x = rng.integers(info.min, info.max + 1, size=(1, n)).astype(step.dtype)
        kw = dict(bias=step.bias, input_zero_point=step.input_zero_point,
                  output_zero_point=step.output_zero_point,
                  act_min=step.act_min, act_max=step.act_max)
        name = sg.tensors[step.output].name.decode()
        kernel = "mam_sparse" if kind == options.MAM_SPARSE else "mac_sparse"
        calls = [KernelCall(kernel, v, x, step.multiplier, step.shift, csr=step.csr, **kw)
                 for v in variants]
        dense = step.csr.decode()
        calls.append(KernelCall("mac_dense", "portable", x, step.multiplier, step.shift,
                                weights=dense, **kw))
        per_row = np.atleast_1d(step.multiplier).size > 1
        if b.cmsis_nn and per_row and step.dtype == np.int16:
            log(f"op {i} ('{name}'): CMSIS-NN has no per-channel int16 fully connected kernel; "
                "no CMSIS-NN figure for it")
        elif b.cmsis_nn:
            calls.append(KernelCall("cmsis_fc", "cmsis", x, step.multiplier, step.shift,
                                    weights=dense, **kw))
        kept = np.count_nonzero(dense) / dense.size
        for c, (y, count) in zip(calls, run_calls(calls, b)):
            if check and not np.array_equal(y, host_output(c)):  # CMSIS-NN: the dense MAC's
                raise McuError(f"mcu: {c.variant} {c.kernel} of op {i} ('{name}') differs "
                               "from the host core")
            records.append(_record(c, count, b, kept, op_index=i, op_name=name,
                                   checked=bool(check)))
    if not records:
        raise ValueError(f"mcu: {tflite} holds no MAM_SPARSE / MAC_SPARSE op")
    return records


def sparse_ops_on_device(tflite, x_raw, b: Optional[McuBuild] = None, probe="auto") -> list[dict]:
    """Every MAM_SPARSE / MAC_SPARSE op of a converted model on the emulated Cortex-M7, on the
    rows it really reads: each sample of ``x_raw`` (the model input's integer type) runs through
    the host runtime (:class:`mam_tf.deploy.runtime.Interpreter`), and each sparse op's input
    there (``[rows, N]``: the tokens of the sample) goes through every kernel variant the build
    has. Returns one record per (op, variant, sample): ``op_index``, ``op_name``, ``kernel``,
    ``variant``, ``rows``, ``shape`` (M, N), ``instructions`` and ``equal`` (the device's output
    is the host runtime's tensor, bit for bit). ``probe`` goes to the host runtime (``False``
    for a model this process has checked already: the probe runs TFLite-Micro's kernels in a
    child process, which takes seconds)."""
    from mam_tf.deploy import flatbuffer as fb
    from mam_tf.deploy import node
    from mam_tf.deploy import options
    from mam_tf.deploy.runtime import Interpreter

    b = b or build()
    data = bytes(tflite) if isinstance(tflite, (bytes, bytearray)) else Path(tflite).read_bytes()
    model = fb.load(data)
    sg = model.subgraphs[0]
    kinds = {options.MAM_SPARSE: "mam_sparse", options.MAC_SPARSE: "mac_sparse"}
    steps = [(i, kinds[fb.op_name(model, op)], node.prepare(model, sg, i))
             for i, op in enumerate(sg.operators) if fb.op_name(model, op) in kinds]
    if not steps:
        raise ValueError(f"mcu: {tflite if isinstance(tflite, (str, Path)) else 'the model'} "
                         "holds no MAM_SPARSE / MAC_SPARSE op")
    variants = ["portable"] + (["optimized"] if b.optimized else [])
    interp = Interpreter(data, probe=probe)
    calls, meta, want = [], [], []
    x_raw = np.asarray(x_raw)
    for k in range(len(x_raw)):
        interp.run_raw(x_raw[k:k + 1])
        for i, kernel, step in steps:
            x = interp.tensors[step.input].reshape(-1, step.csr.shape[1])
            for v in variants:
                calls.append(KernelCall(kernel, v, x, step.multiplier, step.shift, csr=step.csr,
                                        bias=step.bias, input_zero_point=step.input_zero_point,
                                        output_zero_point=step.output_zero_point,
                                        act_min=step.act_min, act_max=step.act_max))
                want.append(interp.tensors[step.output].reshape(x.shape[0], -1))
                meta.append(dict(op_index=i, op_name=sg.tensors[step.output].name.decode(),
                                 kernel=kernel, variant=v, rows=int(x.shape[0]),
                                 shape=list(step.csr.shape), sample=k))
    records = []
    for m, w, (y, count) in zip(meta, want, run_calls(calls, b)):
        records.append({**m, "instructions": int(count), "equal": bool(np.array_equal(y, w))})
    return records


def fit_rows(records) -> dict:
    """Least-squares instructions = a * entries + c * rows + k over the remaining fractions
    of one (kernel, variant, act_bits): (a per entry, c per row) where the rows are fixed,
    so c * rows + k is reported as the per-row cost (call cost included)."""
    fits = {}
    groups = {}
    for r in records:
        if r["kernel"].endswith("_sparse"):
            groups.setdefault((r["kernel"], r["variant"], r["act_bits"], r["units"]), []).append(r)
    for (k, v, bits, rows), rs in groups.items():
        if len({r["entries"] for r in rs}) < 2:
            continue
        e = np.array([r["entries"] for r in rs], float)
        y = np.array([r["instructions"] for r in rs], float)
        slope, icpt = np.polyfit(e, y, 1)
        fits[(k, v, bits)] = (float(slope), float(icpt) / rows)
    return fits
