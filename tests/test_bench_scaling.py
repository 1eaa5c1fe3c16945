"""`mam-tf bench ray`: the ideal speedup from a run's stage graph, the figures from the runs'
folders, and (with Ray installed) the whole benchmark on the tiny reproduction."""
from __future__ import annotations

import importlib.util
import json

import pytest

from mam_tf.bench import scaling


def _stage(key, seconds, deps=(), name="train", finished="2026-12-04T10:00:00Z"):
    return {"name": name, "key": key, "label": f"{name} {key}", "seconds": seconds,
            "deps": list(deps), "finished": finished}


#: A diamond A -> (B, C) -> D and a stage E beside it: the chains A-B-D 35 s, A-C-D 45 s,
#: E 40 s; 105 s of stages in all.
DIAMOND = [_stage("a", 10), _stage("b", 20, ["a"]), _stage("c", 30, ["a"]),
           _stage("d", 5, ["b", "c"]), _stage("e", 40)]


@pytest.mark.parametrize("cpus, shortest, bound_by", [
    (1, 105.0, "the CPUs"),      # one CPU: the stages one after another
    (2, 52.5, "the CPUs"),       # half the sum is longer than the longest chain (45 s)
    (4, 45.0, "the longest chain"),  # a quarter of the sum (26.25 s) is shorter than A-C-D
])
def test_the_ideal_is_the_longest_chain_or_the_sum_over_the_cpus(cpus, shortest, bound_by):
    got = scaling.ideal(DIAMOND, cpus)
    assert got["stage_seconds"] == 105.0
    assert got["longest_chain_seconds"] == 45.0
    assert got["shortest_seconds"] == shortest
    assert got["bound_by"] == bound_by
    assert got["speedup"] == pytest.approx(105.0 / shortest)


def test_a_dependency_read_back_counts_as_done_at_the_start():
    got = scaling.ideal([_stage("b", 20, ["not-computed"]), _stage("c", 30, ["b"])], 2)
    assert got["longest_chain_seconds"] == 50.0


def test_the_ideal_refuses_no_cpus():
    with pytest.raises(ValueError, match="cpus must be at least 1, got 0"):
        scaling.ideal(DIAMOND, 0)


def _run_folder(path, stages, cached=()):
    """A finished run folder as the pipeline writes it: manifest records (the stages read
    back among them) and each computed stage's stage.json."""
    records = []
    for s in stages:
        records.append({"stage": s["name"], "label": s["label"], "key": s["key"],
                        "cached": False, "seconds": s["seconds"]})
        folder = path / "stages" / f"{s['name']}-{s['key']}"
        folder.mkdir(parents=True)
        (folder / "stage.json").write_text(json.dumps(
            {"name": s["name"], "key": s["key"], "seconds": s["seconds"], "deps": s["deps"],
             "finished": s["finished"]}))
    records += [{"stage": "data", "label": "data", "key": k, "cached": True, "seconds": 99.0}
                for k in cached]
    (path / "manifest.json").write_text(json.dumps({"stages": records}))
    return path


def test_stage_times_are_the_computed_stages_with_their_dependencies(tmp_path):
    run = _run_folder(tmp_path / "run", DIAMOND, cached=["old"])
    got = scaling.stage_times(run)
    assert [(s["key"], s["seconds"], s["deps"]) for s in got] == [
        ("a", 10, []), ("b", 20, ["a"]), ("c", 30, ["a"]), ("d", 5, ["b", "c"]), ("e", 40, [])]


def test_the_figures_and_the_report(tmp_path):
    """The 1-thread run took 120 s of wall time (105 s of stages); Ray 70 s for stages of
    15/25/35/5/45 s. Speedup 120/70; ideal on 2 CPUs 105/52.5 = 2; Ray busy 125/(2*70)."""
    base = _run_folder(tmp_path / "serial-1thread", DIAMOND)
    slower = [dict(s, seconds=s["seconds"] + 5 * (s["key"] != "d")) for s in DIAMOND]
    ray = _run_folder(tmp_path / "ray", slower)
    serial = _run_folder(tmp_path / "serial", DIAMOND)
    runs = {"serial-1thread": {"out": str(base), "wall_seconds": 120.0, "load_before": [1, 1, 1],
                               "load_after": [2, 2, 2]},
            "ray": {"out": str(ray), "wall_seconds": 70.0, "load_before": [2, 2, 2],
                    "load_after": [2, 2, 2]},
            "serial": {"out": str(serial), "wall_seconds": 84.0, "load_before": [2, 2, 2],
                       "load_after": [2, 2, 2]}}
    diffs = {str(ray): None, str(serial): "results.json.points[0].arsnr_mean: 1.0 != 1.5"}
    r = scaling.analyse(runs, 2, lambda a, b: diffs[b])
    assert r["speedup_over_serial_1thread"] == pytest.approx(120 / 70)
    assert r["ideal"]["speedup"] == pytest.approx(2.0)
    assert r["fraction_of_ideal"] == pytest.approx(120 / 70 / 2)
    assert r["speedup_over_serial"] == pytest.approx(84 / 70)
    assert r["ray_cpus_busy"] == pytest.approx(125 / 140)
    assert r["stage_kinds"] == {"train": {"stages": 5, "serial_1thread_median_seconds": 20,
                                          "ray_median_seconds": 25}}
    text = scaling.format_report(r)
    assert "0.86 of the ideal 2.00x (aim 0.7: met)" in text
    assert "results, ray against serial-1thread: equal" in text
    assert "serial against serial-1thread: differ (results.json.points[0]" in text
    assert "1.71x faster" in text.splitlines()[2] and "1.20x faster" in text.splitlines()[1]
    runs["ray"]["wall_seconds"] = 240.0  # twice as long as serial: 0.25 of the ideal
    text = scaling.format_report(scaling.analyse(runs, 2))
    assert "0.25 of the ideal 2.00x (aim 0.7: NOT met)" in text
    assert "2.00x slower" in text.splitlines()[2]


def test_the_time_line_puts_stages_running_at_once_on_separate_rows():
    """Ends (whole seconds) and durations give the starts: a at 0-10, b at 10-30 beside c at
    10-40, e at 0-40; d after b and c at 40-45; a 0.1 s stage ending at 10 s is left out."""
    at = "2026-12-04T10:00:{:02d}Z".format
    stages = [_stage("a", 10, finished=at(10)), _stage("e", 40, finished=at(40)),
              _stage("b", 20, finished=at(30)), _stage("c", 30, finished=at(40)),
              _stage("d", 5, finished=at(45)), _stage("data", 0.1, finished=at(10))]
    rows = sorted(scaling._timeline(stages), key=lambda r: (r[1], r[0]))
    assert [(start, seconds) for _, start, seconds, _ in rows] == [
        (0, 10), (0, 40), (10, 20), (10, 30), (40, 5)]
    lanes = [lane for lane, *_ in rows]
    assert lanes[0] != lanes[1] and lanes[2] != lanes[3] and lanes[2] != lanes[1]
    assert max(lanes) == 2  # never more rows than stages at once (three, from 10 s to 30 s)
    assert len(rows) == 5  # the 0.1 s stage is too short to see or to place: left out


def test_the_command_refuses_a_folder_with_runs(tmp_path, capsys):
    from mam_tf.cli import main

    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is the [cluster] extra: the command refuses before the folder")
    (tmp_path / "ray").mkdir()
    assert main(["bench", "ray", "--scale", "tiny", "-o", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert f"'{tmp_path / 'ray'}' exists" in err


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is the [cluster] extra")
def test_the_benchmark_on_the_tiny_reproduction(tmp_path, capsys):
    """The whole command at --scale tiny (two runs): the Ray run computed every stage in other
    processes and gives the 1-thread serial run's results; the figures are the runs' own."""
    from mam_tf.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "ray", "--scale", "tiny", "--no-default-threads", "-o",
                 str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "scaling.json").read_text())
    assert report["ray_vs_serial_1thread"] is None
    assert "results, ray against serial-1thread: equal" in text
    assert set(report["runs"]) == {"serial-1thread", "ray"}
    serial = json.loads((out / "serial-1thread" / "manifest.json").read_text())
    on_ray = json.loads((out / "ray" / "manifest.json").read_text())
    assert serial["stages_read_back"] == on_ray["stages_read_back"] == 0
    assert {r["ran_on"]["pid"] for r in serial["stages"]} != \
        {r["ran_on"]["pid"] for r in on_ray["stages"]}
    assert len({r["ran_on"]["pid"] for r in on_ray["stages"]}) > 1  # tasks in fresh workers
    assert report["ideal"]["stage_seconds"] == pytest.approx(
        sum(r["seconds"] for r in serial["stages"]), abs=0.01)
    assert report["ideal"]["longest_chain_seconds"] <= report["ideal"]["stage_seconds"]
    assert all(report["runs"][n]["wall_seconds"] >= m["wall_seconds"]
               for n, m in (("serial-1thread", serial), ("ray", on_ray)))
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--ray local against serial-1thread:" in text
