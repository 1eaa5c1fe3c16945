"""What a run folder survives: damaged stage files (recomputed, never trusted), two runs on one
folder (a lock), a full disk or an unwritable folder (one line naming the path, nothing
half-written), and non-finite numbers (refused in results, stage values and figures).

Pure-Python stages here (no TensorFlow): each test costs well under a second, but for the
ones starting processes (a few seconds each)."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mam_tf.experiments import pipeline as pl
from mam_tf.experiments.pipeline import Pipeline, RunFolderBusy, WriteFailed
from mam_tf.experiments.report import Curve, plot_curves, plot_signals

MODEL = bytes(range(256)) * 8  # a 2 kB "model": its bytes are what the test compares
TFLITE = b"\x1c\x00\x00\x00TFL3" + bytes(500)


class Stages:
    """Three stages written as the reproductions write theirs: a root "train" (model.keras),
    and two readers of it: "prune" (masks.npz and points.json) and "deploy" (tail.tflite).
    Each counts its calls; all are deterministic."""

    def __init__(self, model=MODEL):
        self.model, self.calls = model, {"train": 0, "prune": 0, "deploy": 0}

    def train(self, work):
        self.calls["train"] += 1
        (work / "model.keras").write_bytes(self.model)
        return {"loss": 0.25}

    def prune(self, work):
        self.calls["prune"] += 1
        np.savez(work / "masks.npz", fc1=np.arange(64) % 3 == 0)
        (work / "points.json").write_text(json.dumps({"arsnr": [30.5, 29.25]}))
        return {"points": [{"remaining": 0.05, "arsnr": 29.25}]}

    def deploy(self, work):
        self.calls["deploy"] += 1
        (work / "tail.tflite").write_bytes(TFLITE)
        return {"deployed_arsnr": 29.0, "tflite_bytes": len(TFLITE)}

    def run(self, out):
        """Runs the three stages into ``out``; returns their results and the log lines."""
        lines = []
        with Pipeline(out, "t", log=lines.append) as p:
            tr = p.stage("train", {"epochs": 2}, self.train, label="train MAM seed 0")
            pr = p.stage("prune", {"f": 0.05}, self.prune, deps=[tr],
                         label="prune MAM seed 0")
            de = p.stage("deploy", {"f": 0.05}, self.deploy, deps=[tr],
                         label="deploy MAM seed 0")
        return {"train": tr, "prune": pr, "deploy": de}, lines


def _contents(results):
    """Every stage's value and files, by stage (what an undamaged run must equal)."""
    return {name: (r.value, {f.name: f.read_bytes() for f in sorted(r.path.iterdir())
                             if f.name != "stage.json"})
            for name, r in results.items()}


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        if path.suffix == ".json":  # a digit changed: still JSON, another number
            i = next(i for i in range(len(data) // 2, len(data)) if chr(data[i]).isdigit())
            new = b"7" if data[i:i + 1] != b"7" else b"3"
        else:  # one byte of the middle inverted
            i, new = len(data) // 2, bytes([data[len(data) // 2] ^ 0xFF])
        path.write_bytes(data[:i] + new + data[i + 1:])
    else:
        path.unlink()


# (stage, file, the readers that must be recomputed with it)
FILES = [("prune", "masks.npz"), ("prune", "points.json"), ("prune", "stage.json"),
         ("train", "model.keras"), ("deploy", "tail.tflite"), ("deploy", "stage.json")]


@pytest.mark.parametrize("how", ["truncated", "flipped", "deleted"])
@pytest.mark.parametrize("stage,name", FILES)
def test_a_damaged_stage_file_is_recomputed_with_one_line(tmp_path, stage, name, how):
    clean, _ = Stages().run(tmp_path / "clean")
    first, _ = Stages().run(tmp_path / "run")
    _damage(first[stage].path / name, how)
    again = Stages()
    results, lines = again.run(tmp_path / "run")
    # Only the damaged stage runs again: train's recomputed model.keras has the same bytes,
    # so the stages computed from it are still valid and read back.
    assert again.calls == {s: int(s == stage) for s in again.calls}
    why = {("truncated", "stage.json"): "stage.json unreadable",
           ("flipped", "stage.json"): "stage.json altered (checksum differs)",
           ("deleted", "stage.json"): "stage.json missing",
           ("flipped", None): f"{name} altered (sha256 differs)",
           ("deleted", None): f"{name} missing"}
    label = {"train": "train MAM seed 0", "prune": "prune MAM seed 0",
             "deploy": "deploy MAM seed 0"}[stage]
    damaged = [line for line in lines if "recomputing" in line]
    if how == "truncated" and name != "stage.json":
        whole = len(_contents(clean)[stage][1][name])
        assert damaged == [f"[t] {label}: {name} truncated ({whole // 2} of {whole} bytes); "
                           "recomputing"]
    else:
        reason = why.get((how, name), why.get((how, None)))
        assert damaged == [f"[t] {label}: {reason}; recomputing"]
    assert (first[stage].path / name).is_file()
    assert _contents(results) == _contents(clean)
    again2 = Stages()  # and the repaired folder is trusted again
    again2.run(tmp_path / "run")
    assert again2.calls == {"train": 0, "prune": 0, "deploy": 0}


def test_a_recomputed_input_whose_content_changed_recomputes_its_readers(tmp_path):
    Stages().run(tmp_path)
    results, _ = Stages().run(tmp_path)
    (results["train"].path / "model.keras").unlink()
    # Training is not bit-reproducible (threads, save times): the recomputed model differs,
    # with the same key. Its readers were computed from the old one: not trusted.
    again = Stages(model=MODEL[::-1])
    results, lines = again.run(tmp_path)
    assert again.calls == {"train": 1, "prune": 1, "deploy": 1}
    train_dir = results["train"].path.name
    assert [line for line in lines if "recomputing" in line] == [
        "[t] train MAM seed 0: model.keras missing; recomputing",
        f"[t] prune MAM seed 0: its input {train_dir} changed since it was computed; "
        "recomputing",
        f"[t] deploy MAM seed 0: its input {train_dir} changed since it was computed; "
        "recomputing"]
    assert results["train"].file("model.keras").read_bytes() == MODEL[::-1]


def test_a_stage_from_before_checksums_is_recomputed(tmp_path):
    results, _ = Stages().run(tmp_path)
    meta_path = results["deploy"].path / "stage.json"
    meta = json.loads(meta_path.read_text())
    for field in ("files", "checksum", "inputs"):
        del meta[field]
    meta_path.write_text(json.dumps(meta))
    again = Stages()
    _, lines = again.run(tmp_path)
    assert again.calls == {"train": 0, "prune": 0, "deploy": 1}
    assert [line for line in lines if "recomputing" in line] == [
        "[t] deploy MAM seed 0: stage.json has no checksums (written by an older version); "
        "recomputing"]


def test_stage_json_records_every_file_checksum(tmp_path):
    results, _ = Stages().run(tmp_path)
    meta = json.loads((results["prune"].path / "stage.json").read_text())
    import hashlib

    for name in ("masks.npz", "points.json"):
        data = (results["prune"].path / name).read_bytes()
        assert meta["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(),
                                       "bytes": len(data)}
    assert set(meta["files"]) == {"masks.npz", "points.json"}
    assert meta["inputs"] == {results["train"].path.name: results["train"].digest}


# ------------------------------------------------------------------------------------------
# Two runs, one folder
# ------------------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mam_tf.experiments.pipeline import Pipeline

    out, go = sys.argv[1], Path(sys.argv[2])
    p = Pipeline(out, "t", log=lambda m: print(m, flush=True), wait="--wait" in sys.argv)
    p.stage("s", {"go": str(go)}, lambda w: (w / "f").write_text("x") and None)
    print("holding", flush=True)
    for _ in range(1200):  # until the test says go (at most a minute)
        if go.exists():
            break
        time.sleep(0.05)
    p.close()
    print("released", flush=True)
""")


def _start(tmp_path, out, go, *extra):
    """A process that takes ``out`` and holds it until the file ``go`` exists."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    return subprocess.Popen([sys.executable, str(script), str(out), str(go), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, text):
    for line in proc.stdout:
        if text in line:
            return line
    raise AssertionError(f"the process ended without printing {text!r}: {proc.stderr.read()}")


def test_a_second_run_on_a_held_folder_stops_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    first = _start(tmp_path, out, tmp_path / "never")
    try:
        _wait_for(first, "holding")
        with pytest.raises(RunFolderBusy) as err:
            Pipeline(out, "t", progress=False)
        msg = str(err.value)
        assert msg.startswith(f"run folder '{out}' is in use by another run (pid {first.pid} "
                              f"on {os.uname().nodename}, since 20")
        assert "--wait" in msg and "\n" not in msg
    finally:
        first.kill()
        first.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = _start(tmp_path, out, tmp_path / "never")
    _wait_for(first, "holding")
    leftover = out / "stages" / ".tmp-train-0123-abc"  # what a stage killed half way leaves
    leftover.mkdir()
    (leftover / "half.bin").write_bytes(b"x" * 10)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert (out / ".lock").is_file()  # the file stays; the kernel dropped the lock
    with Pipeline(out, "t", progress=False):
        info = json.loads((out / ".lock").read_text())
        assert info["pid"] == os.getpid()
        assert not leftover.exists()
        assert len(list((out / "stages").glob("s-*"))) == 1  # the killed run's stage stays


def test_wait_queues_behind_the_live_run(tmp_path):
    out, go = tmp_path / "run", tmp_path / "go"
    first = _start(tmp_path, out, go)
    second = None
    try:
        _wait_for(first, "holding")
        second = _start(tmp_path, out, tmp_path / "go2", "--wait")
        line = _wait_for(second, "waiting")
        assert line.startswith(f"[t] waiting for run folder '{out}', in use by another run "
                               f"(pid {first.pid} on ")
        assert second.poll() is None  # still waiting while the first holds the folder
        go.touch()
        (tmp_path / "go2").touch()
        assert _wait_for(first, "released")
        assert _wait_for(second, "holding")  # only once the first let go
        assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()


def test_pipelines_of_one_process_share_the_folder(tmp_path):
    a = Pipeline(tmp_path, "t", progress=False)
    b = Pipeline(tmp_path, "t", progress=False)
    b.close()
    probe = subprocess.run([sys.executable, "-c", "import sys; from mam_tf.experiments."
                            "pipeline import Pipeline; Pipeline(sys.argv[1], 't')",
                            str(tmp_path)], capture_output=True, text=True)
    assert probe.returncode != 0 and "is in use by another run" in probe.stderr
    a.close()
    probe = subprocess.run(probe.args, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr


# ------------------------------------------------------------------------------------------
# Full disk, unwritable folder
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_leaves_no_stage_and_the_rerun_continues(tmp_path, code):
    def failing(work):
        (work / "model.keras").write_bytes(b"half")
        raise OSError(code, os.strerror(code), str(work / "model.keras"))

    run = Pipeline(tmp_path, "t", progress=False)
    s = Stages()
    tr = run.stage("train", {"epochs": 2}, s.train, label="train MAM seed 0")
    with pytest.raises(WriteFailed) as err:
        run.stage("prune", {"f": 0.05}, failing, deps=[tr], label="prune MAM seed 0")
    run.close()
    name = errno.errorcode[code]
    hint = "free some space" if code == errno.ENOSPC else "make it writable"
    tmp_dirs = [p.name for p in (tmp_path / "stages").iterdir()]
    assert tmp_dirs == [tr.path.name]  # no half-written stage, no temporary folder
    written = next(p for p in str(err.value).split("'") if p.endswith("model.keras"))
    assert str(err.value) == (f"[t] prune MAM seed 0: cannot write '{written}': "
                              f"{os.strerror(code)} ({name}); {hint} and rerun to continue "
                              "from the finished stages")
    assert err.value.errno == code
    again = Stages()
    again.run(tmp_path)
    assert again.calls == {"train": 0, "prune": 1, "deploy": 1}


def test_a_full_disk_while_writing_stage_json_names_it(tmp_path, monkeypatch):
    real_dump = json.dump

    def dump(obj, fh, **kw):
        if "checksum" in obj:  # stage.json: half of it, then the disk is full
            fh.write(json.dumps(obj)[:40])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_dump(obj, fh, **kw)

    monkeypatch.setattr(json, "dump", dump)
    with Pipeline(tmp_path, "t", progress=False) as run, pytest.raises(WriteFailed) as err:
        run.stage("train", {"epochs": 2}, Stages().train, label="train MAM seed 0")
    assert "[t] train MAM seed 0: cannot write '" in str(err.value)
    assert "/stages/.tmp-train-" in str(err.value) and "stage.json'" in str(err.value)
    assert list((tmp_path / "stages").iterdir()) == []


def test_other_os_errors_in_a_stage_pass_through(tmp_path):
    def missing(work):
        open(work / "nothing" / "here")

    with Pipeline(tmp_path, "t", progress=False) as run, pytest.raises(FileNotFoundError):
        run.stage("x", {}, missing)


REAL_DISK = textwrap.dedent("""
    import sys
    from mam_tf.experiments.pipeline import Pipeline, WriteFailed

    out = sys.argv[1]
    with Pipeline(out, "t", progress=False) as p:
        small = p.stage("small", {}, lambda w: (w / "a.bin").write_bytes(b"a" * 100_000) and 1)
        try:
            p.stage("big", {}, lambda w: (w / "b.bin").write_bytes(b"b" * 3_000_000) and 1,
                    deps=[small])
        except WriteFailed as err:
            print(err)
    lines = []
    with Pipeline(out, "t", log=lines.append) as p:
        p.stage("small", {}, lambda w: 1 / 0)  # read back, never computed
    print(lines[0])
""")


def test_a_real_full_filesystem(tmp_path):
    """A 1 MB tmpfs in a private mount namespace (root, or an unprivileged user namespace)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare command to mount a small filesystem")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "disk.py"
    script.write_text(REAL_DISK)
    inner = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
             f"{sys.executable} {script} {mnt}/run")
    flags = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    probe = subprocess.run([unshare, *flags, "sh", "-c", f"mount -t tmpfs tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({probe.stderr.strip()})")
    done = subprocess.run([unshare, *flags, "sh", "-c", inner], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("[t] big: cannot write '")
    assert first.endswith(": No space left on device (ENOSPC); free some space and rerun to "
                          "continue from the finished stages")
    assert "/run/stages/.tmp-big-" in first
    assert second.startswith("[t] small: read back (small-")


# ------------------------------------------------------------------------------------------
# Nothing non-finite is stored or drawn
# ------------------------------------------------------------------------------------------
def test_write_json_refuses_non_finite_numbers_naming_the_key(tmp_path):
    path = tmp_path / "results.json"
    for bad, where in ((float("nan"), "points[1].arsnr"), (float("inf"), "points[1].arsnr"),
                       (np.float32("nan"), "points[1].arsnr")):
        obj = {"points": [{"arsnr": 1.0}, {"arsnr": bad}], "n": 2}
        with pytest.raises(ValueError) as err:
            pl.write_json(path, obj)
        assert str(err.value).startswith(f"{path}: {where} is {float(bad)}; non-finite")
    with pytest.raises(ValueError, match=r"a\.b\[0\]\[2\] is -inf"):
        pl.write_json(path, {"a": {"b": [np.array([1.0, 2.0, -np.inf])]}})
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file
    pl.write_json(path, {"x": 1.5, "ok": [None, True, "nan"]})
    assert json.loads(path.read_text()) == {"x": 1.5, "ok": [None, True, "nan"]}


def test_a_stage_returning_nan_is_not_stored(tmp_path):
    with Pipeline(tmp_path, "t", progress=False) as run, pytest.raises(ValueError) as err:
        run.stage("train", {}, lambda w: {"val_loss": [0.5, float("nan")]},
                  label="train MAM seed 3")
    assert str(err.value).startswith("[t] train MAM seed 3: val_loss[1] is nan;")
    assert list((tmp_path / "stages").iterdir()) == []


def test_figures_refuse_non_finite_values(tmp_path):
    with pytest.raises(ValueError, match=r"^Curve 'MAM': y is nan at x = 0\.05; figures"):
        Curve("MAM", [1.0, 0.05], [30.0, float("nan")])
    with pytest.raises(ValueError, match=r"^Curve 'MAC': maximum is inf at x = 1\.0;"):
        Curve("MAC", [1.0], [30.0], lo=[29.0], hi=[float("inf")])
    with pytest.raises(ValueError, match=r"reference line 'budget': its value is nan"):
        plot_curves(tmp_path / "f.png", [Curve("a", [1], [2])], xlabel="x", ylabel="y",
                    vlines=[(float("nan"), "budget")])
    with pytest.raises(ValueError, match=r"signal 'MAM' of panel 'p': the signal is inf at "
                                         r"index 2"):
        plot_signals(tmp_path / "s.png", [("p", [("x", [0, 1, 2], {}),
                                                 ("MAM", np.array([0, 1, np.inf]), {})])],
                     xlabel="t")
    assert not list(tmp_path.glob("*.png"))
    Curve("ok", [1.0, 0.5], [30.0, None])  # a missing point (None) is not a number: allowed
