"""Keras -> .tflite with MAM_SPARSE, and the host runtime that runs it."""
import numpy as np
import pytest

from ecg_data import arsnr, synthetic_windows
from mam_tf import MAMDense, VanishingContributions, keras
from mam_tf.deploy import options
from mam_tf.deploy import reference
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy.convert import convert, write_header
from mam_tf.deploy.runtime import Interpreter


def _small_model(seed=0, prune_below=0.3, activation="relu"):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((20,))
    h = keras.layers.Dense(16, activation="relu", name="pre")(inp)
    h = MAMDense(8, activation=activation, name="enc", bias_initializer="random_normal")(h)
    out = keras.layers.Dense(20, name="dec")(h)
    model = keras.Model(inp, out)
    w = model.get_layer("enc").kernel.numpy()
    w[np.abs(w) < prune_below] = 0.0
    model.get_layer("enc").kernel.assign(w)
    return model


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).standard_normal((64, 20)).astype(np.float32)


@pytest.fixture(scope="module", params=["int8", "int16x8"])
def converted(request, data):
    keras.backend.clear_session()
    model = _small_model()
    return model, convert(model, data, mode=request.param, return_report=True)


def _ops(tflite):
    model = fb.load(tflite)
    return model, model.subgraphs[0], [fb.op_name(model, op) for op in model.subgraphs[0].operators]


def test_each_mam_layer_becomes_one_mam_sparse_op(converted):
    _, conv = converted
    model, sg, names = _ops(conv.tflite)
    assert names == ["FULLY_CONNECTED", "MAM_SPARSE", "FULLY_CONNECTED"]
    op = sg.operators[1]
    x, values, offsets, counts, bias = (sg.tensors[i] for i in op.inputs)
    act = np.int8 if conv.mode == "int8" else np.int16
    assert fb.numpy_dtype(x.type) == act
    assert fb.numpy_dtype(values.type) == np.int8
    assert fb.numpy_dtype(offsets.type) == np.uint8
    assert fb.numpy_dtype(counts.type) == np.int16
    assert fb.numpy_dtype(bias.type) == (np.int32 if conv.mode == "int8" else np.int64)
    assert fb.numpy_dtype(sg.tensors[op.outputs[0]].type) == act
    # The dense float products' constant is gone: no buffer as large as N*M*... remains.
    assert len(conv.tflite) < 8000


def test_custom_options_are_exactly_the_shared_definition(converted):
    _, conv = converted
    _, sg, _ = _ops(conv.tflite)
    raw = np.asarray(sg.operators[1].customOptions, np.uint8).tobytes()
    opts = options.decode(raw)
    assert set(opts) == set(options.KEYS)
    assert opts == {"in_features": 16, "fused_activation_function": 1, "version": 1}


def test_weights_stored_are_the_kernel_quantized_and_pruned(converted):
    model, conv = converted
    tfl, sg, _ = _ops(conv.tflite)
    op = sg.operators[1]
    values = fb.constant(tfl, sg, op.inputs[1])
    from mam_tf.deploy.offset_csr import OffsetCSR

    csr = OffsetCSR(values, fb.constant(tfl, sg, op.inputs[2]), fb.constant(tfl, sg, op.inputs[3]),
                    (8, 16))
    scales, zps = fb.quantization(sg.tensors[op.inputs[1]])
    kernel = model.get_layer("enc").kernel.numpy()
    assert (zps == 0).all() and scales.shape == (8,)
    err = np.abs(csr.decode().astype(np.float32) * scales[:, None] - kernel.T)
    assert (err <= scales[:, None] / 2 + 1e-7).all()  # each row within half its own step
    assert np.count_nonzero(csr.decode()) == conv.layers[0].nonzeros <= np.count_nonzero(kernel)
    r = conv.layers[0]
    bias_bytes = 8 * (4 if conv.mode == "int8" else 8)  # int32 / int64 bias
    assert r.sparse_bytes == 2 * r.entries + 2 * 8 + bias_bytes
    assert r.dense_int8_bytes == 8 * 16 + bias_bytes


def _check_mam_op_against_float(model, tflite, mode, data, layer_name):
    """The MAM_SPARSE op of ``layer_name``, on both backends, against the Keras layer's own
    float arithmetic (max + min of all N products, plus the bias, relu) on each row of the op's
    dequantized input, within the bound that quantizing the weights, the bias and the output
    allows; core and reference equal bit for bit on the whole model."""
    layer = model.get_layer(layer_name)
    kernel, bias = layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)
    n, m = kernel.shape
    tfl, sg, names = _ops(tflite)
    op = sg.operators[names.index("MAM_SPARSE")]
    x_t, v_t, y_t = (sg.tensors[int(i)] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    s_in, zx = float(x_t.quantization.scale[0]), int(x_t.quantization.zeroPoint[0])
    s_out, zy = float(y_t.quantization.scale[0]), int(y_t.quantization.zeroPoint[0])
    s_w = np.broadcast_to(np.asarray(v_t.quantization.scale, np.float64), (m,))
    info = np.iinfo(np.int8 if mode == "int8" else np.int16)
    for backend in ("core", "reference"):
        interp = Interpreter(tflite, backend=backend)
        got_all, want_all, bound_all = [], [], []
        for sample in data[:16]:
            interp.run(sample[None])
            xq = interp.tensors[int(op.inputs[0])].reshape(-1, n).astype(np.float64)
            x = (xq - zx) * s_in
            products = x[:, :, None] * kernel  # [rows, N, M], pruned weights give 0 as in Keras
            y = np.maximum(products.max(1) + products.min(1) + bias, 0.0)  # relu
            want_all.append(np.clip(np.round(y / s_out) + zy, info.min, info.max))
            got_all.append(interp.tensors[int(op.outputs[0])].reshape(-1, m).astype(np.int64))
            # each product moves by at most |x| * s_w / 2 when W is quantized, so max and min
            # by that; the bias by s_in * s_w / 2; rounding twice: one output step
            delta = np.abs(x).max(1, keepdims=True) * s_w / 2
            bound_all.append((2 * delta + s_in * s_w / 2) / s_out + 1)
        got, want, bound = map(np.concatenate, (got_all, want_all, bound_all))
        assert np.all(np.abs(got - want) <= bound), (backend, got - want, bound)
        assert len(np.unique(got)) > 4  # the outputs vary: the comparison means something
        # the bias matters here: leaving it out would break the bound
        assert np.any(np.abs(bias) / s_out > bound.max(0) + 1), (bias / s_out, bound.max(0))
    a = Interpreter(tflite, backend="core").run_raw(Interpreter(tflite).quantize_input(data))
    b = Interpreter(tflite, backend="reference").run_raw(Interpreter(tflite).quantize_input(data))
    np.testing.assert_array_equal(a, b)


def test_runtime_mam_sparse_equals_the_reference(converted, data):
    model, conv = converted
    _check_mam_op_against_float(model, conv.tflite, conv.mode, data, "enc")


def test_converted_model_tracks_keras(converted, data):
    model, conv = converted
    y = Interpreter(conv.tflite).run(data)
    ref = model.predict(data, verbose=0)
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel < (0.05 if conv.mode == "int8" else 0.02)


def test_splicing_leaves_other_ops_untouched(data):
    """The ops before and after the MAM layer are the builtin ops TFLite made, unchanged."""
    from mam_tf.deploy.convert import _tflite_builtin

    model = _small_model()
    spliced = fb.load(convert(model, data, mode="int8"))
    plain = fb.load(_tflite_builtin(model, data, "int8", False, 500))

    def describe(tfl, op):
        sg = tfl.subgraphs[0]
        consts = [fb.constant(tfl, sg, t).tobytes() for t in op.inputs if fb.is_constant(tfl, sg, t)]
        quant = []
        for t in list(op.inputs) + list(op.outputs):
            scales, zps = fb.quantization(sg.tensors[t]) if t >= 0 else (None, None)
            quant.append(None if scales is None else (scales.tobytes(), zps.tobytes()))
        return fb.op_name(tfl, op), consts, quant

    a = [describe(spliced, op) for op in spliced.subgraphs[0].operators]
    b = [describe(plain, op) for op in plain.subgraphs[0].operators]
    assert [k for k, _, _ in b] == ["FULLY_CONNECTED", "RESHAPE", "MUL", "REDUCE_MAX",
                                    "REDUCE_MIN", "ADD", "ADD", "FULLY_CONNECTED"]
    # Same op, same constants bytes, same quantization on every tensor it touches.
    assert a[0] == b[0] and a[-1] == b[-1]
    # MAM_SPARSE reads the tensor the pattern read, and writes the one it wrote.
    sa, sb = spliced.subgraphs[0], plain.subgraphs[0]
    mam = sa.operators[1]
    assert sa.tensors[mam.inputs[0]].name == sb.tensors[sb.operators[1].inputs[0]].name
    assert sa.tensors[mam.outputs[0]].name == sb.tensors[sb.operators[6].outputs[0]].name


def test_header_is_an_aligned_c_array(tmp_path, converted):
    _, conv = converted
    text = write_header(conv.tflite, tmp_path / "model_data.h", name="mam_model")
    assert "alignas(16) const unsigned char mam_model[]" in text
    assert f"const size_t mam_model_len = {len(conv.tflite)};" in text
    body = text[text.index("{") + 1:text.index("};")]
    assert bytes(int(v, 16) for v in body.replace(",", " ").split()) == conv.tflite


# -- refusals ------------------------------------------------------------------------------
def test_beta_not_zero_is_refused(data):
    model = _small_model()
    model.get_layer("enc").set_beta(0.25)
    with pytest.raises(ValueError, match="MAMDense 'enc': beta is 0.25; export needs beta == 0"):
        convert(model, data)


def test_non_finite_weights_are_refused(data):
    model = _small_model()
    w = model.get_layer("enc").kernel.numpy()
    w[0, 0] = np.nan
    model.get_layer("enc").kernel.assign(w)
    with pytest.raises(ValueError, match="MAMDense 'enc' has non-finite kernel"):
        convert(model, data)


def test_unsupported_layer_is_refused(data):
    inp = keras.Input((20,))
    h = keras.layers.LSTM(4, name="rnn")(keras.layers.Reshape((4, 5))(inp))
    model = keras.Model(inp, MAMDense(3, name="m")(h))
    with pytest.raises(ValueError, match="layer 'rnn' of type LSTM is not supported"):
        convert(model, data)


def test_model_without_mam_layer_is_refused(data):
    inp = keras.Input((20,))
    model = keras.Model(inp, keras.layers.Dense(3)(inp), name="plain")
    with pytest.raises(ValueError, match="model 'plain' has no MAM layer"):
        convert(model, data)


def test_unknown_mode_and_bad_data_are_refused(data):
    model = _small_model()
    with pytest.raises(ValueError, match="mode must be one of"):
        convert(model, data, mode="int4")
    with pytest.raises(ValueError, match=r"sample shape \(7,\)"):
        convert(model, np.zeros((4, 7), np.float32))


def test_row_over_the_int16_entry_limit_names_the_layer_and_row():
    n = 32768  # one more entry than row_counts (int16) can hold
    inp = keras.Input((n,))
    model = keras.Model(inp, MAMDense(1, name="wide", kernel_initializer="ones")(inp))
    with pytest.raises(ValueError, match=r"layer 'wide'.*row 0"):
        convert(model, np.ones((2, n), np.float32))


# -- end to end on a small ECG autoencoder ---------------------------------------------------
@pytest.fixture(scope="module")
def ecg_autoencoder():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1)
    x = synthetic_windows(1200, seed=3)
    train, test = x[:1000], x[1000:]
    inp = keras.Input((256,))
    code = MAMDense(32, activation="relu", beta=1.0, name="encoder")(inp)
    model = keras.Model(inp, keras.layers.Dense(256, activation="sigmoid", name="decoder")(code))
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(train, train, epochs=20, batch_size=50, verbose=0,
              callbacks=[VanishingContributions(length=8)])
    return model, train, test


@pytest.mark.slow
@pytest.mark.parametrize("mode, budget_db", [("int16x8", 0.5), ("int8", 1.5)])
def test_converted_autoencoder_keeps_its_arsnr(ecg_autoencoder, mode, budget_db):
    model, train, test = ecg_autoencoder
    float_db = arsnr(test, model.predict(test, verbose=0))
    # The model learned something (well above predicting the mean window), so the
    # comparison below means something.
    assert float_db > arsnr(test, np.broadcast_to(train.mean(0), test.shape)) + 2.0
    tflite = convert(model, train[:200], mode=mode)
    device_db = arsnr(test, Interpreter(tflite).run(test))
    assert abs(float_db - device_db) <= budget_db, (float_db, device_db)


# -- quantization-aware models ---------------------------------------------------------------
@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_qat_model_converts_with_its_own_ranges_and_weights(data, mode):
    from mam_tf.train.quantization import layer_quant_params, quantize_model

    big = np.random.default_rng(1).standard_normal((256, 20)).astype(np.float32)
    qat = quantize_model(_small_model(), mode, calibration_data=big)
    params = layer_quant_params(qat)
    tflite = convert(qat, None, mode=mode)  # no calibration data: the fake-quant ranges rule
    tfl, sg, names = _ops(tflite)
    assert names == ["FULLY_CONNECTED", "MAM_SPARSE", "FULLY_CONNECTED"]
    op = sg.operators[1]
    x_t, y_t = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
    for tensor, p in ((x_t, params["enc"]["input"]), (y_t, params["enc"]["output"])):
        scales, zps = fb.quantization(tensor)
        assert scales[0] == np.float32(p["scale"]) and zps[0] == p["zero_point"]
    from mam_tf.deploy.offset_csr import OffsetCSR

    csr = OffsetCSR(*(fb.constant(tfl, sg, op.inputs[k]) for k in (1, 2, 3)), (8, 16))
    np.testing.assert_array_equal(csr.decode(), params["enc"]["weights"]["values"].T)
    np.testing.assert_array_equal(fb.quantization(sg.tensors[op.inputs[1]])[0],
                                  params["enc"]["weights"]["scale"])
    # The device's integers reproduce the QAT model's fake-quantized outputs up to rounding:
    # float32 fake-quant simulation against integer requantization differ by at most 2 output
    # steps, and only on some outputs (a wrong scale or zero point would shift nearly all).
    # At 16 bits a step is small against float32 rounding, so more outputs differ by one.
    lsb = params["dec"]["output"]["scale"]
    steps = np.abs(Interpreter(tflite).run(big) - qat.predict(big, verbose=0)) / lsb
    assert steps.max() <= 2.0 + 1e-3
    assert (steps > 0.5).mean() < (0.05 if mode == "int8" else 0.3)


def test_qat_model_must_be_converted_in_its_own_scheme(data):
    from mam_tf.train.quantization import quantize_model

    qat = quantize_model(_small_model(), "int16x8", calibration_data=data)
    with pytest.raises(ValueError, match=r"trained quantization-aware for \['int16x8'\]"):
        convert(qat, None, mode="int8")


def test_float_model_needs_representative_data():
    with pytest.raises(ValueError, match="representative data is needed"):
        convert(_small_model(), None)


# -- MAC_SPARSE for pruned Dense layers ------------------------------------------------------
@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_pruned_dense_as_mac_sparse_computes_what_fully_connected_does(data, mode):
    model = _small_model()
    dec = model.get_layer("dec")
    k = dec.kernel.numpy()
    k[np.abs(k) < np.quantile(np.abs(k), 0.8)] = 0.0  # 20% density
    dec.kernel.assign(k)
    dec.bias.assign(np.linspace(-0.2, 0.2, 20).astype(np.float32))
    plain = convert(model, data, mode=mode)
    sparse = convert(model, data, mode=mode, mac_sparse_below=0.5, return_report=True)
    _, _, names = _ops(sparse.tflite)
    assert names == ["FULLY_CONNECTED", "MAM_SPARSE", "MAC_SPARSE"]  # "pre" is dense: untouched
    assert [r.op for r in sparse.layers] == ["MAM_SPARSE", "MAC_SPARSE"]
    assert sparse.layers[1].sparse_bytes < sparse.layers[1].dense_int8_bytes
    x = Interpreter(plain).quantize_input(data)
    np.testing.assert_array_equal(Interpreter(sparse.tflite).run_raw(x), Interpreter(plain).run_raw(x))
    with pytest.raises(ValueError, match="mac_sparse_below must be in"):
        convert(model, data, mode=mode, mac_sparse_below=0.0)


def test_16x8_dense_without_bias_differs_from_mac_sparse_by_at_most_one_step(data):
    """TFLM's 16x8 FULLY_CONNECTED without a bias requantizes with the 32-bit routine;
    MAC_SPARSE always uses the 64-bit one (the contract): at most one output step apart."""
    model = _small_model()
    dec = model.get_layer("dec")
    k = dec.kernel.numpy()
    k[np.abs(k) < np.quantile(np.abs(k), 0.8)] = 0.0
    dec.kernel.assign(k)  # bias stays all zeros: TFLite drops it
    plain = convert(model, data, mode="int16x8")
    sparse = convert(model, data, mode="int16x8", mac_sparse_below=0.5)
    x = Interpreter(plain).quantize_input(data)
    diff = np.abs(Interpreter(sparse).run_raw(x).astype(np.int64)
                  - Interpreter(plain).run_raw(x).astype(np.int64))
    assert diff.max() <= 1


# -- variants the device must handle: float I/O, per-tensor scales, no bias, MAM as output ----
@pytest.mark.parametrize("mode", ["int8", "int16x8"])
@pytest.mark.parametrize("per_row, use_bias, float_io", [
    (False, True, True), (True, False, True), (True, True, True), (False, False, False)])
@pytest.mark.parametrize("last", [True, False])
def test_mam_layer_converts_in_every_variant(data, mode, per_row, use_bias, float_io, last):
    keras.backend.clear_session()
    keras.utils.set_random_seed(4)
    inp = keras.Input((20,))
    h = keras.layers.Dense(16, activation="relu", name="pre")(inp)
    layer = MAMDense(6, use_bias=use_bias, name="out", bias_initializer="random_normal")
    h = layer(h)
    model = keras.Model(inp, h if last else keras.layers.Dense(3, name="after")(h))
    conv = convert(model, data, mode=mode, per_row=per_row, float_io=float_io, return_report=True)
    tfl, sg, names = _ops(conv.tflite)
    core = [n for n in names if n not in ("QUANTIZE", "DEQUANTIZE")]
    # The bias went into MAM_SPARSE, once; nothing of the pattern is left.
    assert core == ["FULLY_CONNECTED", "MAM_SPARSE"] + ([] if last else ["FULLY_CONNECTED"])
    op = sg.operators[names.index("MAM_SPARSE")]
    assert (op.inputs[4] >= 0) == use_bias
    assert fb.quantization(sg.tensors[op.inputs[1]])[0].shape == ((6,) if per_row else (1,))
    ref = model.predict(data, verbose=0)
    err = np.abs(Interpreter(conv.tflite).run(data) - ref).max() / np.abs(ref).max()
    assert err < (0.05 if mode == "int8" else 0.02)


def test_signature_of_the_converted_model_points_at_its_io(data):
    tflite = convert(_small_model(), data, mode="int8", per_row=False)
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    for sig in tfl.signatureDefs:
        assert [tm.tensorIndex for tm in sig.inputs] == list(sg.inputs)
        assert [tm.tensorIndex for tm in sig.outputs] == list(sg.outputs)
    assert all(md.buffer < len(tfl.buffers) for md in tfl.metadata or [])


def test_shared_mam_layer_is_refused(data):
    inp = keras.Input((20,))
    shared = MAMDense(20, name="twice")
    model = keras.Model(inp, shared(shared(inp)))
    with pytest.raises(ValueError, match="MAM layer 'twice' left a second MAM pattern"):
        convert(model, data)


def test_export_applies_held_pruning_masks(data):
    from mam_tf.train.pruning import prune_magnitude

    pruned = prune_magnitude(_small_model(prune_below=0.0), 0.75, layers=["enc"])
    wrapper = next(l for l in pruned.layers if getattr(l, "layer", None) is not None
                   and l.layer.name == "enc")
    # Weights moved after pruning (e.g. restored from elsewhere): the mask still rules export.
    wrapper.layer.kernel.assign(tf_ones_like(wrapper.layer.kernel))
    conv = convert(pruned, data, return_report=True)
    assert conv.layers[0].nonzeros == 32  # 25% of 16 x 8


def tf_ones_like(v):
    return np.ones(v.shape, np.float32)


def test_converter_failure_is_a_value_error_naming_the_model(data, monkeypatch):
    from mam_tf.train.compat import tf

    def fail(self):
        raise RuntimeError("'tfl.transpose' op has mismatched quantized axes\n<long MLIR dump>")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", fail)
    with pytest.raises(ValueError, match=r"convert: TFLite's converter failed on model 'model.*"
                                         r"\(int8\): 'tfl.transpose' op has mismatched"):
        convert(_small_model(), data, mode="int8")


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_per_channel_qat_model_with_dense_layers_converts(data, mode):
    from mam_tf.train.quantization import layer_quant_params, quantize_model

    with pytest.warns(UserWarning, match=r"Dense/Conv layers \['pre', 'dec'\] keep one weight scale"):
        qat = quantize_model(_small_model(), mode, per_channel=True, calibration_data=data)
    params = layer_quant_params(qat)
    assert params["enc"]["weights"]["scale"].shape == (8,)
    assert params["pre"]["weights"]["scale"].shape == (1,)
    tfl, sg, names = _ops(convert(qat, None, mode=mode))
    assert names == ["FULLY_CONNECTED", "MAM_SPARSE", "FULLY_CONNECTED"]
    np.testing.assert_array_equal(fb.quantization(sg.tensors[sg.operators[1].inputs[1]])[0],
                                  params["enc"]["weights"]["scale"])


# -- token inputs [batch, tokens, ..., features]: rows, as FULLY_CONNECTED reads them ---------
TOKENS = (3, 4)  # two leading dimensions: 12 rows per sample


def _token_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input(TOKENS + (12,))
    h = keras.layers.Dense(10, activation="relu", name="pre",
                           bias_initializer="random_normal")(inp)  # a bias: see the 16x8 note
    h = MAMDense(8, activation="relu", name="enc", bias_initializer="random_normal")(h)
    out = keras.layers.Dense(6, name="dec", bias_initializer="random_normal")(h)
    model = keras.Model(inp, out)
    for name, keep in (("enc", 0.4), ("dec", 0.3)):
        w = model.get_layer(name).kernel.numpy()
        w[np.abs(w) < np.quantile(np.abs(w), 1 - keep)] = 0.0
        model.get_layer(name).kernel.assign(w)
    return model


@pytest.fixture(scope="module")
def token_data():
    return np.random.default_rng(1).standard_normal((48,) + TOKENS + (12,)).astype(np.float32)


@pytest.fixture(scope="module", params=["int8", "int16x8"])
def token_converted(request, token_data):
    keras.backend.clear_session()
    model = _token_model()
    return model, convert(model, token_data, mode=request.param, return_report=True)


def test_token_inputs_run_as_rows_in_mam_sparse(token_converted):
    """The op reads [rows, N] and writes [rows, M] (the device contract), rows = the tokens of
    one sample; the model keeps its [batch, 3, 4, 6] output."""
    model, conv = token_converted
    tfl, sg, names = _ops(conv.tflite)
    op = sg.operators[names.index("MAM_SPARSE")]
    rows = int(np.prod(TOKENS))
    assert list(sg.tensors[op.inputs[0]].shape) == [rows, 10]
    assert list(sg.tensors[op.outputs[0]].shape) == [rows, 8]
    assert list(sg.tensors[sg.outputs[0]].shape) == [1, *TOKENS, 6]
    assert names.count("MAM_SPARSE") == 1 and "REDUCE_MAX" not in names
    assert conv.layers[0].shape == (8, 10)
    from mam_tf.deploy import check

    assert check.check_model(conv.tflite, probe=True)[1] == []  # RESHAPE's rules, TFLM's kernels


def test_token_rows_follow_the_tokens_of_each_sample(token_converted, token_data):
    """Each row of the op's output is the Keras layer's output for that token (a batch of
    samples through the host runtime, dequantized), and the model's output is Keras'."""
    model, conv = token_converted
    tfl, sg, names = _ops(conv.tflite)
    op = sg.operators[names.index("MAM_SPARSE")]
    y_t = sg.tensors[op.outputs[0]]
    s_out, zy = float(y_t.quantization.scale[0]), int(y_t.quantization.zeroPoint[0])
    enc = keras.Model(model.inputs, model.get_layer("enc").output)
    interp = Interpreter(conv.tflite)
    for sample in token_data[:8]:
        interp.run(sample[None])
        got = (interp.tensors[int(op.outputs[0])].astype(np.float64) - zy) * s_out
        want = enc.predict(sample[None], verbose=0).reshape(-1, 8)
        assert np.abs(got - want).max() <= 0.08 * np.abs(want).max() + 2 * s_out
    y = interp.run(token_data)
    ref = model.predict(token_data, verbose=0)
    assert y.shape == ref.shape == (len(token_data), *TOKENS, 6)
    assert np.abs(y - ref).max() / np.abs(ref).max() < (0.05 if conv.mode == "int8" else 0.02)


def test_token_mam_sparse_equals_the_float_layer_row_by_row(token_converted, token_data):
    model, conv = token_converted
    _check_mam_op_against_float(model, conv.tflite, conv.mode, token_data, "enc")


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_pruned_dense_on_tokens_as_mac_sparse_computes_what_fully_connected_does(token_data,
                                                                                  mode):
    """"pre" reads the model input [1, 3, 4, 12] and TFLite's FULLY_CONNECTED writes
    [1, 3, 4, 10] (it keeps the leading dimensions): MAC_SPARSE reads and writes rows, with
    a RESHAPE on each side; "dec" reads the MAM layer's rows."""
    model = _token_model()
    pre = model.get_layer("pre")
    w = pre.kernel.numpy()
    w[np.abs(w) < np.quantile(np.abs(w), 0.7)] = 0.0
    pre.kernel.assign(w)
    plain = convert(model, token_data, mode=mode)
    sparse = convert(model, token_data, mode=mode, mac_sparse_below=0.5, return_report=True)
    _, sg, names = _ops(sparse.tflite)
    assert [r.op for r in sparse.layers] == ["MAM_SPARSE", "MAC_SPARSE", "MAC_SPARSE"]
    assert "FULLY_CONNECTED" not in names
    rows = int(np.prod(TOKENS))
    shapes = [[list(sg.tensors[t].shape) for t in (op.inputs[0], op.outputs[0])]
              for op, name in zip(sg.operators, names) if name.endswith("_SPARSE")]
    assert shapes == [[[rows, 12], [rows, 10]], [[rows, 10], [rows, 8]], [[rows, 8], [rows, 6]]]
    assert names[:3] == ["RESHAPE", "MAC_SPARSE", "RESHAPE"]
    x = Interpreter(plain).quantize_input(token_data)
    np.testing.assert_array_equal(Interpreter(sparse.tflite).run_raw(x),
                                  Interpreter(plain).run_raw(x))
