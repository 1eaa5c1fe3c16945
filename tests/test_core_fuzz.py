"""Fuzzing the core's validation and kernels under AddressSanitizer + UBSan.

Builds tflm_ops/tests/fuzz_validate.c with -fsanitize=address,undefined
-fno-sanitize-recover=all into a temporary directory and runs 100 000 random corruptions of
row counts, offsets, E, N, shapes, types, options and requantization parameters (see the
driver's header comment). Any out-of-bounds access or undefined behaviour aborts the run.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

TFLM_OPS = Path(__file__).resolve().parent.parent / "tflm_ops"
CASES = 100_000


@pytest.fixture(scope="module")
def fuzz_binary(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is not on PATH: the C core cannot be built (install cmake and gcc)")
    build = tmp_path_factory.mktemp("fuzz-build")
    for cmd in (
        [cmake, "-S", str(TFLM_OPS), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
         "-DMAM_SANITIZE=ON", "-DMAM_BUILD_TESTS=ON"],
        [cmake, "--build", str(build), "--target", "fuzz_validate"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return build / "fuzz_validate"


def test_fuzz_validation_and_kernels_under_sanitizers(fuzz_binary):
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=86"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=87"
    proc = subprocess.run([str(fuzz_binary), str(CASES), "20240601"], capture_output=True,
                          text=True, env=env, timeout=300)
    report = proc.stdout + proc.stderr
    assert "AddressSanitizer" not in report and "runtime error" not in report, report[-4000:]
    assert "LeakSanitizer" not in report, report[-4000:]
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{report[-4000:]}"
    summary = dict(re.findall(r"(\w+)=(\d+)", proc.stdout))
    assert int(summary["cases"]) >= CASES
    assert int(summary["mismatches"]) == 0 and int(summary["bad_messages"]) == 0
    # both sides were exercised: many valid nodes ran the kernels, and every check fired
    assert int(summary["valid"]) >= CASES // 5
    assert int(summary["kernel_runs"]) >= 4 * (CASES // 5)
    assert int(summary["prepared"]) >= CASES // 5  # mam_prepare_requant ran on valid nodes
    for status in ("MAM_ERR_TENSOR_COUNT", "MAM_ERR_TYPE", "MAM_ERR_SHAPE", "MAM_ERR_LENGTH",
                   "MAM_ERR_ROW_COUNT", "MAM_ERR_COLUMN", "MAM_ERR_ACTIVATION",
                   "MAM_ERR_OPTIONS", "MAM_ERR_QUANT"):
        assert int(summary[status]) > 100, f"{status} fired only {summary[status]} times"
    print(proc.stdout.strip())
