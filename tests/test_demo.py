"""The README's main job, at the smallest scale: it runs end to end and writes its results."""
import json
import math

import pytest

from mam_tf.demo import run_demo


@pytest.mark.slow
def test_demo_trains_converts_and_reports(tmp_path):
    results = run_demo(windows=300, epochs=2, latent=8, out_dir=tmp_path, verbose=0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    for key in ("mac", "mam", "mam_int16x8"):
        assert math.isfinite(results[key]["test_arsnr_db"]) and results[key]["test_arsnr_db"] > 0
    assert (tmp_path / "reconstruction.png").stat().st_size > 10_000
    assert (tmp_path / "mam_autoencoder.tflite").read_bytes()[4:8] == b"TFL3"
    # The deployed model computes what the float one does, to within int16x8 quantization.
    assert abs(results["mam_int16x8"]["test_arsnr_db"] - results["mam"]["test_arsnr_db"]) < 0.5
