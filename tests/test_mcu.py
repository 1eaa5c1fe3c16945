"""The kernels on the emulated Cortex-M7 (QEMU mps2-an500): bit-exact with the host core, and
instruction counts that are exact and repeatable.

Skipped with the reason when arm-none-eabi-gcc / newlib / qemu-system-arm are missing;
scripts/test.sh installs them and sets MAM_TF_REQUIRE_MCU=1, so there a missing or broken
toolchain fails instead. The CMSIS-NN test needs a library the user built
($MAM_TF_CMSIS_NN_LIB, $MAM_TF_CMSIS_NN_INCLUDE) and skips without it.
"""
import json
import os

import numpy as np
import pytest

from mam_tf.bench import mcu as bm
from mam_tf.deploy import native
from mam_tf.deploy import reference
from mam_tf.deploy.offset_csr import encode

_OK, _WHY = bm.toolchain_available()
if os.environ.get("MAM_TF_REQUIRE_MCU") == "1" and not _OK:
    raise RuntimeError(f"MAM_TF_REQUIRE_MCU=1 but the Cortex-M7 toolchain is unusable: {_WHY}")
needs_mcu = pytest.mark.skipif(not _OK, reason=f"Cortex-M7 under QEMU unavailable: {_WHY}")


def test_missing_tools_are_named(monkeypatch, tmp_path, capsys):
    from mam_tf import cli

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    ok, why = bm.toolchain_available()
    assert not ok and "arm-none-eabi-gcc is not on PATH" in why and "gcc-arm-none-eabi" in why
    assert cli.main(["bench", "mcu", "--quick"]) == 1
    assert "arm-none-eabi-gcc is not on PATH" in capsys.readouterr().out


def test_build_key_follows_the_kernel_sources(monkeypatch, tmp_path):
    """A cached result keyed by build_key() is redone when a kernel source changes."""
    import shutil

    from mam_tf.device import mcu

    ops = tmp_path / "tflm_ops"
    shutil.copytree(mcu._OPS, ops, ignore=shutil.ignore_patterns("build*"))
    monkeypatch.setattr(mcu, "_OPS", ops)
    for var in ("MAM_TF_CMSIS_NN_LIB", "MAM_TF_CMSIS_NN_INCLUDE", "MAM_TF_TFLM_LIB"):
        monkeypatch.delenv(var, raising=False)
    before = mcu.build_key()
    assert mcu.build_key() == before
    kernel = ops / "src" / "cortex_m" / "sparse_kernels.c"
    kernel.write_text(kernel.read_text() + "\n/* changed */\n")
    assert mcu.build_key() != before


@pytest.fixture(scope="module")
def fw():
    return bm.build()


def _layer(rng, m, n, dtype, per_row, with_bias, activation, density=0.3):
    """A random layer whose rows cover every shape the kernels branch on: empty rows, full
    rows, a lone far column (skips > 255: dummy entries), random rows."""
    w = rng.integers(-128, 128, size=(m, n)).astype(np.int8)
    w[w == 0] = 1
    w[rng.random((m, n)) >= density] = 0
    w[0] = 0                                   # empty
    w[1] = rng.choice([-128, -3, 5, 127], n)   # full
    w[2] = 0
    w[2, n - 1] = -1                           # one entry after (n - 1) // 256 dummies
    w[3] = 0
    w[3, [0, 300, 301, n - 2]] = [7, -9, 127, -128]
    info = np.iinfo(dtype)
    zx, zy = (-5, 3) if dtype == np.int8 else (0, 0)
    acc = 127.0 * info.max * np.sqrt(density * n)
    k = m if per_row else 1
    mult, shift = reference.quantize_multipliers(rng.uniform(0.3, 3.0, k) * info.max / acc)
    out_scale = 0.05 if dtype == np.int8 else 1e-3
    lo, hi = reference.activation_range(activation, out_scale, zy, dtype)
    bias = None
    if with_bias:
        bias = rng.integers(-int(acc), int(acc), m).astype(np.int32 if dtype == np.int8 else np.int64)
    return w, mult, shift, bias, dict(input_zero_point=zx, output_zero_point=zy, act_min=lo,
                                      act_max=hi)


def _calls(fw, rng):
    calls = []
    cases = [(dt, per_row, with_bias, act)
             for dt in (np.int8, np.int16) for per_row in (False, True)
             for with_bias in (False, True) for act in (0, 1, 2, 3)]
    variants = ["portable"] + (["optimized"] if fw.optimized else [])
    for k, (dt, per_row, with_bias, act) in enumerate(cases):
        m, n = (6, 700) if k % 2 else (5, 33)
        batches = 3 if k % 3 else 1
        w, mult, shift, bias, kw = _layer(rng, m, max(n, 4), dt, per_row, with_bias, act) \
            if n > 300 else _small(rng, m, n, dt, per_row, with_bias, act)
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max + 1, (batches, w.shape[1])).astype(dt)
        csr = encode(w)
        skew = (k % 4, (k // 4) % 4)  # values / offsets at every alignment and co-alignment
        for kernel in ("mam_sparse", "mac_sparse"):
            for v in variants:
                calls.append(bm.KernelCall(kernel, v, x, mult, shift, csr=csr, bias=bias,
                                           skew=skew, **kw))
        for kernel in ("mac_dense", "mam_dense"):
            calls.append(bm.KernelCall(kernel, "portable", x, mult, shift, weights=w, bias=bias,
                                       **kw))
    # Small values at scale 1 (or just under): every accumulator reaches the output unrounded,
    # so an error of 1 anywhere shows.
    for dt in (np.int8, np.int16):
        for real in (1.0, 0.999):
            w = rng.integers(-4, 5, size=(9, 600)).astype(np.int8)
            w[rng.random(w.shape) < 0.7] = 0
            w[0] = 0
            w[1, :] = 3
            x = rng.integers(-4, 5, (2, 600)).astype(dt)
            mult, shift = reference.quantize_multipliers([real])
            bias = rng.integers(-9, 10, 9).astype(np.int32 if dt == np.int8 else np.int64)
            kw = dict(input_zero_point=1 if dt == np.int8 else 0)
            for kernel in ("mam_sparse", "mac_sparse"):
                for v in variants:
                    calls.append(bm.KernelCall(kernel, v, x, mult, shift, csr=encode(w),
                                               bias=bias, **kw))
    return calls


def _small(rng, m, n, dt, per_row, with_bias, act):
    w, mult, shift, bias, kw = _layer(rng, m, 400, dt, per_row, with_bias, act)
    w = w[:, :n].copy()
    w[3] = 0
    w[3, [0, n - 1]] = [7, -9]
    return w, mult, shift, bias, kw


@needs_mcu
def test_every_kernel_in_qemu_equals_the_host_core(fw):
    rng = np.random.default_rng(7)
    calls = _calls(fw, rng)
    kinds = {(c.kernel, c.variant, c.x.dtype.itemsize) for c in calls}
    skews = {(c.x.dtype.itemsize, c.skew) for c in calls if c.csr is not None}
    assert skews >= {(size, (a, b)) for size in (1, 2) for a in range(4) for b in range(4)}
    assert len(kinds) == (12 if fw.optimized else 8)
    assert any(c.csr is not None and c.csr.num_dummies > 0 for c in calls)
    results = bm.run_calls(calls, fw)
    for c, (y, count) in zip(calls, results):
        want = bm.host_output(c)
        assert y.dtype == want.dtype and y.shape == want.shape
        np.testing.assert_array_equal(
            y, want, err_msg=f"{c.variant} {c.kernel} int{8 * c.x.dtype.itemsize} "
            f"per_row={np.size(c.multiplier) > 1} bias={c.bias is not None} "
            f"clamp=({c.act_min}, {c.act_max}) batches={c.x.shape[0]}")
        assert count > 0
    # The host core's outputs are the numpy reference's (an independent implementation).
    c = calls[0]
    np.testing.assert_array_equal(
        results[0][0], reference.mam_sparse(c.x, c.csr, c.bias, c.multiplier, c.shift,
                                            input_zero_point=c.input_zero_point,
                                            output_zero_point=c.output_zero_point,
                                            act_min=c.act_min, act_max=c.act_max))


@needs_mcu
def test_count_of_a_known_loop_is_exact(fw):
    # The loop body is 2 instructions (subs, bne): n iterations cost exactly 2n more.
    ns = [1, 2, 10, 1000, 54321]
    counts = bm.count_loop(ns, fw)
    assert bm.count_loop(ns, fw) == counts  # repeatable
    for n, c in zip(ns, counts):
        assert 0 <= c - (2 * n + 1) <= 3, (n, c)  # + the instructions loading n
    assert len({c - 2 * n for n, c in zip(ns, counts)}) == 1


@needs_mcu
def test_counts_are_repeatable_and_grow_linearly_with_entries(fw):
    rng = np.random.default_rng(3)
    n = 512
    x = rng.integers(-100, 100, (1, n)).astype(np.int16)
    mult, shift = reference.quantize_multipliers([1e-4])
    calls = []
    for extra in (0, 40, 80):  # entries added to one row before its columns 200..209
        w = np.zeros((4, n), np.int8)
        w[:, 200:210] = 3
        w[2, :extra] = -2
        csr = encode(w)
        assert csr.num_entries == 40 + extra
        for kernel in ("mam_sparse", "mac_sparse"):
            calls.append(bm.KernelCall(kernel, "portable", x, mult, shift, csr=csr))
    first = [count for _, count in bm.run_calls(calls, fw)]
    again = [count for _, count in bm.run_calls(calls, fw)]
    assert first == again
    for k in (0, 1):  # mam, mac: the same cost for each 40 entries more
        c0, c1, c2 = first[k], first[k + 2], first[k + 4]
        assert c2 - c1 == c1 - c0 > 0
        assert (c1 - c0) % 40 == 0  # a whole number of instructions per entry


def _readelf_markers(elf):
    """mcu_mark_begin / mcu_mark_end of ``elf`` read by readelf (the build reads them with nm)."""
    import subprocess

    out = subprocess.run(["arm-none-eabi-readelf", "-s", "--wide", str(elf)], check=True,
                         capture_output=True, text=True).stdout
    value = {f[7]: int(f[1], 16) & ~1 for f in (line.split() for line in out.splitlines())
             if len(f) == 8 and f[7] in ("mcu_mark_begin", "mcu_mark_end")}
    return value["mcu_mark_begin"], value["mcu_mark_end"]


class _Stop(Exception):
    pass


@needs_mcu
def test_each_firmware_is_counted_at_its_own_markers(tmp_path, monkeypatch):
    """QEMU's counting plugin watches the marker addresses of the ELF it runs: the model
    firmware's own, not the bench firmware's. Two firmwares that link the same objects in a
    different order have their markers at different addresses."""
    import subprocess

    from mam_tf.deploy import flatbuffer as fb
    from mam_tf.device import mcu

    fw = tmp_path / "fw"
    fw.mkdir()
    (tmp_path / "filler.c").write_text(
        'void mcu_filler(void) { __asm__ volatile(".rept 64\\n nop\\n .endr"); }\n')
    flags = ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"]
    objs = []
    for src in (mcu._FW / "mcu_markers.c", tmp_path / "filler.c"):
        objs.append(tmp_path / (src.stem + ".o"))
        subprocess.run(["arm-none-eabi-gcc", *flags, f"-I{mcu._FW}", "-c", str(src), "-o",
                        str(objs[-1])], check=True)
    for elf, order in (("mam_bench.elf", objs[::-1]), ("mam_model.elf", objs)):
        subprocess.run(["arm-none-eabi-gcc", *flags, "-nostdlib", "-Wl,-e,mcu_empty",
                        *map(str, order), "-o", str(fw / elf)], check=True)
    truth = {elf: _readelf_markers(fw / elf) for elf in ("mam_bench.elf", "mam_model.elf")}
    assert truth["mam_bench.elf"] != truth["mam_model.elf"]  # else this test shows nothing
    (fw / "mam_bench.cfg").write_text("optimized=0\ncmsis_nn=0\nmodel=1\n")
    info = mcu._describe(lambda cmd, step, log_stdout=True: mcu._run_tool(cmd, step), fw)
    (fw / "build.json").write_text(json.dumps(info))
    b = mcu._load_build(fw)

    s = fb.schema()  # a model of one int8 [1, 4] tensor: enough for run_model to start QEMU
    t = s.TensorT()
    t.shape, t.type, t.buffer, t.name = [1, 4], s.TensorType.INT8, 0, b"x"
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = [t], [0], [0], []
    model = s.ModelT()
    model.version, model.subgraphs, model.buffers, model.operatorCodes = 3, [sg], [s.BufferT()], []

    ran = []

    def qemu(cmd, **kwargs):
        ran.append(cmd)
        raise _Stop

    monkeypatch.setattr(mcu.subprocess, "run", qemu)
    with pytest.raises(_Stop):
        mcu.run_model(fb.pack(model), np.zeros((1, 4), np.int8), b)
    with pytest.raises(_Stop):
        mcu.count_loop([1], b)
    assert len(ran) == 2
    for cmd, elf in zip(ran, ("mam_model.elf", "mam_bench.elf")):
        assert cmd[cmd.index("-kernel") + 1] == str(fw / elf)
        begin, end = truth[elf]
        assert f",begin={begin:#x},end={end:#x}," in cmd[cmd.index("-plugin") + 1]


@needs_mcu
def test_plugin_count_equals_an_execution_trace(fw):
    rng = np.random.default_rng(5)
    w, mult, shift, bias, kw = _layer(rng, 6, 400, np.int8, True, True, 1)
    x = rng.integers(-128, 128, (2, 400)).astype(np.int8)
    csr = encode(w)
    variants = ["portable"] + (["optimized"] if fw.optimized else [])
    calls = [bm.KernelCall(k, v, x, mult, shift, csr=csr, bias=bias, **kw)
             for k in ("mam_sparse", "mac_sparse") for v in variants]
    plugin = [count for _, count in bm.run_calls(calls, fw)]
    assert bm.count_by_trace(calls, fw) == plugin


@needs_mcu
def test_bench_cli_writes_records_and_plot(tmp_path, capsys):
    from mam_tf import cli

    assert cli.main(["bench", "mcu", "--quick", "--remaining", "1", "0.1", "--act-bits", "8",
                     "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "CMSIS-NN: not given" in printed or "CMSIS-NN: given" in printed
    assert "equals the host core" in printed
    records = json.loads((tmp_path / "mcu.json").read_text())
    assert (tmp_path / "mcu.png").stat().st_size > 10000
    keys = {"kernel", "variant", "act_bits", "units", "inputs", "remaining", "entries",
            "instructions", "instr_per_entry", "bytes"}
    assert all(keys <= set(r) for r in records)
    got = {(r["kernel"], r["variant"], r["remaining"]) for r in records}
    assert ("mam_sparse", "portable", 0.1) in got and ("mac_dense", "portable", 1.0) in got
    for r in records:
        assert r["units"] == 16 and r["inputs"] == 1024 and r["act_bits"] == 8
        assert r["instr_per_entry"] == pytest.approx(r["instructions"] / r["entries"])
        if r["kernel"].endswith("_sparse"):
            assert r["entries"] == round(r["remaining"] * 16 * 1024)  # no dummies: seeded
            assert r["bytes"] == 2 * r["entries"] + 2 * 16 + 4 * 16 + 8 + 28
            # the fixed cost of a row, measured on empty rows: below any row with entries
            assert 0 < r["empty_row"] < r["instr_per_row"], r
    assert "empty row" in printed


@needs_mcu
def test_bench_model_counts_every_sparse_op_of_a_converted_model(tmp_path, fw):
    from mam_tf.deploy import flatbuffer as fb
    from mam_tf.deploy import options

    model = _converted_model(tmp_path)
    records = bm.bench_model(model, fw)
    tfl = fb.load(model.read_bytes())
    n_ops = sum(fb.op_name(tfl, op) in (options.MAM_SPARSE, options.MAC_SPARSE)
                for op in tfl.subgraphs[0].operators)
    assert n_ops == 2
    assert len({r["op_index"] for r in records}) == n_ops
    assert {r["kernel"] for r in records} >= {"mam_sparse", "mac_sparse", "mac_dense"}
    assert all(r["checked"] for r in records)


def _converted_model(tmp_path):
    """A small pruned model converted by the project's converter: MAM_SPARSE, then MAC_SPARSE."""
    from mam_tf import MAMDense
    from mam_tf.train.compat import keras
    from mam_tf.deploy.convert import convert

    rng = np.random.default_rng(0)
    inp = keras.Input((300,))
    mam = MAMDense(16)
    dense = keras.layers.Dense(8)
    model = keras.Model(inp, dense(mam(inp)))
    for layer, keep in ((mam, 0.1), (dense, 0.2)):
        k = layer.kernel.numpy()
        k[rng.random(k.shape) >= keep] = 0
        layer.kernel.assign(k)
    data = rng.standard_normal((32, 300)).astype(np.float32)
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(model, data, mac_sparse_below=0.5))
    return path


CMSIS_LIB = os.environ.get("MAM_TF_CMSIS_NN_LIB")
CMSIS_INC = os.environ.get("MAM_TF_CMSIS_NN_INCLUDE")


@needs_mcu
@pytest.mark.skipif(not (CMSIS_LIB and CMSIS_INC),
                    reason="CMSIS-NN not given: set MAM_TF_CMSIS_NN_LIB to a CMSIS-NN static "
                    "library built for Cortex-M7 and MAM_TF_CMSIS_NN_INCLUDE to its Include/")
def test_cmsis_nn_fully_connected_equals_our_mac_kernels():
    fw = bm.build(CMSIS_LIB, CMSIS_INC)
    assert fw.cmsis_nn
    rng = np.random.default_rng(11)
    calls = []
    for dt, per_row in ((np.int8, False), (np.int8, True), (np.int16, False)):
        for with_bias in (False, True):
            w, mult, shift, bias, kw = _layer(rng, 7, 600, dt, per_row, with_bias, 1)
            info = np.iinfo(dt)
            x = rng.integers(info.min, info.max + 1, (2, 600)).astype(dt)
            calls.append(bm.KernelCall("cmsis_fc", "cmsis", x, mult, shift, weights=w,
                                       bias=bias, **kw))
            calls.append(bm.KernelCall("mac_sparse", "portable", x, mult, shift, csr=encode(w),
                                       bias=bias, **kw))
    results = bm.run_calls(calls, fw)
    for i in range(0, len(calls), 2):
        cmsis, ours = results[i][0], results[i + 1][0]
        np.testing.assert_array_equal(cmsis, ours)
        np.testing.assert_array_equal(ours, bm.host_output(calls[i + 1]))


TFLM_LIB = os.environ.get("MAM_TF_TFLM_LIB")


needs_tflm = pytest.mark.skipif(
    not (TFLM_LIB and os.environ.get("MAM_TF_TFLM_ROOT")
         and os.environ.get("MAM_TF_FLATBUFFERS_INCLUDE")),
    reason="TFLite-Micro for Cortex-M7 not given: set MAM_TF_TFLM_LIB to a static library "
    "built with TFLM's own build, MAM_TF_TFLM_ROOT to its tree and MAM_TF_FLATBUFFERS_INCLUDE "
    "to flatbuffers 25.9.23's include/")


@needs_mcu
@needs_tflm
def test_whole_model_through_tflm_on_the_cortex_m7_equals_the_host_runtime(tmp_path):
    from mam_tf.deploy.runtime import Interpreter

    fw = bm.build()
    assert fw.model_elf is not None
    path = _converted_model(tmp_path)
    host = Interpreter(path)
    x = host.quantize_input(np.random.default_rng(2).standard_normal((5, 300)))
    got = bm.run_model(path, x, fw)
    np.testing.assert_array_equal(got["output"], host.run_raw(x))
    names = [name for name, _ in got["ops"]]
    assert "MAM_SPARSE" in names and "MAC_SPARSE" in names
    assert all(count > 0 for _, count in got["ops"])
    assert 0 < got["arena_used"] < 4 << 20


def _tiny_block(tmp_path):
    """An untrained transformer block (fixed seed, MLP kept at 10%) converted to int8: the
    attention's BATCH_MATMUL / TRANSPOSE / SOFTMAX, the LayerNorms' SQUARED_DIFFERENCE / RSQRT
    and the MLP's two MAM_SPARSE ops."""
    from mam_tf.deploy.convert import convert
    from mam_tf.models import token_transformer
    from mam_tf.models.token_transformer import MLP_LAYERS

    rng = np.random.default_rng(3)
    model = token_transformer(4, 6, 3, "mam", width=8, heads=2, hidden=16, beta=0.0, seed=3)
    for name in MLP_LAYERS:
        layer = model.get_layer(name)
        k = layer.kernel.numpy()
        k[rng.random(k.shape) >= 0.1] = 0
        layer.kernel.assign(k)
    path = tmp_path / "block.tflite"
    path.write_bytes(convert(model, rng.standard_normal((32, 4, 6)).astype(np.float32)))
    return path


@needs_mcu
@needs_tflm
def test_a_whole_transformer_block_on_the_cortex_m7_equals_the_host_runtime(tmp_path):
    """Every op of the block through TFLite-Micro on the emulated M7, bit for bit against the
    host runtime (mam_tf.deploy.runtime: the C core and TFLM's host interpreter). Cheap: one
    conversion of a tiny untrained block and one QEMU run, once the firmware is built."""
    from mam_tf.deploy import flatbuffer as fb
    from mam_tf.deploy.runtime import Interpreter

    path = _tiny_block(tmp_path)
    tfl = fb.load(path.read_bytes())
    converted = [fb.op_name(tfl, op) for op in tfl.subgraphs[0].operators]
    assert {"BATCH_MATMUL", "TRANSPOSE", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX",
            "MEAN"} <= set(converted) and converted.count("MAM_SPARSE") == 2
    host = Interpreter(path)
    # 16 samples: enough that one weight of the first layer changed by 1 changes an output
    x = host.quantize_input(np.random.default_rng(4).standard_normal((16, 4, 6)))
    want = host.run_raw(x)
    assert len({row.tobytes() for row in want}) > 1  # the samples tell the outputs apart
    got = bm.run_model(path, x, bm.build())
    assert got["output"].dtype == want.dtype
    np.testing.assert_array_equal(got["output"], want)
    assert [name for name, _ in got["ops"]] == converted  # every op profiled, in order
    assert all(count > 0 for _, count in got["ops"])
