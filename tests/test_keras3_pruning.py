"""mam_tf.keras3 training tools on the Keras backend of this process: the schedule, selection
counts, pruning to an exact remaining fraction, masks held through training and saving,
iterative pruning, the footprint summary (tests/test_keras3_backends.py runs this file under
each backend)."""
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import npref
from keras3_backend import keras_backend  # noqa: F401  (the backend in every test id)
from mam_tf.keras3 import MAMDense
from mam_tf.keras3 import pruning, training


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def _model(n_in=20, hidden=12, out=3):
    inp = keras.Input((n_in,))
    h = MAMDense(hidden, activation="relu", name="mam1")(inp)
    return keras.Model(inp, MAMDense(out, name="mam2")(h))


def _k(layer):
    return ops.convert_to_numpy(layer.effective_kernel())


def test_schedule_per_epoch_sets_beta_in_the_layers(rng):
    model = _model()
    model.compile("sgd", "mse")
    x = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.standard_normal((16, 3)).astype(np.float32)
    cb = training.VanishingContributions(length=4)
    hist = model.fit(x, y, epochs=3, batch_size=8, callbacks=[cb], verbose=0)
    assert hist.history["beta"] == pytest.approx([1.0, 0.75, 0.5], abs=0)
    assert model.get_layer("mam1").get_beta() == 0.5
    assert model.get_layer("mam2").get_beta() == 0.5


def test_schedule_per_step_follows_the_optimizer_steps(rng):
    model = _model()
    model.compile("sgd", "mse")
    x = rng.standard_normal((16, 20)).astype(np.float32)
    y = rng.standard_normal((16, 3)).astype(np.float32)
    cb = training.VanishingContributions(length=8, unit="step", layers=["mam1"])
    hist = model.fit(x, y, epochs=3, batch_size=8, callbacks=[cb], verbose=0)
    # two steps an epoch; the epoch's last step is t = 2e + 1: beta = 1 - t / 8
    assert hist.history["beta"] == pytest.approx([1 - 1 / 8, 1 - 3 / 8, 1 - 5 / 8], abs=1e-12)
    assert model.get_layer("mam2").get_beta() == 0.0


def test_schedule_per_step_reaches_the_computation(rng):
    """With a zero learning rate the weights stay put, so each step's loss shows which beta
    the step computed with: beta_t = 1 - t / 4 for steps t = 0..3."""
    inp = keras.Input((20,))
    layer = MAMDense(3, use_bias=False, name="mam")
    model = keras.Model(inp, layer(inp))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = rng.standard_normal((32, 20)).astype(np.float32)
    y = rng.standard_normal((32, 3)).astype(np.float32)
    means = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: means.append(float(logs["loss"])))
    cb = training.VanishingContributions(length=4, unit="step")
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, callbacks=[cb, record], verbose=0)
    # logs hold the running mean over the epoch: recover each step's loss
    got = [means[0]] + [means[t] * (t + 1) - means[t - 1] * t for t in range(1, 4)]
    w = _k(layer)
    expect = []
    for t in range(4):
        xb, yb = x[8 * t:8 * t + 8], y[8 * t:8 * t + 8]
        expect.append(float(np.mean((npref.mam_dense(xb, w, beta=1 - t / 4) - yb) ** 2)))
    np.testing.assert_allclose(got, expect, rtol=1e-4)


def test_selection_counts_equal_npref_indices(rng):
    model = _model()
    x = rng.integers(-2, 3, size=(37, 20)).astype(np.float32)  # ties
    counts = training.selection_counts(model, x, batch_size=10)
    w1 = _k(model.get_layer("mam1"))
    _, amax, amin = npref.mam_forward(x, w1)
    expect_max = np.zeros_like(w1, np.int64)
    expect_min = np.zeros_like(w1, np.int64)
    for j in range(w1.shape[1]):
        np.add.at(expect_max[:, j], amax[:, j], 1)
        np.add.at(expect_min[:, j], amin[:, j], 1)
    np.testing.assert_array_equal(counts["mam1"].argmax, expect_max)
    np.testing.assert_array_equal(counts["mam1"].argmin, expect_min)
    assert counts["mam2"].argmax.sum() == 37 * 3


@pytest.mark.parametrize("remaining", [0.5, 0.1, 0.0625])
def test_magnitude_per_layer_keeps_exactly_round_remaining_n_largest(remaining):
    model = _model()
    before = {name: _k(model.get_layer(name)) for name in ("mam1", "mam2")}
    pruning.prune_magnitude(model, remaining)
    for name, k0 in before.items():
        k = _k(model.get_layer(name))
        kept = k != 0
        assert kept.sum() == int(np.floor(remaining * k0.size + 0.5)), name
        np.testing.assert_array_equal(k[kept], k0[kept])
        assert np.abs(k0[kept]).min() >= np.abs(k0[~kept]).max()


def test_magnitude_global_ranks_across_layers():
    model = _model()
    k0 = np.concatenate([_k(model.get_layer(n)).ravel() for n in ("mam1", "mam2")])
    pruning.prune_magnitude(model, 0.3, scope="global")
    k = np.concatenate([_k(model.get_layer(n)).ravel() for n in ("mam1", "mam2")])
    kept = k != 0
    assert kept.sum() == int(np.floor(0.3 * k.size + 0.5))
    assert np.abs(k0[kept]).min() >= np.abs(k0[~kept]).max()


def test_activation_rate_keeps_the_most_selected(rng):
    model = _model()
    x = rng.standard_normal((64, 20)).astype(np.float32)
    counts = training.selection_counts(model, x)
    c = counts["mam1"].argmax + counts["mam1"].argmin
    pruning.prune_activation_rate(model, x, 0.25, layers=["mam1"])
    kept = _k(model.get_layer("mam1")) != 0
    assert kept.sum() == int(np.floor(0.25 * c.size + 0.5))
    assert c[kept].min() >= c[~kept].max()
    assert model.get_layer("mam2").kernel_mask is None


def test_masks_stay_zero_through_training_and_the_keras_file(rng, tmp_path):
    model = _model()
    x = rng.standard_normal((64, 20)).astype(np.float32)
    y = rng.standard_normal((64, 3)).astype(np.float32)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)  # optimizer momentum before pruning
    pruning.prune_magnitude(model, 0.2)
    masks = pruning.get_masks(model)
    pruning.fine_tune(model, x, y, optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                      epochs=3, batch_size=16, verbose=0)
    for name, keep in masks.items():
        k = _k(model.get_layer(name))
        assert np.all(k[~keep] == 0), name
        assert np.any(k[keep] != 0), name
    path = tmp_path / "pruned.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for name, keep in pruning.get_masks(loaded).items():
        np.testing.assert_array_equal(keep, masks[name])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    l1 = loaded.get_layer("mam1")
    w1, b1 = _k(l1), ops.convert_to_numpy(l1.bias)
    h = np.maximum(npref.mam_dense(x, w1, b1), 0)
    l2 = loaded.get_layer("mam2")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  npref.mam_dense(h, _k(l2), ops.convert_to_numpy(l2.bias)))


def test_pruning_less_than_held_is_refused():
    model = _model()
    pruning.prune_magnitude(model, 0.2, layers=["mam1"])
    with pytest.raises(ValueError, match=r"layer 'mam1' already has 192 of 240 weights pruned.*conflicts"):
        pruning.prune_magnitude(model, 0.5, layers=["mam1"])



def test_fine_tuning_that_diverges_stops_naming_epoch_and_batch(rng):
    x = rng.standard_normal((40, 20)).astype("float32")
    x[27, 2] = np.nan  # in the 4th batch of 8 (samples 24..31) of the first epoch
    model = _model()
    with pytest.raises(training.TrainingDiverged, match=r"^keras3 fine-tune seed 0: loss is "
                                                        r"nan at epoch 1, batch 4; training "
                                                        r"diverged"):
        pruning.fine_tune(model, x, np.zeros((40, 3), "float32"), loss="mse", epochs=2,
                          batch_size=8, shuffle=False, verbose=0,
                          callbacks=[training.StopOnDivergence("keras3 fine-tune seed 0")])
    from mam_tf.common.divergence import TrainingDiverged

    assert training.TrainingDiverged is TrainingDiverged  # one error for both Keras

def test_iterative_prune_reaches_the_last_target(rng):
    model = _model()
    x = rng.standard_normal((32, 20)).astype(np.float32)
    y = rng.standard_normal((32, 3)).astype(np.float32)
    model.compile("adam", "mse")
    pruning.iterative_prune(model, [0.5, 0.25], fine_tune_args=dict(
        x=x, y=y, epochs=1, batch_size=16, verbose=0))
    assert (_k(model.get_layer("mam1")) != 0).sum() == 60
    assert (_k(model.get_layer("mam2")) != 0).sum() == 9


def _entries_by_loop(kernel):
    """Offset-CSR entries by the encoding loop of docs/operator-contract.md section 2, unit by unit."""
    e = 0
    for j in range(kernel.shape[1]):
        prev = -1
        for i in np.nonzero(kernel[:, j])[0]:
            e += (i - prev - 1) // 256 + 1
            prev = i
    return e


def test_summary_counts_kept_weights_and_csr_bytes():
    inp = keras.Input((600,))
    model = keras.Model(inp, MAMDense(4, name="wide")(inp))
    keep = np.zeros((600, 4), bool)
    keep[[0, 300, 599], 0] = True  # gaps of 299 and 298: one dummy entry each
    keep[::2, 1] = True
    pruning.apply_masks(model, {"wide": keep})
    rows = pruning.summary(model, print_fn=None)["layers"]
    assert rows[0]["nonzero"] == 3 + 300
    entries = _entries_by_loop(keep)
    assert entries == 3 + 2 + 300
    assert rows[0]["csr_entries"] == entries
    assert rows[0]["csr_bytes"] == 2 * entries + 2 * 4 + 4 * 4


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, True, "half"])
def test_bad_remaining_names_the_value(bad):
    with pytest.raises(ValueError, match=r"prune_magnitude: remaining must be"):
        pruning.prune_magnitude(_model(), bad)


def test_common_modules_import_no_keras_nor_tensorflow():
    code = ("import sys, mam_tf.common.masks, mam_tf.common.vanishing; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('keras', 'tensorflow', 'tf_keras', 'jax', 'torch')]; print(bad); assert not bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
