"""The ARMv7E-M sparse kernels (tflm_ops/src/cortex_m/sparse_kernels.c) on the emulated
Cortex-M7, against the numpy reference (mam_tf.deploy.reference), on the shapes their code branches
on: rows of 0..40 entries (every remainder of the 16-, 8- and 4-entry groups, every start
alignment), full rows, dummy entries, a max or a min that moves in every group, ties, zero
products, extreme values (-128 x -32768, x - zx = +-255), accumulators that leave int32 (int16
MAC) or wrap it (int8 MAC with a bias), batches. A second set uses requantization scale 1 and
small values, so that the output shows the accumulator itself.

Runs through the firmware of tests/test_mcu.py (mam_tf.bench.mcu); skipped with the reason
when the Cortex-M7 toolchain or QEMU is missing, or the firmware was built without the
optimized kernels. The last test builds tflm_ops/firmware/kernel_check.c, a random
differential check (optimized against portable, on the M7) that also places the values array
at every address modulo 4 relative to the offsets, which the bench firmware cannot.
"""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mam_tf.bench import mcu as bm
from mam_tf.deploy import reference
from mam_tf.deploy.offset_csr import encode

_OK, _WHY = bm.toolchain_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"Cortex-M7 under QEMU unavailable: {_WHY}")

N = 1100  # four dummy entries fit in a row (a gap of 1098 columns)
RAMP = 200  # x[:RAMP] rises: products along such a row set a new max (or min) every entry


@pytest.fixture(scope="module")
def fw():
    b = bm.build()
    if not b.optimized:
        pytest.skip("the firmware has no ARMv7E-M kernels (the compiler sets no __ARM_FEATURE_DSP)")
    return b


def _weights(rng, extreme):
    """int8 [rows, N]: rows holding 0..40 entries at random columns, then the special rows."""
    pick = (lambda k: rng.choice([-128, 127], k)) if extreme else \
        (lambda k: rng.choice(np.r_[-128:0, 1:128], k))
    rows = []
    for count in range(41):
        r = np.zeros(N, np.int8)
        r[rng.choice(N, count, replace=False)] = pick(count)
        rows.append(r)
    full = pick(N).astype(np.int8)
    rows.append(full)                                     # count == N: no product 0
    rows.append(-full)                                    # (127 -> -127, -128 stays)
    rows.append(np.full(N, -128, np.int8))                # with x = -32768: sum > 2^31
    for w in (127, -128, 1, -1):                          # every product a new max / min
        r = np.zeros(N, np.int8)
        r[:RAMP] = w
        rows.append(r)
    r = np.zeros(N, np.int8)
    r[[0, N - 1]] = pick(2)                               # four dummies between them
    rows.append(r)
    r = np.zeros(N, np.int8)
    r[RAMP:RAMP + 37] = pick(37)                          # products 0 (x - zx is 0 there)
    rows.append(r)
    r = np.zeros(N, np.int8)
    r[rng.choice(N, 300, replace=False)] = 3              # ties: equal weights, repeated x
    rows.append(r)
    return np.stack(rows)


def _inputs(rng, dt, zx, extreme, small):
    info = np.iinfo(dt)
    lo, hi = (-small, small) if small else (info.min, info.max)
    x = rng.integers(lo, hi + 1, (3, N))
    if extreme:
        x[1] = rng.choice([info.min, info.max], N)
        x[0, RAMP:] = info.min
    x[:, :RAMP] = np.linspace(lo, hi, RAMP).round()       # rising
    x[2, :RAMP] = x[2, :RAMP][::-1]                       # falling in the last batch row
    x[:, RAMP:RAMP + 37] = zx                             # x - zx = 0
    return x.astype(dt)


def _accumulators(kernel, x, w, zx, bias):
    """The integer accumulators of docs/operator-contract.md section 3, straight from the dense
    matrix."""
    p = (x.astype(np.int64) - zx)[:, None, :] * w.astype(np.int64)[None, :, :]
    if kernel == "mac_sparse":
        acc = p.sum(axis=2)
    else:
        acc = p.max(axis=2) + p.min(axis=2)  # the pruned zeros are products 0 of the row
    return acc + (0 if bias is None else bias.astype(np.int64))


def _calls(rng, kernel, dt, *, extreme, per_row, with_bias, activation, small=0, scale=None):
    w = _weights(rng, extreme)
    m = w.shape[0]
    s8 = dt == np.int8
    zx = 0
    if s8:
        zx = int(rng.integers(-2, 3)) if small else int(rng.choice([-128, 127, -5]))
    zy = int(rng.integers(-20, 20)) if s8 else 0
    x = _inputs(rng, dt, zx, extreme, small)
    bias = None
    if with_bias:
        if s8 and kernel == "mac_sparse" and extreme:
            bias = np.full(m, 2**31 - 1, np.int64)        # the int32 sum wraps, as in TFLite
            bias[::2] = -2**31
        else:  # about the size of each row's accumulators
            size = np.abs(_accumulators(kernel, x, w, zx, None)).max(axis=0)
            bias = np.array([rng.integers(-s, s + 1) for s in size])
        bias = bias.astype(np.int32 if s8 else np.int64)
    info = np.iinfo(dt)
    if scale is None:  # spread each row's outputs over the output range
        acc = np.abs(_accumulators(kernel, x, w, zx, None)).max(axis=0)
        real = np.minimum(0.9 * info.max / np.maximum(acc, 1), 1.0)
    else:
        real = np.full(m, float(scale))
    if not per_row:
        real = real[:1] * 0 + real.min()
    mult, shift = reference.quantize_multipliers(real)
    out_scale = 0.05 if s8 else 1e-3
    lo, hi = reference.activation_range(activation, out_scale, zy, dt)
    csr = encode(w)
    assert not extreme or csr.num_dummies >= 4
    kw = dict(input_zero_point=zx, output_zero_point=zy, act_min=lo, act_max=hi)
    return [bm.KernelCall(kernel, v, x, mult, shift, csr=csr, bias=bias, **kw)
            for v in ("optimized", "portable")], w


def _truth(c):
    fn = reference.mam_sparse if c.kernel == "mam_sparse" else reference.mac_sparse
    return fn(c.x, c.csr, c.bias, c.multiplier, c.shift, input_zero_point=c.input_zero_point,
              output_zero_point=c.output_zero_point, act_min=c.act_min, act_max=c.act_max)


def _check(fw, groups):
    calls = [c for cs, _ in groups for c in cs]
    results = bm.run_calls(calls, fw)
    for c, (y, _) in zip(calls, results):
        np.testing.assert_array_equal(
            y, _truth(c), err_msg=f"{c.variant} {c.kernel} int{8 * c.x.dtype.itemsize} "
            f"zx={c.input_zero_point} per_row={np.size(c.multiplier) > 1} "
            f"bias={c.bias is not None} clamp=({c.act_min}, {c.act_max})")
    return calls, results


@pytest.mark.parametrize("dt", [np.int8, np.int16], ids=["int8", "int16"])
def test_optimized_kernels_equal_the_reference_on_edge_cases(fw, dt):
    rng = np.random.default_rng(2026 + np.dtype(dt).itemsize)
    groups = []
    for k, (kernel, extreme, per_row, with_bias) in enumerate(
            (kn, e, pr, b) for kn in ("mam_sparse", "mac_sparse") for e in (True, False)
            for pr in (True, False) for b in (True, False)):
        groups.append(_calls(rng, kernel, dt, extreme=extreme, per_row=per_row,
                             with_bias=with_bias, activation=k % 4))
    calls, results = _check(fw, groups)
    # The cases reach what they are meant to reach: int16 MAC sums beyond int32, int8 MAC
    # sums wrapped by the bias, and outputs that are not all clamped.
    wide = []
    for (cs, w) in groups:
        c = cs[0]
        if c.kernel == "mac_sparse" and c.csr.values.min() == -128:  # the extreme ones
            wide.append(np.abs(_accumulators("mac_sparse", c.x, w, c.input_zero_point,
                                             c.bias)).max())
    assert max(wide) >= 2**31
    for (y, _), c in zip(results, calls):
        info = np.iinfo(c.x.dtype)
        unclamped = c.act_max - c.act_min > info.max  # NONE, RELU, RELU6 at these scales
        if unclamped and (c.bias is None or np.abs(c.bias.astype(np.int64)).max() < 2**30):
            assert len(np.unique(y)) > 3, f"{c.kernel} {c.variant}: outputs barely vary"


@pytest.mark.parametrize("dt", [np.int8, np.int16], ids=["int8", "int16"])
def test_optimized_kernels_accumulators_show_through_scale_one(fw, dt):
    # Requantization by 1.0 and values small enough that max + min (and the sum, scaled by
    # 1/64) stay inside the output type: a max or min off by one product shows.
    rng = np.random.default_rng(11 + np.dtype(dt).itemsize)
    small = 3 if dt == np.int8 else 100
    groups = [_calls(rng, "mam_sparse", dt, extreme=False, per_row=pr, with_bias=False,
                     activation=0, small=small, scale=1.0 if dt == np.int16 else 1 / 16)
              for pr in (True, False)]
    groups += [_calls(rng, "mac_sparse", dt, extreme=False, per_row=True, with_bias=False,
                      activation=0, small=small, scale=1 / 64)]
    calls, results = _check(fw, groups)
    y = results[0][0]
    info = np.iinfo(dt)
    assert ((y > info.min) & (y < info.max)).mean() > 0.9  # not clamped: the sums show


def test_optimized_kernels_cost_fewer_instructions_per_entry(fw):
    # The optimized kernels' reason to be: on one 5%-dense layer, well under the portable
    # kernels' count (which costs 9 to 16 instructions per entry).
    rng = np.random.default_rng(5)
    m, n = 8, 4096
    w = rng.integers(-128, 128, (m, n)).astype(np.int8)
    w[(rng.random((m, n)) >= 0.05) | (w == 0)] = 0
    csr = encode(w)
    mult, shift = reference.quantize_multipliers(np.full(m, 1e-3))
    calls = []
    for dt in (np.int8, np.int16):
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max + 1, (1, n)).astype(dt)
        for kernel in ("mam_sparse", "mac_sparse"):
            for v in ("portable", "optimized"):
                calls.append(bm.KernelCall(kernel, v, x, mult, shift, csr=csr))
    results = bm.run_calls(calls, fw)
    for i in range(0, len(calls), 2):
        (y_p, n_p), (y_o, n_o) = results[i], results[i + 1]
        np.testing.assert_array_equal(y_o, y_p)
        assert n_o < 0.65 * n_p, (calls[i].kernel, calls[i].x.dtype, n_p, n_o)


def test_kernel_check_firmware_finds_no_difference_on_random_layers(tmp_path):
    ops = Path(__file__).resolve().parents[1] / "tflm_ops"
    gcc, qemu = shutil.which("arm-none-eabi-gcc"), shutil.which("qemu-system-arm")
    elf = tmp_path / "kernel_check.elf"
    flags = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard", "-O2",
             "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{ops / 'include'}"]
    # The core as a firmware project takes it: every C file under src/ (cortex_m/ included).
    sources = [ops / "firmware" / "startup.c", ops / "firmware" / "kernel_check.c",
               *sorted((ops / "src").rglob("*.c"))]
    subprocess.run([gcc, *flags, "--specs=rdimon.specs", "-nostartfiles",
                    f"-T{ops / 'firmware' / 'mps2_an500.ld'}", *map(str, sources), "-lm",
                    "-o", str(elf)], check=True, capture_output=True, text=True)
    run = subprocess.run([qemu, "-M", "mps2-an500", "-nographic", "-monitor", "none",
                          "-serial", "none", "-semihosting-config", "enable=on,target=native",
                          "-kernel", str(elf)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "600 cases, 0 mismatches" in run.stdout, \
        run.stdout[-3000:] + run.stderr[-1000:]
