"""`mam-tf reproduce biocas` at tiny scale, end to end: outputs, their consistency with an
independent recomputation, the deployed int8 oracle, resuming."""
import json

import numpy as np
import pytest

import ecg_data
from mam_tf import keras
from mam_tf.cli import main as cli_main
from mam_tf.experiments import biocas
from mam_tf.deploy.runtime import Interpreter

from json_fields import without

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("biocas")
    assert cli_main(["reproduce", "biocas", "--scale", "tiny", "-o", str(out),
                     "--no-progress"]) == 0
    return out, json.loads((out / "results.json").read_text())


def _test_data(cfg):
    """The test windows and measurements, made here from ecg_data with the run's settings."""
    x = ecg_data.synthetic_windows(cfg["windows"] + cfg["test"], length=cfg["n"], fs=cfg["fs"],
                                   snr_db=cfg["snr_db"], seed=cfg["data_seed"]).astype(np.float64)
    A = ecg_data.sensing_matrix(cfg["m"], cfg["n"], cfg["sensing"],
                                orthonormal_rows=cfg["orthonormal_rows"], seed=cfg["data_seed"])
    D = ecg_data.wavelet_basis(cfg["n"], cfg["wavelet"])
    x_test = x[cfg["windows"]:]
    return x_test, ecg_data.measure(x_test, A).astype(np.float32), A, D


def _arsnr_of(prob, x, y, A, D, threshold):
    """Support = outputs above the threshold, at most m of them (the most probable)."""
    m = A.shape[0]
    support = np.zeros(prob.shape, bool)
    for i, row in enumerate(prob):
        above = np.flatnonzero(row > threshold)
        support[i, above[np.argsort(-row[above], kind="stable")][:m]] = True
    return ecg_data.arsnr(x, ecg_data.least_squares_reconstruction(y, A, D, support))


def test_outputs_are_all_there(run):
    out, res = run
    cfg = res["config"]
    for name in ("results.json", "report.md", "manifest.json", "arsnr_vs_remaining.png",
                 "reconstruction.png"):
        assert (out / name).is_file(), name
    for png in ("arsnr_vs_remaining.png", "reconstruction.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    for kind in ("mac", "mam"):
        assert (out / "models" / f"{kind}_seed0.keras").is_file()
    # One point per (sweep, fine-tuned or not, fraction), each with the fields asked for.
    want = {(k, biocas.method_name(m, s), ft, f) for k, m, s in cfg["sweeps"]
            for ft in (False, True) for f in cfg["fractions"]}
    got = {(p["kind"], p["method"], p["fine_tuned"], p["remaining"]) for p in res["points"]}
    assert got == want and len(res["points"]) == len(want)
    assert res["experiment"] == "biocas" and res["scale"] == "tiny" and res["seeds"] == [0]
    for p in res["points"]:
        assert {"kind", "method", "fine_tuned", "remaining", "arsnr_mean", "arsnr_min",
                "arsnr_max"} <= set(p)
        assert 0 < p["remaining"] <= 1
        assert p["arsnr_min"] <= p["arsnr_mean"] <= p["arsnr_max"]
        assert p["arsnr_mean"] > 5.0  # a support was found: far above an empty reconstruction
    report = (out / "report.md").read_text()
    assert "| MAM | activation_rate | yes |" in report and f"{res['baseline_arsnr']:.2f}" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["experiment"] == "biocas" and manifest["config"]["scale"] == "tiny"


def test_min_remaining_keeping_baseline_recomputed_from_the_points(run):
    _, res = run
    b, tol = res["baseline_arsnr"], 0.5
    for kind in ("mac", "mam"):
        fractions = [p["remaining"] for p in res["points"]
                     if p["kind"] == kind and p["arsnr_mean"] >= b - tol]
        if res["unpruned"][kind]["mean"] >= b - tol:
            fractions.append(1.0)
        want = min(fractions) if fractions else None
        assert res["min_remaining_keeping_baseline"][kind] == want


def test_min_remaining_keeping_baseline_rule():
    pts = [{"kind": "mam", "remaining": 0.5, "arsnr_mean": 29.6},
           {"kind": "mam", "remaining": 0.1, "arsnr_mean": 29.4},   # 0.6 dB below: not kept
           {"kind": "mam", "remaining": 0.06, "arsnr_mean": 29.5},  # exactly 0.5 dB below: kept
           {"kind": "mac", "remaining": 0.02, "arsnr_mean": 35.0}]
    f = biocas.min_remaining_keeping_baseline
    assert f(pts, 30.0, "mam") == 0.06
    assert f(pts, 30.1, "mam") == 0.5
    assert f(pts, 31.0, "mam") is None
    assert f(pts, 31.0, "mam", unpruned=30.6) == 1.0


def test_the_old_pruned_spelling_is_deprecated_and_agrees():
    from mam_tf._moved import MamTfDeprecationWarning

    pts = [{"kind": "mam", "pruned": 0.5, "arsnr_mean": 29.6},
           {"kind": "mam", "pruned": 0.94, "arsnr_mean": 29.5}]
    with pytest.warns(MamTfDeprecationWarning, match="min_remaining_keeping_baseline"):
        assert biocas.max_pruned_keeping_baseline(pts, 30.0, "mam") == 0.94
    with pytest.warns(MamTfDeprecationWarning):
        assert biocas.max_pruned_keeping_baseline(pts, 31.0, "mam", unpruned=30.6) == 0.0


def test_baseline_is_the_saved_mac_oracle_measured_independently(run):
    out, res = run
    cfg = res["config"]
    x, y, A, D = _test_data(cfg)
    for kind in ("mac", "mam"):
        model = keras.models.load_model(out / "models" / f"{kind}_seed0.keras", compile=False)
        got = _arsnr_of(model.predict(y, verbose=0), x, y, A, D, cfg["threshold"])
        assert got == pytest.approx(res["unpruned"][kind]["mean"], abs=1e-4)
    assert res["baseline_arsnr"] == pytest.approx(res["unpruned"]["mac"]["mean"])


def test_deployed_oracles_run_as_reported_and_follow_their_keras_model(run):
    out, res = run
    cfg = res["config"]
    x, y, A, D = _test_data(cfg)
    assert {d["kind"] for d in res["deployed"]} == {"mac", "mam"}
    for d in res["deployed"]:
        tag = "_fine_tuned" if d["fine_tuned"] else ""
        name = f"{d['kind']}_seed0_{d['method']}_{100 * d['remaining']:g}pct{tag}_int8.tflite"
        interp = Interpreter((out / "models" / name).read_bytes())
        prob = interp.run(y)
        assert _arsnr_of(prob, x, y, A, D, cfg["threshold"]) == pytest.approx(
            d["device_arsnr"], abs=1e-6)
        sparse_op = "MAM_SPARSE" if d["kind"] == "mam" else "MAC_SPARSE"
        if d["remaining"] <= 0.5:  # pruned hidden layers are stored sparse
            assert d["ops"][:2] == [sparse_op, sparse_op]
            nonzeros = sum(layer["nonzeros"] for layer in d["layers"][:2])
            total = cfg["m"] * 2 * cfg["n"] + (2 * cfg["n"]) ** 2
            assert nonzeros <= round(d["remaining"] * total)
        # int8 output, scale 1/256: a few steps from the float oracle, same support nearly always
        step = d["output_step"]
        assert step == pytest.approx(1 / 256)
        assert d["max_abs_probability_diff"] <= 8 * step
        assert d["support_agreement"] >= 0.99


def test_a_rerun_reads_every_stage_back(run, capsys):
    out, res = run
    again = biocas.run(biocas.config_for("tiny"), out, progress=False, print_fn=None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages_computed"] == 0 and manifest["stages_read_back"] > 0
    assert again["points"] == res["points"]
    assert again["min_remaining_keeping_baseline"] == res["min_remaining_keeping_baseline"]



#: What a run measures afresh: the times.
TIMING = {"train_seconds", "seconds"}


def test_on_ray_biocas_stages_give_the_serial_results(run, tmp_path):
    """`--ray local --task-cpus <the serial run's threads>`: the MAC oracle's two sweeps (by
    magnitude and by activation rate, each point fine-tuned), side by side, and its one-shot
    deployment computed as Ray tasks, the other stages read back from the serial run, give the
    serial results.json but for its timing fields. (The MAC ones: at the tiny scale the MAM
    oracle's ARSNR is the same at every point, so its sweeps would show no mix-up.) Cost:
    Ray's start and those stages of a tiny run (the whole tiny run again on Ray would double
    this module's time)."""
    import os
    import shutil

    pytest.importorskip("ray", reason="Ray is the [cluster] extra")
    from mam_tf.common.machine import cpus_usable

    def on_ray_too(meta):
        p = meta["params"]
        return p.get("kind") == "mac" and (
            meta["name"] == "sweep" or (meta["name"] == "deploy" and not p["fine_tuned"]))

    out, results = run
    ray_out = tmp_path / "ray"
    (ray_out / "stages").mkdir(parents=True)
    on_ray = set()
    for stage in (out / "stages").iterdir():
        meta = json.loads((stage / "stage.json").read_text())
        if on_ray_too(meta):
            on_ray.add(meta["label"])
        else:
            shutil.copytree(stage, ray_out / "stages" / stage.name)
    assert sorted(label.split()[0] for label in on_ray)[-2:] == ["sweep", "sweep"]
    assert "deploy" in {label.split()[0] for label in on_ray}
    assert cli_main(["reproduce", "biocas", "--scale", "tiny", "-o", str(ray_out),
                     "--no-progress", "--ray", "local", "--task-cpus", str(cpus_usable())]) == 0
    assert without(json.loads((ray_out / "results.json").read_text()), TIMING) == without(
        results, TIMING)
    manifest = json.loads((ray_out / "manifest.json").read_text())
    computed = [r for r in manifest["stages"] if not r["cached"]]
    assert {r["label"] for r in computed} == on_ray
    assert all(r["ran_on"]["node"] and r["ran_on"]["pid"] != os.getpid() for r in computed)


def test_training_that_diverges_stops_with_one_line(tmp_path, monkeypatch, capsys):
    """A NaN in one training measurement: the MAM oracle's training stops in its first epoch,
    naming the stage and the seed; nothing of it is stored. (The MAC oracle's loss stays
    finite: binary cross-entropy clips the NaN prediction of that one window.)"""
    from ecg_data import cs

    measure = cs.measure

    def nan_measure(x, A):
        y = measure(x, A)
        y[5, 3] = np.nan  # a training window (the test windows come last)
        return y

    monkeypatch.setattr(cs, "measure", nan_measure)
    out = tmp_path / "run"
    assert cli_main(["reproduce", "biocas", "--scale", "tiny", "-o", str(out),
                     "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mam-tf reproduce biocas: error: biocas train mam seed 0: loss "
                              "is nan at epoch 1, batch ")
    assert err[-1].endswith("; training diverged (lower the learning rate, or check the data "
                            "for NaN)")
    stored = [json.loads((p / "stage.json").read_text())["label"]
              for p in (out / "stages").iterdir()]
    assert sorted(stored) == ["data (800 + 200 windows, m=32)", "train mac seed 0"]
    assert not (out / "results.json").exists()

def test_unknown_settings_and_scales_are_named():
    with pytest.raises(ValueError, match="unknown setting 'epoch'"):
        biocas.config_for("tiny", epoch=3)
    with pytest.raises(ValueError, match="scale is 'huge'"):
        biocas.config_for("huge")
    with pytest.raises(ValueError, match=r"kept fractions in \(0, 1\], got \[94\]"):
        biocas.config_for("tiny", fractions=(94,))


def test_notebook_runs_at_tiny_scale(run, monkeypatch):
    """notebooks/compressed_sensing.ipynb executes top to bottom (on the tiny run above, whose
    stages it reads back) and is committed without outputs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from pathlib import Path

    out, res = run
    path = Path(__file__).resolve().parents[1] / "notebooks" / "compressed_sensing.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("MAM_TF_NOTEBOOK_SCALE", "tiny")
    monkeypatch.setenv("MAM_TF_NOTEBOOK_OUT", str(out))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert f"baseline (unpruned MAC oracle): {res['baseline_arsnr']:.2f} dB" in text
    assert "RSNR per window (dB):" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the signal-model figure and the two result figures


def test_merge_imports_the_stages_and_seeds_of_other_runs(run, tmp_path):
    out, res = run
    merged = tmp_path / "merged"
    again = biocas.run(biocas.config_for("tiny", seeds=()), merged, merge=[out],
                       progress=False, print_fn=None)
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["config"]["seeds"] == [0]  # taken from the merged run's results.json
    assert manifest["stages_computed"] == 0
    assert again["points"] == res["points"]
    with pytest.raises(FileNotFoundError, match="has no results.json"):
        biocas.run(biocas.config_for("tiny"), tmp_path / "x", merge=[tmp_path / "nothing"],
                   progress=False, print_fn=None)
    with pytest.raises(ValueError, match="is a 'biocas' run at scale 'tiny', this one "
                       "'biocas' at 'demo'"):
        biocas.run(biocas.config_for("demo"), tmp_path / "y", merge=[out], progress=False,
                   print_fn=None)
