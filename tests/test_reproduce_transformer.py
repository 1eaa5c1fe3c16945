"""`mam-tf reproduce transformer` at tiny scale, end to end: the outputs, the deployed int8
models measured again here on data made independently, the MLP's sparse ops on the emulated
Cortex-M7 bit for bit against the host runtime, resuming."""
import json
import os

import numpy as np
import pytest

from mam_tf.cli import main as cli_main
from mam_tf.deploy import flatbuffer as fb
from mam_tf.deploy.runtime import Interpreter
from mam_tf.device import mcu
from mam_tf.experiments import transformer
from mam_tf.experiments.transformer.task import repeat_count_task

pytestmark = pytest.mark.slow

#: 4 balanced classes: chance is 0.25; on the tiny scale's 200 deployed test samples one
#: binomial standard deviation at chance is 0.031, so 0.40 is chance plus about 5 of them.
ABOVE_CHANCE = 0.40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("transformer")
    assert cli_main(["reproduce", "transformer", "--scale", "tiny", "-o", str(out),
                     "--no-progress"]) == 0
    return out, json.loads((out / "results.json").read_text())


def _task(cfg):
    """The test sequences and labels, made here with the run's settings (the task's rule
    restated, not the experiment's generator): token 0's symbol, repeats counted by hand."""
    x, labels = repeat_count_task(cfg["test"], cfg["tokens"], cfg["symbols"],
                                                   cfg["noise"], seed=cfg["data_seed"] + 1_000_003)
    symbols = x[..., :cfg["symbols"]].argmax(-1)  # noise 0.1: a 7-sigma flip, never here
    counted = (symbols[:, 1:] == symbols[:, :1]).sum(1)
    assert np.array_equal(counted, labels)
    assert np.array_equal(x[0, :, cfg["symbols"]:], np.eye(cfg["tokens"]))  # positions
    return x[:cfg["deploy_test"]], labels[:cfg["deploy_test"]]


def test_outputs_are_all_there(run):
    out, res = run
    for name in ("results.json", "report.md", "manifest.json"):
        assert (out / name).is_file(), name
    assert [(r["kind"], r["seed"]) for r in res["runs"]] == [("mac", 0), ("mam", 0)]
    report = (out / "report.md").read_text()
    assert "mam-tf reproduce transformer --scale tiny" in report and "MAM_SPARSE" in report


def test_the_mlp_keeps_a_tenth_of_its_weights_in_sparse_ops(run):
    out, res = run
    for r in res["runs"]:
        assert r["nonzero"] == round(0.1 * r["total"]) and r["total"] == 2 * 16 * 32
        tfl = fb.load((out / "models" / f"{r['kind']}_seed0_int8.tflite").read_bytes())
        sg = tfl.subgraphs[0]
        names = [fb.op_name(tfl, op) for op in sg.operators]
        op = "MAM_SPARSE" if r["kind"] == "mam" else "MAC_SPARSE"
        assert names.count(op) == 2 and "BATCH_MATMUL" in names and "SOFTMAX" in names
        for k in (i for i, n in enumerate(names) if n == op):
            rows = [int(d) for d in sg.tensors[sg.operators[k].inputs[0]].shape][0]
            assert rows == res["config"]["tokens"]  # one row per token
        assert sum(layer["nonzeros"] for layer in r["layers"]) <= r["nonzero"]


def test_deployed_int8_accuracy_is_measured_again_and_above_chance(run):
    out, res = run
    x, labels = _task(res["config"])
    for r in res["runs"]:
        # (the run probed TFLite-Micro's kernels on it already: not again, it takes seconds)
        interp = Interpreter(out / "models" / f"{r['kind']}_seed0_int8.tflite", probe=False)
        acc = float((interp.run(x).argmax(-1) == labels).mean())
        assert acc == pytest.approx(r["int8"], abs=1e-12), r["kind"]
    mam = next(r for r in res["runs"] if r["kind"] == "mam")
    assert mam["int8"] > ABOVE_CHANCE, mam
    assert mam["trained"] > ABOVE_CHANCE, mam


def test_the_mlp_runs_on_the_cortex_m7_as_on_the_host(run):
    ok, why = mcu.toolchain_available()
    if not ok:
        if os.environ.get("MAM_TF_REQUIRE_MCU") == "1":
            pytest.fail(f"MAM_TF_REQUIRE_MCU=1 but the Cortex-M7 toolchain is unusable: {why}")
        pytest.skip(f"no Cortex-M7 toolchain: {why}")
    _, res = run
    for r in res["runs"]:
        dev = r["device"]
        assert dev["ran"] and dev["equal"], r["kind"]
        kernel = f"{r['kind']}_sparse"
        ops = {(o["op_index"], o["variant"]) for o in dev["ops"] if o["kernel"] == kernel}
        assert len({i for i, _ in ops}) == 2 and {v for _, v in ops} >= {"portable"}
        assert all(o["rows"] == res["config"]["tokens"] and o["instructions"] > 0
                   for o in dev["ops"])
        whole = dev["whole_model"]
        if whole is not None and whole["ran"]:  # a build with TFLite-Micro ran the whole block
            assert whole["equal"], r["kind"]


def test_a_rerun_reads_every_stage_back(run, capsys):
    out, _ = run
    assert cli_main(["reproduce", "transformer", "--scale", "tiny", "-o", str(out),
                     "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages_computed"] == 0 and manifest["stages_read_back"] == 7
    assert "int8 deployed" in capsys.readouterr().out


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="remaining is the kept fraction"):
        transformer.config_for("tiny", remaining=0.0)
    with pytest.raises(ValueError, match="scale is 'huge'"):
        transformer.config_for("huge")
