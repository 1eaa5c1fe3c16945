"""`mam-tf reproduce --ray`: stages as Ray tasks (mam_tf/experiments/cluster.py).

Toy stages (no TensorFlow) on one local Ray instance shared by the module: independent stages
run side by side, a killed worker's stage is retried and gives the serial result, a stage that
raises fails once with its message, a stopped and restarted driver reads finished stages back,
the manifest says where each stage ran and its memory, and ``--task-cpus`` sets every task's
CPUs and TensorFlow threads. Without ``--ray`` Ray is never imported, and a missing Ray names
the extra. Cost: about 30-60 s (Ray's start, a worker per task shape).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mam_tf.experiments.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def _python(code, *args, timeout=300, check=True):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------------------------------
# Without a cluster
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_without_ray_nothing_imports_it(tmp_path):
    _python("""
        import sys
        from mam_tf import cli
        from mam_tf.experiments import base
        from mam_tf.experiments.pipeline import Pipeline

        cli.build_parser().parse_args(["reproduce", "mwscas", "--scale", "tiny"])
        p = Pipeline(sys.argv[1], "t", progress=False)
        a = p.stage("a", {"x": 1}, lambda work: 1)
        b = p.stage("b", {"x": 2}, lambda work: a.value + 1, deps=[a])
        p.write_manifest()
        assert b.value == 2
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
        assert not loaded, loaded
    """, tmp_path)


@pytest.mark.slow
def test_a_missing_ray_names_the_cluster_extra(tmp_path):
    # Ray hidden from the import system: the command says which extra brings it, in one line.
    proc = _python("""
        import importlib.machinery, sys
        find = importlib.machinery.PathFinder.find_spec
        importlib.machinery.PathFinder.find_spec = classmethod(
            lambda cls, name, path=None, target=None:
            None if name.split(".")[0] == "ray" else find(name, path, target))
        from mam_tf import cli
        sys.exit(cli.main(["reproduce", "mwscas", "--scale", "tiny", "--ray", "local",
                           "--no-progress", "-o", sys.argv[1]]))
    """, tmp_path / "out", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("mam-tf reproduce mwscas: error: No module named 'ray': it comes with "
                    "mam-tf's [cluster] extra (pip install 'mam-tf[cluster]')")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "stages").exists() or not any(
        (tmp_path / "out" / "stages").iterdir())


# ------------------------------------------------------------------------------------------
# On a local Ray instance
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance with 2 CPUs for the module's tests."""
    ray = pytest.importorskip("ray", reason="Ray is the [cluster] extra")
    from mam_tf.experiments.cluster import start_local

    start_local(ray, num_cpus=2)
    yield ray
    ray.shutdown()


def _pipeline(out, executor=None, **kwargs):
    return Pipeline(Path(out).resolve(), "t", progress=False, executor=executor, **kwargs)


def _executor(**kwargs):
    from mam_tf.experiments.cluster import RayExecutor

    return RayExecutor("local", progress=False, **kwargs)


def _toy_stages(p, root):
    """data -> two trainings that each wait for the other to have started (they can only
    finish when they run side by side) -> a sum reading both."""
    root = Path(root)

    def data(work):
        (work / "x.txt").write_text("3")
        return {"n": 3}

    d = p.stage("data", {"n": 3}, data)

    def train(seed):
        def compute(work):
            n = int(d.file("x.txt").read_text())
            (root / f"started-{seed}").write_text(str(os.getpid()))
            deadline = time.time() + 120
            while not all((root / f"started-{s}").exists() for s in (0, 1)):
                if time.time() > deadline:
                    raise TimeoutError(f"train {seed}: the other training never started")
                time.sleep(0.05)
            (work / "w.txt").write_text(str(n * 10 + seed))
            return {"w": n * 10 + seed, "n": d.value["n"]}
        return compute

    trained = [p.stage("train", {"seed": s}, train(s), deps=[d]) for s in (0, 1)]

    def total(work):
        return sum(int(t.file("w.txt").read_text()) for t in trained)

    return d, trained, p.stage("sum", {}, total, deps=trained)


@pytest.mark.slow
def test_independent_stages_run_side_by_side_and_give_the_serial_values(ray_cluster, tmp_path):
    for s in (0, 1):  # serial: the barrier is passed beforehand, the stages run in turn
        (tmp_path / f"started-{s}").write_text("")
    serial = _pipeline(tmp_path / "serial")
    _, _, s_sum = _toy_stages(serial, tmp_path)
    for s in (0, 1):
        (tmp_path / f"started-{s}").unlink()
    ex = _executor()
    p = _pipeline(tmp_path / "ray", ex)
    d, trained, total = _toy_stages(p, tmp_path)
    assert not total.done  # submitted, not waited for
    assert total.value == s_sum.value == 30 + 31
    assert [t.value for t in trained] == [{"w": 30, "n": 3}, {"w": 31, "n": 3}]
    assert total.file("stage.json").is_file() and not total.cached
    pids = {int((tmp_path / f"started-{s}").read_text()) for s in (0, 1)}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes at once
    p.write_manifest()
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    ran = {r["label"]: r["ran_on"] for r in manifest["stages"]}
    assert sorted(ran) == ["data", "sum", "train", "train"][:len(ran)] and len(
        manifest["stages"]) == 4
    assert {r["ran_on"]["pid"] for r in manifest["stages"] if r["stage"] == "train"} == pids
    # every stage in a fresh worker process: none inherits another stage's memory
    assert len({r["ran_on"]["pid"] for r in manifest["stages"]}) == 4
    assert all(r["ran_on"]["node"] and r["seconds"] >= 0 for r in manifest["stages"])
    if sys.platform == "linux":  # the worker's resident memory: Python, Ray, the stage
        assert all(r["memory"]["peak_rss_bytes"] >= r["memory"]["rss_start_bytes"] > 2**20
                   for r in manifest["stages"])
    # The stage folders are those of the serial run (same keys, same values).
    for name in ("data", "train", "sum"):
        a = sorted(x.name for x in (tmp_path / "serial" / "stages").glob(f"{name}-*"))
        assert a == sorted(x.name for x in (tmp_path / "ray" / "stages").glob(f"{name}-*"))
    # A second run reads every stage back on the driver: nothing is sent to Ray.
    ex2 = _executor()
    again = _pipeline(tmp_path / "ray", ex2)
    assert _toy_stages(again, tmp_path)[2].value == total.value and not ex2.handles


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_gives_the_same_result(ray_cluster, tmp_path):
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def compute(work):
        n = len(list(attempts.iterdir()))
        (attempts / f"{n}.pid").write_text(str(os.getpid()))
        if n == 0:
            time.sleep(300)  # killed meanwhile
        (work / "r.txt").write_text("42")
        return {"r": 42, "squares": [i * i for i in range(5)]}

    killed = []

    def kill_first():
        pid_file = attempts / "0.pid"
        deadline = time.time() + 240
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_first)
    killer.start()
    p = _pipeline(tmp_path / "ray", _executor())
    st = p.stage("work", {"x": 1}, compute)
    value = st.value
    killer.join()
    serial = _pipeline(tmp_path / "serial").stage("work", {"x": 1}, compute)
    assert killed and value == serial.value == {"r": 42, "squares": [0, 1, 4, 9, 16]}
    pids = [int((attempts / f"{i}.pid").read_text()) for i in range(3)]
    assert pids[0] == killed[0] and pids[1] != killed[0]  # retried in another process
    assert (st.path / "r.txt").read_text() == "42"
    p.write_manifest()
    (record,) = json.loads((tmp_path / "ray" / "manifest.json").read_text())["stages"]
    assert record["ran_on"]["pid"] == pids[1]


@pytest.mark.slow
def test_a_stage_that_raises_fails_once_with_its_message(ray_cluster, tmp_path):
    calls = tmp_path / "calls.txt"

    def bad(work):
        with open(calls, "a") as fh:
            fh.write("x\n")
        raise ValueError("toy: windows is 3; need at least 8")

    def slow(work):
        time.sleep(2)
        return "kept"

    p = _pipeline(tmp_path / "ray", _executor())
    other = p.stage("other", {}, slow)
    failed = p.stage("bad", {}, bad)
    after = p.stage("after", {}, lambda work: failed.value, deps=[failed])
    with pytest.raises(ValueError, match=r"^toy: windows is 3; need at least 8$"):
        after.value
    assert calls.read_text() == "x\n"  # once: an exception is not retried
    # The stage running beside it finished and is in the cache; the failed one is not.
    assert other.done and _pipeline(tmp_path / "ray").lookup("other", {}).value == "kept"
    assert not list((tmp_path / "ray" / "stages").glob("bad-*"))
    with pytest.raises(ValueError, match="toy: windows is 3"):
        p.wait()


_DRIVER = """
    import signal, sys, time
    from pathlib import Path
    # Ctrl-C raises KeyboardInterrupt, as in a terminal: a process started by a background
    # job of a shell inherits SIGINT ignored, and Python then installs no handler for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from mam_tf.experiments.pipeline import Pipeline
    from mam_tf.experiments.cluster import RayExecutor

    out, root, address = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    p = Pipeline(out, "t", progress=False, executor=RayExecutor(address, progress=False))

    def first(work):
        with open(root / "first-calls", "a") as fh:
            fh.write("x\\n")
        return 1

    def second(work):
        (root / "second-started").write_text("")
        while not (root / "go").exists():
            time.sleep(0.1)
        return a.value + 1

    a = p.stage("first", {}, first)
    b = p.stage("second", {}, second, deps=[a])
    print(b.value)
    p.write_manifest()
"""


@pytest.mark.slow
def test_a_restarted_driver_reads_finished_stages_back(ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address  # the drivers join this cluster
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_DRIVER), str(out),
                               str(tmp_path), address], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "second-started").exists():
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.time() < deadline, "the second stage never started"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGINT)  # stop the driver (Ctrl-C) mid-stage
        try:
            driver.wait(60)
        finally:
            if driver.poll() is None:  # never left behind: its stage would hold a CPU
                driver.kill()
                driver.wait()
    assert driver.returncode != 0
    assert not list((out / "stages").glob("second-*"))
    (tmp_path / "go").write_text("")
    proc = _python(_DRIVER, out, tmp_path, address)
    assert proc.stdout.strip() == "2"
    assert (tmp_path / "first-calls").read_text() == "x\n"  # computed once, then read back
    stages = {r["stage"]: r for r in json.loads((out / "manifest.json").read_text())["stages"]}
    assert stages["first"]["cached"] and not stages["second"]["cached"]


# ------------------------------------------------------------------------------------------
# --plan: the projection (no Ray)
# ------------------------------------------------------------------------------------------
class _St:
    def __init__(self, key, deps, secs):
        self.key, self.deps, self.secs, self.name = key, deps, secs, key[0]


@pytest.mark.slow
def test_task_cpus_sets_every_tasks_cpus_and_tensorflow_threads(ray_cluster, tmp_path):
    def _threads_and_cpus(work):  # (a closure: Ray ships it by value, not by module name)
        """What a task was given: Ray's CPUs and the thread counts TensorFlow reads."""
        import ray

        return {"cpus": ray.get_runtime_context().get_assigned_resources().get("CPU"),
                "threads": [os.environ.get(v) for v in (
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")]}

    declared = {"probe": {"num_cpus": 1}}
    one = _pipeline(tmp_path / "one", _executor(resources=declared))
    assert one.stage("probe", {}, _threads_and_cpus).value == {"cpus": 1.0,
                                                               "threads": ["1"] * 3}
    two = _pipeline(tmp_path / "two", _executor(resources=declared, task_cpus=2))
    assert two.stage("probe", {}, _threads_and_cpus).value == {"cpus": 2.0,
                                                               "threads": ["2"] * 3}
    # A task no node can hold would wait forever: refused at once, in one line.
    with pytest.raises(ValueError, match=r"^--task-cpus 3: no node of the Ray cluster at "
                                         r"local has that many CPUs \(the largest has 2\)$"):
        _executor(task_cpus=3)


def test_task_cpus_without_a_cluster_is_refused_in_one_line(tmp_path, capsys):
    from mam_tf import cli

    assert cli.main(["reproduce", "mwscas", "--scale", "tiny", "--task-cpus", "2", "-o",
                     str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith("--task-cpus 2 sets the CPUs of Ray tasks; it needs --ray (or --plan)")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["reproduce", "mwscas", "--task-cpus", "0"])


def test_schedule_runs_each_stage_after_its_dependencies_on_free_cpus():
    from mam_tf.experiments.cluster import schedule

    # a (10 s), then b1-b3 (5 s each) reading a, then c (1 s) reading all three.
    stages = [_St("a", [], 10), *(_St(f"b{i}", ["a"], 5) for i in (1, 2, 3)),
              _St("c", ["b1", "b2", "b3"], 1)]
    secs, one = (lambda s: s.secs), (lambda s: 1)
    assert schedule(stages, secs, one, nodes=1, cpus_per_node=1) == 10 + 15 + 1
    assert schedule(stages, secs, one, nodes=1, cpus_per_node=2) == 10 + 5 + 5 + 1
    assert schedule(stages, secs, one, nodes=2, cpus_per_node=2) == 10 + 5 + 1
    # a stage that needs 2 CPUs waits for a node with 2 free
    assert schedule(stages, secs, lambda s: 2 if s.key == "b1" else 1, nodes=1,
                    cpus_per_node=2) == 10 + 5 + 5 + 1


def test_plan_lists_the_stages_and_scales_measured_times(tmp_path, capsys):
    from mam_tf import cli
    from mam_tf.experiments import mwscas
    from mam_tf.experiments.cluster import plan_stages, project

    tiny = mwscas.config_for("tiny", mcu=False)
    stages = plan_stages(mwscas.EXPERIMENT, tiny)
    names = [s.name for s in stages]
    # one data stage; per kind train, QAT, prune, fine-tune; the tiny scale's 2 deployments
    assert sorted(names) == sorted(["data"] + ["train", "qat", "prune", "fine_tune"] * 2
                                   + ["deploy"] * 2)
    by_key = {s.key: s for s in stages}
    assert all(by_key[k].name == "data" for s in stages if s.name == "train" for k in s.deps)
    measured = {"data": 2.0, "train": 30.0, "qat": 20.0, "prune": 40.0, "fine_tune": 10.0,
                "deploy": 8.0}
    peak = {"train": 3 * 2**30, "deploy": 2**29}  # train above its 2 GiB, deploy below 2.5
    (tmp_path / "manifest.json").write_text(json.dumps({
        "experiment": "mwscas", "config": tiny.as_dict(), "loadavg_start": [0.5, 0.5, 0.5],
        "stages": [{"stage": s.name, "seconds": measured[s.name],
                    "memory": {"rss_start_bytes": 2**20, "peak_rss_bytes": peak[s.name]}
                    if s.name in peak else None} for s in stages]}))
    same = project(mwscas.EXPERIMENT, tiny, tmp_path, nodes=1, cpus_per_node=1)
    assert same["serial_seconds"] == pytest.approx(sum(measured[n] for n in names))
    assert same["makespan_seconds"] == pytest.approx(same["serial_seconds"])
    # data, then the two kinds' chains side by side: 2 + 30 + 20 + 40 + max(10, 8)... each
    # kind's fine-tune and deployment both read its prune: the longest chain is
    # data -> train -> qat -> prune -> fine_tune.
    wide = project(mwscas.EXPERIMENT, tiny, tmp_path, nodes=4, cpus_per_node=2)
    assert wide["critical_path_seconds"] == pytest.approx(2 + 30 + 20 + 40 + 10)
    assert wide["makespan_seconds"] == pytest.approx(wide["critical_path_seconds"])
    # --task-cpus 2 on a 2-CPU node: every stage takes the whole node, one after another.
    whole = project(mwscas.EXPERIMENT, tiny, tmp_path, nodes=1, cpus_per_node=2, task_cpus=2)
    assert whole["makespan_seconds"] == pytest.approx(same["serial_seconds"])
    # The demo scale trains 20 000 windows for 15 epochs where tiny trains 600 for 2.
    demo = project(mwscas.EXPERIMENT, mwscas.config_for("demo", mcu=False), tmp_path, 1, 2)
    assert demo["kinds"]["train"]["projected_seconds"] == pytest.approx(30.0 * 20000 * 15
                                                                        / (600 * 2))
    assert cli.main(["reproduce", "mwscas", "--scale", "paper", "--plan", str(tmp_path),
                     "--cluster", "10x4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PROJECTION (not a measurement): mwscas at scale paper on 10 node(s)")
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rows["train"][-2:] == ["3072", "2048"] and rows["deploy"][-2:] == ["512", "2560"]
    assert rows["qat"][-2:] == ["-", "2048"]
    assert out.strip().splitlines()[-1] == (
        "WARNING: measured peaks above the memory declared for train: Ray may place too many "
        "of them on one node (raise RESOURCES)")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["reproduce", "mwscas", "--cluster", "4"])


def _manifest_of(stages, cfg, measured, folder):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "experiment": cfg.EXPERIMENT, "config": cfg.as_dict(), "loadavg_start": [0.5] * 3,
        "stages": [{"stage": s.name, "seconds": measured[s.name]} for s in stages]}))
    return folder


def test_biocas_plan_projects_other_scales_by_its_cost_model(tmp_path):
    from mam_tf.experiments import biocas
    from mam_tf.experiments.cluster import plan_stages, project

    tiny = biocas.config_for("tiny")
    stages = plan_stages(biocas.EXPERIMENT, tiny)
    # data, a training per kind, the four sweeps; the deployments depend on the sweeps' values
    assert sorted(s.name for s in stages) == ["data"] + ["sweep"] * 4 + ["train"] * 2
    measured = _manifest_of(stages, tiny, {"data": 1.0, "train": 10.0, "sweep": 20.0},
                            tmp_path / "tiny")
    small = project(biocas.EXPERIMENT, biocas.config_for("small"), measured, 1, 2)
    # small: 20 000 training windows x 20 epochs + 2 000 test ones; tiny 800 x 3 + 200.
    assert small["kinds"]["train"]["projected_seconds"] == pytest.approx(
        10.0 * (20000 * 20 + 2000) / (800 * 3 + 200))
    # a sweep: rates over the training windows, then per fraction the test windows and the
    # fine-tune's epochs (small: 8 fractions, 5 epochs; tiny: 2 fractions, 1 epoch)
    assert small["kinds"]["sweep"]["projected_seconds"] == pytest.approx(
        20.0 * (20000 + 8 * (2000 + 20000 * 5)) / (800 + 2 * (200 + 800 * 1)))
    assert small["stages"] == 1 + 3 * (2 + 4)


def test_transformer_asks_for_every_stage_before_reading_one(tmp_path):
    """On a cluster, stages run side by side only if all are asked for before a value is read:
    the plan (which ends at the first value read) holds every stage of every kind and seed."""
    from mam_tf.experiments import transformer
    from mam_tf.experiments.cluster import plan_stages, project

    cfg = transformer.config_for("tiny", seeds=(0, 1))
    stages = plan_stages(transformer.EXPERIMENT, cfg)
    assert sorted(s.name for s in stages) == sorted(["data"] + ["train", "prune", "deploy"] * 4)
    measured = _manifest_of(stages, cfg, {"data": 1.0, "train": 10.0, "prune": 5.0,
                                          "deploy": 3.0}, tmp_path / "tiny")
    # 4 chains of 18 s after the data: side by side on 4 CPUs
    wide = project(transformer.EXPERIMENT, cfg, measured, nodes=1, cpus_per_node=4)
    assert wide["makespan_seconds"] == pytest.approx(1 + 10 + 5 + 3)
    # paper: 16 000 samples x 20 epochs + 2 000 test; tiny: 2 000 x 5 + 300
    paper = project(transformer.EXPERIMENT, transformer.config_for("paper"), measured, 1, 2)
    assert paper["kinds"]["train"]["projected_seconds"] == pytest.approx(
        10.0 * (16000 * 20 + 2000) / (2000 * 5 + 300))


def test_a_node_with_the_drivers_sources_accepts_the_drivers_fingerprint(tmp_path):
    """The check each Ray task makes before computing agrees with the fingerprint the driver
    puts in every stage key (both cover the C sources of tflm_ops/), and refuses another."""
    from mam_tf.experiments import cluster
    from mam_tf.experiments.mwscas import EXPERIMENT

    cluster._CODE_SEEN.clear()
    cluster._check_code(EXPERIMENT.code_modules(), EXPERIMENT.code_fingerprint())
    with pytest.raises(ValueError, match="install the same mam-tf on every node"):
        cluster._check_code(EXPERIMENT.code_modules(), "0.0.0+0000000000000000")
