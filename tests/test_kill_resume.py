"""Kill anywhere, resume exactly: the pipeline's kill hook, the harness's comparison, the
reproductions SIGKILLed at 10+ moments each and resumed to results identical to an
uninterrupted run, and training's determinism across processes.

Cost: the two kill tests run each tiny reproduction twice (the reference, then the killed run,
whose restarts read finished stages back) plus a process start per kill; the determinism test
trains the tiny MAM autoencoder three times in fresh processes. See docs/benchmarks.md.
"""
import io
import json
import random
import re
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mam_tf.bench import kill

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# The hook, on a toy pipeline in a child process
# ------------------------------------------------------------------------------------------
TOY = textwrap.dedent("""
    import sys
    from mam_tf.experiments.pipeline import Pipeline, write_json
    run = Pipeline(sys.argv[1], "toy", progress=False)
    for name in ("a", "b", "c"):
        run.stage(name, {"n": name}, lambda w, name=name: (w / "f.txt").write_text(name) and name)
    write_json(run.out / "results.json", {"done": True})
""")


def _toy(out, kill_at=None):
    env = {k: v for k, v in __import__("os").environ.items() if k != kill.KILL_AT}
    if kill_at:
        env[kill.KILL_AT] = kill_at
    return subprocess.run([sys.executable, "-c", TOY, str(out)], env=env,
                          capture_output=True, text=True, timeout=60)


def _finished(out):
    return sorted(p.name.split("-")[0] for p in (out / "stages").iterdir()
                  if not p.name.startswith(".") and (p / "stage.json").is_file())


def _temporary(out):
    return sorted(p.name for p in (out / "stages").iterdir() if p.name.startswith(".tmp-"))


@pytest.mark.parametrize("kill_at, finished, half_done", [
    ("compute/b:1", ["a"], True),            # b's function started: its folder is temporary
    ("stage-written/c:1", ["a", "b"], True),  # c complete in its temporary folder, not moved
    ("json-write/stage.json:2", ["a"], True),  # b's stage.json at its temporary name
    ("json-write/results.json:1", ["a", "b", "c"], False),
    ("compute:3", ["a", "b"], True),         # any stage: the third to start
])
def test_the_hook_kills_at_its_point_and_a_rerun_finishes(tmp_path, kill_at, finished,
                                                          half_done):
    proc = _toy(tmp_path, kill_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _finished(tmp_path) == finished
    assert bool(_temporary(tmp_path)) == half_done  # what the kill left behind
    assert not (tmp_path / "results.json").exists()
    assert _toy(tmp_path).returncode == 0
    assert _finished(tmp_path) == ["a", "b", "c"]
    assert json.loads((tmp_path / "results.json").read_text()) == {"done": True}


@pytest.mark.parametrize("kill_at", [None, "", "compute/z:1", "compute/a:2", "outputs:1"])
def test_the_hook_does_nothing_unless_its_point_is_reached(tmp_path, kill_at):
    proc = _toy(tmp_path, kill_at)
    assert proc.returncode == 0, proc.stderr
    assert _finished(tmp_path) == ["a", "b", "c"] and not _temporary(tmp_path)


def test_the_hook_kills_after_a_delay(tmp_path):
    # b writes its file at once, then works for 0.3 s: killed 0.15 s in, its file is there
    slow = TOY.replace("(w / \"f.txt\").write_text(name) and name",
                       "(w / \"f.txt\").write_text(name) and "
                       "__import__('time').sleep(0.3 if name == 'b' else 0) or name")
    env = {**__import__("os").environ, kill.KILL_AT: "compute/b:1+0.15"}
    proc = subprocess.run([sys.executable, "-c", slow, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _finished(tmp_path) == ["a"]
    (left,) = _temporary(tmp_path)
    assert (tmp_path / "stages" / left / "f.txt").read_text() == "b"


# ------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------
def _keras(path, weights, config=None):
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        for key, value in weights.items():
            h5[key] = value
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config or {"class_name": "Model"}))
        z.writestr("metadata.json", json.dumps({"date_saved": str(path)}))
        z.writestr("model.weights.h5", buf.getvalue())


def _folder(root, results, tflite=b"TFL3abc", kernel=np.arange(6.0).reshape(2, 3)):
    root.mkdir()
    (root / "results.json").write_text(json.dumps(results))
    (root / "tflite").mkdir()
    (root / "tflite" / "m.tflite").write_bytes(tflite)
    (root / "models").mkdir()
    _keras(root / "models" / "m.keras", {"layers/fc1/vars/0": kernel})
    return root


RESULTS = {"points": [{"arsnr": 30.1, "seconds": 2.0}, {"arsnr": 10.0}],
           "training": {"seconds_per_epoch": 1.5, "params": 7}}


def test_runs_that_agree_but_for_timings_are_identical(tmp_path):
    other = json.loads(json.dumps(RESULTS))
    other["points"][0]["seconds"] = 99.0
    other["training"]["seconds_per_epoch"] = 0.1
    a = _folder(tmp_path / "a", RESULTS)
    b = _folder(tmp_path / "b", other)  # metadata.json (the date saved) differs too
    assert kill.first_difference(a, b) is None


@pytest.mark.parametrize("change, named", [
    (lambda r: r["points"][1].update(arsnr=10.000001), "results.json.points[1].arsnr: 10.0 != 10.000001"),
    (lambda r: r["points"].pop(), "results.json.points: 2 items != 1 items"),
    (lambda r: r["training"].pop("params"), "results.json.training.params: 7 != 'missing'"),
    (lambda r: r["training"].update(params=7.0), "results.json.training.params: 7 != 7.0"),
])
def test_a_results_difference_is_named(tmp_path, change, named):
    other = json.loads(json.dumps(RESULTS))
    change(other)
    a, b = _folder(tmp_path / "a", RESULTS), _folder(tmp_path / "b", other)
    assert kill.first_difference(a, b) == named


def test_a_model_difference_is_named(tmp_path):
    a = _folder(tmp_path / "a", RESULTS)
    b = _folder(tmp_path / "b", RESULTS, tflite=b"TFL3abd")
    assert kill.first_difference(a, b) == "tflite/m.tflite: bytes differ"
    kernel = np.arange(6.0).reshape(2, 3)
    kernel[1, 2] = np.nextafter(kernel[1, 2], 9)
    c = _folder(tmp_path / "c", RESULTS, kernel=kernel)
    assert kill.first_difference(a, c) == "models/m.keras: weight layers/fc1/vars/0 differs"
    data = (a / "models" / "m.keras").read_bytes()
    (c / "models" / "m.keras").write_bytes(data[: len(data) // 2])  # half written
    assert kill.first_difference(a, c).startswith("models/m.keras: unreadable (BadZipFile")
    (c / "models" / "m.keras").unlink()
    assert kill.first_difference(a, c) == "models/m.keras: in the reference only"
    (a / "results.json").unlink()
    assert "has no results.json" in kill.first_difference(a, b)


def test_the_ignored_fields_are_the_documented_ones():
    text = (ROOT / "docs" / "reproductions.md").read_text()
    section = text.split("### Timings and machine facts", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^- `([a-z_]+)`", section, re.M))
    assert documented == set(kill.IGNORED_FIELDS)


def test_plan_covers_every_moment_in_run_order():
    runs = kill.plan_points(23, random.Random(3), 5)
    kinds = [k for r in runs for k in r]
    assert len(kinds) == 23 and max(len(r) for r in runs) == 5
    assert {kinds.count(m) for m in kill.MOMENTS} <= {4, 5} and set(kinds) == set(kill.MOMENTS)
    for r in runs:
        named = [k for k in r if k != "random"]
        assert named == sorted(named, key=kill.MOMENTS.index)  # the order a run reaches them
    runs = kill.plan_points(10, random.Random(0), 10)
    assert len(runs) == 1 and runs[0].count("random") == 2
    where = [i for i, k in enumerate(runs[0]) if k == "random"]
    assert where[0] > 0 and where[1] - where[0] >= 3  # spread among the named kills


# ------------------------------------------------------------------------------------------
# The reproductions, killed and resumed
# ------------------------------------------------------------------------------------------
#: 10 kills in one run: every moment kind, the random time last (over what is left then:
#: start-up and outputs), so that it cannot leave the named moments nothing to hit.
KILLS = ["training", "training", "training", "stage-write", "stage-write", "deployment",
         "deployment", "report", "report", "random"]
#: The Cortex-M7 figures are left out: QEMU's own tests cover them, and they add to the deploy
#: stages' time.
EXTRA = {"mwscas": ["--no-mcu"], "biocas": []}


def _kill_and_resume(base: Path, experiment: str):
    ref = kill.run_reference(experiment, base / experiment / "reference", EXTRA[experiment])
    lines = []
    outcome = kill.run_killed(ref, base / experiment / "killed", KILLS, random.Random(0),
                              EXTRA[experiment], log_fn=lines.append)
    return outcome, lines


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """Both reproductions killed and resumed side by side (each is a chain of child processes
    that mostly keep one core busy: together they take about the time of the longer one)."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("kill")
    pool = ThreadPoolExecutor(max_workers=len(kill.EXPERIMENTS))
    futures = {e: pool.submit(_kill_and_resume, base, e) for e in kill.EXPERIMENTS}
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", kill.EXPERIMENTS)
def test_killed_runs_resume_to_the_uninterrupted_results(killed_runs, experiment):
    outcome, lines = killed_runs[experiment].result()
    assert outcome.failed is None, outcome.failed
    named = [p for p in outcome.points if p.kind != "random"]
    assert [p.kind for p in named] == KILLS[:-1]
    assert all(p.hit for p in named), "\n".join(lines)
    assert outcome.attempts >= len(named) + 1
    assert outcome.difference is None, outcome.difference


# ------------------------------------------------------------------------------------------
# Determinism: the same stage trained in fresh processes
# ------------------------------------------------------------------------------------------
TRAIN = textwrap.dedent("""
    import sys
    from mam_tf.experiments import mwscas, pipeline
    from mam_tf.experiments.mwscas import stages
    cfg = mwscas.config_for("tiny")
    run = pipeline.Pipeline(sys.argv[1], "mwscas", progress=False)
    data = stages._stage_data(cfg, run)
    print(stages._stage_train(cfg, run, data, "mam", int(sys.argv[2])).file("model.keras"))
""")


def _train(out, seed):
    proc = subprocess.run([sys.executable, "-c", TRAIN, str(out), str(seed)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_is_deterministic_per_seed_across_processes(tmp_path):
    first, again = _train(tmp_path / "a", 0), _train(tmp_path / "b", 0)
    other = _train(tmp_path / "c", 1)
    assert kill._keras_difference(first, again, "model.keras") is None
    assert kill._keras_difference(first, other, "model.keras") is not None


def test_where_a_kill_landed_is_read_from_the_progress_lines():
    lines = ("[mwscas] data: read back (data-1, computed in 0.1 s)\n"
             "[mwscas] train MAC seed 0: computing ...\rEpoch 1/2\r")
    assert kill._landed("Epoch 1/2\n", "mwscas") == "start-up"
    assert kill._landed(lines, "mwscas") == "train MAC seed 0"
    assert kill._landed(lines + "[mwscas] train MAC seed 0: done in 5.2 s\n",
                        "mwscas") == "between stages or in the outputs"
    assert kill._landed(lines, "biocas") == "start-up"
