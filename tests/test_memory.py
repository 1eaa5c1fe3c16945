"""The seed-004 encoder layer trains in bounded memory: never the B x N x M product tensor.
Each step runs in a fresh process (its peak memory is its own): the tf_keras layer (fused kernel,
pure-TF path) and the Keras 3 layer on each backend."""
import json
import subprocess
import sys

import pytest

from mam_tf.bench.steps import keras3_env, merged_env

BATCH, N_IN, UNITS = 128, 16384, 128
PRODUCT_MIB = BATCH * N_IN * UNITS * 4 / 2**20  # 1024 MiB


def _step_growth_mib(variant, env=None):
    """RSS growth of one training step (after one warm-up step) in a fresh process, MiB."""
    code = (
        "import json; from mam_tf.bench.steps import measure_step; "
        f"print('RESULT', json.dumps(measure_step({variant!r}, {BATCH}, {N_IN}, {UNITS}, "
        "steps=1)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900, env=merged_env(env))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[0][7:])["step_rss_growth_mib"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mam", "mam-reference"])  # fused kernel, pure-TF path
def test_seed_layer_training_step_stays_far_below_the_product_tensor(variant):
    growth = _step_growth_mib(variant)
    # Chunked MAM needs O(B*c*M) at a time; a materialised product would add >= 1 GiB.
    assert growth < PRODUCT_MIB / 2, f"a training step grew RSS by {growth:.0f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras3_seed_layer_training_step_stays_within_512_mib_on(backend):
    growth = _step_growth_mib("k3-mam", keras3_env(backend))
    assert growth < PRODUCT_MIB / 2, f"a Keras 3 training step on {backend} grew RSS by " \
                                     f"{growth:.0f} MiB"
