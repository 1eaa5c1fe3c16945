"""A loss that turns NaN or infinite stops training with a message naming the run, the epoch
and the batch, before any weight is saved."""
import numpy as np
import pytest

from mam_tf import MAMDense, keras
from mam_tf.train.divergence import StopOnDivergence, TrainingDiverged


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, MAMDense(3, name="mam")(inp))
    model.compile("adam", "mse")
    return model


def test_a_nan_in_the_data_stops_training_naming_epoch_and_batch():
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    y = np.zeros((40, 3), np.float32)
    x[27, 2] = np.nan  # batch 3 of 8-sample batches (samples 24..31), in the first epoch
    model = _model()
    with pytest.raises(TrainingDiverged, match=r"mwscas train mam seed 3: loss is nan at "
                                               r"epoch 1, batch 4"):
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[StopOnDivergence("mwscas train mam seed 3")])


def test_an_infinite_validation_loss_stops_at_the_end_of_its_epoch():
    x = np.random.default_rng(1).standard_normal((16, 6)).astype(np.float32)
    y = np.zeros((16, 3), np.float32)
    xv = x.copy()
    xv[0, 0] = np.float32(3e38)  # finite input, infinite squared error
    model = _model()
    model.get_layer("mam").kernel.assign(np.full((6, 3), 10.0, np.float32))
    with pytest.raises(TrainingDiverged, match=r"val_loss is inf at epoch 1;"):
        model.fit(x, y, validation_data=(xv, y), batch_size=8, epochs=2, verbose=0,
                  callbacks=[StopOnDivergence("biocas")])


def test_finite_training_runs_to_the_end():
    x = np.random.default_rng(2).standard_normal((16, 6)).astype(np.float32)
    model = _model()
    hist = model.fit(x, np.zeros((16, 3), np.float32), batch_size=8, epochs=3, verbose=0,
                     callbacks=[StopOnDivergence("ok")])
    assert len(hist.history["loss"]) == 3
