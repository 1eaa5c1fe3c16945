"""Quantization-aware training: schemes, parameters for the converter, sparsity, save/load."""
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import npref
from mam_tf import MAMDense, keras, pruning, quantization, tf

QUANTIZERS = tfmot.quantization.keras.quantizers


def _model():
    keras.utils.set_random_seed(5)
    inp = keras.Input((4, 4))
    h = keras.layers.Flatten(name="flat")(inp)
    h = MAMDense(6, activation="relu", bias_initializer="random_normal", name="m1")(h)
    h = keras.layers.Dense(5, activation="relu", bias_initializer="random_normal", name="mac")(h)
    out = MAMDense(4, bias_initializer="random_normal", name="m2")(h)
    return keras.Model(inp, out)


def _data(rng, n=64):
    return rng.uniform(-1, 1, (n, 4, 4)).astype(np.float32), \
        rng.uniform(-1, 1, (n, 4)).astype(np.float32)


def _levels(v, p):
    """Reals -> integers with a layer_quant_params range, as TF's fake quant rounds them.

    tensorflow/core/kernels/fake_quant_ops_functor.h, in float32: k = floor((clamp(v) -
    nudged_min) * inv_scale - quant_zero + 0.5), and the fake-quantized value is k * scale
    (k = q - zero_point).
    """
    f = np.float32
    offset = 2 ** (p["num_bits"] - 1)
    qmin_u, qmax_u = p["qmin"] + offset, p["qmax"] + offset
    mn, mx = f(p["min"]), f(p["max"])
    scale = (mx - mn) / f(qmax_u - qmin_u)
    assert scale == p["scale"]
    inv = f(qmax_u - qmin_u) / (mx - mn)
    zp_u = p["zero_point"] + offset
    nmin, nmax = f(qmin_u - zp_u) * scale, f(qmax_u - zp_u) * scale
    quant_zero = np.floor(-nmin * inv + f(0.5))
    k = np.floor((np.clip(v.astype(f), nmin, nmax) - nmin) * inv - quant_zero + f(0.5))
    return k + p["zero_point"]


def _integer_pipeline(params, x):
    """The model run the way the device runs it, from layer_quant_params alone.

    Each layer: input to integers, back to reals, the layer on int8 weights (MAM: max + min of
    the products, numpy's statement of it; Dense: the sum), bias, activation, then the output
    to integers. Returns the output integers of the last layer. (Reals in between, not integer
    accumulators and multipliers: those are the kernel's contract,
    docs/operator-contract.md section 3.)
    """
    a = x.reshape(len(x), -1)
    for p in params.values():
        pi, po, pw = p["input"], p["output"], p["weights"]
        xq = _levels(a, pi)
        xd = ((xq - pi["zero_point"]) * pi["scale"]).astype(np.float32)
        wd = (pw["values"].astype(np.float32) * pw["scale"][None, :]).astype(np.float32)
        if p["class"] == "MAMDense":
            pre = npref.mam_forward(xd, wd)[0] + p["bias"]
        else:
            pre = tf.matmul(xd, wd).numpy() + p["bias"]  # TF's summation order, as the model
        if p["activation"] == "relu":
            pre = np.maximum(pre, 0)
        yq = _levels(pre, po)
        a = ((yq - po["zero_point"]) * po["scale"]).astype(np.float32)
    return yq


def test_tfmot_fixed_quantizer_ignores_num_bits_so_mam_tf_has_its_own():
    x = tf.constant(np.linspace(-1, 1, 20001, dtype=np.float32))
    theirs = QUANTIZERS.FixedQuantizer(num_bits=16, init_min=-1.0, init_max=1.0, narrow_range=True)
    ours = quantization.FixedRangeQuantizer(16, -1.0, 1.0, narrow_range=True)
    assert len(np.unique(theirs(x, False, {}).numpy())) <= 255  # 8 bits, whatever num_bits says
    y = ours(x, False, {}).numpy()
    assert len(np.unique(y)) > 10000
    k = y * 32767
    np.testing.assert_allclose(k, np.round(k), atol=32767 * 4 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("scheme, per_channel", [("int8", False), ("int8", True),
                                                 ("int16x8", True)])
def test_quant_params_reproduce_the_qat_model_on_integers(rng, scheme, per_channel):
    x, _ = _data(rng, 128)
    model = pruning.strip_pruning(pruning.prune_magnitude(_model(), 0.5))
    qat = quantization.quantize_model(model, scheme, per_channel=per_channel, calibration_data=x)
    assert isinstance(qat.get_layer("quant_m1").quantize_config,
                      quantization.MAMDenseQuantizeConfig)
    assert isinstance(qat.get_layer("quant_mac").quantize_config, quantization.DenseQuantizeConfig)
    params = quantization.layer_quant_params(qat)
    assert list(params) == ["m1", "mac", "m2"]
    bits = 16 if scheme == "int16x8" else 8
    for name, p in params.items():
        assert p["scheme"] == scheme
        w = p["weights"]
        assert w["num_bits"] == 8 and (w["qmin"], w["qmax"]) == (-127, 127)
        assert w["values"].dtype == np.int8 and np.abs(w["values"]).max() <= 127
        units = model.get_layer(name).units
        # per_channel applies to MAM layers; plain Dense keeps one scale (TFLite limitation)
        per_unit = per_channel and p["class"] == "MAMDense"
        assert w["scale"].shape == ((units,) if per_unit else (1,))
        assert np.all(w["zero_point"] == 0)
        # the range follows the weights: scale = max |w| / 127 (per unit, or over the layer)
        kernel = model.get_layer(name).kernel.numpy()
        amax = np.abs(kernel).max(axis=0) if per_unit else np.abs(kernel).max()[None]
        np.testing.assert_allclose(w["scale"], np.where(amax > 0, amax / 127, 1.0), rtol=1e-6)
        np.testing.assert_array_equal(w["values"] == 0, kernel == 0)  # pruned weights are int 0
        for side in ("input", "output"):
            io = p[side]
            assert io["num_bits"] == bits
            if scheme == "int16x8":
                assert (io["qmin"], io["qmax"]) == (-32767, 32767) and io["zero_point"] == 0
            else:
                assert (io["qmin"], io["qmax"]) == (-128, 127)
        assert p["output_is_pre_activation"] is False
    # the next layer's input is the previous layer's output quantization
    assert params["mac"]["input"]["scale"] == params["m1"]["output"]["scale"]
    assert params["m2"]["input"]["scale"] == params["mac"]["output"]["scale"]

    out = params["m2"]["output"]
    y = qat(x, training=False).numpy()
    level = y / out["scale"] + out["zero_point"]
    # QAT outputs sit on the output grid (to float32 precision)...
    np.testing.assert_allclose(level, np.round(level), rtol=0,
                               atol=4 * np.finfo(np.float32).eps * 2 ** bits)
    # ...and are exactly what integers computed from the parameters give.
    np.testing.assert_array_equal(np.round(level), _integer_pipeline(params, x))


def test_seed_004_fixed_ranges_in_int16x8(rng):
    x, _ = _data(rng)
    qat = quantization.quantize_model(_model(), "int16x8", weight_range=(-1, 1),
                                      input_range=(-1, 1), output_range=(-1, 1))
    params = quantization.layer_quant_params(qat)
    for p in params.values():
        np.testing.assert_array_equal(p["weights"]["scale"], [np.float32(2.0) / np.float32(254)])
        assert p["weights"]["quantizer"] == "fixed"
    step = np.float32(2.0) / np.float32(65534)  # 1 / 32767
    assert params["m1"]["input"]["quantizer"] == "fixed" and params["m1"]["input"]["scale"] == step
    assert params["m2"]["output"]["quantizer"] == "fixed" and params["m2"]["output"]["scale"] == step
    assert params["m1"]["output"]["quantizer"] == "MovingAverageQuantizer"  # hidden: learned
    y = qat(x * 3, training=False).numpy()
    assert np.abs(y).max() <= 1.0
    assert np.all(params["m1"]["weights"]["values"] == np.round(
        np.clip(qat.get_layer("quant_m1").weights[0].numpy(), -1, 1) * 127))


def test_pruned_zeros_stay_zero_through_qat_and_save_load(rng, tmp_path):
    x, y = _data(rng)
    pruned = pruning.prune_activation_rate(_model(), x, 0.75)  # still wrapped: stripped inside
    masks = pruning.get_masks(pruned)
    qat = quantization.quantize_model(pruned, "int16x8", calibration_data=x)
    before = {n: p["weights"]["values"] for n, p in quantization.layer_quant_params(qat).items()}
    qat.compile(keras.optimizers.Adam(0.02), "mse")  # traced training steps
    qat.fit(x, y, epochs=2, batch_size=16, verbose=0)

    def check(model):
        for name, keep in masks.items():
            kernel = model.get_layer(f"quant_{name}").weights[0]
            assert kernel.name.endswith("kernel:0")
            assert np.all(kernel.numpy()[~keep] == 0), name
        params = quantization.layer_quant_params(model)
        for name, keep in masks.items():
            assert np.all(params[name]["weights"]["values"][~keep] == 0), name
        return params

    params = check(qat)
    assert any(not np.array_equal(params[n]["weights"]["values"], before[n]) for n in before)
    assert pruning.summary(qat, print_fn=None)["total"]["nonzero"] == \
        sum(int(m.sum()) for m in masks.values())
    expected = qat(x, training=False).numpy()
    for fmt in ("keras", "h5"):
        path = tmp_path / f"qat.{fmt}"
        qat.save(path)
        loaded = keras.models.load_model(path)  # no quantize_scope() needed
        np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)
        reloaded = check(loaded)
        for name, p in params.items():
            assert reloaded[name]["scheme"] == "int16x8"
            np.testing.assert_array_equal(reloaded[name]["weights"]["values"], p["weights"]["values"])
            assert reloaded[name]["output"]["scale"] == p["output"]["scale"]
    loaded.compile("adam", "mse", run_eagerly=True)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    check(loaded)


def test_qat_model_restores_from_a_checkpoint(rng, tmp_path):
    x, _ = _data(rng)
    model = _model()
    qat = quantization.quantize_model(pruning.prune_magnitude(model, 0.5), "int8",
                                      calibration_data=x)
    path = tf.train.Checkpoint(model=qat).save(tmp_path / "ckpt")
    other = quantization.quantize_model(_model(), "int8")  # same structure, nothing pruned
    tf.train.Checkpoint(model=other).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(other(x, training=False).numpy(), qat(x, training=False).numpy())
    mine, theirs = quantization.layer_quant_params(qat), quantization.layer_quant_params(other)
    for name in mine:
        np.testing.assert_array_equal(mine[name]["weights"]["values"], theirs[name]["weights"]["values"])


def test_calibration_starts_learned_ranges_at_the_float_model_ranges(rng):
    x, _ = _data(rng)
    model = _model()
    probe = keras.Model(model.inputs, [model.get_layer("m1").output, model.output])
    h, out = (t.numpy() for t in probe(x))
    plain = quantization.layer_quant_params(quantization.quantize_model(model, "int8"))
    assert (plain["m1"]["input"]["min"], plain["m1"]["input"]["max"]) == (0, 0)  # tfmot's start
    assert (plain["m1"]["output"]["min"], plain["m1"]["output"]["max"]) == (-6, 6)
    params = quantization.layer_quant_params(
        quantization.quantize_model(model, "int8", calibration_data=x))
    assert params["m1"]["input"]["min"] == x.min() and params["m1"]["input"]["max"] == x.max()
    assert params["m1"]["output"]["min"] == 0 and params["m1"]["output"]["max"] == h.max()
    assert params["m2"]["output"]["min"] == min(out.min(), 0)
    assert params["m2"]["output"]["max"] == max(out.max(), 0)


def test_sigmoid_outputs_are_quantized_before_the_activation(rng):
    x, _ = _data(rng)
    inp = keras.Input((16,))
    out = MAMDense(3, activation="sigmoid", name="m")(inp)
    params = quantization.layer_quant_params(
        quantization.quantize_model(keras.Model(inp, out), "int8",
                                    calibration_data=x.reshape(-1, 16)))
    assert params["m"]["output_is_pre_activation"] is True
    assert params["m"]["activation"] == "sigmoid"
    assert params["m"]["output"]["min"] < 0  # the pre-activation's range, not sigmoid's


def test_quantize_configs_round_trip_through_their_config():
    config = quantization.MAMDenseQuantizeConfig(
        quantization.SparsityPreservingQuantizer(
            QUANTIZERS.LastValueQuantizer(8, True, True, True)),
        quantization.FixedRangeQuantizer(16, -1, 1, True), "int16x8")
    clone = quantization.MAMDenseQuantizeConfig.from_config(config.get_config())
    assert clone == config and clone.scheme == "int16x8"
    assert keras.utils.get_registered_object("mam_tf>MAMDenseQuantizeConfig") is \
        quantization.MAMDenseQuantizeConfig


def test_bad_inputs_are_refused_with_clear_errors(rng):
    model = _model()
    with pytest.raises(ValueError, match=r"scheme must be one of \('int8', 'int16x8'\), got 'int4'"):
        quantization.quantize_model(model, "int4")
    with pytest.raises(ValueError, match=r"input_range must be symmetric .* got \(0, 1\)"):
        quantization.quantize_model(model, "int16x8", input_range=(0, 1))
    with pytest.raises(ValueError, match="weight_range must be symmetric"):
        quantization.quantize_model(model, "int8", weight_range=(-1, 2))
    with pytest.raises(ValueError, match="cannot be per_channel"):
        quantization.quantize_model(model, "int8", weight_range=(-1, 1), per_channel=True)
    with pytest.raises(ValueError, match="has no quantization-aware Dense or MAM layer"):
        quantization.layer_quant_params(model)

    inp = keras.Input((8, 2))
    conv = keras.layers.Conv1DTranspose(2, 3, name="conv")(inp)
    with pytest.raises(ValueError,
                       match=r"layer 'conv' \(Conv1DTranspose\) is not supported for QAT"):
        quantization.quantize_model(keras.Model(inp, MAMDense(2)(keras.layers.Flatten()(conv))))
    inp = keras.Input((8,))
    with pytest.raises(ValueError, match="MAMDense 'half': beta is 0.5; QAT needs beta == 0"):
        quantization.quantize_model(keras.Model(inp, MAMDense(2, beta=0.5, name="half")(inp)))
    with pytest.raises(ValueError, match="layer 'e' has activation 'elu'"):
        quantization.quantize_model(keras.Model(inp, MAMDense(2, activation="elu", name="e")(inp)))

    qat = quantization.quantize_model(keras.Model(inp, MAMDense(2, name="q")(inp)))
    with pytest.raises(ValueError, match="is quantized already"):
        quantization.quantize_model(qat)
    with pytest.raises(ValueError, match="layer 'quant_q' is quantization-aware; prune before"):
        pruning.prune_magnitude(qat, 0.5)


def test_conv1d_layers_are_fake_quantized_and_convert(rng):
    """A Conv1D -> Flatten -> MAMDense model trained quantization-aware converts without
    calibration data and runs on the host runtime as the QAT model computes, to about one
    int16 output step per layer."""
    from mam_tf.deploy.convert import convert
    from mam_tf.deploy.runtime import Interpreter

    keras.utils.set_random_seed(0)
    inp = keras.Input((32,))
    x = keras.layers.Reshape((32, 1))(inp)
    x = keras.layers.Conv1D(4, 5, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, MAMDense(6, activation="relu", name="m")(x))
    data = rng.uniform(0, 1, (256, 32)).astype(np.float32)
    qat = quantization.quantize_model(model, "int16x8", weight_range=(-1, 1), input_range=(-1, 1))
    conv_wrapper = qat.get_layer("quant_conv")
    assert isinstance(conv_wrapper, tfmot.quantization.keras.QuantizeWrapper)
    qat.compile(keras.optimizers.Adam(1e-3), "mse")
    qat.fit(data, rng.uniform(0, 1, (256, 6)).astype(np.float32), epochs=2, verbose=0)
    # The conv kernel as the QAT model uses it sits on the 8-bit grid of [-1, 1].
    (kernel, wq, wvars), = conv_wrapper._weight_vars
    fq = wq(kernel, False, weights=wvars).numpy()
    np.testing.assert_allclose(fq * 127, np.round(fq * 127), atol=1e-4)
    y = Interpreter(convert(qat, None, mode="int16x8")).run(data[:32])
    want = qat.predict(data[:32], verbose=0)
    out_scale = quantization.layer_quant_params(qat)["m"]["output"]["scale"]
    assert np.abs(y - want).max() <= 4 * float(out_scale) + 1e-6
    with pytest.raises(ValueError, match=r"convolutions \['conv'\] would keep"):
        quantization.quantize_model(model, "int16x8", calibration_data=data)
