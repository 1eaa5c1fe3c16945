"""A Keras 3 model (trained on this process's backend) through mam_tf.deploy.convert gives
the same .tflite as the tf_keras model with the same layers and weights."""
import keras
import numpy as np
import pytest
from keras import ops

from keras3_backend import keras_backend  # noqa: F401  (the backend in every test id)
from mam_tf.keras3 import MAMDense
from mam_tf.keras3 import pruning


def _keras3_model(rng, tokens=()):
    inp = keras.Input(tokens + (24,), name="x")
    h = MAMDense(16, activation="relu", name="mam1")(inp)
    h = keras.layers.Dropout(0.1, name="drop")(h)
    out = keras.layers.Dense(4, name="head")(MAMDense(8, activation="relu", name="mam2")(h))
    model = keras.Model(inp, out, name="k3")
    x = rng.standard_normal((64,) + tokens + (24,)).astype(np.float32)
    y = rng.standard_normal((64,) + tokens + (4,)).astype(np.float32)
    model.compile("adam", "mse")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    pruning.prune_magnitude(model, 0.25, layers=["mam1", "mam2"])
    return model, x


def _tf_keras_twin(model, tokens=()):
    """Built by hand from the weights, independently of mam_tf.keras3.export."""
    from mam_tf.train.compat import keras as k2
    from mam_tf.train.layers import MAMDense as MAMDense2

    def w(name):
        layer = model.get_layer(name)
        kernel = layer.effective_kernel() if isinstance(layer, MAMDense) else layer.kernel
        return [ops.convert_to_numpy(kernel), ops.convert_to_numpy(layer.bias)]

    inp = k2.Input(tokens + (24,), name="x")
    l1 = MAMDense2(16, activation="relu", name="mam1")
    l2 = MAMDense2(8, activation="relu", name="mam2")
    head = k2.layers.Dense(4, name="head")
    out = head(l2(k2.layers.Dropout(0.1, name="drop")(l1(inp))))
    twin = k2.Model(inp, out, name="k3")
    l1.set_weights(w("mam1") + [np.float32(0)])
    l2.set_weights(w("mam2") + [np.float32(0)])
    head.set_weights(w("head"))
    return twin


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
@pytest.mark.parametrize("tokens", [(), (2, 3)], ids=["features", "tokens"])
def test_keras3_model_converts_to_the_tf_keras_bytes(mode, tokens, tmp_path):
    from mam_tf.deploy.convert import convert
    rng = np.random.default_rng(3)
    model, x = _keras3_model(rng, tokens)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # the route from a file, on this backend
    got = convert(loaded, x, mode)
    want = convert(_tf_keras_twin(model, tokens), x, mode)
    assert got == want


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_keras3_model_on_tokens_runs_as_keras_computes(mode):
    """[batch, 2, 3, 24] inputs: each MAM_SPARSE reads [6 rows, N]; the host runtime's output
    tracks the Keras 3 model's own prediction (on this backend)."""
    from mam_tf.deploy import flatbuffer as fb
    from mam_tf.deploy.convert import convert
    from mam_tf.deploy.runtime import Interpreter

    model, x = _keras3_model(np.random.default_rng(5), (2, 3))
    tflite = convert(model, x, mode)
    tfl = fb.load(tflite)
    sg = tfl.subgraphs[0]
    mams = [op for op in sg.operators if fb.op_name(tfl, op) == "MAM_SPARSE"]
    assert [list(sg.tensors[op.inputs[0]].shape) for op in mams] == [[6, 24], [6, 16]]
    y = Interpreter(tflite).run(x)
    ref = ops.convert_to_numpy(model(x, training=False))
    assert y.shape == ref.shape == (64, 2, 3, 4)
    assert np.abs(y - ref).max() / np.abs(ref).max() < (0.05 if mode == "int8" else 0.02)


def test_a_model_that_is_not_a_chain_is_refused():
    from mam_tf.deploy.convert import convert
    inp = keras.Input((6,))
    a = MAMDense(3, name="a")(inp)
    b = MAMDense(3, name="b")(inp)
    model = keras.Model(inp, keras.layers.Add()([a, b]))
    with pytest.raises(ValueError, match=r"is not a chain of layers at layer 'b'"):
        convert(model, np.zeros((4, 6), np.float32))
