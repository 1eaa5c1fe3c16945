"""Test set-up shared by the whole suite.

Two logical CPU devices are configured before TensorFlow initialises its runtime, so the
tf.distribute.MirroredStrategy tests can run on a machine without accelerators.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mam_tf.train.compat import tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # runtime already initialised (e.g. by a plugin): tests needing 2 skip
    pass


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    from mam_tf.train.compat import keras

    keras.backend.clear_session()
    tf.random.set_seed(0)
    yield
