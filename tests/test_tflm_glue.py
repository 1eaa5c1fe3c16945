"""The TFLM glue (tflm_ops/tflm) inside TFLite-Micro's own interpreter.

Needs a tflite-micro source tree at the commit the ``tflite-micro`` wheel was built from
(88f8587 for tflite-micro==0.dev20260203175027): set ``MAM_TF_TFLM_ROOT`` to it, and
``MAM_TF_FLATBUFFERS_INCLUDE`` to flatbuffers 25.9.23's ``include/`` unless the tree holds
TFLM's own download of it. The glue is built with CMake into a temporary folder, loaded
with ``ctypes.CDLL(..., RTLD_GLOBAL)`` and registered through the interpreter's
``custom_op_registerers``. Then:

(a) models from ``mam_tf.deploy.convert`` (int8 and 16x8, per-row and per-tensor weight scales,
    with and without bias, fused activations, a skip > 255 columns, and MAC_SPARSE made by
    flipping the custom code) give, in TFLM, exactly what ``mam_tf.deploy.runtime`` computes;
(b) corrupted models are refused while TFLM allocates/prepares them, with the glue's
    one-line message, never a crash: they run in a worker process, and a worker that dies
    fails the case it was running.
"""
import contextlib
import ctypes
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mam_tf import MAMDense
from mam_tf.deploy import options
from mam_tf.train.compat import keras, tf
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy.convert import convert
from mam_tf.deploy.runtime import Interpreter

from corruptions import CORRUPTIONS, corrupt as _corrupt, model_a as _model_a, prune as _prune

TFLM_ROOT = os.environ.get("MAM_TF_TFLM_ROOT")
pytestmark = pytest.mark.skipif(
    not TFLM_ROOT,
    reason="MAM_TF_TFLM_ROOT is not set: point it at a tflite-micro checkout of commit 88f8587 "
           "(the tflite-micro wheel's source; see docs/deployment.md) to build and test the "
           "TFLM glue",
)
REPO = Path(__file__).resolve().parent.parent
REGISTERER = "mam_tf_register_ops"


# ------------------------------------------------------------------------------------------
# Building and loading the glue
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glue_lib(tmp_path_factory):
    build = tmp_path_factory.mktemp("tflm_glue_build")
    args = ["cmake", "-S", str(REPO / "tflm_ops"), "-B", str(build), f"-DTFLM_ROOT={TFLM_ROOT}",
            "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}"]
    if os.environ.get("MAM_TF_FLATBUFFERS_INCLUDE"):
        args.append(f"-DFLATBUFFERS_INCLUDE_DIR={os.environ['MAM_TF_FLATBUFFERS_INCLUDE']}")
    for cmd in (args, ["cmake", "--build", str(build), "--target", "mam_tf_tflm_python",
                       "-j", str(os.cpu_count() or 1)]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"`{' '.join(cmd)}` failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lib = build / "libmam_tf_tflm.so"
    assert lib.is_file(), f"no {lib} after the build"
    return lib


@pytest.fixture(scope="module")
def tflm(glue_lib):
    ctypes.CDLL(str(glue_lib), mode=ctypes.RTLD_GLOBAL)
    from tflite_micro.python.tflite_micro import runtime

    return runtime


@contextlib.contextmanager
def _captured_fd(fd):
    """What C code writes to file descriptor fd (MicroPrintf writes to the process's)."""
    out = {"text": ""}
    with tempfile.TemporaryFile() as tmp:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            out["text"] = tmp.read().decode("utf-8", "replace")


def _interpreter(tflm, tflite, arena_size=1 << 17):
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a resource-variable count
        return tflm.Interpreter.from_bytes(tflite, custom_op_registerers=[REGISTERER],
                                           arena_size=arena_size)


def _run_tflm(tflm, tflite, x):
    """TFLM on each sample of x [K, ...] (each shaped like the model's input)."""
    interp = _interpreter(tflm, tflite)
    outs = []
    for sample in x:
        interp.set_input(sample, 0)
        interp.invoke()
        outs.append(np.array(interp.get_output(0)))
    return np.stack(outs)


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
def _model_b():
    """Two MAM layers back to back: wide, no bias, no activation (skips > 255 columns);
    then bias and RELU6. The model's output is a MAM_SPARSE output."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((300,))
    h = MAMDense(12, use_bias=False, name="wide")(inp)
    out = MAMDense(6, activation=tf.nn.relu6, name="top", bias_initializer="random_normal")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    _prune(model.get_layer("wide"), rng, 0.7, gap=(3, 290))
    _prune(model.get_layer("top"), rng, 0.3)
    return model, 300


def _to_mac(tflite):
    """The same model with every MAM_SPARSE op turned into MAC_SPARSE (same tensors)."""
    tfl = fb.load(tflite)
    flipped = 0
    for code in tfl.operatorCodes:
        if code.customCode is not None and code.customCode.decode() == options.MAM_SPARSE:
            code.customCode = options.MAC_SPARSE.encode()
            flipped += 1
    assert flipped == 1
    return fb.pack(tfl)


def _batched(tflite, batch):
    """The model with every [1, ...] activation tensor given a batch dimension ``batch``."""
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    for i, t in enumerate(sg.tensors):
        if not fb.is_constant(tfl, sg, i) and t.shape is not None and len(t.shape) == 2:
            assert t.shape[0] == 1, t.shape
            t.shape = np.array([batch, t.shape[1]], np.int32)
            if t.shapeSignature is not None:
                t.shapeSignature = np.array([batch, t.shape[1]], np.int32)
    return fb.pack(tfl)


_CACHE = {}


def _converted(which, mode, per_row=True):
    key = (which, mode, per_row)
    if key not in _CACHE:
        keras.backend.clear_session()
        model, n = {"a": _model_a, "b": _model_b}[which]()
        data = np.random.default_rng(2).standard_normal((64, n)).astype(np.float32)
        _CACHE[key] = (convert(model, data, mode=mode, per_row=per_row), data)
    return _CACHE[key]


def _inputs(host, data, seed):
    """The calibration data quantized, full-range noise, and the two extremes: [K, 1, N]."""
    x = host.quantize_input(data)
    info = np.iinfo(host.input_dtype)
    rng = np.random.default_rng(seed)
    noise = rng.integers(info.min, info.max + 1, (16,) + x.shape[1:]).astype(host.input_dtype)
    ends = np.stack([np.full(x.shape[1:], info.min), np.full(x.shape[1:], info.max)])
    return np.concatenate([x, noise, ends.astype(host.input_dtype)])[:, None]


CASES = [
    ("a", "int8", True, "mam"), ("a", "int8", False, "mam"), ("a", "int16x8", True, "mam"),
    ("a", "int16x8", False, "mam"), ("b", "int8", True, "mam"), ("b", "int16x8", True, "mam"),
    ("a", "int8", True, "mac"), ("a", "int16x8", True, "mac"), ("b", "int8", True, "mac"),
    ("b", "int16x8", False, "mac"),
]


@pytest.mark.parametrize("which, mode, per_row, kind", CASES,
                         ids=[f"{w}-{m}-{'row' if r else 'tensor'}-{k}" for w, m, r, k in CASES])
def test_tflm_with_the_glue_equals_the_host_runtime(tflm, which, mode, per_row, kind):
    tflite, data = _converted(which, mode, per_row)
    if kind == "mac":
        tflite = _to_mac(tflite)
    tfl = fb.load(tflite)
    names = [fb.op_name(tfl, op) for op in tfl.subgraphs[0].operators]
    assert names.count(f"{kind.upper()}_SPARSE") == (1 if which == "a" else 2), names
    host = Interpreter(tflite, backend="core")
    x = _inputs(host, data, seed=3)
    want = np.stack([host.run_raw(s) for s in x])
    got = _run_tflm(tflm, tflite, x)
    assert got.dtype == want.dtype == host.output_dtype
    np.testing.assert_array_equal(got, want, err_msg=f"TFLM + glue vs mam_tf.deploy.runtime, {names}")
    assert len(np.unique(got)) > 8  # outputs vary: the comparison is not between constants


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_converter_made_mac_sparse_runs_in_tflm_as_on_the_host(tflm, mode):
    """A pruned Dense stored by `convert(mac_sparse_below=...)` as MAC_SPARSE."""
    keras.backend.clear_session()
    model, n = _model_a()
    dec = model.get_layer("dec")
    _prune(dec, np.random.default_rng(5), 0.7)
    dec.bias.assign(np.linspace(-0.3, 0.3, 20).astype(np.float32))
    data = np.random.default_rng(2).standard_normal((64, n)).astype(np.float32)
    tflite = convert(model, data, mode=mode, mac_sparse_below=0.5)
    tfl = fb.load(tflite)
    names = [fb.op_name(tfl, op) for op in tfl.subgraphs[0].operators]
    assert names == ["FULLY_CONNECTED", "MAM_SPARSE", "MAC_SPARSE"], names
    host = Interpreter(tflite, backend="core")
    x = _inputs(host, data, seed=4)
    want = np.stack([host.run_raw(s) for s in x])
    np.testing.assert_array_equal(_run_tflm(tflm, tflite, x), want)
    assert len(np.unique(want)) > 8


def test_an_all_zero_row_with_weight_scale_0_runs_in_tflm_as_on_the_host(tflm):
    """TFLite's 16x8 converter gives an all-zero output row of a pruned Dense the weight scale
    0 (multiplier 0, as FULLY_CONNECTED takes it); MAC_SPARSE stores no entry for that row and
    the glue, like the host, accepts it."""
    mode = "int16x8"
    keras.backend.clear_session()
    model, n = _model_a()
    dec = model.get_layer("dec")
    _prune(dec, np.random.default_rng(5), 0.7)
    k = dec.kernel.numpy()
    k[:, 3] = 0.0  # output 3 reads nothing
    dec.kernel.assign(k)
    data = np.random.default_rng(2).standard_normal((64, n)).astype(np.float32)
    tflite = convert(model, data, mode=mode, mac_sparse_below=0.5)
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    op = next(o for o in sg.operators if fb.op_name(tfl, o) == options.MAC_SPARSE)
    assert sg.tensors[int(op.inputs[1])].quantization.scale[3] == 0.0
    host = Interpreter(tflite, backend="core")
    x = _inputs(host, data, seed=6)
    want = np.stack([host.run_raw(s) for s in x])
    np.testing.assert_array_equal(_run_tflm(tflm, tflite, x), want)


def test_a_batch_of_rows_runs_in_one_invoke(tflm):
    """MAM_SPARSE flattens its input to [B, N] like FULLY_CONNECTED: B = 4 rows at once."""
    tflite, data = _converted("b", "int8")
    host = Interpreter(tflite, backend="core")
    x = _inputs(host, data, seed=4)[:, 0]  # [K, N]
    k = (len(x) // 4) * 4
    want = host.run_raw(x[:k])
    got = _run_tflm(tflm, _batched(tflite, 4), x[:k].reshape(-1, 4, x.shape[-1]))
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_a_transformer_block_on_tokens_runs_in_tflm_as_on_the_host(tflm):
    """The whole encoder block in one TFLM interpreter: attention and LayerNorm's builtins, the
    RESHAPEs to and from rows, MAM_SPARSE on the 6 tokens of each sample (as 6 rows). int8
    only: in 16x8, TFLite-Micro's SUB kernel (LayerNormalization's) aborts on int16, which the
    host runtime's probe reports as a refusal."""
    mode = "int8"
    from mam_tf.models import token_transformer
    from mam_tf.models.token_transformer import MLP_LAYERS

    keras.backend.clear_session()
    model = token_transformer(6, 10, 4, "mam", beta=0.0, seed=0)
    rng = np.random.default_rng(8)
    for name in MLP_LAYERS:
        _prune(model.get_layer(name), rng, 0.7)
        model.get_layer(name).bias.assign(rng.normal(0, 0.3, model.get_layer(name).units))
    data = rng.standard_normal((64, 6, 10)).astype(np.float32)
    tflite = convert(model, data, mode=mode)
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    mams = [op for op in sg.operators if fb.op_name(tfl, op) == options.MAM_SPARSE]
    assert [list(sg.tensors[op.inputs[0]].shape) for op in mams] == [[6, 16], [6, 32]]
    host = Interpreter(tflite, backend="core")
    x = _inputs(host, data, seed=7)
    want = np.stack([host.run_raw(s) for s in x])
    got = _run_tflm(tflm, tflite, x)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 8


def test_arena_use_is_recorded(tflm):
    """The arena a MAM_SPARSE-only model needs, from TFLM's RecordingMicroAllocator."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(5)
    inp = keras.Input((64,))
    model = keras.Model(inp, MAMDense(16, activation="relu", name="m")(inp))
    data = np.random.default_rng(5).standard_normal((32, 64)).astype(np.float32)
    figures = {}
    for per_row in (True, False):
        tflite = convert(model, data, mode="int8", per_row=per_row)
        interp = _interpreter(tflm, tflite)
        interp.set_input(np.zeros((1, 64), np.int8), 0)
        interp.invoke()
        with _captured_fd(2) as err, _captured_fd(1) as out:
            interp.print_allocations()
        text = err["text"] + out["text"]
        figures[per_row] = _allocations(text)
    row, tensor = figures[True], figures[False]
    # Per-row scales: the glue asks for multipliers and shifts of M = 16 rows (2 x 64 bytes)
    # instead of one each (2 x 4 bytes): 120 more requested bytes, nothing else changes.
    assert row["Persistent buffer data"][0] - tensor["Persistent buffer data"][0] == 2 * 64 - 2 * 4
    assert row["total"] <= 2048, row  # a small model stays within 2 kB of arena (docs/benchmarks.md)
    print(json.dumps({"per_row": row, "per_tensor": tensor}))


def _allocations(text):
    """RecordingMicroAllocator's report -> {category: (requested bytes, count), total: bytes}."""
    import re

    out = {}
    for line in text.splitlines():
        m = re.search(r"'(.+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes "
                      r"for (\d+)", line)
        if m:
            out[m.group(1)] = (int(m.group(3)), int(m.group(4)))
        m = re.search(r"Arena allocation total (\d+) bytes", line)
        if m:
            out["total"] = int(m.group(1))
    assert "total" in out and "Persistent buffer data" in out, text
    return out


# ------------------------------------------------------------------------------------------
# (b) Corrupted models: refused at allocation/Prepare, with a message, never a crash
# ------------------------------------------------------------------------------------------
_WORKER = r'''
import contextlib, ctypes, io, json, os, sys, tempfile
import numpy as np
lib, folder = sys.argv[1], sys.argv[2]
names = sys.argv[3:]
ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
from tflite_micro.python.tflite_micro import runtime
for name in names:
    print("BEGIN " + name, flush=True)
    data = open(os.path.join(folder, name + ".tflite"), "rb").read()
    outcome, error = "accepted", ""
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    interp = runtime.Interpreter.from_bytes(
                        data, custom_op_registerers=["mam_tf_register_ops"], arena_size=1 << 16)
                d = interp.get_input_details(0)
                interp.set_input(np.zeros(d["shape"], d["dtype"]), 0)
                interp.invoke()
            except RuntimeError as err:
                outcome, error = "refused", str(err)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    print("RESULT " + json.dumps({"name": name, "outcome": outcome, "error": error,
                                  "log": text}), flush=True)
'''


@pytest.fixture(scope="module")
def corruption_results(glue_lib, tmp_path_factory):
    """Runs every corrupted model in worker processes; a worker that dies (a crash) is
    recorded as the outcome of the case it was running, and a new worker takes the rest."""
    folder = tmp_path_factory.mktemp("corrupted")
    for name, mode, _ in CORRUPTIONS:
        (folder / f"{name}.tflite").write_bytes(_corrupt(_converted("a", mode)[0], name))
    worker = folder / "worker.py"
    worker.write_text(_WORKER)
    results, todo = {}, [c[0] for c in CORRUPTIONS]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    while todo:
        proc = subprocess.run([sys.executable, str(worker), str(glue_lib), str(folder), *todo],
                              capture_output=True, text=True, env=env, timeout=600)
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("BEGIN "):
                started = line[6:]
            elif line.startswith("RESULT "):
                r = json.loads(line[7:])
                results[r["name"]] = r
                started = None
        if proc.returncode != 0:
            victim = started or todo[0]
            results[victim] = {"name": victim, "outcome": f"crashed (exit {proc.returncode})",
                               "error": proc.stderr[-2000:], "log": ""}
        todo = [n for n in todo if n not in results]
    return results


@pytest.mark.parametrize("name, mode, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_model_is_refused_with_a_message(corruption_results, name, mode, message):
    r = corruption_results[name]
    if not message:
        assert r["outcome"] == "accepted", r
        assert "MAM_SPARSE" not in r["log"], r["log"]
        return
    assert r["outcome"] == "refused", f"{name}: {r['outcome']}\n{r['error']}\n{r['log']}"
    assert "failed to allocate tensors" in r["error"], r["error"]  # at allocation, not Invoke
    assert message in r["log"], f"{name}: expected {message!r} in TFLM's log:\n{r['log']}"
    assert "failed to prepare" in r["log"], r["log"]


@pytest.mark.parametrize("name, mode, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_host_runtime_refuses_with_the_glues_exact_line(corruption_results, name, mode, message):
    """The glue's own line, as TFLM printed it, is inside the host runtime's refusal."""
    if not message:
        return
    lines = [line for line in corruption_results[name]["log"].splitlines()
             if "MAM_SPARSE: " in line]
    assert lines, corruption_results[name]["log"]
    glue = lines[0][lines[0].index("MAM_SPARSE: "):].strip()
    with pytest.raises(ValueError) as err:
        Interpreter(_corrupt(_converted("a", mode)[0], name), backend="core")
    assert glue in str(err.value), (glue, str(err.value))
