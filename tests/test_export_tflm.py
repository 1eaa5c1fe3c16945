"""`mam-tf export-tflm`: the drop-in folder a TFLite-Micro / CMake firmware adds as it is.

- the registration: N of ``MicroMutableOpResolver<N>`` is the model's number of distinct
  operators, counted independently with TensorFlow's own schema reader, and the generated
  ``RegisterOps`` adds each of them once;
- the arena: the measured size lets TFLite-Micro's interpreter allocate and run the model, 16
  bytes less (its alignment) does not; the stand-in estimate stays within the margin of the glue's measurement;
- the folder's sources compile for Cortex-M7 through its own CMakeLists.txt from a small CMake
  project (the core and kernels always; the glue and the registration against TFLM's headers
  with ``MAM_TF_TFLM_ROOT``); with ``MAM_TF_TFLM_LIB`` too, a firmware built from the folder
  runs the model on QEMU's Cortex-M7 and equals ``mam_tf.deploy.runtime`` bit for bit;
- the command's one-line errors.

Cost: two small conversions and a few TFLM interpreter child processes (about a minute);
the Cortex-M7 builds a few seconds each.
"""
import os
import re
import shutil
import struct
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mam_tf import MAMDense
from mam_tf._native import tflm_ops_dir
from mam_tf.cli import main as cli_main
from mam_tf.deploy import export as ex
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy import options
from mam_tf.deploy.convert import convert
from mam_tf.deploy.runtime import Interpreter
from mam_tf.train.compat import keras, tf

TFLM_ROOT = os.environ.get("MAM_TF_TFLM_ROOT")
FB_INCLUDE = os.environ.get("MAM_TF_FLATBUFFERS_INCLUDE")
TFLM_LIB = os.environ.get("MAM_TF_TFLM_LIB")
TOOLCHAIN = tflm_ops_dir() / "firmware" / "cmake" / "arm-none-eabi-cortex-m7.cmake"
NEED_TREE = "MAM_TF_TFLM_ROOT / MAM_TF_FLATBUFFERS_INCLUDE are not set: point them at a " \
            "tflite-micro tree (commit 88f8587) and flatbuffers 25.9.23's include/ " \
            "(docs/deployment.md)"


def _arm_tools():
    for tool in ("arm-none-eabi-gcc", "cmake"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH (Debian: gcc-arm-none-eabi, cmake)")


def _prune(layer, frac, seed):
    w = layer.kernel.numpy()
    w[np.random.default_rng(seed).random(w.shape) < frac] = 0.0
    layer.kernel.assign(w)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (.tflite path, the distinct operators the model is built to hold)."""
    d = tmp_path_factory.mktemp("export_models")
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(3)
    inp = keras.Input((24,))
    h = MAMDense(12, activation="relu", name="mam", bias_initializer="random_normal")(inp)
    mixed = keras.Model(inp, keras.layers.Dense(5, name="dense")(h))
    _prune(mixed.get_layer("mam"), 0.6, 0)
    data = rng.standard_normal((64, 24)).astype(np.float32)
    out = {}
    tfl = convert(mixed, data, mode="int8", float_io=True)
    (d / "mixed.tflite").write_bytes(tfl)
    out["mixed"] = (d / "mixed.tflite",
                    {"QUANTIZE", options.MAM_SPARSE, "FULLY_CONNECTED", "DEQUANTIZE"})
    keras.utils.set_random_seed(4)
    inp = keras.Input((40,))
    only = keras.Model(inp, MAMDense(8, name="only")(inp))
    _prune(only.get_layer("only"), 0.8, 1)
    data16 = rng.standard_normal((64, 40)).astype(np.float32)
    (d / "mam16.tflite").write_bytes(convert(only, data16, mode="int16x8"))
    out["mam16"] = (d / "mam16.tflite", {options.MAM_SPARSE})
    # MAC_SPARSE beside MAM_SPARSE: the int16 model's op duplicated as MAC_SPARSE, in series
    t = fb.load((d / "mam16.tflite").read_bytes())
    code = fb.schema().OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.schema().BuiltinOperator.CUSTOM
    code.customCode = options.MAC_SPARSE.encode()
    code.version = 1
    t.operatorCodes.append(code)
    (d / "both.tflite").write_bytes(_two_sparse_ops(t, len(t.operatorCodes) - 1))
    out["both"] = (d / "both.tflite", {options.MAM_SPARSE, options.MAC_SPARSE})
    keras.utils.set_random_seed(5)
    inp = keras.Input((16,))
    dense = keras.Model(inp, keras.layers.Dense(6, activation="relu")(inp))
    (d / "dense.tflite").write_bytes(convert(dense, rng.standard_normal((64, 16)).astype(np.float32),
                                             mode="int8", require_mam=False))
    out["dense"] = (d / "dense.tflite", {"FULLY_CONNECTED"})
    return out


def _two_sparse_ops(t, mac_code):
    """The one-op MAM_SPARSE model with a MAC_SPARSE op of the same weights beside it: the same
    input through both, each output a model output."""
    import copy

    sg = t.subgraphs[0]
    op = sg.operators[0]
    mac = copy.deepcopy(op)
    mac.opcodeIndex = mac_code
    y = copy.deepcopy(sg.tensors[int(op.outputs[0])])
    y.name = b"mac_out"
    sg.tensors.append(y)
    mac.outputs = np.array([len(sg.tensors) - 1], np.int32)
    sg.operators.append(mac)
    sg.outputs = np.array([int(op.outputs[0]), len(sg.tensors) - 1], np.int32)
    t.signatureDefs = []
    return fb.pack(t)


def _schema_op_count(data: bytes) -> set:
    """The distinct operators of subgraph 0, read with TensorFlow's own schema module (not the
    project's flatbuffer reader): (builtin code, custom code) of each operator's opcode."""
    from tensorflow.lite.python import schema_py_generated as s

    m = s.Model.GetRootAsModel(data, 0)
    sg = m.Subgraphs(0)
    kinds = set()
    for i in range(sg.OperatorsLength()):
        code = m.OperatorCodes(sg.Operators(i).OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        kinds.add((builtin, code.CustomCode()))
    return kinds


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """name -> ExportResult, each exported without a TFLM tree (the stand-in arena)."""
    d = tmp_path_factory.mktemp("exported")
    env = {k: os.environ.pop(k) for k in ("MAM_TF_TFLM_ROOT",) if k in os.environ}
    try:
        return {name: ex.export_tflm(path, d / name, probe=False)
                for name, (path, _) in models.items()}
    finally:
        os.environ.update(env)


# ------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mixed", "mam16", "both", "dense"])
def test_resolver_size_is_the_number_of_distinct_operators(models, exported, name):
    path, expected = models[name]
    result = exported[name]
    n_schema = len(_schema_op_count(path.read_bytes()))
    assert set(result.ops) == expected
    assert n_schema == len(expected)
    header = (result.out / "mam_model_ops.h").read_text()
    assert re.search(rf"constexpr unsigned int kOpCount = {n_schema};", header), header
    assert "using OpResolver = tflite::MicroMutableOpResolver<kOpCount>;" in header
    body = (result.out / "mam_model_ops.cc").read_text()
    added = re.findall(r"resolver\.(Add\w+)\((?:\"(\w+)\")?", body)
    assert len(added) == n_schema, body
    names = {custom or method for method, custom in added}
    assert len(names) == n_schema  # each once
    for kind in expected:
        want = kind if kind in (options.MAM_SPARSE, options.MAC_SPARSE) \
            else ex.RESOLVER_METHODS[kind]
        assert want in names, (kind, body)


def test_an_operator_the_generator_does_not_know_is_refused_by_name(models):
    t = fb.load(models["dense"][0].read_bytes())
    code = t.operatorCodes[t.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = fb.schema().BuiltinOperator.LSH_PROJECTION
    with pytest.raises(ValueError, match=r"^operator 0 LSH_PROJECTION: export-tflm does not know"):
        ex.model_ops(t)


@pytest.mark.skipif(not TFLM_ROOT, reason=NEED_TREE)
def test_every_resolver_method_exists_in_tflm():
    header = (Path(TFLM_ROOT) / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    for op, method in ex.RESOLVER_METHODS.items():
        m = re.search(rf"TfLiteStatus {method}\((.*?)\n  \}}", header, re.S)
        assert m, f"{method} is not in TFLM's resolver"
        assert f"BuiltinOperator_{op}," in m.group(1), (op, method)


# ------------------------------------------------------------------------------------------
# Arena
# ------------------------------------------------------------------------------------------
def _allocates(data, arena, lib=None):
    """Whether TFLite-Micro's interpreter allocates and runs the model in ``arena`` bytes."""
    return ex.measure_arena(data, lib, arena_size=arena)


def test_the_measured_arena_is_exactly_what_tflm_needs_for_a_builtin_model(models, exported):
    data = models["dense"][0].read_bytes()
    r = exported["dense"]
    assert r.arena_method == "model"
    assert r.arena_recorded <= r.arena_measured
    assert r.arena_bytes == r.arena_measured + r.arena_margin >= r.arena_measured + 1024
    assert _allocates(data, r.arena_measured)
    assert not _allocates(data, r.arena_measured - 16)
    assert _allocates(data, r.arena_bytes)
    header = (r.out / "mam_model_ops.h").read_text()
    assert f"kArenaMeasuredBytes = {r.arena_measured};" in header
    assert f"kArenaMarginBytes = {r.arena_margin};" in header
    assert "constexpr size_t kArenaBytes = kArenaMeasuredBytes + kArenaMarginBytes;" in header


@pytest.mark.skipif(not TFLM_ROOT, reason=NEED_TREE)
@pytest.mark.parametrize("name", ["mixed", "mam16", "both"])
def test_the_glue_measured_arena_runs_the_model_and_the_stand_in_is_within_the_margin(
        models, exported, name, tmp_path):
    data = models[name][0].read_bytes()
    lib = ex._glue_library(str(Path(TFLM_ROOT).resolve()), FB_INCLUDE)
    r = ex.export_tflm(models[name][0], tmp_path / "x", probe=False)
    assert r.arena_method == "model"
    assert _allocates(data, r.arena_measured, lib)
    assert not _allocates(data, r.arena_measured - 16, lib)
    est = exported[name]
    assert est.arena_method == "stand-in"
    assert abs(est.arena_measured - r.arena_measured) <= est.arena_margin, (est, r)


# ------------------------------------------------------------------------------------------
# Compiling the folder for Cortex-M7, as a firmware project does
# ------------------------------------------------------------------------------------------
def _cmake_project(tmp, folder, extra_cmake="", cache=()):
    proj = tmp / "proj"
    proj.mkdir()
    (proj / "CMakeLists.txt").write_text(textwrap.dedent(f"""
        cmake_minimum_required(VERSION 3.16)
        project(user_firmware C CXX ASM)
        {extra_cmake}
        add_subdirectory({folder} mam_tf_model)
    """))
    build = tmp / "build"
    cmd = ["cmake", "-S", str(proj), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}",
           "-DCMAKE_BUILD_TYPE=Release", *cache]
    for c in (cmd, ["cmake", "--build", str(build), "-j", "2"]):
        run = subprocess.run(c, capture_output=True, text=True)
        assert run.returncode == 0, f"{' '.join(c)}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return build


def _defined(lib: Path) -> set:
    nm = subprocess.run(["arm-none-eabi-nm", "-C", "--defined-only", str(lib)],
                        capture_output=True, text=True, check=True).stdout
    return {line.split(" ", 2)[2] for line in nm.splitlines() if line.count(" ") >= 2}


def test_the_core_and_the_cortex_m_kernels_compile_for_cortex_m7(exported, tmp_path):
    _arm_tools()
    build = _cmake_project(tmp_path, exported["mixed"].out, cache=["-DMAM_TF_CORE_ONLY=ON"])
    (lib,) = build.rglob("libmam_sparse_core.a")
    syms = _defined(lib)
    # the ARMv7E-M kernels were compiled (not the empty file a non-DSP target gives)
    assert {"mam_sparse_s8_armv7em", "mam_sparse_s16_armv7em", "mam_sparse_s8",
            "mam_validate"} <= syms, sorted(syms)


@pytest.mark.skipif(not (TFLM_ROOT and FB_INCLUDE), reason=NEED_TREE)
@pytest.mark.parametrize("name", ["mixed", "both"])
def test_the_glue_and_the_registration_compile_against_tflm_headers(exported, tmp_path, name):
    _arm_tools()
    r = exported[name]
    dirs = ";".join([TFLM_ROOT, FB_INCLUDE, "/usr/include/gemmlowp"])
    build = _cmake_project(tmp_path, r.out, cache=[f"-DMAM_TF_TFLM_INCLUDE_DIRS={dirs}"],
                           extra_cmake="set(CMAKE_CXX_FLAGS \"${CMAKE_CXX_FLAGS} -fno-rtti "
                                       "-fno-exceptions\")")
    (lib,) = build.rglob("libmam_tf_model.a")
    syms = _defined(lib)
    # the registration of exactly N operators (nm writes the template argument as "4u")
    assert f"mam_model::RegisterOps(tflite::MicroMutableOpResolver<{r.resolver_size}u>&)" \
        in syms, sorted(s for s in syms if "mam_model" in s)
    assert r.array in syms and "tflite::Register_MAM_SPARSE()" in syms


_MAIN = r"""
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "mam_model_data.h"
#include "mam_model_ops.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"

namespace {
alignas(16) uint8_t arena[mam_model::kArenaBytes];
void LogToStdout(const char* s) { std::fputs(s, stdout); }
int Fail(const char* what) { std::printf("export firmware: %s\n", what); return 1; }
}  // namespace

int main() {
  RegisterDebugLogCallback(LogToStdout);
  mam_model::OpResolver resolver;
  if (mam_model::RegisterOps(resolver) != kTfLiteOk) return Fail("RegisterOps");
  tflite::MicroInterpreter interpreter(tflite::GetModel(@ARRAY@), resolver, arena,
                                       mam_model::kArenaBytes);
  if (interpreter.AllocateTensors() != kTfLiteOk) return Fail("AllocateTensors");
  FILE* in = std::fopen("model_in.bin", "rb");
  FILE* out = std::fopen("model_out.bin", "wb");
  if (in == nullptr || out == nullptr) return Fail("files");
  uint32_t samples = 0;
  if (std::fread(&samples, 4, 1, in) != 1) return Fail("header");
  TfLiteTensor* x = interpreter.input(0);
  for (uint32_t s = 0; s < samples; ++s) {
    if (std::fread(x->data.raw, 1, x->bytes, in) != x->bytes) return Fail("input");
    if (interpreter.Invoke() != kTfLiteOk) return Fail("Invoke");
    const TfLiteTensor* y = interpreter.output(0);
    std::fwrite(y->data.raw, 1, y->bytes, out);
  }
  std::fclose(out);
  std::printf("arena_used %u of %u\n", static_cast<unsigned>(interpreter.arena_used_bytes()),
              static_cast<unsigned>(mam_model::kArenaBytes));
  return 0;
}
"""


@pytest.mark.skipif(not (TFLM_LIB and TFLM_ROOT and FB_INCLUDE),
                    reason="MAM_TF_TFLM_LIB (a TFLite-Micro library built for Cortex-M7), "
                           "MAM_TF_TFLM_ROOT and MAM_TF_FLATBUFFERS_INCLUDE are not all set")
@pytest.mark.parametrize("name", ["mixed", "mam16"])
def test_a_firmware_built_from_the_folder_runs_the_model_on_qemu_as_the_host_runtime(
        models, tmp_path, name):
    from mam_tf.device import mcu

    ok, why = mcu.toolchain_available()
    if not ok:
        pytest.skip(why)
    r = ex.export_tflm(models[name][0], tmp_path / "mam_tf_model", probe=False)
    fw = tflm_ops_dir() / "firmware"
    (tmp_path / "main.cc").write_text(_MAIN.replace("@ARRAY@", r.array))
    dirs = ";".join([TFLM_ROOT, FB_INCLUDE, "/usr/include/gemmlowp"])
    build = _cmake_project(tmp_path, r.out, cache=[f"-DMAM_TF_TFLM_INCLUDE_DIRS={dirs}"],
                           extra_cmake=textwrap.dedent(f"""
        set(CMAKE_CXX_FLAGS "${{CMAKE_CXX_FLAGS}} -fno-rtti -fno-exceptions -fno-threadsafe-statics")
        add_executable(app {tmp_path / 'main.cc'} {fw / 'startup.c'})
        set_target_properties(app PROPERTIES SUFFIX ".elf")
        target_link_libraries(app PRIVATE mam_tf_model {TFLM_LIB} m)
        target_link_options(app PRIVATE -T{fw / 'mps2_an500.ld'})
    """))
    host = Interpreter(models[name][0], backend="core", probe=False)
    rng = np.random.default_rng(7)
    x = host.quantize_input(rng.standard_normal((6, *host.input_shape[1:])).astype(np.float32)) \
        if np.issubdtype(host.input_dtype, np.integer) else \
        rng.standard_normal((6, *host.input_shape[1:])).astype(np.float32)
    want = host.run_raw(x)
    (tmp_path / "model_in.bin").write_bytes(struct.pack("<I", len(x)) + x.tobytes())
    run = subprocess.run([mcu.QEMU, "-M", "mps2-an500", "-nographic", "-monitor", "none",
                          "-serial", "none", "-semihosting-config", "enable=on,target=native",
                          "-kernel", str(build / "app.elf")], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    got = np.frombuffer((tmp_path / "model_out.bin").read_bytes(), want.dtype)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    used = int(re.search(r"arena_used (\d+)", run.stdout).group(1))
    assert used <= r.arena_bytes
    print(f"{name}: device arena_used {used}, host measured {r.arena_measured}, exported "
          f"{r.arena_bytes}")


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------
def _cli_error(capsys, argv):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_command_refuses_bad_input_with_one_line(models, tmp_path, capsys):
    path = str(models["dense"][0])
    assert "no model file at" in _cli_error(capsys, ["export-tflm", str(tmp_path / "nope.tflite"),
                                                    "-o", str(tmp_path / "a")])
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model at all")
    assert "is not a .tflite file" in _cli_error(capsys, ["export-tflm", str(junk), "-o",
                                                         str(tmp_path / "a")])
    for bad in ("2fast", "int", "a-b", ""):
        err = _cli_error(capsys, ["export-tflm", path, "-o", str(tmp_path / "a"), "--name", bad])
        assert f"--name {bad!r} is not a valid C identifier" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert "is not empty (--force replaces it)" in _cli_error(
        capsys, ["export-tflm", path, "-o", str(full), "--no-probe"])
    assert (full / "keep.txt").read_text() == "mine"
    corrupt = bytearray(models["dense"][0].read_bytes())
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 64] = b"\xff" * 64
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(bytes(corrupt))
    assert "mam-tf check refuses it" in _cli_error(capsys, ["export-tflm", str(bad), "-o",
                                                           str(tmp_path / "c"), "--no-probe"])
    assert not (tmp_path / "c").exists()


def test_the_array_name_comes_from_the_file_name_or_the_user(models, tmp_path, capsys):
    assert ex.default_array_name("my model-v2.tflite") == "my_model_v2_tflite"
    assert ex.default_array_name("8bit.tflite") == "model_8bit_tflite"
    assert cli_main(["export-tflm", str(models["dense"][0]), "-o", str(tmp_path / "f"),
                     "--name", "g_net", "--no-probe"]) == 0
    data = (tmp_path / "f" / "mam_model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_net[] = {" in data
    raw = bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", data.split("{", 1)[1]))
    assert raw == models["dense"][0].read_bytes()
    # --force replaces a folder, and only the files of the folder are left
    (tmp_path / "f" / "stale.txt").write_text("old")
    assert cli_main(["export-tflm", str(models["dense"][0]), "-o", str(tmp_path / "f"),
                     "--force", "--no-probe"]) == 0
    assert not (tmp_path / "f" / "stale.txt").exists()
    assert not (tmp_path / "f" / "tflm" / "python_registerer.cc").exists()
    assert "alignas(16) const unsigned char dense_tflite[]" in \
        (tmp_path / "f" / "mam_model_data.cc").read_text()
