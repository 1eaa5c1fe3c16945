"""`mam-tf reproduce mwscas` at its tiny scale: the outputs, their consistency with the saved
models, the deployed model against the Keras one, resuming, and the model's structure."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import wfdb

import ecg_data
from mam_tf.train.compat import keras
from mam_tf.experiments import mwscas
from mam_tf.models import ecg_autoencoder, split

from json_fields import without

pytestmark = pytest.mark.slow

FRACS = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]


def _ecg_like(t):
    """A periodic spiky signal (a crude ECG) with baseline wander and 50 Hz mains."""
    beat = np.exp(-((np.mod(t, 0.8) - 0.4) ** 2) / (2 * 0.01 ** 2))
    return beat + 0.5 * np.sin(2 * np.pi * 0.2 * t) + 0.1 * np.sin(2 * np.pi * 50 * t)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    t = np.arange(30 * 360) / 360.0
    for name in ("100", "101"):
        wfdb.wrsamp(name, fs=360, units=["mV"], sig_name=["MLII"], p_signal=_ecg_like(t)[:, None],
                    fmt=["16"], write_dir=str(d))
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, records):
    out = tmp_path_factory.mktemp("mwscas")
    # The Cortex-M7 figures (QEMU) are left out here: their own tests cover them.
    cfg = mwscas.config_for("tiny", records=str(records), mcu=False)
    results = mwscas.run(cfg, out, progress=False, print_fn=None)
    return cfg, out, results


def _data(cfg):
    return ecg_data.build_synthetic_dataset(cfg.windows, 256, 256, (60, 100), cfg.snr_db,
                                            cfg.data_seed, progress=False)


def test_outputs_are_written(tiny):
    cfg, out, results = tiny
    saved = json.loads((out / "results.json").read_text())
    assert saved["scale"] == "tiny" and saved["seeds"] == [0]
    pts = saved["points"]
    # two one-shot methods at every fraction; the fine-tuned curve at 100% and its fractions
    assert len(pts) == 2 * (2 * len(FRACS) + 1 + len(cfg.fine_tune))
    assert {(p["kind"], p["method"]) for p in pts} == {
        (k, m) for k in ("mac", "mam")
        for m in ("magnitude", "activation_rate", "magnitude_fine_tuned")}
    for p in pts:
        assert {"kind", "method", "remaining", "arsnr_mean", "arsnr_min", "arsnr_max",
                "fc1_bytes", "deployed_arsnr"} <= set(p)
        assert p["arsnr_min"] <= p["arsnr_mean"] <= p["arsnr_max"]
    deployed = [p for p in pts if p["deployed_arsnr"] is not None]
    assert {(p["kind"], p["method"], p["remaining"]) for p in deployed} == {
        ("mam", "magnitude", 0.05), ("mac", "magnitude", 0.05)}
    for kind in ("mac", "mam"):
        assert (out / "models" / f"{kind}_seed0.keras").is_file()
        assert (out / "models" / f"{kind}_seed0_qat.keras").is_file()
        assert (out / "models" / f"{kind}_seed0_qat_fine_tuned_5pct.keras").is_file()
        assert (out / "tflite" / f"{kind}_seed0_magnitude_5pct_int16x8.tflite").read_bytes()[4:8] \
            == b"TFL3"
    for fig in ("fig2_arsnr_vs_weights", "fig4_arsnr_vs_memory", "fig6_reconstruction"):
        assert (out / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "| 5% |" in report and "Cortex-M7 figures:" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages_computed"] == len(manifest["stages"]) > 0


def test_results_match_the_saved_models(tiny):
    """Recomputed from the saved files alone: the float ARSNR, and a pruned QAT point with the
    magnitude mask made here in numpy and its offset-CSR bytes counted by mam_tf.deploy.offset_csr."""
    from mam_tf.deploy.offset_csr import encode

    cfg, out, results = tiny
    test = _data(cfg)["test"]
    for kind in ("mac", "mam"):
        model = keras.models.load_model(out / "models" / f"{kind}_seed0.keras", compile=False)
        train = next(t for t in results["training"] if t["kind"] == kind)
        assert ecg_data.arsnr(test, model.predict(test, verbose=0)) == pytest.approx(
            train["test_arsnr"], abs=1e-4)
        _, head = split(model)
        qat = keras.models.load_model(out / "models" / f"{kind}_seed0_qat.keras", compile=False)
        wrapper = next(layer for layer in qat.layers if getattr(layer, "layer", None) is not None
                       and layer.layer.name == "fc1")
        kernel = wrapper._weight_vars[0][0]
        k = kernel.numpy()
        keep = int(round(0.05 * k.size))
        mask = np.zeros(k.size, bool)
        mask[np.argsort(-np.abs(k).ravel(), kind="stable")[:keep]] = True
        kernel.assign(k * mask.reshape(k.shape))
        db = ecg_data.arsnr(test, head.predict(qat.predict(test, verbose=0), verbose=0))
        point = next(p for p in results["points"] if p["kind"] == kind
                     and p["method"] == "magnitude" and p["remaining"] == 0.05)
        assert db == pytest.approx(point["arsnr_mean"], abs=0.02)
        w = (mask.reshape(k.shape).T).astype(np.int8)  # [M, N] with a 1 where a weight is kept
        csr = encode(w)
        m = k.shape[1]
        assert point["fc1_bytes"] == 2 * csr.num_entries + 2 * m + 4 * m
        assert point["fc1_values_bytes"] == keep


def test_fine_tuned_model_keeps_the_magnitude_mask(tiny):
    """The saved fine-tuned QAT tail at 5%: its FC1 nonzeros lie inside the 5% magnitude mask
    of the unpruned QAT tail (made here in numpy), and its ARSNR is the reported point's."""
    cfg, out, results = tiny
    test = _data(cfg)["test"]
    for kind in ("mac", "mam"):
        def fc1_kernel(model):
            wrapper = next(layer for layer in model.layers
                           if getattr(layer, "layer", None) is not None
                           and layer.layer.name == "fc1")
            return wrapper._weight_vars[0][0].numpy()

        base = fc1_kernel(keras.models.load_model(out / "models" / f"{kind}_seed0_qat.keras",
                                                  compile=False))
        tuned_model = keras.models.load_model(
            out / "models" / f"{kind}_seed0_qat_fine_tuned_5pct.keras", compile=False)
        tuned = fc1_kernel(tuned_model)
        keep = int(round(0.05 * base.size))
        mask = np.zeros(base.size, bool)
        mask[np.argsort(-np.abs(base).ravel(), kind="stable")[:keep]] = True
        mask = mask.reshape(base.shape)
        assert not np.any(tuned[~mask]), "pruned FC1 weights grew back in the fine-tune"
        assert np.count_nonzero(tuned) > 0.9 * keep
        assert not np.array_equal(tuned[mask], base[mask]), "the fine-tune changed nothing"
        _, head = split(keras.models.load_model(out / "models" / f"{kind}_seed0.keras",
                                                compile=False))
        db = ecg_data.arsnr(test, head.predict(tuned_model.predict(test, verbose=0), verbose=0))
        point = next(p for p in results["points"] if p["kind"] == kind
                     and p["method"] == "magnitude_fine_tuned" and p["remaining"] == 0.05)
        assert db == pytest.approx(point["arsnr_mean"], abs=0.02)


def test_deployed_tail_is_within_quantization_of_keras(tiny):
    cfg, out, results = tiny
    assert results["deployed"]
    for d in results["deployed"]:
        assert d["windows"] == cfg.deploy_windows
        # The bound: the int16x8 .tflite on the host runtime within 0.3 dB of Keras QAT.
        assert abs(d["deployed_arsnr"] - d["keras_qat_arsnr"]) < 0.3
    mam = next(d for d in results["deployed"] if d["kind"] == "mam")
    assert mam["fc1_op"] == "MAM_SPARSE"
    # int8 rounding may drop a few more weights; never keeps more than the 5% asked for.
    assert 0.04 * 16384 * 128 <= mam["fc1_nonzeros"] <= round(0.05 * 16384 * 128)


def test_records_are_evaluated(tiny):
    cfg, out, results = tiny
    assert results["records"] and len(results["records"]) == 2
    for r in results["records"]:
        assert r["windows"] == 2 * (30 * 256 // 256)
        assert [p["remaining"] for p in r["points"]] == FRACS
        assert np.isfinite(r["float_arsnr"])
    assert "Real ECG records" in (out / "report.md").read_text()


def test_a_rerun_reads_every_stage_back(tiny, monkeypatch):
    cfg, out, results = tiny

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage was computed again")

    import mam_tf.deploy.convert

    monkeypatch.setattr(keras.Model, "fit", refuse)
    monkeypatch.setattr(mam_tf.deploy.convert, "convert", refuse)
    again = mwscas.run(cfg, out, progress=False, print_fn=None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages_computed"] == 0 and manifest["stages_read_back"] > 0
    assert again["points"] == results["points"]


def test_a_changed_parameter_reruns_what_depends_on_it(tiny):
    cfg, out, results = tiny
    import dataclasses

    cfg2 = dataclasses.replace(cfg, record_windows=16)
    again = mwscas.run(cfg2, out, progress=False, print_fn=None)
    manifest = json.loads((out / "manifest.json").read_text())
    computed = [s["label"] for s in manifest["stages"] if not s["cached"]]
    assert sorted(computed) == ["records MAC seed 0", "records MAM seed 0"]
    assert all(r["windows"] == 16 for r in again["records"])
    # Nothing else depends on the records: the same numbers come back.
    assert again["points"] == results["points"] and again["deployed"] == results["deployed"]


def _stage_dir(run, label):
    """The folder of the stage labelled ``label`` (the label of its progress line) in the run
    folder's last manifest (other tests leave stages of other parameters in the tiny run's
    folder, under the same labels)."""
    manifest = json.loads((run / "manifest.json").read_text())
    record = next(r for r in manifest["stages"] if r["label"] == label)
    return run / "stages" / f"{record['stage']}-{record['key']}"


def test_damaged_stage_files_are_recomputed_and_the_results_stay(tiny, tmp_path, capsys):
    """A copy of the tiny run with files of three stages damaged: a .keras file deleted and an
    .npz truncated (the line names the first of the stage's files found damaged), a .tflite
    altered by a flipped byte, a stage.json altered. Each of those stages runs again, nothing
    else does, and the results are the undamaged run's."""
    import shutil

    cfg, out, results = tiny
    run = tmp_path / "run"
    shutil.copytree(out, run)
    mwscas.run(cfg, run, progress=False, print_fn=None)  # its manifest names cfg's stages
    fine_tune = _stage_dir(run, "fine-tune MAC seed 0")
    (fine_tune / "qat_tail_5pct.keras").unlink()
    recon = fine_tune / "recon.npz"
    recon.write_bytes(recon.read_bytes()[:100])
    tflite = _stage_dir(run, "deploy MAC seed 0 magnitude 5%") / "tail.tflite"
    data = bytearray(tflite.read_bytes())
    data[len(data) // 2] ^= 0x01
    tflite.write_bytes(bytes(data))
    meta_path = _stage_dir(run, "records MAC seed 0") / "stage.json"
    meta = json.loads(meta_path.read_text())
    meta["value"]["windows"] += 1  # a record count that was not measured
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    again = mwscas.run(cfg, run, progress=True, print_fn=None)
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert sorted(line for line in err if line.endswith("; recomputing")) == [
        "[mwscas] deploy MAC seed 0 magnitude 5%: tail.tflite altered (sha256 differs); "
        "recomputing",
        "[mwscas] fine-tune MAC seed 0: qat_tail_5pct.keras missing; recomputing",
        "[mwscas] records MAC seed 0: stage.json altered (checksum differs); recomputing"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert sorted(s["label"] for s in manifest["stages"] if not s["cached"]) == [
        "deploy MAC seed 0 magnitude 5%", "fine-tune MAC seed 0", "records MAC seed 0"]
    for key in ("points", "records", "deployed"):
        assert _without_times(again[key]) == _without_times(results[key]), key
    assert (run / "models" / "mac_seed0_qat_fine_tuned_5pct.keras").is_file()


def _without_times(obj):
    """``obj`` without the wall-clock figures (seconds, milliseconds), which vary run to run."""
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items()
                if not any(t in k for t in ("seconds", "_ms_"))}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def test_a_stage_gives_the_same_files_whatever_its_process_built_before(tiny, tmp_path):
    """Keras numbers the layers a process builds (``quantize_layer``, ``quantize_layer_1``);
    the QAT stage's saved model keeps the names, and the ``.tflite`` deployed from it carries
    them in its tensor names. Every stage starts from Keras' fresh state
    (``experiments.base.fresh_keras``), so QAT stages recomputed by a process that has built
    a quantized model first lead to the run's ``.tflite`` files byte for byte and its models'
    configurations (a serial run's later stages, and a Ray task's fresh worker, likewise)."""
    import shutil

    import tensorflow_model_optimization as tfmot

    from mam_tf.bench.kill import first_difference

    cfg, out, _ = tiny
    run, again = tmp_path / "run", tmp_path / "again"
    shutil.copytree(out, run)
    mwscas.run(cfg, run, progress=False, print_fn=None)  # cfg's results (other tests vary it)
    shutil.copytree(run, again)
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    for label in [r["label"] for r in stages if r["stage"] == "qat"]:
        shutil.rmtree(_stage_dir(again, label))
    x = keras.Input((4,))  # what an earlier stage leaves in the process: numbered layers
    tfmot.quantization.keras.quantize_model(keras.Model(x, keras.layers.Dense(2)(x)))
    mwscas.run(cfg, again, progress=False, print_fn=None)
    recomputed = json.loads((again / "manifest.json").read_text())
    deploys = [r["label"] for r in recomputed["stages"] if r["stage"] == "deploy"]
    assert len(deploys) == 2 and not any(
        r["cached"] for r in recomputed["stages"] if r["label"] in deploys)
    assert first_difference(run, again) is None


#: What a run in other processes may change: the timing fields.
TIMING = {"seconds_per_epoch", "qat_seconds_per_epoch", "convert_seconds",
          "runtime_ms_per_window"}


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is the [cluster] extra")
def test_on_ray_the_results_are_the_serial_ones(tiny, tmp_path):
    """`--ray local --task-cpus N`: the fine-tunes (QAT training with the masks held) and the
    deployments computed as Ray tasks, the other stages read back from the serial run, give
    the serial results.json but for its timing fields. N is the serial run's thread count
    (the usable CPUs), so that TensorFlow sums as the serial run does (with fewer threads its
    float sums round differently: docs/cluster.md). Cost: Ray's start and those 4 stages of a
    tiny run (the whole tiny run again on Ray cost as much as the serial one)."""
    import shutil

    from mam_tf.common.machine import cpus_usable

    cfg, out, results = tiny
    ray_out = tmp_path / "ray"
    shutil.copytree(out, ray_out)
    mwscas.run(cfg, ray_out, progress=False, print_fn=None)  # its manifest names cfg's stages
    on_ray = set()
    for r in json.loads((ray_out / "manifest.json").read_text())["stages"]:
        if r["stage"] in ("fine_tune", "deploy"):
            on_ray.add(r["label"])
            shutil.rmtree(_stage_dir(ray_out, r["label"]))
    assert len(on_ray) == 4
    on_ray_results = mwscas.run(cfg, ray_out, progress=False, print_fn=None, ray="local",
                                task_cpus=cpus_usable())
    assert without(on_ray_results, TIMING) == without(results, TIMING)
    deployed = sorted(label for label in on_ray if label.startswith("deploy"))
    assert len(deployed) == 2
    for label in deployed:  # byte for byte, tensor names included
        tflites = [_stage_dir(o, label) / "tail.tflite" for o in (out, ray_out)]
        assert tflites[0].read_bytes() == tflites[1].read_bytes(), label
    manifest = json.loads((ray_out / "manifest.json").read_text())
    computed = [r for r in manifest["stages"] if not r["cached"]]
    assert {r["label"] for r in computed} == on_ray
    assert all(r["ran_on"]["node"] and r["ran_on"]["pid"] != os.getpid() for r in computed)
    if sys.platform == "linux":  # the worker process: Python, Ray, TensorFlow, the stage
        assert all(r["memory"]["peak_rss_bytes"] >= r["memory"]["rss_start_bytes"] > 2**20
                   for r in computed)


def _conv_params(k, cin, cout):
    return k * cin * cout + cout


@pytest.mark.parametrize("kind", ["mac", "mam"])
def test_model_has_the_seeds_structure(kind):
    model = ecg_autoencoder(kind)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv1D") == 3 and kinds.count("Conv1DTranspose") == 3
    assert kinds.count("Dense") + kinds.count("MAMDense") == 3
    assert type(model.get_layer("fc1")).__name__ == ("MAMDense" if kind == "mam" else "Dense")
    for layer in model.layers:
        if hasattr(layer, "activation"):
            assert layer.activation.__name__ == "relu", layer.name
    assert model.input_shape == (None, 256) and model.output_shape == (None, 256)
    assert model.get_layer("fc2").output_shape == (None, 64)
    # Counted from the layer shapes the module documents, not from Keras' count.
    fc1 = 256 * 64 * 128 + 128
    tail = _conv_params(9, 1, 16) + _conv_params(9, 16, 32) + _conv_params(9, 32, 64) + fc1 \
        + 128 * 64 + 64
    got = sum(int(np.prod(w.shape)) for layer in split(model)[0].layers
              for w in layer.trainable_weights)
    assert got == tail and tail > 2_000_000 and fc1 / tail >= 0.98
    # FC1's int16 input buffer is the paper's 32.8 kB.
    assert 2 * model.get_layer("fc1").input_shape[-1] == 32768


def test_split_composes_to_the_model():
    model = ecg_autoencoder("mam", seed=3)
    tail, head = split(model)
    x = np.random.default_rng(0).random((5, 256), np.float32)
    np.testing.assert_array_equal(head(tail(x)).numpy(), model(x).numpy())
    assert tail.output_shape == (None, 64)
    assert [layer.name for layer in tail.layers[1:]] == list(
        __import__("mam_tf.models", fromlist=["TAIL_LAYERS"]).TAIL_LAYERS)


def test_device_budget_is_computed_as_the_paper_does():
    other_weights = 9 * 16 + 9 * 16 * 32 + 9 * 32 * 64 + 128 * 64
    other_biases = 4 * (16 + 32 + 64 + 64)
    assert mwscas.device_budget_bytes(ecg_autoencoder("mac")) == \
        512 * 1024 - other_weights - other_biases - 16384 * 2


def test_bandpass_removes_wander_and_mains():
    fs = 360.0
    t = np.arange(int(60 * fs)) / fs
    band = np.sin(2 * np.pi * 10 * t)
    x = band + 2.0 * np.sin(2 * np.pi * 0.1 * t) + 0.5 * np.sin(2 * np.pi * 60 * t)
    y = ecg_data.bandpass_filter(x, fs, (0.5, 40))
    spec = lambda s, f: 2 * np.abs(np.fft.rfft(s)[int(round(f * len(s) / fs))]) / len(s)  # noqa: E731
    assert spec(y, 10) == pytest.approx(1.0, abs=0.02)
    assert spec(y, 0.1) < 0.02 * 2.0 and spec(y, 60) < 0.05 * 0.5
    with pytest.raises(ValueError, match=r"band is \(0.5, 200\) Hz"):
        ecg_data.bandpass_filter(x, fs, (0.5, 200))


def test_blend_must_leave_pure_mam_epochs():
    """The blend ends before training does, so every model ends in pure MAM."""
    assert mwscas.config_for("small").vc_epochs < mwscas.config_for("small").epochs
    for vc, epochs in ((15, 15), (0, 15), (20, 15)):
        with pytest.raises(ValueError, match=f"vc_epochs must be .* below epochs \\({epochs}\\).* got {vc}"):
            mwscas.config_for("small", vc_epochs=vc, epochs=epochs)


def test_report_command_repeats_the_overrides():
    from mam_tf.experiments.mwscas.config import command_overrides

    cfg = mwscas.config_for("small", epochs=20, vc_epochs=3, seeds=(1,))
    assert command_overrides(cfg, [1]) == " --seeds 1 --epochs 20 --vc-epochs 3"
    assert command_overrides(mwscas.config_for("small"), [0, 1, 2]) == ""
    assert command_overrides(mwscas.config_for("small", fine_tune=()), [0, 1, 2]) == \
        " --fine-tune none"
    assert command_overrides(mwscas.config_for("small", fine_tune=(0.05, 0.02)), [0, 1, 2]) == \
        " --fine-tune 0.05,0.02"


def test_fine_tune_option_takes_kept_fractions(capsys):
    import argparse

    from mam_tf.experiments.mwscas.cli import fine_tune_arg

    assert fine_tune_arg("0.05,0.02") == (0.05, 0.02)
    assert fine_tune_arg("none") == ()
    assert capsys.readouterr().err == ""
    # The old percent spelling still reads, with a deprecation line.
    assert fine_tune_arg("5,2") == (0.05, 0.02)
    assert "deprecated" in capsys.readouterr().err
    for bad in ("0.03", "1", "100", "0.05,x", "", "-0.05"):
        with pytest.raises(argparse.ArgumentTypeError, match="--fine-tune"):
            fine_tune_arg(bad)
    with pytest.raises(ValueError, match=r"fine_tune fractions must be .* got \[0.03\]"):
        mwscas.config_for("small", fine_tune=(0.03,))
    with pytest.raises(ValueError, match="fine_tune starts from the magnitude masks"):
        mwscas.config_for("small", methods=("activation_rate",))


def test_cli_lists_the_experiment(capsys):
    from mam_tf.cli import main

    with pytest.raises(SystemExit):
        main(["reproduce", "mwscas", "--help"])
    text = capsys.readouterr().out
    for option in ("--scale", "-o DIR, --out DIR", "--seeds", "--merge", "--recompute", "--records",
                   "--train-records", "--vc-epochs", "--fine-tune"):
        assert option in text


def test_seeds_run_apart_merge_into_one_report(tiny, tmp_path):
    """`--seeds 1` elsewhere, then `--merge`: every stage is read back, statistics span both."""
    import dataclasses

    cfg, out, results = tiny
    other = dataclasses.replace(cfg, seeds=(1,), deploy=(), records=None)
    one = mwscas.run(other, tmp_path / "seed1", progress=False, print_fn=None)
    merged_cfg = dataclasses.replace(cfg, seeds=(), deploy=(), records=None)
    merged = mwscas.run(merged_cfg, tmp_path / "merged", progress=False, print_fn=None,
                        merge=[out, tmp_path / "seed1"])
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["stages_computed"] == 0
    assert merged["seeds"] == [0, 1]
    for p in merged["points"]:
        a = next(q for q in results["points"] if (q["kind"], q["method"], q["remaining"])
                 == (p["kind"], p["method"], p["remaining"]))
        b = next(q for q in one["points"] if (q["kind"], q["method"], q["remaining"])
                 == (p["kind"], p["method"], p["remaining"]))
        assert p["seeds"] == 2
        assert p["arsnr_min"] == min(a["arsnr_mean"], b["arsnr_mean"])
        assert p["arsnr_max"] == max(a["arsnr_mean"], b["arsnr_mean"])
        assert p["arsnr_mean"] == pytest.approx((a["arsnr_mean"] + b["arsnr_mean"]) / 2)


def test_quantized_kernel_is_the_variable_the_qat_model_computes_with():
    """pruning.quantized_kernel: assigning the returned kernel and mask prunes the QAT model,
    seen in its output against the float model pruned by hand."""
    from mam_tf.train import pruning, quantization

    tail, _ = split(ecg_autoencoder("mam", seed=0, beta=0.0))
    qat = quantization.quantize_model(tail, "int16x8", weight_range=(-1, 1), input_range=(-1, 1))
    kernel, mask = pruning.quantized_kernel(qat, "fc1")
    assert tuple(kernel.shape) == tuple(tail.get_layer("fc1").kernel.shape) == tuple(mask.shape)
    wrapper = next(layer for layer in qat.layers if getattr(layer, "layer", None) is not None
                   and layer.layer.name == "fc1")
    assert pruning.quantized_kernel(qat, wrapper.name)[0] is kernel
    x = np.random.default_rng(0).random((4, 256), np.float32)
    before = qat.predict(x, verbose=0)
    mask.assign(np.zeros(mask.shape, np.float32))  # the mask alone removes FC1's weights
    after = qat.predict(x, verbose=0)
    # FC1 without weights outputs relu(bias) for every window: FC2's input is one constant row.
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, after[:1].repeat(4, 0), atol=1e-6)
    mask.assign(np.ones(mask.shape, np.float32))  # and so does the kernel alone
    np.testing.assert_allclose(qat.predict(x, verbose=0), before, atol=1e-6)
    kernel.assign(np.zeros(kernel.shape, np.float32))
    np.testing.assert_allclose(qat.predict(x, verbose=0), after, atol=1e-6)
    with pytest.raises(ValueError, match="has no QAT-wrapped layer 'fc9'"):
        pruning.quantized_kernel(qat, "fc9")
