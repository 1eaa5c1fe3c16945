"""The seed-004 encoder layer trains in bounded memory: never the B x N x M product tensor."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mam", "mam-reference"])  # fused kernel, pure-TF path
def test_seed_layer_training_step_stays_far_below_the_product_tensor(variant):
    batch, n_in, units = 128, 16384, 128
    product_mib = batch * n_in * units * 4 / 2**20  # 1024 MiB
    code = (
        "import json; from mam_tf.bench.steps import measure_step; "
        f"print('RESULT', json.dumps(measure_step({variant!r}, {batch}, {n_in}, {units}, steps=1)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    growth = json.loads(lines[0][7:])["step_rss_growth_mib"]
    # Chunked MAM needs O(B*c*M) at a time; a materialised product would add >= 1 GiB.
    assert growth < product_mib / 2, f"a training step grew RSS by {growth:.0f} MiB"
