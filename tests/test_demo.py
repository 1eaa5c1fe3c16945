"""The README's main job, at the smallest scale: it runs end to end and writes its results."""
import json
import math

import pytest

from mam_tf.demo import run_demo


@pytest.mark.slow
def test_demo_trains_converts_and_reports(tmp_path):
    results = run_demo(windows=300, epochs=2, latent=8, remaining=0.25, fine_tune_epochs=1,
                       out_dir=tmp_path, verbose=0)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    for kind in ("mac", "mam"):
        for key in ("dense_arsnr_db", "pruned_oneshot_arsnr_db", "pruned_arsnr_db"):
            assert math.isfinite(results[kind][key]) and results[kind][key] > 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "mam_autoencoder.tflite").read_bytes()[4:8] == b"TFL3"
    # The encoder kept a quarter of its weights (int8 rounding may zero a few more).
    assert results["mam_int16x8"]["encoder_nonzeros"] <= 0.25 * 256 * 8
    # The deployed model computes what the float one does, to within int16x8 quantization.
    assert abs(results["mam_int16x8"]["arsnr_db"] - results["mam"]["pruned_arsnr_db"]) < 0.5


def test_demo_refuses_a_bad_fraction(tmp_path):
    with pytest.raises(ValueError, match="remaining must be in"):
        run_demo(windows=100, remaining=1.5, out_dir=tmp_path, verbose=0)
