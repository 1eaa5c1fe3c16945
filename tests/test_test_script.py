"""`bash scripts/test.sh` (what CI runs): the whole suite, then the Keras 3 tests once more on
JAX and on PyTorch, each pass in its own process with its KERAS_BACKEND; a failing pass fails
the script without hiding the passes after it. Run here against a stand-in environment whose
`python` records each call (seconds, not the suite)."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The stand-in interpreter: one line per call (backend, then the arguments); it fails the
#: calls made under the backend named by FAIL_BACKEND.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "${KERAS_BACKEND:-unset} $*" >> "$CALLS"
[ "${KERAS_BACKEND:-}" != "${FAIL_BACKEND:-none}" ]
"""


def _run(tmp_path, *args, **env):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv / "bin"}:$PATH"\n')
    calls = tmp_path / "calls"
    calls.touch()
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("KERAS_BACKEND", "MAM_TF_KERAS3_BACKENDS", "MAM_TF_TEST_WORKERS")}
    full_env.update(MAM_TF_VENV=str(venv), MAM_TF_NO_INSTALL="1", CALLS=str(calls), **env)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "test.sh"), *args], cwd=tmp_path,
                          env=full_env, capture_output=True, text=True, timeout=120)
    if "[mam-tf] missing" in proc.stderr:
        pytest.skip(f"scripts/test.sh needs system tools here: {proc.stderr.strip()}")
    return proc, [line.split(" ", 1) for line in calls.read_text().splitlines()]


def _keras3_files():
    return sorted(p.name for p in (ROOT / "tests").glob("test_keras3_*.py")
                  if p.name != "test_keras3_backends.py")


def test_a_full_run_runs_the_keras3_tests_on_each_backend_in_its_own_process(tmp_path):
    proc, calls = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [backend for backend, _ in calls] == ["tensorflow", "jax", "torch"]
    # the suite: its files spread over two processes, the slowest tests listed
    assert calls[0][1] == "-m pytest --durations=25 -n 2 --dist loadfile"
    for backend, args in calls[1:]:
        files = sorted(Path(a).name for a in args.split() if a.startswith("tests/test_keras3_"))
        assert args.startswith("-m pytest") and files == _keras3_files(), (backend, args)
        assert f"the Keras 3 tests on the {backend} backend" in proc.stdout


def test_a_failing_backend_fails_the_script_and_the_next_backend_still_runs(tmp_path):
    proc, calls = _run(tmp_path, FAIL_BACKEND="jax")
    assert proc.returncode != 0
    assert [backend for backend, _ in calls] == ["tensorflow", "jax", "torch"]
    assert "failed: the Keras 3 tests on jax" in proc.stderr
    assert "torch" not in proc.stderr and "the suite" not in proc.stderr


def test_a_failing_suite_fails_the_script(tmp_path):
    proc, calls = _run(tmp_path, FAIL_BACKEND="tensorflow")
    assert proc.returncode != 0 and len(calls) == 3
    assert "failed: the suite (KERAS_BACKEND=tensorflow)" in proc.stderr


def test_arguments_go_to_pytest_and_skip_the_backend_passes_unless_asked(tmp_path):
    proc, calls = _run(tmp_path, "tests/test_ops.py", "-x")
    assert proc.returncode == 0 and calls == [["tensorflow", "-m pytest tests/test_ops.py -x"]]
    proc, calls = _run(tmp_path / "again", "tests/test_ops.py", MAM_TF_KERAS3_BACKENDS="torch")
    assert [backend for backend, _ in calls] == ["tensorflow", "torch"]


def test_the_number_of_suite_processes_is_the_users(tmp_path):
    proc, calls = _run(tmp_path, MAM_TF_TEST_WORKERS="0", MAM_TF_KERAS3_BACKENDS="")
    assert proc.returncode == 0 and calls == [["tensorflow", "-m pytest --durations=25"]]
    proc, calls = _run(tmp_path / "again", "tests/test_ops.py", MAM_TF_TEST_WORKERS="3")
    assert calls == [["tensorflow", "-m pytest -n 3 --dist loadfile tests/test_ops.py"]]
