"""`mam-tf bench train`: variants interleaved in rounds, medians with spread, load and a busy
warning, each variant in its own process."""
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mam_tf import cli
from mam_tf.bench import steps
from mam_tf.bench import train


class FakeWorker:
    """Stands in for steps.Worker: a fixed step time per variant, every call recorded."""

    calls = []
    seconds = {"dense": 0.010, "mam": 0.020, "mam-reference": 0.500, "ecg-mac": 0.100,
               "ecg-mam": 0.110, "cs-mac": 0.002, "cs-mam": 0.003, "op-gemms": 0.004,
               "op-mam-forward": 0.006, "op-mam-backward": 0.002}

    #: Keras 3 variants, per backend
    keras3_seconds = {("k3-dense", "tensorflow"): 0.010, ("k3-mam", "tensorflow"): 0.021,
                      ("k3-dense", "jax"): 0.001, ("k3-mam", "jax"): 0.004,
                      ("k3-dense", "torch"): 0.002, ("k3-mam", "torch"): 0.005}

    def __init__(self, variant, batch, n_in, units, jit=False, env=None):
        self.variant, self.jit = variant, jit
        self.backend = (env or {}).get("KERAS_BACKEND")
        self.calls.append(("init", variant, jit, (batch, n_in, units), env))

    def run(self, steps):
        self.calls.append(("run", self.variant, self.jit, steps))
        if self.variant.startswith("k3-"):
            return [(self.keras3_seconds[self.variant, self.backend], 0.0)] * steps
        t = self.seconds[self.variant] / (2 if self.jit else 1)
        return [(t, 2 * t)] * steps

    def memory(self):
        return {"peak_rss_mib": 700.0, "step_rss_growth_mib": 10.0}

    def close(self):
        self.calls.append(("close", self.variant, self.jit))


@pytest.fixture
def fake(monkeypatch):
    FakeWorker.calls = []
    monkeypatch.setattr(steps, "Worker", FakeWorker)
    monkeypatch.setattr(train, "_load", lambda: (0.5, 0.4, 0.3))
    return FakeWorker


def _run(argv):
    """``mam-tf bench train ARGV -o rows.json`` through the real command line (the workers are
    the fake ones): the rows it wrote and what it printed."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.json"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            status = cli.main(["bench", "train", *argv, "-o", str(path)])
        assert status == 0, printed.getvalue()
        return json.loads(path.read_text()), printed.getvalue()


def test_rounds_interleave_the_variants_in_rotating_order(fake):
    rows, text = _run(["--shape", "4x8x2", "--steps", "3", "--rounds", "3", "--all"])
    runs = [(c[1], c[2]) for c in fake.calls if c[0] == "run" and c[3] == 3]
    order = [("dense", False), ("mam", False), ("mam-reference", False), ("mam-reference", True)]
    # Round k starts at variant k: no variant's steps run back to back over the rounds.
    assert runs == order + order[1:] + order[:1] + order[2:] + order[:2]
    assert [c for c in fake.calls if c[0] == "close"].__len__() == 4  # every process ended
    assert [r["label"] for r in rows] == ["dense", "mam-fused", "mam-reference",
                                          "mam-reference-xla"]
    assert [round(r["ratio"], 6) for r in rows] == [1.0, 2.0, 50.0, 25.0]
    assert rows[1]["round_ratio_min"] == rows[1]["round_ratio_max"] == pytest.approx(2.0)
    assert len(rows[1]["wall_s"]) == 9 and rows[1]["cpu_median_s"] == pytest.approx(0.040)
    assert "cores" in text and "intra-op threads" in text and "batch 4, 8 inputs -> 2" in text
    assert "load average before: 0.50 0.40 0.30" in text and "load average after:" in text
    assert "IQR ms" in text and " 2.00 " in text and " 50.00 " in text
    assert "WARNING" not in text


def test_default_is_dense_and_fused_and_a_busy_machine_is_flagged(fake, monkeypatch):
    monkeypatch.setattr(train, "_load", lambda: (9.0, 8.0, 7.0))
    monkeypatch.setattr(train.os, "cpu_count", lambda: 2)
    rows, text = _run(["--shape", "4x8x2", "--rounds", "2", "--threads", "1"])
    assert [r["label"] for r in rows] == ["dense", "mam-fused"]
    inits = [c for c in fake.calls if c[0] == "init"]
    assert all(c[4] == {"TF_NUM_INTRAOP_THREADS": "1"} for c in inits)
    assert "WARNING: the machine was busy (load average up to 9.00 on 2 cores)" in text


def test_model_block_compares_the_autoencoders(fake):
    rows, text = _run(["--shape", "4x8x2", "--rounds", "2", "--steps", "1", "--model", "ecg"])
    model_rows = [r for r in rows if r["label"].startswith("ecg")]
    assert [r["label"] for r in model_rows] == ["ecg-mac", "ecg-mam"]
    assert model_rows[0]["batch"] == 128 and model_rows[1]["ratio"] == pytest.approx(1.1)
    assert (model_rows[0]["inputs"], model_rows[0]["units"]) == (16384, 128)
    assert "the seed's ECG autoencoder" in text and "x ecg-mac" in text


def test_models_repeat_each_in_its_own_block_at_its_own_batch(fake):
    rows, text = _run(["--shape", "4x8x2", "--rounds", "2", "--model", "cs", "--model", "ecg"])
    assert [r["label"] for r in rows] == ["dense", "mam-fused", "cs-mac", "cs-mam", "ecg-mac",
                                          "ecg-mam"]
    cs = rows[2:4]
    assert [r["batch"] for r in cs] == [64, 64] and cs[1]["ratio"] == pytest.approx(1.5)
    assert cs[0]["steps_per_round"] == 40 and rows[4]["steps_per_round"] == 3
    inits = [c for c in fake.calls if c[0] == "init" and c[1].startswith("cs")]
    assert [c[3][0] for c in inits] == [64, 64]
    assert "compressed-sensing oracle" in text and "x cs-mac" in text


def test_ops_time_the_kernels_after_each_shape_and_another_kernel_dir_beside_them(fake,
                                                                                  tmp_path):
    rows, text = _run(["--shape", "4x8x2", "--shape", "3x5x7", "--rounds", "2", "--ops"])
    assert [r["label"] for r in rows] == ["dense", "mam-fused", "dense-gemms", "mam-forward",
                                          "mam-backward"] * 2
    assert [r["ratio"] for r in rows[2:5]] == pytest.approx([1.0, 1.5, 0.5])
    assert (rows[7]["batch"], rows[7]["inputs"], rows[7]["units"]) == (3, 5, 7)
    assert "kernels alone: batch 4, 8 inputs -> 2 units" in text and "x dense-gemms" in text
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    for name in ("mam_fused.h", "mam_fused_op.cc"):
        (kernels / name).write_text("// another version\n")
    FakeWorker.calls = []
    rows, text = _run(["--shape", "4x8x2", "--rounds", "2", "--ops", "--model", "cs",
                       "--kernel-dir", str(kernels)])
    # Every variant that runs the fused kernel again, built from the other sources; the
    # baselines (Dense, its GEMMs, the MAC model) once.
    assert [r["label"] for r in rows] == [
        "dense", "mam-fused", "mam-fused@dir", "dense-gemms", "mam-forward", "mam-backward",
        "mam-forward@dir", "mam-backward@dir", "cs-mac", "cs-mam", "cs-mam@dir"]
    envs = {}
    for c in FakeWorker.calls:
        if c[0] == "init":
            envs.setdefault(c[1], []).append(c[4])
    other = {"MAM_TF_KERNEL_DIR": str(kernels.resolve())}
    for variant in ("mam", "op-mam-forward", "op-mam-backward", "cs-mam"):
        assert envs[variant] == [{}, other], variant
    for variant in ("dense", "op-gemms", "cs-mac"):
        assert envs[variant] == [{}], variant
    # Interleaved in the same rounds as the rest of its block.
    runs = [c[1] for c in FakeWorker.calls if c[0] == "run" and c[3] != 2]
    assert runs[:6] == ["dense", "mam", "mam", "mam", "mam", "dense"]  # round 2 starts later
    assert text.count(f"@dir: built from {kernels.resolve()}") == 3


def test_a_kernel_dir_needs_both_sources(fake, tmp_path):
    (tmp_path / "mam_fused.h").write_text("")
    with pytest.raises(ValueError, match="lacks mam_fused_op.cc"):
        train.run_train_bench([(4, 8, 2)], kernel_dir=str(tmp_path),
                                    out=lambda line: None)
    assert fake.calls == []


@pytest.mark.slow
def test_op_steps_run_the_fused_ops_and_the_gemms():
    from mam_tf.train import fused

    if not fused.available():
        pytest.skip(f"fused kernel unavailable: {fused.unavailable_reason()}")
    for variant in steps.OP_VARIANTS:
        runner = steps.StepRunner(variant, 6, 40, 9)
        outputs = runner._step(runner._x)
        shapes = [tuple(t.shape) for t in outputs]
        assert shapes == {"op-mam-forward": [(6, 9)] * 3, "op-mam-backward": [(6, 40), (40, 9)],
                          "op-gemms": [(6, 9), (6, 40), (40, 9)]}[variant]
        assert all(t > 0 for t, _ in runner.run(3))


def test_an_unknown_model_is_refused_before_any_work(fake):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        train.run_train_bench([(4, 8, 2)], model=["nope"], out=lambda line: None)
    assert fake.calls == []


@pytest.mark.slow
def test_real_workers_time_each_variant_in_its_own_process(tmp_path):
    path = tmp_path / "rows.json"
    args = cli.build_parser().parse_args(
        ["bench", "train", "--shape", "8x40x6", "--rounds", "2", "--steps", "2", "-o",
         str(path)])
    assert args.func(args) == 0
    rows = json.loads(path.read_text())
    assert [r["label"] for r in rows] == ["dense", "mam-fused"]
    for r in rows:
        assert len(r["wall_s"]) == 4 and all(t > 0 for t in r["wall_s"])
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"] and r["peak_rss_mib"] > 100
        assert len(r["load_before"]) == 3


@pytest.mark.slow
def test_the_oracle_steps_really_train_both_kinds():
    for variant in ("cs-mac", "cs-mam"):
        runner = steps.StepRunner(variant, 8, 0, 0)
        model = runner._keep[0]
        before = [w.numpy().copy() for w in model.trainable_weights]
        times = runner.run(2)
        assert len(times) == 2 and all(t > 0 for t, _ in times)
        kinds = {type(layer).__name__ for layer in model.layers}
        assert ("MAMDense" in kinds) == (variant == "cs-mam")
        # Every layer's kernel moved: the loss reaches the whole model.
        assert all(not np.array_equal(a, w.numpy())
                   for a, w in zip(before, model.trainable_weights) if a.ndim == 2)


def test_a_failing_worker_names_its_variant():
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        steps.StepRunner("nope", 2, 3, 4)
    with pytest.raises(RuntimeError, match="worker for nope at \\(2, 3, 4\\) failed"):
        steps.Worker("nope", 2, 3, 4)


def test_keras3_block_times_each_backend_in_its_own_process_and_prints_the_targets(fake):
    rows, text = _run(["--shape", "128x16384x128", "--shape", "4x8x2", "--rounds", "2",
                       "--steps", "1", "--keras3"])
    k3 = [c for c in fake.calls if c[0] == "init" and c[1].startswith("k3-")]
    # each Keras 3 variant in a process of its own backend, without the tf_keras switch
    assert [(c[1], c[4]["KERAS_BACKEND"]) for c in k3[:6]] == [
        ("k3-dense", "tensorflow"), ("k3-mam", "tensorflow"), ("k3-dense", "jax"),
        ("k3-mam", "jax"), ("k3-dense", "torch"), ("k3-mam", "torch")]
    assert all("TF_USE_LEGACY_KERAS" in c[4] and c[4]["TF_USE_LEGACY_KERAS"] is None for c in k3)
    seed = {r["label"]: r for r in rows if r.get("comparison") and r["inputs"] == 16384}
    # the fake's seconds: 0.021 / 0.010, 0.021 / 0.020, 0.004 / 0.001, 0.005 / 0.002
    assert seed["k3-tensorflow-mam / k3-tensorflow-dense"]["ratio"] == pytest.approx(2.1)
    assert seed["k3-tensorflow-mam / mam-fused"]["ratio"] == pytest.approx(1.05)
    assert seed["k3-jax-mam / k3-jax-dense"]["ratio"] == pytest.approx(4.0)
    assert seed["k3-torch-mam / k3-torch-dense"]["ratio"] == pytest.approx(2.5)
    assert "k3-tensorflow-mam / k3-tensorflow-dense: 2.10x (rounds 2.10-2.10); target <= 1.0x: " \
           "MISSED" in text
    assert "k3-tensorflow-mam / mam-fused: 1.05x (rounds 1.05-1.05); target <= 1.1x: met" in text
    assert "k3-jax-mam / k3-jax-dense: 4.00x (rounds 4.00-4.00); target <= 3.0x: MISSED" in text
    assert "k3-torch-mam / k3-torch-dense: 2.50x (rounds 2.50-2.50); target <= 3.0x: met" in text
    # the TensorFlow targets are the seed layer's; at another shape the ratios print bare
    small = {r["label"]: r for r in rows if r.get("comparison") and r["inputs"] == 8}
    assert small["k3-tensorflow-mam / mam-fused"]["target"] is None
    assert small["k3-torch-mam / k3-torch-dense"]["target"] == 3.0
    assert "Keras 3: batch 4, 8 inputs -> 2 units" in text


def test_keras3_backends_choose_the_processes(fake):
    rows, text = _run(["--shape", "4x8x2", "--rounds", "1", "--steps", "1", "--keras3",
                       "--backends", "torch"])
    assert [r["label"] for r in rows if not r.get("comparison")][-4:] == [
        "dense", "mam-fused", "k3-torch-dense", "k3-torch-mam"]
