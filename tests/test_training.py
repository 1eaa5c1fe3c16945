"""Vanishing contributions and selection counting."""
import numpy as np
import pytest

import npref
from mam_tf import (
    MAMDense,
    VanishingContributions,
    keras,
    mam_layers,
    selection_counts,
    tf,
    vanishing_beta,
)


@pytest.mark.parametrize("schedule", ["linear", "exponential"])
def test_schedules_hit_their_end_points(schedule):
    assert vanishing_beta(0, 10, start=0.8, schedule=schedule) == pytest.approx(0.8)
    assert vanishing_beta(10, 10, start=0.8, schedule=schedule) == 0.0
    assert vanishing_beta(25, 10, start=0.8, schedule=schedule) == 0.0
    values = [vanishing_beta(t, 10, start=0.8, schedule=schedule) for t in range(11)]
    assert all(a > b for a, b in zip(values[:-1], values[1:]))  # strictly decreasing to 0


def test_linear_schedule_is_linear_and_exponential_is_geometric():
    assert vanishing_beta(5, 10) == pytest.approx(0.5)
    ratios = [vanishing_beta(t + 1, 10, schedule="exponential", eps=1e-2)
              / vanishing_beta(t, 10, schedule="exponential", eps=1e-2) for t in range(8)]
    np.testing.assert_allclose(ratios, (1e-2) ** 0.1, rtol=1e-9)


def test_values_below_eps_snap_to_zero():
    assert vanishing_beta(999, 1000, eps=0.01) == 0.0  # linear value 0.001 < eps
    assert vanishing_beta(9, 10, eps=0.05) > 0.0


def _model(units=(6, 3)):
    inp = keras.Input((10,))
    h = MAMDense(units[0], activation="relu", name="m1")(inp)
    h = keras.layers.Dense(5, name="d")(h)
    out = MAMDense(units[1], name="m2")(h)
    return keras.Model(inp, out)


def _data(rng, n=64):
    return rng.standard_normal((n, 10)).astype(np.float32), rng.standard_normal((n, 3)).astype(np.float32)


def test_epoch_schedule_sets_and_logs_beta(rng):
    model = _model()
    model.compile("sgd", "mse")
    x, y = _data(rng)
    vc = VanishingContributions(length=4)
    hist = model.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[vc])
    assert hist.history["beta"] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert [layer.get_beta() for layer in mam_layers(model)] == [0.0, 0.0]


def test_step_schedule_follows_the_optimizer_step_and_resumes(rng, tmp_path):
    x, y = _data(rng)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), "mse")
    vc = VanishingContributions(length=10, unit="step", layers=["m2"])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[vc])  # 4 steps: 0..3
    assert model.get_layer("m2").get_beta() == pytest.approx(0.7)
    assert model.get_layer("m1").get_beta() == 0.0  # not driven
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    path = ckpt.save(tmp_path / "ckpt")

    resumed = _model()
    resumed.compile(keras.optimizers.SGD(0.01), "mse")
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path)
    assert int(resumed.optimizer.iterations.numpy()) == 4
    assert resumed.get_layer("m2").get_beta() == pytest.approx(0.7)
    vc2 = VanishingContributions(length=10, unit="step", layers=["m2"])
    resumed.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[vc2])  # steps 4..7
    assert resumed.get_layer("m2").get_beta() == pytest.approx(0.3)


def test_epoch_schedule_resumes_from_initial_epoch(rng):
    x, y = _data(rng)
    model = _model()
    model.compile("sgd", "mse")
    hist = model.fit(x, y, epochs=4, initial_epoch=2, verbose=0,
                     callbacks=[VanishingContributions(length=5, schedule="exponential")])
    assert hist.history["beta"] == pytest.approx(
        [vanishing_beta(2, 5, schedule="exponential"), vanishing_beta(3, 5, schedule="exponential")])


@pytest.mark.parametrize("kwargs, match", [
    ({"length": 0}, "length"), ({"length": 3, "start": 1.5}, "start"),
    ({"length": 3, "schedule": "cosine"}, "schedule"), ({"length": 3, "unit": "batch"}, "unit"),
])
def test_bad_schedule_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VanishingContributions(**kwargs)


def test_unknown_layer_name_is_refused(rng):
    model = _model()
    model.compile("sgd", "mse")
    x, y = _data(rng)
    with pytest.raises(ValueError, match="no MAM layer named 'nope'"):
        model.fit(x, y, verbose=0, callbacks=[VanishingContributions(3, layers=["nope"])])


def test_selection_counts_match_numpy_and_sum_to_rows_times_units(rng):
    model = _model()
    x, _ = _data(rng, n=70)
    counts = selection_counts(model, x, batch_size=32)
    assert set(counts) == {"m1", "m2"}
    w1 = model.get_layer("m1").kernel.numpy()
    _, amax, amin = npref.mam_forward(x, w1)
    expect_max = np.zeros_like(w1, np.int64)
    expect_min = np.zeros_like(w1, np.int64)
    np.add.at(expect_max, (amax.ravel(), np.tile(np.arange(6), 70)), 1)
    np.add.at(expect_min, (amin.ravel(), np.tile(np.arange(6), 70)), 1)
    np.testing.assert_array_equal(counts["m1"].argmax, expect_max)
    np.testing.assert_array_equal(counts["m1"].argmin, expect_min)
    for name, units in (("m1", 6), ("m2", 3)):
        c = counts[name]
        assert c.argmax.shape == model.get_layer(name).kernel.shape
        assert c.argmax.sum() == 70 * units and c.argmin.sum() == 70 * units
        # Separate counters: the max counts are not the min counts added in.
        assert not np.array_equal(c.argmax, c.argmin)


def test_selection_counts_from_a_dataset_and_by_layer(rng):
    model = _model()
    x, y = _data(rng, n=40)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    from_ds = selection_counts(model, ds, layers=["m2"])
    from_np = selection_counts(model, x, layers=["m2"])
    assert list(from_ds) == ["m2"]
    np.testing.assert_array_equal(from_ds["m2"].argmax, from_np["m2"].argmax)
    np.testing.assert_array_equal(from_ds["m2"].argmin, from_np["m2"].argmin)
    with pytest.raises(ValueError, match="no MAM layer named"):
        selection_counts(model, x, layers=["d"])
