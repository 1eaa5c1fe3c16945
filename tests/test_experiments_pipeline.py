"""The experiment machinery: cached, resumable stages keyed by their code; merging runs; the
experiment base; figures and tables."""
import dataclasses
import json
import os
from typing import ClassVar

import pytest

from mam_tf.experiments import base, parse_seeds
from mam_tf.experiments.pipeline import Pipeline, code_fingerprint, stage_key
from mam_tf.experiments.report import Curve, markdown_table, plot_curves, summarize


class Counter:
    """A stage function that counts its calls and writes a file holding its input."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self, workdir):
        self.calls += 1
        (workdir / "out.txt").write_text(str(self.value))
        return {"v": self.value}


def _run(tmp_path, n=3, seed=0, fns=None, code="", recompute=()):
    run = Pipeline(tmp_path, "t", progress=False, code=code, recompute=recompute)
    fns = fns or {"data": Counter(n), "train": Counter(10 * n + seed), "other": Counter(-1)}
    data = run.stage("data", {"n": n}, fns["data"])
    train = run.stage("train", {"seed": seed}, fns["train"], deps=[data])
    other = run.stage("other", {"x": 1}, fns["other"])
    return run, fns, (data, train, other)


def test_a_finished_stage_is_read_back_not_recomputed(tmp_path):
    run1, fns, (data1, train1, _) = _run(tmp_path)
    assert [f.calls for f in fns.values()] == [1, 1, 1]
    assert not data1.cached and data1.value == {"v": 3}
    assert data1.file("out.txt").read_text() == "3"
    mtime = os.stat(train1.file("out.txt")).st_mtime_ns
    run2, fns2, (data2, train2, _) = _run(tmp_path)
    assert [f.calls for f in fns2.values()] == [0, 0, 0]  # nothing ran again
    assert data2.cached and train2.cached and run2.computed == []
    assert train2.value == {"v": 30} and train2.path == train1.path
    assert os.stat(train2.file("out.txt")).st_mtime_ns == mtime


def test_a_changed_parameter_reruns_that_stage_and_what_depends_on_it(tmp_path):
    _run(tmp_path)
    _, fns, (data, train, _) = _run(tmp_path, n=4)
    assert [f.calls for f in fns.values()] == [1, 1, 0]  # "other" does not depend on data
    assert train.value == {"v": 40}
    _, fns, _ = _run(tmp_path, n=4, seed=1)
    assert [f.calls for f in fns.values()] == [0, 1, 0]
    # Both versions stay on disk: going back to n=3 recomputes nothing.
    _, fns, _ = _run(tmp_path, n=3)
    assert [f.calls for f in fns.values()] == [0, 0, 0]


def test_an_interrupted_stage_leaves_nothing_and_the_rerun_resumes(tmp_path):
    def boom(workdir):
        (workdir / "partial.bin").write_bytes(b"x" * 100)
        raise KeyboardInterrupt

    run = Pipeline(tmp_path, "t", progress=False)
    data = run.stage("data", {"n": 3}, Counter(3))
    with pytest.raises(KeyboardInterrupt):
        run.stage("train", {"seed": 0}, boom, deps=[data])
    leftovers = [p.name for p in (tmp_path / "stages").iterdir()]
    assert leftovers == [data.path.name]  # no half-written stage, no temporary folder
    _, fns, (_, train, _) = _run(tmp_path)
    assert [f.calls for f in fns.values()] == [0, 1, 1] and train.value == {"v": 30}


def test_key_depends_on_params_deps_and_code_only():
    assert stage_key("a", {"x": (1, 2)}) == stage_key("a", {"x": [1, 2]})
    assert stage_key("a", {"x": 1, "y": 2}) == stage_key("a", {"y": 2, "x": 1})
    assert stage_key("a", {"x": 1}) != stage_key("b", {"x": 1})
    assert stage_key("a", {"x": 1}) != stage_key("a", {"x": 1.5})
    assert stage_key("a", {"x": 1}, code="0.1.0+aa") == stage_key("a", {"x": 1}, code="0.1.0+aa")
    assert stage_key("a", {"x": 1}, code="0.1.0+aa") != stage_key("a", {"x": 1}, code="0.1.0+ab")


def test_other_code_recomputes_every_stage_and_never_reads_the_old_ones(tmp_path):
    _run(tmp_path, code="1.0+old")
    _, fns, (data, train, _) = _run(tmp_path, code="1.0+new")
    assert [f.calls for f in fns.values()] == [1, 1, 1]
    assert json.loads((data.path / "stage.json").read_text())["code"] == "1.0+new"
    _, fns, _ = _run(tmp_path, code="1.0+old")  # both stay on disk, each for its own code
    assert [f.calls for f in fns.values()] == [0, 0, 0]
    # A stage folder of the old code renamed to the new key is still refused: stage.json
    # names the code that computed it.
    _, _, (data_new, _, _) = _run(tmp_path, code="1.0+new")
    meta = json.loads((data_new.path / "stage.json").read_text())
    meta["code"] = "1.0+old"
    (data_new.path / "stage.json").write_text(json.dumps(meta))
    _, fns, _ = _run(tmp_path, code="1.0+new")
    assert [f.calls for f in fns.values()] == [1, 0, 0]


def test_recompute_forces_the_named_stages(tmp_path):
    _run(tmp_path)
    _, fns, (data, _, _) = _run(tmp_path, recompute={"data"})
    assert [f.calls for f in fns.values()] == [1, 0, 0] and not data.cached
    _, fns, _ = _run(tmp_path)
    assert [f.calls for f in fns.values()] == [0, 0, 0]


def test_code_fingerprint_follows_the_sources_and_the_version(tmp_path, monkeypatch):
    pkg = tmp_path / "fp_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("X = 1\n")
    (pkg / "sub" / "k.c").write_text("int k(void) { return 1; }\n")
    (tmp_path / "fp_mod.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_fingerprint(["fp_pkg", "fp_mod"], version="1.0")
    assert first.startswith("1.0+") and first == code_fingerprint(["fp_mod", "fp_pkg"], "1.0")
    assert code_fingerprint(["fp_pkg", "fp_mod"], version="1.1") != first
    seen = {first}
    for path, text in ((pkg / "a.py", "X = 2\n"), (pkg / "sub" / "k.c", "int k(void);\n"),
                       (tmp_path / "fp_mod.py", "Y = 2\n"), (pkg / "new.py", "")):
        path.write_text(text)
        now = code_fingerprint(["fp_pkg", "fp_mod"], version="1.0")
        assert now not in seen, f"editing {path.name} left the fingerprint as it was"
        seen.add(now)
    (pkg / "notes.txt").write_text("not code")
    assert code_fingerprint(["fp_pkg", "fp_mod"], version="1.0") == now
    with pytest.raises(ModuleNotFoundError, match="'fp_nothing'"):
        code_fingerprint(["fp_nothing"])


def test_manifest_records_what_was_computed(tmp_path):
    run, _, _ = _run(tmp_path)
    manifest = json.loads(run.write_manifest({"note": 1}).read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["data", "train", "other"]
    assert [s["cached"] for s in manifest["stages"]] == [False] * 3
    assert manifest["note"] == 1 and manifest["machine"]["cpus"] >= 1
    run2, _, _ = _run(tmp_path)
    manifest = json.loads(run2.write_manifest().read_text())
    assert manifest["stages_computed"] == 0 and manifest["stages_read_back"] == 3


_EVENTS: list = []


def _fresh():
    _EVENTS.append("fresh")


class _Noted(Counter):
    def __call__(self, workdir):
        _EVENTS.append(f"compute {self.value}")
        return super().__call__(workdir)


def test_before_stage_runs_before_every_stage_computed_also_in_a_pickled_copy(tmp_path):
    """``before_stage`` runs just before each stage function this process calls, not for a
    stage read back; a pickled Pipeline (what a Ray task gets) keeps it."""
    import pickle

    _EVENTS.clear()
    with Pipeline(tmp_path, "t", progress=False, before_stage=_fresh) as run:
        run.stage("a", {}, _Noted(1))
        run.stage("b", {}, _Noted(2))
        assert _EVENTS == ["fresh", "compute 1", "fresh", "compute 2"]
        _EVENTS.clear()
        task_copy = pickle.loads(pickle.dumps(run))
        task_copy.stage("c", {}, _Noted(3))
        assert _EVENTS == ["fresh", "compute 3"]
    _EVENTS.clear()
    with Pipeline(tmp_path, "t", progress=False, before_stage=_fresh) as again:
        assert again.stage("a", {}, _Noted(1)).cached
        again.stage("d", {}, _Noted(4))
    assert _EVENTS == ["fresh", "compute 4"]


def test_fresh_keras_numbers_layers_as_a_new_process_does():
    """After :func:`base.fresh_keras` Keras names layers from zero again, as in a process
    that built none (a Ray task's fresh worker): ``dense``, then ``dense_1``."""
    keras = pytest.importorskip("tf_keras")
    keras.layers.Dense(1)  # whatever this process built before
    base.fresh_keras()
    assert [keras.layers.Dense(1).name for _ in range(2)] == ["dense", "dense_1"]
    base.fresh_keras()
    assert keras.layers.Dense(1).name == "dense"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS: Linux only")
def test_a_stage_records_its_peak_memory_not_its_memory_at_the_end(tmp_path):
    """A stage that holds 256 MiB for a moment and frees it: the manifest and stage.json
    record a peak about 256 MiB above the start (at least 90% of it: the process may free a
    little else meanwhile), though the end is back near the start."""
    import numpy as np

    size = 256 * 2**20

    def compute(work):
        block = np.ones(size // 8)  # written: every page resident
        del block
        return {"ok": 1}

    with Pipeline(tmp_path, "t", progress=False) as run:
        st = run.stage("big", {}, compute)
        run.stage("small", {}, lambda work: {"ok": 2})
        manifest = json.loads(run.write_manifest().read_text())
    big, small = (r["memory"] for r in manifest["stages"])
    assert big["peak_rss_bytes"] - big["rss_start_bytes"] >= 0.9 * size
    assert small["peak_rss_bytes"] - small["rss_start_bytes"] < size // 4  # a fresh peak
    assert st.memory == big == json.loads(st.file("stage.json").read_text())["memory"]
    with Pipeline(tmp_path, "t", progress=False) as again:  # read back: the measured one
        assert again.stage("big", {}, compute).memory == big


def test_merge_imports_other_runs_stages(tmp_path):
    _run(tmp_path / "a", seed=0)
    _run(tmp_path / "b", seed=1)
    merged = Pipeline(tmp_path / "m", "t", progress=False)
    assert merged.import_stages([tmp_path / "a", tmp_path / "b"]) == 4  # data, other shared
    for seed in (0, 1):
        _, fns, (_, train, _) = _run(tmp_path / "m", seed=seed)
        assert [f.calls for f in fns.values()] == [0, 0, 0] and train.value == {"v": 30 + seed}
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        merged.import_stages([tmp_path / "nothing"])


def test_parse_seeds():
    assert parse_seeds("3-5") == [3, 4, 5]
    assert parse_seeds("0,2,7") == [0, 2, 7]
    assert parse_seeds("1-2,5") == [1, 2, 5]
    assert parse_seeds(None) is None
    for bad in ("5-3", "a", "-1"):
        with pytest.raises(Exception, match="--seeds"):
            parse_seeds(bad)


def test_summary_table_and_plot(tmp_path):
    assert summarize([1.0, 3.0, None, float("nan"), 2.0]) == {"mean": 2.0, "min": 1.0,
                                                               "max": 3.0, "n": 3}
    assert summarize([])["mean"] is None
    table = markdown_table(["a", "b"], [["x", 1.234], ["y", None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x | 1.23 |", "| y | - |"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b", "c"], [[1, 2]])
    path = plot_curves(tmp_path / "f.png", [Curve("c", [1, 2], [3.0, 4.0], [2.5, 3.5],
                                                  [3.5, 4.5])],
                       xlabel="x", ylabel="y", xscale="log", hlines=[(3.2, "budget")])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_panels_and_signals_share_the_curves_style(tmp_path):
    import matplotlib.image

    from mam_tf.experiments.report import Panel, plot_panels, plot_signals

    c = Curve("c", [1, 2], [3.0, 4.0], [2.5, 3.5], [3.5, 4.5])
    one = plot_curves(tmp_path / "one.png", [c], xlabel="x", ylabel="y", figsize=(4, 3))
    same = plot_panels(tmp_path / "same.png", [Panel([c], xlabel="x", ylabel="y")],
                       figsize=(4, 3))
    # plot_curves is plot_panels with one panel: the same pixels.
    assert (matplotlib.image.imread(one) == matplotlib.image.imread(same)).all()
    two = plot_panels(tmp_path / "two.png", [Panel([c], ylabel="a"),
                                             Panel([c], ylabel="b", yscale="log",
                                                   hlines=[(3.0, "flat")])])
    assert matplotlib.image.imread(two).shape[0] > matplotlib.image.imread(one).shape[0]
    sig = plot_signals(tmp_path / "s.png", [("p", [("x", [0, 1, 0], {}), ("y", [0, 2, 0], {})])],
                       xlabel="sample")
    assert sig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the experiment base: a third experiment is a config and its stages --------------------
@dataclasses.dataclass
class _ToyConfig(base.ExperimentConfig):
    EXPERIMENT: ClassVar[str] = "toy"
    SCALES: ClassVar[dict] = {"tiny": {"n": 2}, "demo": {"n": 3, "seeds": (0, 1)}}
    n: int = 3


def _toy_stages(cfg, pipe):
    values = {s: pipe.stage("square", {"n": cfg.n, "seed": s},
                            lambda work, s=s: (cfg.n + s) ** 2).value for s in cfg.seeds}
    return {"points": [{"kind": "mam", "method": "none", "remaining": 1.0, "seed": s,
                        "value": v} for s, v in values.items()]}, values


def _toy_outputs(cfg, out, results, values):
    (out / "report.md").write_text(f"{sorted(values.items())}\n")


TOY = base.Experiment("toy", _ToyConfig, _toy_stages, _toy_outputs,
                      lambda cfg, results: "toy done", code=("mam_tf.experiments.base",))


def test_a_toy_experiment_runs_merges_and_lays_out_its_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = []
    res = base.run(TOY, _ToyConfig.for_scale("tiny"), progress=False, print_fn=printed.append)
    out = tmp_path / "runs" / "toy-tiny"  # the default layout: runs/<experiment>-<scale>
    assert json.loads((out / "results.json").read_text()) == res
    assert res["experiment"] == "toy" and res["scale"] == "tiny" and res["seeds"] == [0]
    assert res["config"] == {"scale": "tiny", "seeds": [0], "n": 2}
    assert res["code"] == TOY.code_fingerprint() and res["code"].startswith("0.")
    assert [p["value"] for p in res["points"]] == [4]
    assert (out / "report.md").read_text() == "[(0, 4)]\n" and printed[0] == "toy done"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["code"] == res["code"] and "results.json" in manifest["outputs"]
    # Seed 1 elsewhere, then merged: the seeds come from the other run's results.json and
    # every stage is read back.
    base.run(TOY, _ToyConfig.for_scale("tiny", seeds=(1,)), tmp_path / "s1", progress=False,
             print_fn=None)
    merged = base.run(TOY, _ToyConfig.for_scale("tiny", seeds=()), tmp_path / "m",
                      merge=[out, tmp_path / "s1"], progress=False, print_fn=None)
    assert merged["seeds"] == [0, 1] and [p["value"] for p in merged["points"]] == [4, 9]
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["stages_computed"] == 0
    with pytest.raises(ValueError, match="'toy' run at scale 'tiny', this one 'toy' at 'demo'"):
        base.run(TOY, _ToyConfig.for_scale("demo"), tmp_path / "d", merge=[out],
                 progress=False, print_fn=None)
    with pytest.raises(ValueError, match="toy: no seeds to run"):
        base.run(TOY, _ToyConfig.for_scale("tiny", seeds=()), tmp_path / "e", progress=False)


def test_config_for_names_a_wrong_scale_or_setting():
    assert _ToyConfig.for_scale("demo", n=None).n == 3  # None leaves the scale's value
    with pytest.raises(ValueError, match=r"toy: scale is 'huge'; must be one of \('tiny', 'demo'\)"):
        _ToyConfig.for_scale("huge")
    with pytest.raises(ValueError, match=r"toy: unknown setting 'm'; settings are \['n', 'seeds'\]"):
        _ToyConfig.for_scale("tiny", m=1)
    with pytest.raises(TypeError, match="toy: run needs a _ToyConfig"):
        base.run(TOY, {"scale": "tiny"}, "x")


def test_fractions_option_reads_fractions_and_the_old_percent(capsys):
    import argparse

    parse = base.parse_fractions("--fine-tune")
    assert parse("0.05,0.02") == (0.05, 0.02) and parse("none") == ()
    assert capsys.readouterr().err == ""
    assert parse("5,2") == (0.05, 0.02)
    assert "--fine-tune 5,2 reads as percent; percent is deprecated" in capsys.readouterr().err
    for bad in ("", "x", "0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--fine-tune is"):
            parse(bad)


def test_a_byte_of_the_c_sources_changes_the_experiments_stage_keys(tmp_path, monkeypatch):
    """The deployment stages run the C core of tflm_ops/: its sources are in the code key."""
    import shutil

    from mam_tf._native import tflm_ops_dir

    ops = tmp_path / "tflm_ops"
    shutil.copytree(tflm_ops_dir(), ops, ignore=shutil.ignore_patterns("build*", "__pycache__"))
    monkeypatch.setattr(base.pl, "tflm_ops_dir", lambda: ops)
    first = TOY.code_fingerprint()
    key = stage_key("deploy", {"mode": "int8"}, code=first)
    assert TOY.code_fingerprint() == first
    for rel in ("src/validate.c", "tflm/mam_sparse_op.cc", "include/mam_sparse/core.h",
                "sources.cmake"):
        f = ops / rel
        original = f.read_bytes()
        f.write_bytes(original[:-2] + bytes([original[-2] ^ 1]) + original[-1:])
        now = TOY.code_fingerprint()
        assert now != first, f"a byte of {rel} left the code fingerprint as it was"
        assert stage_key("deploy", {"mode": "int8"}, code=now) != key
        f.write_bytes(original)
        assert TOY.code_fingerprint() == first
    (ops / "README.md").write_text("docs are not code")
    assert TOY.code_fingerprint() == first
