"""MAMDense: Dense parity, MAM semantics, blending, errors, training paths."""
import inspect

import numpy as np
import pytest

import npref
from mam_tf import MAMDense
from mam_tf.train.compat import keras, tf


def _model(n_in, layer, input_shape=None):
    inp = keras.Input(input_shape or (n_in,))
    return keras.Model(inp, layer(inp))


def test_accepts_dense_arguments_with_dense_defaults():
    dense = inspect.signature(keras.layers.Dense.__init__).parameters
    mam = inspect.signature(MAMDense.__init__).parameters
    for name, param in dense.items():
        assert name in mam, f"MAMDense lacks Dense's argument {name!r}"
        assert mam[name].default == param.default, name
        assert mam[name].kind == param.kind, name
    assert mam["beta"].default == 0.0


def test_beta_one_equals_dense_outputs_and_gradients(rng):
    x = rng.standard_normal((16, 12)).astype(np.float32)
    mam = MAMDense(5, activation="relu", beta=1.0)
    dense = keras.layers.Dense(5, activation="relu")
    mam.build((None, 12))
    dense.build((None, 12))
    dense.set_weights(mam.get_weights()[:2])
    for layer in (mam, dense):
        layer.bias.assign(rng.standard_normal(5).astype(np.float32))
        dense.set_weights([mam.kernel.numpy(), mam.bias.numpy()])
    with tf.GradientTape(persistent=True) as tape:
        ym, yd = mam(x), dense(x)
        lm, ld = tf.reduce_sum(ym ** 2), tf.reduce_sum(yd ** 2)
    np.testing.assert_allclose(ym.numpy(), yd.numpy(), rtol=1e-6, atol=1e-6)
    gm = tape.gradient(lm, [mam.kernel, mam.bias])
    gd = tape.gradient(ld, [dense.kernel, dense.bias])
    for a, b in zip(gm, gd):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_beta_zero_equals_numpy_mam(rng):
    x = rng.standard_normal((9, 20)).astype(np.float32)
    layer = MAMDense(7, bias_initializer="random_normal")
    y = layer(x).numpy()
    w, b = layer.kernel.numpy(), layer.bias.numpy()
    np.testing.assert_array_equal(y, npref.mam_forward(x, w)[0] + b)


@pytest.mark.parametrize("beta", [0.25, 0.8])
def test_blend_is_beta_mac_plus_one_minus_beta_mam(rng, beta):
    x = rng.standard_normal((9, 20)).astype(np.float32)
    layer = MAMDense(7, activation="tanh", beta=beta)
    y = layer(x).numpy()
    w, b = layer.kernel.numpy(), layer.bias.numpy()
    np.testing.assert_allclose(y, np.tanh(npref.mam_dense(x, w, b, beta)), rtol=1e-5, atol=1e-6)


def test_rank3_input_reduces_the_last_axis_like_dense(rng):
    x = rng.standard_normal((4, 3, 10)).astype(np.float32)
    layer = MAMDense(6)
    y = layer(x)
    assert y.shape == (4, 3, 6)
    flat = layer(x.reshape(12, 10)).numpy()
    np.testing.assert_array_equal(y.numpy().reshape(12, 6), flat)
    model = _model(10, MAMDense(6), input_shape=(3, 10))
    assert model.output_shape == (None, 3, 6)


@pytest.mark.parametrize("units", [0, -3, 2.5, "8", True])
def test_bad_units_name_the_layer_and_value(units):
    with pytest.raises(ValueError, match=r"MAMDense 'enc'.*units.*" + repr(units).replace(".", r"\.")):
        MAMDense(units, name="enc")


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), "high"])
def test_beta_outside_unit_interval_is_refused(beta):
    with pytest.raises(ValueError, match="MAMDense 'enc': beta"):
        MAMDense(4, beta=beta, name="enc")
    layer = MAMDense(4, name="enc")
    with pytest.raises(ValueError, match="beta"):
        layer.set_beta(beta)


def test_rank1_input_is_refused():
    layer = MAMDense(4, name="enc")
    with pytest.raises(ValueError, match=r"MAMDense 'enc'.*rank >= 2"):
        layer(tf.ones([5]))


def test_integer_input_is_refused():
    layer = MAMDense(4, name="enc")
    with pytest.raises(ValueError, match=r"MAMDense 'enc'.*floating point.*int32"):
        layer(tf.ones([2, 5], tf.int32))


def test_beta_is_a_non_trainable_variable():
    layer = MAMDense(3, beta=0.5)
    layer.build((None, 4))
    assert isinstance(layer.beta, tf.Variable)
    assert any(v is layer.beta for v in layer.non_trainable_weights)
    assert not any(v is layer.beta for v in layer.trainable_weights)
    layer.set_beta(0.125)
    assert layer.beta.numpy() == 0.125 and layer.get_config()["beta"] == 0.125


def _toy_data(rng, n=256, d=16, k=4):
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, k)).astype(np.float32)
    return x, npref.mam_forward(x, w)[0]


def test_fit_evaluate_predict_learn_a_mam_target(rng):
    x, y = _toy_data(rng)
    model = _model(16, MAMDense(4))
    model.compile(keras.optimizers.Adam(0.1), "mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 0.5 * before
    assert model.predict(x, verbose=0).shape == (256, 4)


def _one_step(model, x, y, **compile_kwargs):
    model.compile(keras.optimizers.SGD(0.1), "mse", **compile_kwargs)
    model.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)
    return [w.numpy() for w in model.weights]


def _fresh(seed, n_in=16, units=4, beta=0.3):
    keras.utils.set_random_seed(seed)
    return _model(n_in, MAMDense(units, beta=beta, bias_initializer="random_normal"))


def test_jit_compiled_training_step_equals_eager(rng):
    x, y = _toy_data(rng, n=64)
    eager = _one_step(_fresh(3), x, y, run_eagerly=True)
    jitted = _one_step(_fresh(3), x, y, jit_compile=True)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mirrored_strategy_step_equals_single_device(rng):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest before TF starts)")
    x, y = _toy_data(rng, n=64)
    single = _one_step(_fresh(5), x, y)
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    with strategy.scope():
        model = _fresh(5)
        mirrored = _one_step(model, x, y)
    assert strategy.num_replicas_in_sync == 2
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert mirrored[-1] == pytest.approx(0.3)  # beta untouched by training
