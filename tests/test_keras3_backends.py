"""mam_tf.keras3 under each Keras 3 backend, each in a fresh process: importing it leaves
the process on Keras 3 (no tf_keras, no tfmot, no TF_USE_LEGACY_KERAS). The other Keras 3 tests
run on JAX and PyTorch too: scripts/test.sh runs them once per backend, each in its own pytest
process (tests/test_test_script.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")

_PROBE = """
import os, sys
import numpy as np
import mam_tf.keras3
from mam_tf.keras3 import MAMDense
import mam_tf.keras3.pruning, mam_tf.keras3.training
import keras
model = keras.Sequential([keras.Input((4,)), MAMDense(2)])
model.compile("sgd", "mse")
model.fit(np.ones((4, 4), "float32"), np.ones((4, 2), "float32"), verbose=0)
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
assert keras.__version__.startswith("3."), keras.__version__
for name in ("tf_keras", "tensorflow_model_optimization"):
    assert name not in sys.modules, f"{name} was imported"
assert "TF_USE_LEGACY_KERAS" not in os.environ, os.environ["TF_USE_LEGACY_KERAS"]
if sys.argv[1] != "tensorflow":  # the fused kernel's build and glue included
    assert "tensorflow" not in sys.modules, "tensorflow was imported"
if sys.argv[1] == "tensorflow":
    import tensorflow as tf
    assert tf.keras.__version__.startswith("3."), tf.keras.__version__
print("ok")
"""


def _env(backend):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["KERAS_BACKEND"] = backend
    return env


@pytest.mark.parametrize("backend", BACKENDS)
def test_import_keeps_the_process_on_keras3(backend):
    run = subprocess.run([sys.executable, "-c", _PROBE, backend], env=_env(backend), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
