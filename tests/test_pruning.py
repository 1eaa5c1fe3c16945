"""Pruning MAM and Dense layers: tfmot schedules, one-shot methods, held masks, footprints."""
import math

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import npref
from mam_tf import MAMDense, keras, pruning, selection_counts, tf

sparsity_api = tfmot.sparsity.keras


def _model(n_in=12, name="net"):
    keras.utils.set_random_seed(3)
    inp = keras.Input((n_in,))
    h = MAMDense(8, activation="relu", bias_initializer="random_normal", name="mam1")(inp)
    h = keras.layers.Dense(6, activation="relu", name="mac")(h)
    out = MAMDense(3, name="mam2")(h)
    return keras.Model(inp, out, name=name)


def _data(rng, n=48, n_in=12):
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    return x, rng.standard_normal((n, 3)).astype(np.float32)


def _tune(model, x, y, epochs=1, **kwargs):
    """Fine-tuning as the tests do it: eager steps (tracing a MAM train step costs more than a
    few eager steps); one test below fine-tunes through the traced path."""
    kwargs.setdefault("optimizer", "adam")
    return pruning.fine_tune(model, x, y, loss="mse", epochs=epochs, batch_size=16,
                             run_eagerly=True, **kwargs)


def _predict(model, x):
    return model(x, training=False).numpy()


def _zeros(model, name):
    layer = model.get_layer(name)
    return int(np.sum(layer.kernel.numpy() == 0))


def _kernels(model):
    out = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.Dense):
            out[inner.name] = inner.kernel.numpy()
    return out


def _reference_csr_entries(mask_rows):
    """docs/operator-contract.md section 2's encoding loop, literally, counting what it emits."""
    entries = 0
    for row in np.asarray(mask_rows, bool):
        prev = -1
        for c in np.flatnonzero(row):
            gap = c - prev - 1
            while gap > 255:
                entries += 1  # dummy (value 0, offset 255)
                prev += 256
                gap -= 256
            entries += 1
            prev = c
    return entries


# ------------------------------------------------------------------------------------------
# tfmot's own pruning API
# ------------------------------------------------------------------------------------------
def test_mam_dense_is_a_tfmot_prunable_layer():
    layer = MAMDense(4)
    layer.build((None, 5))
    assert isinstance(layer, sparsity_api.PrunableLayer)
    assert layer.get_prunable_weights() == [layer.kernel]


def test_tfmot_schedules_train_mam_layers_and_strip_gives_exact_zeros(rng):
    x, y = _data(rng)
    steps = 6  # 48 samples, batch 16, 2 epochs
    constant = sparsity_api.ConstantSparsity(0.75, begin_step=0, frequency=1)
    poly = sparsity_api.PolynomialDecay(0.2, 0.75, begin_step=0, end_step=steps - 2, frequency=1)
    keras.utils.set_random_seed(3)
    inp = keras.Input((12,))
    h = sparsity_api.prune_low_magnitude(MAMDense(8, activation="relu", name="mam1"),
                                         pruning_schedule=constant)(inp)
    h = sparsity_api.prune_low_magnitude(keras.layers.Dense(6, name="mac"),
                                         pruning_schedule=poly)(h)
    out = sparsity_api.prune_low_magnitude(MAMDense(3, name="mam2"), pruning_schedule=poly)(h)
    wrapped = keras.Model(inp, out)
    wrapped.compile("adam", "mse")  # traced (graph) training steps
    wrapped.fit(x, y, epochs=2, batch_size=16, verbose=0,
                callbacks=[sparsity_api.UpdatePruningStep()])
    expected = _predict(wrapped, x)
    stripped = sparsity_api.strip_pruning(wrapped)
    assert [type(layer).__name__ for layer in stripped.layers[1:]] == ["MAMDense", "Dense", "MAMDense"]
    for name in ("mam1", "mac", "mam2"):
        n = stripped.get_layer(name).kernel.shape.num_elements()
        kept = max(round(n * 0.25), 1)  # tfmot keeps round(n * (1 - s)) weights, at least 1
        assert _zeros(stripped, name) == n - kept, name
    np.testing.assert_array_equal(_predict(stripped, x), expected)


# ------------------------------------------------------------------------------------------
# One-shot pruning: exact sparsity, ranking
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "activation_rate"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_one_shot_pruning_reaches_the_exact_sparsity(rng, method, scope):
    model = _model()
    x, _ = _data(rng)
    sizes = {name: k.size for name, k in _kernels(model).items()}  # 96, 48, 18
    for sparsity in (0.37, 0.9):
        if method == "magnitude":
            pruned = pruning.prune_magnitude(model, sparsity, scope=scope)
        else:
            pruned = pruning.prune_activation_rate(model, x, sparsity, scope=scope)
        kernels = _kernels(pruned)
        zeros = {name: int(np.sum(k == 0)) for name, k in kernels.items()}
        if scope == "layer":
            assert zeros == {name: math.floor(sparsity * n + 0.5) for name, n in sizes.items()}
        else:
            assert sum(zeros.values()) == math.floor(sparsity * sum(sizes.values()) + 0.5)
        masks = pruning.get_masks(pruned)
        assert set(masks) == set(sizes)
        for name, k in kernels.items():
            np.testing.assert_array_equal(masks[name], k != 0)
    # the model passed in is never modified
    assert all(np.count_nonzero(k) == k.size for k in _kernels(model).values())


def test_magnitude_pruning_removes_the_smallest_weights_first(rng):
    model = _model()
    pruned = pruning.prune_magnitude(model, 0.6, layers=["mam1", "mac"])
    before = _kernels(model)
    after = _kernels(pruned)
    for name in ("mam1", "mac"):
        removed = np.abs(before[name][after[name] == 0])
        kept = np.abs(before[name][after[name] != 0])
        assert removed.max() <= kept.min()
        np.testing.assert_array_equal(after[name][after[name] != 0], before[name][after[name] != 0])
    np.testing.assert_array_equal(after["mam2"], before["mam2"])  # not chosen: untouched
    assert [type(layer).__name__ for layer in pruned.layers[1:]] == \
        ["PruneLowMagnitude", "PruneLowMagnitude", "MAMDense"]


def _hand_built():
    """One MAM and one Dense unit on the same 5 inputs, weights w, three inputs rows.

    Products w_i x_i per row (argmax, argmin; ties to the lowest index):
      x1 = 1 1 1 1 1 -> w                       max 3 (0.9), min 1 (-0.2)
      x2 = 1 1 1 0 1 -> .5 -.2 .1 0 -.05        max 0,       min 1
      x3 = 1 0 1 0 0 -> .5 0 .1 0 0             max 0,       min 1 (0 at 1, 3, 4)
    Selections: w0 2, w1 3, w2 0, w3 1, w4 0. Fewest first, ties by magnitude:
      w4 (0, |.05|), w2 (0, |.1|), w3 (1), w0 (2), w1 (3)
    By magnitude alone: w4, w2, w1, w0, w3.
    """
    w = np.array([[0.5], [-0.2], [0.1], [0.9], [-0.05]], np.float32)
    inp = keras.Input((5,))
    mam = MAMDense(1, use_bias=False, name="mam")
    mac = keras.layers.Dense(1, use_bias=False, name="mac")
    model = keras.Model(inp, [mam(inp), mac(inp)])
    mam.kernel.assign(w)
    mac.kernel.assign(w)
    x = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [1, 0, 1, 0, 0]], np.float32)
    return model, x


@pytest.mark.parametrize("sparsity, keep", [
    (0.2, [1, 1, 1, 1, 0]),  # tie at 0 selections: the smaller |w| (w4) goes first
    (0.6, [1, 1, 0, 0, 0]),
    (0.8, [0, 1, 0, 0, 0]),
])
def test_activation_rate_ranking_on_a_hand_built_example(sparsity, keep):
    model, x = _hand_built()
    counts = selection_counts(model, x)["mam"]
    np.testing.assert_array_equal((counts.argmax + counts.argmin).ravel(), [2, 3, 0, 1, 0])
    pruned = pruning.prune_activation_rate(model, x, sparsity)
    masks = pruning.get_masks(pruned)
    for name in ("mam", "mac"):  # Dense layers are ranked by the same products
        np.testing.assert_array_equal(masks[name].ravel(), np.array(keep, bool), err_msg=name)


def test_activation_rate_and_magnitude_differ_where_they_should():
    model, x = _hand_built()
    by_magnitude = pruning.get_masks(pruning.prune_magnitude(model, 0.6))["mam"].ravel()
    np.testing.assert_array_equal(by_magnitude, [True, False, False, True, False])


def test_activation_counts_match_numpy_for_dense_layers(rng):
    model = _model()
    x, _ = _data(rng)
    copy = pruning.copy_model(model)
    targets = pruning._resolve("t", copy, ["mam1", "mac"])
    counts = pruning._activation_counts("t", copy, x, targets, batch_size=20)
    h = np.maximum(npref.mam_dense(x, copy.get_layer("mam1").kernel.numpy(),
                                   copy.get_layer("mam1").bias.numpy()), 0)
    for name, inputs in (("mam1", x), ("mac", h)):
        w = copy.get_layer(name).kernel.numpy()
        _, amax, amin = npref.mam_forward(inputs, w)
        expect = np.zeros(w.shape, np.int64)
        cols = np.tile(np.arange(w.shape[1]), len(inputs))
        np.add.at(expect, (amax.ravel(), cols), 1)
        np.add.at(expect, (amin.ravel(), cols), 1)
        np.testing.assert_array_equal(counts[name], expect, err_msg=name)


# ------------------------------------------------------------------------------------------
# Masks held through fine-tuning, saving, reloading; stripping
# ------------------------------------------------------------------------------------------
def test_fine_tuning_keeps_pruned_weights_at_exactly_zero(rng):
    x, y = _data(rng)
    pruned = pruning.prune_activation_rate(_model(), x, 0.7)
    masks = pruning.get_masks(pruned)
    before = _kernels(pruned)
    # model.fit's own traced steps here; the other tests fine-tune eagerly
    pruning.fine_tune(pruned, x, y, optimizer=keras.optimizers.Adam(0.05), loss="mse",
                      epochs=2, batch_size=16)
    after = _kernels(pruned)
    for name, keep in masks.items():
        assert np.all(after[name][~keep] == 0), name
        assert not np.array_equal(after[name][keep], before[name][keep]), name  # it trained
    assert pruning.get_masks(pruned).keys() == masks.keys()
    for name, keep in pruning.get_masks(pruned).items():
        np.testing.assert_array_equal(keep, masks[name])


def test_plain_fit_without_the_pruning_callback_is_refused_by_tfmot(rng):
    x, y = _data(rng)
    pruned = pruning.prune_magnitude(_model(), 0.5)
    pruned.compile("adam", "mse", run_eagerly=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
        pruned.fit(x, y, epochs=1, verbose=0)


def test_masks_survive_saving_reloading_and_further_training(rng, tmp_path):
    x, y = _data(rng)
    pruned = pruning.prune_magnitude(_model(), 0.8, scope="global")
    masks = pruning.get_masks(pruned)
    expected = _predict(pruned, x)
    for fmt in ("h5", "keras"):
        path = tmp_path / f"pruned.{fmt}"
        pruned.save(path)
        loaded = keras.models.load_model(path)  # no prune_scope() needed
        np.testing.assert_array_equal(_predict(loaded, x), expected)
        reloaded_masks = pruning.get_masks(loaded)
        for name, keep in masks.items():
            np.testing.assert_array_equal(reloaded_masks[name], keep)
    schedule = loaded.get_layer("prune_low_magnitude_mam1").pruning_schedule
    assert isinstance(schedule, pruning.FixedMask)
    _tune(loaded, x, y, epochs=2)
    for name, k in _kernels(loaded).items():
        assert np.all(k[~masks[name]] == 0), name


def test_masks_survive_a_checkpoint_and_a_resumed_fit(rng, tmp_path):
    x, y = _data(rng)
    pruned = pruning.prune_activation_rate(_model(), x, 0.6)
    masks = pruning.get_masks(pruned)
    _tune(pruned, x, y)
    path = tf.train.Checkpoint(model=pruned).save(tmp_path / "ckpt")

    # The same structure with nothing pruned, then restored: the masks come back.
    other = pruning.apply_masks(_model(), {n: np.ones_like(m) for n, m in masks.items()})
    tf.train.Checkpoint(model=other).restore(path).assert_existing_objects_matched()
    for name, keep in pruning.get_masks(other).items():
        np.testing.assert_array_equal(keep, masks[name])
    np.testing.assert_array_equal(_predict(other, x), _predict(pruned, x))
    _tune(other, x, y, epochs=2)
    for name, k in _kernels(other).items():
        assert np.all(k[~masks[name]] == 0), name


def test_stripped_model_predicts_what_the_wrapped_one_did(rng):
    x, y = _data(rng)
    pruned = pruning.prune_magnitude(_model(), 0.5)
    _tune(pruned, x, y)
    expected = _predict(pruned, x)
    stripped = pruning.strip_pruning(pruned)
    assert [type(layer).__name__ for layer in stripped.layers[1:]] == ["MAMDense", "Dense", "MAMDense"]
    np.testing.assert_array_equal(_predict(stripped, x), expected)


def test_strip_zeroes_weights_that_moved_since_the_last_remasking(rng):
    pruned = pruning.prune_magnitude(_model(), 0.5, layers=["mam1"])
    keep = pruning.get_masks(pruned)["mam1"]
    kernel = pruned.get_layer("prune_low_magnitude_mam1").layer.kernel
    kernel.assign(tf.ones_like(kernel))  # as after an optimizer step, before the next forward
    stripped = pruning.strip_pruning(pruned)
    k = stripped.get_layer("mam1").kernel.numpy()
    np.testing.assert_array_equal(k != 0, keep)


def test_pruning_again_prunes_more_and_keeps_earlier_zeros(rng):
    x, _ = _data(rng)
    first = pruning.prune_magnitude(_model(), 0.5)
    second = pruning.prune_activation_rate(first, x, 0.75)
    m1, m2 = pruning.get_masks(first), pruning.get_masks(second)
    for name in m1:
        assert not np.any(m2[name] & ~m1[name]), name  # nothing revived
        assert (~m2[name]).sum() == math.floor(0.75 * m2[name].size + 0.5)


def test_iterative_prune_fine_tunes_after_each_step(rng):
    x, y = _data(rng)
    seen = []

    def tune(model):
        seen.append({n: m.copy() for n, m in pruning.get_masks(model).items()})
        return _tune(model, x, y)

    final, histories = pruning.iterative_prune(_model(), [0.3, 0.6, 0.6], fine_tune=tune,
                                               progress=False)
    assert len(histories) == 3 and all(h.history["loss"] for h in histories)
    for step, s in zip(seen, (0.3, 0.6, 0.6)):
        for name, keep in step.items():
            assert (~keep).sum() == math.floor(s * keep.size + 0.5)
    for name in seen[0]:
        assert not np.any(seen[1][name] & ~seen[0][name])
    for name, k in _kernels(final).items():
        assert np.all(k[~seen[-1][name]] == 0)


def test_sequential_models_prune_too(rng):
    model = keras.Sequential([keras.Input((10,)), MAMDense(4, name="a"), keras.layers.Dense(2, name="b")])
    x = rng.standard_normal((20, 10)).astype(np.float32)
    pruned = pruning.prune_activation_rate(model, x, 0.5)
    assert {n: int((~m).sum()) for n, m in pruning.get_masks(pruned).items()} == {"a": 20, "b": 4}


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [1.2, 1.0, -0.1, float("nan"), True, "0.5"])
def test_sparsity_outside_zero_one_is_refused(sparsity):
    with pytest.raises(ValueError, match=r"prune_magnitude: sparsity must be .*in \[0, 1\), got"):
        pruning.prune_magnitude(_model(), sparsity)


def test_bad_arguments_are_refused_with_the_name_and_the_value(rng):
    model = _model()
    x, _ = _data(rng)
    with pytest.raises(ValueError, match=r"no prunable layer named 'nope'.*\['mac', 'mam1', 'mam2'\]"):
        pruning.prune_magnitude(model, 0.5, layers=["nope"])
    with pytest.raises(ValueError, match="layer 'input_1' .*cannot be pruned"):
        pruning.prune_activation_rate(model, x, 0.5, layers=["input_1"])
    with pytest.raises(ValueError, match="scope must be one of .* got 'row'"):
        pruning.prune_magnitude(model, 0.5, scope="row")
    with pytest.raises(ValueError, match="layer 'mam1' is named twice"):
        pruning.prune_magnitude(model, 0.5, layers=["mam1", "mam1"])
    with pytest.raises(ValueError, match="method 'activation_rate' needs data"):
        pruning.sweep(model, [0.5], lambda m: 0.0, method="activation_rate")
    with pytest.raises(ValueError, match=r"remaining fractions must be in \(0, 1\], got 0"):
        pruning.sweep(model, [0.5, 0], lambda m: 0.0)
    with pytest.raises(ValueError, match="sparsities must not decrease"):
        pruning.iterative_prune(model, [0.5, 0.2])


def test_pruning_a_layer_twice_with_conflicting_masks_is_refused(rng):
    x, _ = _data(rng)
    pruned = pruning.prune_magnitude(_model(), 0.8, layers=["mam1"])
    with pytest.raises(ValueError, match=r"layer 'mam1' already has 77 of 96 weights pruned.*conflicts"):
        pruning.prune_activation_rate(pruned, x, 0.5, layers=["prune_low_magnitude_mam1"])
    revive = pruning.get_masks(pruned)["mam1"].copy()
    revive[np.unravel_index(np.argmin(revive), revive.shape)] = True
    with pytest.raises(ValueError, match="mask for layer 'mam1' keeps 1 weights an earlier pruning removed"):
        pruning.apply_masks(pruned, {"mam1": revive})
    with pytest.raises(ValueError, match=r"mask for layer 'mac' has shape \(2, 2\)"):
        pruning.apply_masks(pruned, {"mac": np.ones((2, 2), bool)})


# ------------------------------------------------------------------------------------------
# Footprint summary and sweeps
# ------------------------------------------------------------------------------------------
def test_csr_entries_follow_the_encoding_loop_of_mam_sparse(rng):
    cases = [np.zeros((3, 10), bool), np.ones((2, 5), bool)]
    row = np.zeros((1, 1100), bool)
    row[0, [255, 256, 512, 1023, 1099]] = True  # gaps 255, 0, 255, 510, 75
    cases.append(row)
    edge = np.zeros((1, 800), bool)
    edge[0, [256, 768]] = True  # gap 256 -> 1 dummy, gap 511 -> 1 dummy
    cases.append(edge)
    for density in (0.003, 0.05, 0.5):
        cases.append(rng.random((7, 1300)) < density)
    for mask in cases:
        assert pruning._csr_entries(mask) == _reference_csr_entries(mask)
    assert pruning._csr_entries(edge) == 4 and pruning._csr_entries(row) == 6


def test_summary_reports_weights_and_bytes_per_layer(rng):
    pruned = pruning.prune_magnitude(_model(), 0.75, layers=["mam1", "mam2"])
    printed = []
    report = pruning.summary(pruned, print_fn=printed.append)
    rows = {r["layer"]: r for r in report["layers"]}
    assert list(rows) == ["mam1", "mac", "mam2"]
    k = _kernels(pruned)
    for name, (n, m) in {"mam1": (12, 8), "mac": (8, 6), "mam2": (6, 3)}.items():
        r = rows[name]
        nonzero = int(np.count_nonzero(k[name]))
        entries = _reference_csr_entries(k[name].T != 0)
        assert (r["inputs"], r["units"], r["total"], r["nonzero"]) == (n, m, n * m, nonzero)
        assert r["sparsity"] == pytest.approx(1 - nonzero / (n * m), abs=1e-12)
        assert r["dense_int8_bytes"] == n * m + 4 * m
        assert r["csr_entries"] == entries
        assert r["csr_bytes"] == 2 * entries + 2 * m + 4 * m
    assert rows["mam1"]["nonzero"] == 24 and rows["mac"]["nonzero"] == 48
    assert report["total"]["nonzero"] == 24 + 48 + 4
    assert report["total"]["csr_bytes"] == sum(r["csr_bytes"] for r in rows.values())
    table = printed[0]
    assert all(name in table for name in rows) and "offset-CSR" in table


def test_sweep_gives_a_metric_per_remaining_fraction(rng):
    x, y = _data(rng)
    model = _model()
    reference = _predict(model, x)

    def nonzero_and_error(m):
        return float(np.mean((_predict(m, x) - reference) ** 2))

    rows = pruning.sweep(model, [1.0, 0.5, 0.1], nonzero_and_error, method="activation_rate",
                         data=x, layers=["mam1", "mam2"], progress=False)
    assert [r["remaining"] for r in rows] == [1.0, 0.5, 0.1]
    for r in rows:
        expect = sum(n - math.floor((1 - r["remaining"]) * n + 0.5) for n in (96, 18))
        assert r["total"] == 114 and r["nonzero"] == expect
    assert rows[0]["metric"] == 0.0 and rows[2]["metric"] > 0.0
    tuned = pruning.sweep(model, [0.3], nonzero_and_error, progress=False,
                          fine_tune={"x": x, "y": reference, "optimizer": "adam", "loss": "mse",
                                     "epochs": 2, "batch_size": 16, "run_eagerly": True})
    assert tuned[0]["nonzero"] == sum(n - math.floor(0.7 * n + 0.5) for n in (96, 48, 18))
    assert all(np.count_nonzero(k) == k.size for k in _kernels(model).values())


# ------------------------------------------------------------------------------------------
# remaining= (the kept fraction) and the deprecated sparsity=
# ------------------------------------------------------------------------------------------
def test_remaining_keeps_that_fraction_of_each_layer(rng):
    x, _ = _data(rng)
    for prune in (lambda r: pruning.prune_magnitude(_model(), remaining=r),
                  lambda r: pruning.prune_activation_rate(_model(), x, remaining=r)):
        masks = pruning.get_masks(prune(0.25))
        for name, keep in masks.items():
            # 25% kept of n weights: n - round(0.75 n) of them, halves up
            assert keep.sum() == keep.size - math.floor(0.75 * keep.size + 0.5), name


def test_sparsity_still_works_with_a_deprecation_warning(rng):
    from mam_tf._moved import MamTfDeprecationWarning

    x, _ = _data(rng)
    new = pruning.get_masks(pruning.prune_activation_rate(_model(), x, remaining=0.4))
    with pytest.warns(MamTfDeprecationWarning, match="sparsity= is deprecated.*remaining="):
        old = pruning.get_masks(pruning.prune_activation_rate(_model(), x, sparsity=0.6))
    with pytest.warns(MamTfDeprecationWarning, match="prune_magnitude: sparsity="):
        pruning.prune_magnitude(_model(), 0.6)  # positional: the second argument is sparsity
    assert old.keys() == new.keys()
    for name in new:
        np.testing.assert_array_equal(old[name], new[name], err_msg=name)
    with pytest.warns(MamTfDeprecationWarning, match="FixedMask: sparsity="):
        assert pruning.FixedMask(0.3).remaining == pytest.approx(0.7)


def test_remaining_and_sparsity_together_are_refused():
    with pytest.raises(ValueError, match=r"prune_magnitude: give remaining=.*not both "
                                         r"\(got remaining=0.5, sparsity=0.5\)"):
        pruning.prune_magnitude(_model(), remaining=0.5, sparsity=0.5)
    with pytest.raises(ValueError, match=r"iterative_prune: give remaining=.*not both"):
        pruning.iterative_prune(_model(), [0.5], remaining=[0.5])
    with pytest.raises(ValueError, match=r"FixedMask: give remaining=.*not both"):
        pruning.FixedMask(0.5, remaining=0.5)


@pytest.mark.parametrize("remaining", [0.0, 1.2, -0.1, float("nan"), True, "0.5"])
def test_remaining_outside_zero_one_is_refused(remaining):
    with pytest.raises(ValueError, match=r"prune_magnitude: remaining must be a number in "
                                         r"\(0, 1\], got"):
        pruning.prune_magnitude(_model(), remaining=remaining)


def test_iterative_prune_takes_remaining_fractions(rng):
    x, y = _data(rng)
    seen = []

    def tune(model):
        seen.append(pruning.get_masks(model))
        return _tune(model, x, y)

    pruning.iterative_prune(_model(), remaining=[0.7, 0.4], fine_tune=tune, progress=False)
    for step, r in zip(seen, (0.7, 0.4)):
        for name, keep in step.items():
            assert keep.sum() == keep.size - math.floor((1 - r) * keep.size + 0.5), name
    with pytest.raises(ValueError, match=r"remaining must not increase.*got \[0.4, 0.7\]"):
        pruning.iterative_prune(_model(), remaining=[0.4, 0.7])


def test_summary_reports_the_remaining_fraction(rng):
    report = pruning.summary(pruning.prune_magnitude(_model(), remaining=0.25, layers=["mam1"]),
                             print_fn=None)
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["mam1"]["remaining"] == 24 / 96 and rows["mac"]["remaining"] == 1.0
    assert report["total"]["remaining"] == (24 + 48 + 18) / (96 + 48 + 18)
