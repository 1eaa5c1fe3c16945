"""The checker holds TFLite-Micro's builtin kernel preconditions, and the probe turns an abort
into a refusal.

Each edit below breaks one precondition of a converted model's builtin operator. The checker
(mam_tf.deploy.builtins) must refuse it naming the operator and what is wrong; TFLite-Micro
itself, run in a child process (mam_tf.deploy.probe), is the independent judge of whether the
precondition is real: it refuses the model, or dies on it, for every edit marked so.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mam_tf.deploy import check, probe
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy.runtime import Interpreter

REGRESSIONS = Path(__file__).resolve().parents[2] / "shared" / "regressions"
SAMPLE = REGRESSIONS / "fc-weight-zero-point-int16x8.tflite"
needs_sample = pytest.mark.skipif(not SAMPLE.is_file(),
                                  reason=f"the regression sample is not at {SAMPLE}")


@pytest.fixture(scope="module")
def converted():
    """{mode: .tflite}: Conv1D -> MaxPooling1D -> Flatten -> MAMDense -> Dense, float in and
    out: CONV_2D, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED, MAM_SPARSE, QUANTIZE, DEQUANTIZE."""
    from mam_tf import MAMDense, keras
    from mam_tf.deploy.convert import convert

    out = {}
    for mode in ("int8", "int16x8"):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        inp = keras.Input((32, 1))
        h = keras.layers.Conv1D(4, 5, padding="same", activation="relu", name="conv")(inp)
        h = keras.layers.MaxPooling1D(2, name="pool")(h)
        h = keras.layers.Flatten()(h)
        h = MAMDense(8, activation="relu", name="mam")(h)
        model = keras.Model(inp, keras.layers.Dense(6, name="fc",
                                                   bias_initializer="random_normal")(h))
        data = np.random.default_rng(0).standard_normal((32, 32, 1)).astype(np.float32)
        out[mode] = convert(model, data, mode=mode, float_io=True)
    return out


def _op(tfl, kind):
    sg = tfl.subgraphs[0]
    return next(op for op in sg.operators if fb.op_name(tfl, op) == kind)


def _fc_filter_zero_point(tfl, sg):
    q = sg.tensors[_op(tfl, "FULLY_CONNECTED").inputs[1]].quantization
    q.zeroPoint = np.array([7] + [0] * (len(q.scale) - 1), np.int64)


def _conv_filter_zero_point(tfl, sg):
    q = sg.tensors[_op(tfl, "CONV_2D").inputs[1]].quantization
    q.zeroPoint = np.array([0] * (len(q.scale) - 1) + [-3], np.int64)


def _fc_filter_three_scales(tfl, sg):
    q = sg.tensors[_op(tfl, "FULLY_CONNECTED").inputs[1]].quantization
    q.scale, q.zeroPoint = np.asarray(q.scale[:1].tolist() * 3, np.float32), np.zeros(3, np.int64)


def _fc_bias_type(tfl, sg):
    t = sg.tensors[_op(tfl, "FULLY_CONNECTED").inputs[2]]
    t.type = fb.schema().TensorType.INT8
    t.shape = np.array([6], np.int32)
    tfl.buffers[t.buffer].data = np.zeros(6, np.uint8)


def _fc_activation(tfl, sg):
    _op(tfl, "FULLY_CONNECTED").builtinOptions.fusedActivationFunction = 5  # SIGN_BIT


def _fc_weights_format(tfl, sg):
    _op(tfl, "FULLY_CONNECTED").builtinOptions.weightsFormat = 1  # SHUFFLED4x16INT8


def _fc_input_two_scales(tfl, sg):
    q = sg.tensors[_op(tfl, "FULLY_CONNECTED").inputs[0]].quantization
    q.scale, q.zeroPoint = np.asarray([q.scale[0]] * 2, np.float32), np.asarray([q.zeroPoint[0]] * 2)


def _conv_filter_scale_huge(tfl, sg):  # found by the fuzzer: SIGABRT in the int16 conv
    sg.tensors[_op(tfl, "CONV_2D").inputs[1]].quantization.scale[1] = 5e15


def _conv_bias_huge(tfl, sg):  # found by the fuzzer: the int64 accumulator left +-2^47
    t = sg.tensors[_op(tfl, "CONV_2D").inputs[2]]
    bias = np.frombuffer(bytes(tfl.buffers[t.buffer].data), np.int64).copy()
    bias[0] = 1 << 56
    tfl.buffers[t.buffer].data = np.frombuffer(bias.tobytes(), np.uint8)


def _conv_stride_0(tfl, sg):
    _op(tfl, "CONV_2D").builtinOptions.strideW = 0


def _conv_filter_3d(tfl, sg):
    t = sg.tensors[_op(tfl, "CONV_2D").inputs[1]]
    t.shape = np.array([int(t.shape[0]), int(t.shape[2]), int(t.shape[3])], np.int32)


def _pool_output_zero_point(tfl, sg):
    q = sg.tensors[_op(tfl, "MAX_POOL_2D").outputs[0]].quantization
    q.zeroPoint = np.asarray([int(q.zeroPoint[0]) + 1], np.int64)


def _pool_filter_0(tfl, sg):
    _op(tfl, "MAX_POOL_2D").builtinOptions.filterWidth = 0


def _quantize_two_scales(tfl, sg):
    q = sg.tensors[_op(tfl, "QUANTIZE").outputs[0]].quantization
    q.scale, q.zeroPoint = np.asarray([q.scale[0]] * 2, np.float32), np.asarray([q.zeroPoint[0]] * 2)


def _quantize_output_flattened(tfl, sg):  # found by the fuzzer: SIGABRT, same size
    t = sg.tensors[_op(tfl, "QUANTIZE").outputs[0]]
    t.shape = np.array([int(np.prod(t.shape))], np.int32)


def _dequantize_to_int32(tfl, sg):
    sg.tensors[_op(tfl, "DEQUANTIZE").outputs[0]].type = fb.schema().TensorType.INT32


def _reshape_grows(tfl, sg):
    t = sg.tensors[_op(tfl, "RESHAPE").outputs[0]]
    t.shape = np.array([int(t.shape[0]), int(t.shape[1]) + 4], np.int32)


# (edit, modes, words the checker's line holds, whether TFLite-Micro itself refuses or dies)
EDITS = [
    (_fc_filter_zero_point, ("int8", "int16x8"), ["FULLY_CONNECTED", "zero point 7"], True),
    (_conv_filter_zero_point, ("int8", "int16x8"), ["CONV_2D", "zero point -3"], False),
    (_fc_filter_three_scales, ("int8",), ["FULLY_CONNECTED", "3 scales"], True),
    (_fc_bias_type, ("int8",), ["FULLY_CONNECTED", "bias", "INT8", "INT32"], False),
    (_fc_activation, ("int8", "int16x8"), ["FULLY_CONNECTED", "SIGN_BIT"], False),
    (_fc_weights_format, ("int8",), ["FULLY_CONNECTED", "SHUFFLED4x16INT8"], False),
    (_fc_input_two_scales, ("int8",), ["FULLY_CONNECTED", "2 scales"], False),
    (_conv_stride_0, ("int8",), ["CONV_2D", "strideW is 0"], False),
    (_conv_filter_scale_huge, ("int16x8",), ["CONV_2D", "shift", "-31..7"], True),
    (_conv_filter_scale_huge, ("int8",), ["CONV_2D", "shift", "-31..30"], False),
    (_conv_bias_huge, ("int16x8",), ["CONV_2D", "72057594037927936", "2^47"], True),
    (_conv_filter_3d, ("int8",), ["CONV_2D", "4 dimensions"], True),
    (_pool_output_zero_point, ("int8",), ["MAX_POOL_2D", "quantized alike"], True),
    (_pool_output_zero_point, ("int16x8",), ["MAX_POOL_2D", "INT16 with zero point 1"], True),
    (_pool_filter_0, ("int8",), ["MAX_POOL_2D", "filterWidth is 0"], False),
    (_quantize_two_scales, ("int8",), ["QUANTIZE", "2 scales"], True),
    (_dequantize_to_int32, ("int8",), ["DEQUANTIZE", "INT32"], True),
    (_quantize_output_flattened, ("int8",), ["QUANTIZE", "must be the same"], True),
    (_reshape_grows, ("int8",), ["RESHAPE", "elements"], True),
]
CASES = [(e, m, w, r) for e, modes, w, r in EDITS for m in modes]


def _edit(tflite, fn):
    tfl = fb.load(tflite)
    fn(tfl, tfl.subgraphs[0])
    return fb.pack(tfl)


def test_converted_models_pass_the_checker_and_the_probe(converted):
    for mode, tflite in converted.items():
        tfl, problems = check.check_model(tflite, probe=True)
        assert problems == [], (mode, problems)
        kinds = {fb.op_name(tfl, op) for op in tfl.subgraphs[0].operators}
        assert {"CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED", "QUANTIZE",
                "DEQUANTIZE", "MAM_SPARSE"} <= kinds, kinds


@pytest.mark.parametrize("edit, mode, words, tflm_refuses", CASES,
                         ids=[f"{e.__name__}-{m}" for e, m, _, _ in CASES])
def test_checker_holds_each_kernel_precondition(converted, edit, mode, words, tflm_refuses):
    bad = _edit(converted[mode], edit)
    tfl, problems = check.check_model(bad)
    assert any(all(w in p for w in words) for p in problems), problems
    if tflm_refuses:
        # TFLite-Micro agrees: its own interpreter refuses the operator, or dies on it
        found = probe.probe_model(tfl)
        assert any(words[0] in p for p in found), found


@needs_sample
def test_the_regression_sample_is_refused_naming_the_filter_zero_point():
    problems = check.check_file(SAMPLE)
    assert len(problems) == 1, problems
    assert "operator 1 FULLY_CONNECTED: filter tensor 1" in problems[0]
    assert "zero point 114" in problems[0]


@needs_sample
def test_the_probe_alone_names_the_operator_that_aborts_tflite_micro():
    # Without the static rule the sample kills TFLite-Micro (SIGABRT in FULLY_CONNECTED's
    # Prepare): the probe turns that into a refusal naming the operator.
    model = check.verify_flatbuffer(SAMPLE.read_bytes())
    found = probe.probe_model(model)
    assert found == ["operator 1 FULLY_CONNECTED: TFLite-Micro's kernel ended the process "
                     "(signal SIGABRT) while preparing or running it"], found


@needs_sample
def test_mam_tf_run_refuses_the_sample_instead_of_dying(tmp_path):
    x = np.load(REGRESSIONS / "fc-weight-zero-point-input.npy")
    np.save(tmp_path / "x.npy", x)
    for extra in ([], ["--no-probe"]):
        out = subprocess.run([sys.executable, "-m", "mam_tf.cli", "run", str(SAMPLE), "--data",
                              str(tmp_path / "x.npy"), *extra],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
        assert "zero point 114" in out.stderr + out.stdout
    with pytest.raises(ValueError, match="zero point 114"):
        Interpreter(SAMPLE)


def test_the_runtime_probes_by_itself_only_models_with_operators_the_rules_do_not_know(
        converted, monkeypatch):
    from mam_tf import keras
    from mam_tf.deploy.convert import convert

    calls = []
    real = probe.probe_model
    monkeypatch.setattr(probe, "probe_model", lambda model: calls.append(1) or real(model))
    Interpreter(converted["int8"])
    assert calls == []  # every builtin here has its rules
    keras.backend.clear_session()
    inp = keras.Input((8,))
    h = keras.layers.Dense(8, name="a")(inp)
    model = keras.Model(inp, keras.layers.Add()([h, inp]))  # ADD: no static rules
    tflite = convert(model, np.random.default_rng(0).standard_normal((16, 8), np.float32),
                     mode="int8", require_mam=False)
    Interpreter(tflite)
    assert calls == [1]
    Interpreter(tflite, probe=False)
    assert calls == [1]


def test_a_rank_one_model_input_is_refused_naming_the_tensor():
    # found by the fuzzer: a bit flip made the input [12]; the batch split then failed in numpy
    from mam_tf import MAMDense, keras
    from mam_tf.deploy.convert import convert

    keras.backend.clear_session()
    inp = keras.Input((12,))
    tflite = convert(keras.Model(inp, MAMDense(6, name="only")(inp)),
                     np.random.default_rng(0).standard_normal((16, 12), np.float32), mode="int8")

    def flatten_input(tfl, sg):
        t = sg.tensors[int(sg.inputs[0])]
        t.shape = np.array([int(np.prod(t.shape))], np.int32)
    with pytest.raises(ValueError, match=r"model input tensor \d+ '.*' has shape \[12\]; the "
                                         r"host runtime takes \[batch, \.\.\.\]"):
        Interpreter(_edit(tflite, flatten_input), probe=False)
