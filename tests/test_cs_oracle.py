"""The compressed-sensing Deep Neural Oracle (mam_tf.models.cs_oracle): shape, support rule,
pruning, conversion with `mam-tf convert` and the host runtime."""
import numpy as np
import pytest

from mam_tf import MAMDense, keras, pruning
from mam_tf.deploy import flatbuffer as fb
from mam_tf.cli import main as cli_main
from mam_tf.models import cs_oracle, predict_support
from mam_tf.deploy.runtime import Interpreter

M, N = 12, 24


def test_architecture_is_m_2n_2n_n_with_mam_or_dense_hidden_layers():
    for kind, cls in (("mac", keras.layers.Dense), ("mam", MAMDense)):
        model = cs_oracle(M, N, kind, seed=0)
        assert model.input_shape == (None, M) and model.output_shape == (None, N)
        hidden = [model.get_layer(f"hidden_{i}") for i in (1, 2)]
        assert [type(h) for h in hidden] == [cls, cls]
        assert [h.kernel.shape.as_list() for h in hidden] == [[M, 2 * N], [2 * N, 2 * N]]
        out = model.get_layer("support")
        assert type(out) is keras.layers.Dense and out.activation is keras.activations.sigmoid
        p = model.predict(np.random.default_rng(0).standard_normal((5, M)), verbose=0)
        assert ((p > 0) & (p < 1)).all()
    mam = cs_oracle(M, N, "mam", beta=1.0)
    assert all(layer.get_beta() == 1.0 for layer in (mam.get_layer("hidden_1"),
                                                     mam.get_layer("hidden_2")))
    assert cs_oracle(M, N, hidden=(7,)).get_layer("hidden_1").units == 7


def test_same_seed_same_weights():
    a = cs_oracle(M, N, "mam", seed=3).get_weights()
    b = cs_oracle(M, N, "mam", seed=3).get_weights()
    c = cs_oracle(M, N, "mam", seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("bad, match", [
    (dict(kind="conv"), "kind must be one of"),
    (dict(m=0), "m must be a positive integer"),
    (dict(hidden=()), "hidden is empty"),
    (dict(hidden=(8, 2.5)), "each hidden width must be a positive integer, got 2.5"),
])
def test_bad_arguments_are_named(bad, match):
    args = dict(m=M, n=N, kind="mac")
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        cs_oracle(args.pop("m"), args.pop("n"), **args)


def test_predict_support_is_threshold_capped_at_the_most_probable():
    rng = np.random.default_rng(0)
    p = rng.random((200, N))
    for cap in (1, 3, N):
        s = predict_support(p, cap)
        for row, sup in zip(p, s):
            above = np.flatnonzero(row > 0.5)
            # independent statement: the min(cap, |above|) largest of the entries above 0.5
            want = set(above[np.argsort(-row[above])][:cap])
            assert set(np.flatnonzero(sup)) == want
    with pytest.raises(ValueError, match="max_size must be a positive integer"):
        predict_support(p, 0)


def _pruned(kind, x):
    model = cs_oracle(M, N, kind, beta=0.0, seed=1)
    rng = np.random.default_rng(2)
    for layer in model.layers[1:]:  # biases nonzero so the bias path is converted too
        layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    # Output logits spread as a trained oracle's are (most coefficients clearly in or out).
    model.get_layer("support").bias.assign(rng.normal(0, 3.0, N))
    hidden = ["hidden_1", "hidden_2"]
    if kind == "mam":
        return pruning.prune_activation_rate(model, x, 0.9, layers=hidden)
    return pruning.prune_magnitude(model, 0.9, layers=hidden)


@pytest.mark.parametrize("kind, ops", [
    ("mam", ["MAM_SPARSE", "MAM_SPARSE", "FULLY_CONNECTED", "LOGISTIC"]),
    ("mac", ["MAC_SPARSE", "MAC_SPARSE", "FULLY_CONNECTED", "LOGISTIC"]),
])
def test_pruned_oracle_converts_with_the_cli_and_runs_on_the_host(tmp_path, kind, ops):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, M)).astype(np.float32)
    model = pruning.strip_pruning(_pruned(kind, x))
    for name in ("hidden_1", "hidden_2"):
        k = model.get_layer(name).kernel.numpy()
        assert np.count_nonzero(k) == k.size - int(np.floor(0.9 * k.size + 0.5))
    model.save(tmp_path / "oracle.keras")
    np.save(tmp_path / "calib.npy", x[:200])
    argv = ["convert", str(tmp_path / "oracle.keras"), "--data", str(tmp_path / "calib.npy"),
            "--mode", "int8", "--mac-sparse-below", "0.5", "-o", str(tmp_path / "o.tflite")]
    if kind == "mac":
        argv.append("--no-require-mam")
    assert cli_main(argv) == 0
    tflite = (tmp_path / "o.tflite").read_bytes()
    tfl = fb.load(tflite)
    assert [fb.op_name(tfl, op) for op in tfl.subgraphs[0].operators] == ops
    test = x[200:]
    keras_p = model.predict(test, verbose=0)
    interp = Interpreter(tflite)
    dev_p = interp.run(test)
    # The output is int8 with scale ~1/256: a few output steps of error, accumulated over
    # three int8 layers; coefficients the float model puts clearly off the threshold are
    # decided the same way on the device.
    step = float(interp.output_quantization[0][0])
    assert step <= 1 / 255 + 1e-9
    err = np.abs(dev_p - keras_p)
    assert err.max() <= 8 * step and err.mean() <= 2 * step
    clear = np.abs(keras_p - 0.5) > 8 * step
    assert clear.mean() > 0.5
    assert ((dev_p > 0.5) == (keras_p > 0.5))[clear].all()
