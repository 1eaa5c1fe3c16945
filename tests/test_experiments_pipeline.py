"""The experiment machinery: cached, resumable stages; merging runs; figures and tables."""
import json
import os

import pytest

from mam_tf.experiments import parse_seeds
from mam_tf.experiments.pipeline import Pipeline, stage_key
from mam_tf.experiments.report import Curve, markdown_table, plot_curves, summarize


class Counter:
    """A stage function that counts its calls and writes a file holding its input."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self, workdir):
        self.calls += 1
        (workdir / "out.txt").write_text(str(self.value))
        return {"v": self.value}


def _run(tmp_path, n=3, seed=0, fns=None):
    run = Pipeline(tmp_path, "t", progress=False)
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


def test_key_depends_on_params_and_deps_only():
    assert stage_key("a", {"x": (1, 2)}) == stage_key("a", {"x": [1, 2]})
    assert stage_key("a", {"x": 1, "y": 2}) == stage_key("a", {"y": 2, "x": 1})
    assert stage_key("a", {"x": 1}) != stage_key("b", {"x": 1})
    assert stage_key("a", {"x": 1}) != stage_key("a", {"x": 1.5})


def test_manifest_records_what_was_computed(tmp_path):
    run, _, _ = _run(tmp_path)
    manifest = json.loads(run.write_manifest({"note": 1}).read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["data", "train", "other"]
    assert [s["cached"] for s in manifest["stages"]] == [False] * 3
    assert manifest["note"] == 1 and manifest["machine"]["cpus"] >= 1
    run2, _, _ = _run(tmp_path)
    manifest = json.loads(run2.write_manifest().read_text())
    assert manifest["stages_computed"] == 0 and manifest["stages_read_back"] == 3


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
