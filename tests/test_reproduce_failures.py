"""`mam-tf reproduce` failing cleanly, seen from the command line: training that diverges, a
full disk and an unwritable folder, a folder another run holds. Each is one line on stderr,
no traceback, a non-zero exit, nothing non-finite or half-written left, and the next run
continues from the finished stages.

Each test starts the command in a fresh process (TensorFlow's start-up, 5-15 s) that stops at
its first training stage."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

# Runs `mam-tf reproduce ...` (argv) after an injection (the code in INJECT).
RUN = textwrap.dedent("""
    import sys
    {inject}
    from mam_tf.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _cli(tmp_path, inject, *argv, timeout=600):
    script = tmp_path / "run_cli.py"
    script.write_text(RUN.format(inject=textwrap.dedent(inject)))
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True,
                          timeout=timeout)


def _error_lines(stderr):
    """The lines a user sees: stage lines and the error, no TensorFlow start-up noise."""
    return [line for line in stderr.splitlines() if line.startswith(("[", "mam-tf"))]


NAN_SAMPLE = """
    import numpy as np
    import ecg_data

    _build = ecg_data.build_synthetic_dataset

    def build(*args, **kwargs):  # one training window holds a NaN sample
        data = _build(*args, **kwargs)
        data["train"][3, 100] = np.nan
        return data

    ecg_data.build_synthetic_dataset = build
"""


def test_training_that_diverges_stops_naming_the_stage_seed_and_epoch(tmp_path):
    out = tmp_path / "run"
    done = _cli(tmp_path, NAN_SAMPLE, "reproduce", "mwscas", "--scale", "tiny", "-o", str(out),
                "--no-mcu", "--no-progress")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mam-tf reproduce mwscas: error: mwscas train MAC seed 0: loss is "
                           "nan at epoch 1, batch "), done.stderr
    assert last.endswith("training diverged (lower the learning rate, or check the data for "
                         "NaN)")
    # the data stage finished and stays; nothing of the training stage, no results
    assert sorted(p.name.split("-")[0] for p in (out / "stages").iterdir()) == ["data"]
    assert not (out / "results.json").exists()


def _save_fails(code):
    return f"""
    import errno, os
    import numpy as np

    def save(file, arr, *args, **kwargs):  # half the file, then the write fails
        with open(file, "wb") as fh:
            fh.write(b"\\x93NUMPY")
        raise OSError(errno.{code}, os.strerror(errno.{code}), str(file))

    np.save = save
"""


def test_a_full_disk_then_an_unwritable_folder_stop_with_one_line_and_resume(tmp_path):
    out = tmp_path / "run"
    argv = ("reproduce", "biocas", "--scale", "tiny", "-o", str(out))
    done = _cli(tmp_path, _save_fails("ENOSPC"), *argv, "--no-progress")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    stages = out / "stages"
    data = next(p for p in stages.iterdir() if p.name.startswith("data-"))
    assert _error_lines(done.stderr) == [
        f"mam-tf reproduce biocas: error: [biocas] train mac seed 0: cannot write "
        f"'{stages}/{_tmp_name(done.stderr)}/examples.npy': No space left on device (ENOSPC); "
        "free some space and rerun to continue from the finished stages"]
    assert [p.name for p in stages.iterdir()] == [data.name]  # no half-written stage
    # The rerun reads the data back, and stops at the same write: the folder refuses it now.
    done = _cli(tmp_path, _save_fails("EACCES"), *argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = _error_lines(done.stderr)
    assert lines[0].startswith(f"[biocas] data (") and f"read back ({data.name}" in lines[0]
    assert lines[-1].endswith("/examples.npy': Permission denied (EACCES); make it writable "
                              "and rerun to continue from the finished stages")
    assert [p.name for p in stages.iterdir()] == [data.name]


def _tmp_name(stderr):
    """The temporary stage folder the error names (its random part is the process's)."""
    return stderr.split("/stages/")[1].split("/")[0]


def test_a_second_run_on_a_held_folder_is_one_line(tmp_path):
    from mam_tf.experiments.pipeline import Pipeline

    out = tmp_path / "run"
    with Pipeline(out, "biocas", progress=False):
        since = json.loads((out / ".lock").read_text())["started"]
        done = _cli(tmp_path, "", "reproduce", "biocas", "--scale", "tiny", "-o", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert _error_lines(done.stderr) == [
        f"mam-tf reproduce biocas: error: run folder '{out}' is in use by another run (pid "
        f"{os.getpid()} on {socket.gethostname()}, since {since}); wait for it, rerun with "
        "--wait to start when it ends, or choose another --out"]
