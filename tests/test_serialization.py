"""Every way of saving a MAM model keeps its predictions and its beta."""
import numpy as np
import pytest

from mam_tf import MAMDense, keras, mam_layers, tf


def _model():
    keras.utils.set_random_seed(7)
    inp = keras.Input((12,))
    h = MAMDense(8, activation="relu", beta=0.37, name="mam_a")(inp)
    out = MAMDense(3, use_bias=False, name="mam_b")(h)
    return keras.Model(inp, out)


@pytest.fixture
def model_and_data(rng):
    model = _model()
    x = rng.standard_normal((10, 12)).astype(np.float32)
    return model, x, model.predict(x, verbose=0)


def _check(loaded, x, expected):
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    betas = [layer.get_beta() for layer in mam_layers(loaded)]
    assert betas == [pytest.approx(0.37, abs=0, rel=1e-7), 0.0]
    assert all(isinstance(layer, MAMDense) for layer in mam_layers(loaded))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras_and_h5_files_round_trip(tmp_path, model_and_data, fmt):
    model, x, expected = model_and_data
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    _check(keras.models.load_model(path), x, expected)


def test_savedmodel_round_trip(tmp_path, model_and_data):
    model, x, expected = model_and_data
    model.save(tmp_path / "saved", save_format="tf")
    _check(keras.models.load_model(tmp_path / "saved"), x, expected)


def test_checkpoint_restores_beta_and_weights(tmp_path, model_and_data):
    model, x, expected = model_and_data
    path = tf.train.Checkpoint(model=model).save(tmp_path / "ckpt")
    other = _model()
    for layer in mam_layers(other):
        layer.set_beta(0.9)
    other.layers[1].kernel.assign(tf.zeros_like(other.layers[1].kernel))
    tf.train.Checkpoint(model=other).restore(path).assert_consumed()
    _check(other, x, expected)


def test_config_round_trip_keeps_arguments():
    layer = MAMDense(5, activation="relu", use_bias=False, beta=0.5, name="x")
    clone = MAMDense.from_config(layer.get_config())
    assert clone.units == 5 and clone.use_bias is False and clone.get_beta() == 0.5
    assert keras.utils.get_registered_object("mam_tf>MAMDense") is MAMDense
