"""A corrupted model is an error, never a crash.

- the model checker (mam_tf.deploy.check) on hand-made corruptions: each named problem is found;
- the host runtime refuses the corrupted MAM_SPARSE models the TFLM glue refuses, with the
  glue's words (tests/corruptions.py; no TFLM tree needed here);
- `mam-tf check` / `mam-tf run` / `mam-tf convert`: one line and exit status 2 (1 for check);
- the corruption fuzzer: thousands of corrupted int8 / int16x8 models, crash-isolated:
  no death, no exception but ValueError, every message naming what it refuses (a tensor, an
  operator, a buffer, a byte of the flatbuffer...), not only the file.
"""
import numpy as np
import pytest

from mam_tf.deploy import check
from mam_tf.deploy import fuzz
from mam_tf.deploy import options
from mam_tf.deploy import flatbuffer as fb
from mam_tf.cli import main
from mam_tf.deploy.runtime import Interpreter

from corruptions import CORRUPTIONS, converted_a, corrupt, device_formats, device_words


@pytest.fixture(scope="module")
def models():
    """The fuzzer's base models: int8 and int16x8, FULLY_CONNECTED + MAM_SPARSE + MAC_SPARSE."""
    return fuzz.base_models()


def _edit(tflite, fn):
    tfl = fb.load(tflite)
    fn(tfl, tfl.subgraphs[0])
    return fb.pack(tfl)


def _by_name(sg, part):
    return next(i for i, t in enumerate(sg.tensors) if part in fb.tensor_name(t))


def test_converted_models_pass(models):
    for name, tflite in models.items():
        tfl, problems = check.check_model(tflite)
        assert problems == [], (name, problems)
        kinds = {fb.op_name(tfl, op) for op in tfl.subgraphs[0].operators}
        assert options.MAM_SPARSE in kinds, kinds


def _weight_shape_grows(tfl, sg):  # the issue's example: [12, 6] -> [12, 6, 1441792]
    i = _by_name(sg, "pre/MatMul")
    sg.tensors[i].shape = np.array(list(sg.tensors[i].shape) + [1441792], np.int32)


def _scale_nan(tfl, sg):
    sg.tensors[_by_name(sg, "pre/MatMul")].quantization.scale[0] = np.nan


def _scale_0_on_a_nonzero_channel(tfl, sg):
    sg.tensors[_by_name(sg, "pre/MatMul")].quantization.scale[2] = 0.0


def _zero_points_short(tfl, sg):
    q = sg.tensors[_by_name(sg, "pre/MatMul")].quantization
    q.zeroPoint = q.zeroPoint[:1]


def _op_input_out_of_range(tfl, sg):
    sg.operators[0].inputs = np.array([0, 999, 2], np.int32)


def _buffer_out_of_range(tfl, sg):
    sg.tensors[_by_name(sg, "pre/MatMul")].buffer = 77


def _opcode_out_of_range(tfl, sg):
    sg.operators[1].opcodeIndex = 9


def _unwritten_input(tfl, sg):  # an activation nobody writes, read by the last op
    sg.operators[0].outputs = np.array([sg.operators[0].inputs[0]], np.int32)


def _options_garbage(tfl, sg):
    op = next(o for o in sg.operators if fb.op_name(tfl, o) == options.MAC_SPARSE)
    op.customOptions = np.frombuffer(b"\x07\x13\x2a\x05\x09", np.uint8).copy()


def _opcode_fields_disagree(tfl, sg):  # found by the fuzzer: TFLM ran PACK on FC's tensors
    tfl.operatorCodes[sg.operators[0].opcodeIndex].deprecatedBuiltinCode = 83


def _empty_activation(tfl, sg):  # found by the fuzzer: FULLY_CONNECTED on a [1, 0] input
    sg.tensors[int(sg.inputs[0])].shape = np.array([1, 0], np.int32)


def _filter_is_the_input(tfl, sg):  # found by the fuzzer: TFLM aborted in FULLY_CONNECTED
    sg.operators[0].inputs = np.array([0, 0, -1], np.int32)


def _output_is_a_constant(tfl, sg):  # found by the fuzzer: the runtime had no value for it
    sg.outputs = np.array([_by_name(sg, "pre/MatMul")], np.int32)


EDITS = [
    (_output_is_a_constant, "model output tensor 1 'model/pre/MatMul' is a constant"),
    (_filter_is_the_input, "operator 0 FULLY_CONNECTED: output tensor 2 'model/pre/MatMul;"
                           "model/pre/Relu' has shape [1, 16]; the input and filter make [1, 1]"),
    (_opcode_fields_disagree, "operator code 0: builtin code 9 and deprecated builtin code 83 "
                              "disagree"),
    (_empty_activation, "tensor 0 'serving_default_x:0': shape [1, 0] holds no element"),
    (_weight_shape_grows, "tensor 1 'model/pre/MatMul': its buffer holds 320 bytes; shape "
                          "[16, 20, 1441792] of INT8 needs 461373440"),
    (_scale_nan, "scale 0 is nan; scales must be finite and > 0"),
    (_scale_0_on_a_nonzero_channel, "scale 2 is 0.0; scales must be finite and > 0 (0 only "
                                    "for an all-zero channel of a constant)"),
    (_zero_points_short, "16 scales but 1 zero points"),
    (_op_input_out_of_range, "operator 0 FULLY_CONNECTED: tensor index 999 is out of range"),
    (_buffer_out_of_range, "buffer 77 does not exist"),
    (_opcode_out_of_range, "operator 1: opcode index 9 is not a known operator"),
    (_unwritten_input, "which is neither a constant, a model input nor written"),
    (_options_garbage, "MAC_SPARSE (output 'StatefulPartitionedCall:0'): MAM_SPARSE: custom "
                       "options are not a valid flexbuffer"),
]


@pytest.mark.parametrize("edit, message", EDITS, ids=[f"{e.__name__}-{i}" for i, (e, _) in enumerate(EDITS)])
def test_checker_names_each_problem(models, edit, message):
    bad = _edit(models["int8-fc-mam-mac"], edit)
    _, problems = check.check_model(bad)
    assert any(message in p for p in problems), problems
    with pytest.raises(ValueError, match="mam_tf.deploy.runtime: the model: "):
        Interpreter(bad, backend="core")


def test_truncated_and_spliced_files_are_refused_at_the_flatbuffer(models):
    a, b = models["int8-fc-mam-mac"], models["int16x8-mam"]
    for data in (a[:len(a) // 2], a[:-1], a[:40] + b[40:], a[:7]):
        _, problems = check.check_model(data)
        assert len(problems) == 1, problems
        assert "flatbuffer does not verify" in problems[0] or "too short" in problems[0], problems


def test_the_issue_corruptions_the_device_refuses_are_refused_by_the_host_too(models):
    """row_counts typed INT32, offsets typed INT8, a weight zero point of 3, six inputs, two
    outputs, an output of the wrong shape or type, an input scale of 0."""
    def mam(tfl, sg):
        return next(o for o in sg.operators if fb.op_name(tfl, o) == options.MAM_SPARSE)

    s = fb.schema()

    def set_type(pos, t):
        return lambda tfl, sg: setattr(sg.tensors[int(mam(tfl, sg).inputs[pos])], "type", t)

    def six_inputs(tfl, sg):
        op = mam(tfl, sg)
        op.inputs = np.array(list(op.inputs) + [int(op.inputs[0])], np.int32)

    def out_type(tfl, sg):
        sg.tensors[int(mam(tfl, sg).outputs[0])].type = s.TensorType.INT16

    def in_scale_0(tfl, sg):
        sg.tensors[int(mam(tfl, sg).inputs[0])].quantization.scale[0] = 0.0

    cases = [
        (set_type(3, s.TensorType.INT32), "row_counts tensor is int32"),
        (set_type(2, s.TensorType.INT8), "offsets tensor is int8"),
        (six_inputs, "node has 6 inputs"),
        (out_type, "output tensor is int16"),
    ]
    for edit, message in cases:
        with pytest.raises(ValueError, match=message):
            Interpreter(_edit(models["int8-fc-mam-mac"], edit), backend="core")
    # an input scale of 0: the checker refuses it first, naming the tensor
    with pytest.raises(ValueError, match="scale 0 is 0.0; scales must be finite and > 0"):
        Interpreter(_edit(models["int8-fc-mam-mac"], in_scale_0), backend="core")


# ------------------------------------------------------------------------------------------
# Host refuses what the glue refuses, with the glue's words
# ------------------------------------------------------------------------------------------
_A = {}


def _model_a(mode):
    if mode not in _A:
        _A[mode] = converted_a(mode)
    return _A[mode]


def test_the_device_formats_are_read_from_the_sources():
    formats = device_formats()
    # the core's validation and the glue's option parsing, as the C sources spell them
    assert "row_counts sum to %d but values has %d entries" in formats, formats
    assert "custom option '%s' %s" in formats, formats
    assert device_words("operator 1 MAM_SPARSE (output 'y'): MAM_SPARSE: row 1 has a negative "
                        "row count -1") == "row %d has a negative row count %d"
    assert device_words("MAM_SPARSE: row counts are wrong") is None  # no such format
    assert device_words("") is None


@pytest.mark.parametrize("name, mode, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_host_refuses_what_the_glue_refuses_with_its_words(name, mode, message):
    x = np.random.default_rng(5).standard_normal((3, 20)).astype(np.float32)
    bad = corrupt(_model_a(mode), name)
    if not message:  # untouched: it runs, and computes what the model itself computes
        y = Interpreter(bad, backend="core").run(x)
        assert y.shape == (3, 20) and np.isfinite(y).all()
        np.testing.assert_array_equal(y, Interpreter(_model_a(mode), backend="core").run(x))
        return
    with pytest.raises(ValueError) as err:
        Interpreter(bad, backend="core")
    text = str(err.value)
    assert text.strip(), f"{name}: refused with an empty message"
    assert "operator 1 MAM_SPARSE" in text, text
    words = device_words(text)  # the device's format this message prints, from tflm_ops/
    assert words is not None, f"{name}: no message format of tflm_ops prints {text!r}"
    assert message in text, (message, text)  # and it is the rule this corruption breaks


# ------------------------------------------------------------------------------------------
# Runtime input, core arguments
# ------------------------------------------------------------------------------------------
def test_non_finite_input_is_refused_naming_the_input(models):
    interp = Interpreter(models["int8-mam"], backend="core")
    x = np.zeros((2, 12), np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        x[1, 3] = bad
        with pytest.raises(ValueError, match=r"input 'serving_default_\w+:0' holds 1 non-finite"):
            interp.run(x)


def test_core_refuses_values_that_do_not_fit_its_c_fields():
    from mam_tf.deploy import native
    from mam_tf.deploy.offset_csr import encode

    csr = encode(np.array([[1, 0, 2], [0, 3, 0]], np.int8))
    x = np.zeros((1, 3), np.int8)
    with pytest.raises(ValueError, match=r"input_zero_point is 4294967296; it must lie in"):
        native.mam_sparse(x, csr, None, [1 << 30], [0], input_zero_point=2**32)
    with pytest.raises(ValueError, match="act_max is 2147483648"):
        native.mam_sparse(x, csr, None, [1 << 30], [0], act_max=2**31)
    with pytest.raises(ValueError, match="shift holds 31..31; it must lie in -31..30"):
        native.multiply_by_quantized_multiplier(5, 1 << 30, 31)
    with pytest.raises(ValueError, match="shift holds 8..8; it must lie in -31..7"):
        native.multiply_by_quantized_multiplier_64(5, 1 << 30, 8)
    with pytest.raises(ValueError, match="exponent holds 32..32"):
        native.rounding_divide_by_pot(5, 32)
    with pytest.raises(ValueError, match="multiplier must hold integers"):
        native.mam_sparse(x, csr, None, [0.5], [0])


def test_core_runs_the_arrays_it_validated():
    """A strided offsets view set on the layout after construction: the call uses the same
    contiguous arrays for validation and kernel, so the result is the decoded matrix's."""
    from mam_tf.deploy import native
    from mam_tf.deploy import reference
    from mam_tf.deploy.offset_csr import encode

    w = np.array([[1, 0, 2, 0], [0, 3, 0, 4]], np.int8)
    csr = encode(w)
    wide = np.zeros(2 * len(csr.offsets), np.uint8)
    wide[::2] = csr.offsets
    csr.offsets = wide[::2]  # a non-contiguous view holding the right values
    x = np.array([[5, -6, 7, -8]], np.int8)
    args = (x, csr, None, [1 << 30], [0])
    np.testing.assert_array_equal(native.mam_sparse(*args), reference.mam_sparse(*args))


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def test_check_command(tmp_path, models, capsys):
    good, bad = tmp_path / "good.tflite", tmp_path / "bad.tflite"
    good.write_bytes(models["int8-mam"])
    bad.write_bytes(_edit(models["int8-fc-mam-mac"], _weight_shape_grows))
    assert main(["check", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok"
    assert main(["check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == f"{good}: ok" and all(line.startswith(f"{bad}: ") for line in out[1:]), out
    assert main(["check", str(tmp_path / "missing.tflite")]) == 1
    assert "cannot read it" in capsys.readouterr().out


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, models):
    from mam_tf import MAMDense
    from mam_tf.train.compat import keras

    d = tmp_path_factory.mktemp("cli")
    (d / "m.tflite").write_bytes(models["int8-mam"])
    inp = keras.Input((12,))
    keras.Model(inp, MAMDense(6, name="m")(inp)).save(d / "m.keras")
    np.save(d / "x.npy", np.zeros((3, 12), np.float32))
    x = np.zeros((3, 12), np.float32)
    x[1, 1] = np.nan
    np.save(d / "nan.npy", x)
    np.save(d / "t.npy", np.zeros((3, 5), np.float32))
    np.savez(d / "two.npz", a=np.zeros(3), b=np.zeros(3))
    (d / "garbage.npy").write_bytes(b"not an array" * 8)
    return d


@pytest.mark.parametrize("argv, message", [
    (["run", "{m}", "--data", "{d}/missing.npy"], "cannot read '{d}/missing.npy'"),
    (["run", "{m}", "--data", "{d}/garbage.npy"], "is not a readable .npy/.npz array file"),
    (["run", "{m}", "--data", "{d}/two.npz"], "holds arrays ['a', 'b']; choose one"),
    (["run", "{m}", "--data", "{d}/nan.npy"], "holds 1 non-finite values"),
    (["run", "{m}", "--data", "{d}/x.npy", "--target", "{d}/t.npy"], "--target"),
    (["run", "{d}/garbage.npy", "--data", "{d}/x.npy"], "no .tflite identifier"),
    (["run", "{m}", "--data", "{d}/x.npy", "-o", "{d}/no/such/dir/y.npy"], "No such file"),
    (["convert", "{d}/garbage.npy", "--data", "{d}/x.npy", "-o", "{d}/o.tflite"],
     "cannot load a Keras model"),
    (["convert", "{d}/missing.keras", "-o", "{d}/o.tflite"], "no model at"),
    (["convert", "{d}/m.keras", "--data", "{d}/x.npy", "--calibration-samples", "-5", "-o",
      "{d}/o.tflite"], "--calibration-samples must be >= 1, got -5"),
    (["convert", "{d}/m.keras", "--data", "{d}/two.npz", "-o", "{d}/o.tflite"], "choose one"),
    (["convert", "{d}/m.keras", "--data", "{d}/x.npy", "-o", "{d}/no/such/dir/o.tflite"],
     "cannot write"),
])
def test_cli_user_errors_are_one_line_and_status_2(cli_files, capsys, argv, message):
    d = cli_files
    argv = [a.format(m=d / "m.tflite", d=d) for a in argv]
    assert main(argv) == 2  # returned: no exception escaped, so no traceback
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mam-tf {argv[0]}: error: "), err
    assert message.format(d=d) in err[0], err


def test_internal_error_still_shows_its_traceback(monkeypatch, tmp_path):
    import mam_tf.deploy.check as chk

    def boom(path, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(chk, "check_file", boom)
    with pytest.raises(KeyError, match="a bug"):
        main(["check", str(tmp_path / "x.tflite")])


# ------------------------------------------------------------------------------------------
# The corruption fuzzer
# ------------------------------------------------------------------------------------------
FUZZ_CASES = 2000


def test_a_refusal_must_name_the_thing_not_only_the_file():
    """Every runtime error starts with the file's path: that alone names nothing inside it."""
    path = "/tmp/mam-fuzz-x/case-1.tflite"
    unnamed = ["something is wrong", "the flatbuffer does not verify: TypeError: bad number "
               "4294970676 for type uint32", ""]
    named = ["tensor 3 'x': shape [-1, 4] has a negative dimension",
             "operator 1 MAM_SPARSE (output 'y'): MAM_SPARSE: row_counts sum to 9",
             "the flatbuffer does not verify: a vector of 9 elements at byte 120 runs past "
             "the file", "the flatbuffer does not verify: offset 8 points outside the file",
             "tensor 2 'b': buffer 77 does not exist (5 buffers)",
             "model output tensor index 9 is out of range (4 tensors)",
             "operator code 0: builtin code 9 and deprecated builtin code 83 disagree"]
    for text in unnamed:
        assert not fuzz._names_something(f"mam_tf.deploy.runtime: {path}: {text}", path), text
    for text in named:
        assert fuzz._names_something(f"mam_tf.deploy.runtime: {path}: {text}", path), text


def test_fuzzer_finds_no_crash(models):
    tally = fuzz.run(FUZZ_CASES, seed=20261123, workers=2, models=models)
    report = fuzz.format_tally(tally)
    print(report)
    assert tally["cases"] == FUZZ_CASES, report
    assert tally["deaths"] == 0, report
    assert tally["exceptions"] == 0, report
    assert tally["unnamed"] == 0, report
    # every mutation ran, and the checks behind the flatbuffer were reached too
    assert set(tally["by_mutation"]) == set(fuzz.MUTATIONS), report
    assert tally["accepted"] > 0 and tally["specific"] > FUZZ_CASES // 50, report


def test_fuzzer_counts_a_death_as_a_death(models, monkeypatch):
    """The harness itself: a worker killed by a signal mid-case is recorded as a death of
    that case, and the next worker goes on with the rest."""
    monkeypatch.setenv("MAM_TF_FUZZ_KILL_AT", "3")
    tally = fuzz.run(8, seed=1, workers=1, models=models)
    assert tally["cases"] == 8 and tally["deaths"] == 1, fuzz.format_tally(tally)
    assert tally["examples"]["deaths"][0]["i"] == 3


def test_without_the_c_core_the_reference_checks_stand_in(monkeypatch):
    """No compiler here: the runtime falls back to the numpy reference, and the node checks to
    the reference's own; corrupted layouts are still refused, good models still run."""
    import warnings

    from mam_tf.deploy import native

    good = _model_a("int8")
    want = Interpreter(good, backend="core").run_raw(np.arange(-60, 60, 3, dtype=np.int8)
                                                    .reshape(2, 20))

    def no_core():
        raise native.CoreBuildError("no compiler (test)")

    monkeypatch.setattr(native, "load", no_core)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = Interpreter(good)
    assert interp.backend == "reference"
    np.testing.assert_array_equal(
        interp.run_raw(np.arange(-60, 60, 3, dtype=np.int8).reshape(2, 20)), want)
    for name in ("row_counts_sum_off", "column_beyond_n", "row_counts_int32",
                 "options_version_2", "two_outputs", "output_last_dim_7"):
        with warnings.catch_warnings(), pytest.raises(ValueError, match="operator 1 MAM_SPARSE"):
            warnings.simplefilter("ignore")
            Interpreter(corrupt(good, name))
