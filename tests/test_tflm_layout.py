"""tflm_ops/ as TFLite-Micro lays out a kernel, and the builds that follow it.

Every build of the core takes its file list from ``tflm_ops/sources.cmake`` while the build
caches (``mam_tf.deploy.native``, ``mam_tf.device.mcu``) hash what is on disk: a C file added to
``src/`` but not to the list would be hashed yet never compiled, and an edit of the list itself
must invalidate both caches.
"""
import re
import textwrap
import shutil
from pathlib import Path

from mam_tf.deploy import native
from mam_tf.device import mcu

TFLM_OPS = Path(__file__).resolve().parent.parent / "tflm_ops"


def _listed(var):
    """The files sources.cmake puts in ``var``, relative to tflm_ops/."""
    text = (TFLM_OPS / "sources.cmake").read_text()
    body = re.search(r"set\(%s\s+(.*?)\)" % var, text, flags=re.S).group(1)
    return sorted(p.replace("${_mam_ops}/", "") for p in body.split())


def test_sources_cmake_lists_every_c_file_of_the_core():
    on_disk = sorted(str(p.relative_to(TFLM_OPS)) for p in (TFLM_OPS / "src").rglob("*.c"))
    listed = sorted(_listed("MAM_SPARSE_CORE_SOURCES") + _listed("MAM_SPARSE_CORTEX_M_SOURCES"))
    assert listed == on_disk
    assert _listed("MAM_SPARSE_CORTEX_M_SOURCES") == ["src/cortex_m/sparse_kernels.c"]
    assert _listed("MAM_SPARSE_GLUE_SOURCES") == ["tflm/mam_sparse_op.cc"]


def test_public_headers_are_in_include_and_only_there():
    """The glue and a firmware project see include/mam_sparse/; src/internal.h stays private."""
    assert sorted(p.name for p in (TFLM_OPS / "include" / "mam_sparse").iterdir()) == ["core.h"]
    for f in (TFLM_OPS / "tflm").glob("*.[ch]*"):
        assert "internal.h" not in f.read_text(), f


def test_build_caches_follow_the_source_lists_and_new_files(monkeypatch, tmp_path):
    ops = tmp_path / "tflm_ops"
    shutil.copytree(TFLM_OPS, ops, ignore=shutil.ignore_patterns("build*"))
    monkeypatch.setattr(mcu, "_OPS", ops)
    for var in ("MAM_TF_CMSIS_NN_LIB", "MAM_TF_CMSIS_NN_INCLUDE", "MAM_TF_TFLM_LIB"):
        monkeypatch.delenv(var, raising=False)
    core_key, fw_key = native._build_key(ops), mcu.build_key()
    lists = ops / "sources.cmake"
    lists.write_text(lists.read_text() + "\n# changed\n")
    assert native._build_key(ops) != core_key
    assert mcu.build_key() != fw_key
    core_key, fw_key = native._build_key(ops), mcu.build_key()
    (ops / "src" / "new_part.c").write_text("/* a new file of the core */\n")
    assert native._build_key(ops) != core_key
    assert mcu.build_key() != fw_key
    fw_key = mcu.build_key()
    glue = ops / "tflm" / "mam_sparse_op.cc"  # compiled into the whole-model firmware
    glue.write_text(glue.read_text() + "\n// changed\n")
    assert mcu.build_key() != fw_key


def test_a_cmake_project_builds_the_core_from_sources_cmake_alone(tmp_path):
    """What a firmware project does: include() the list, compile it, call the API."""
    import subprocess

    import pytest

    if shutil.which("cmake") is None or shutil.which("cc") is None:
        pytest.skip("cmake or a C compiler is missing")
    (tmp_path / "CMakeLists.txt").write_text(textwrap.dedent(f"""
        cmake_minimum_required(VERSION 3.16)
        project(user_app C)
        include({TFLM_OPS.as_posix()}/sources.cmake)
        add_executable(app main.c ${{MAM_SPARSE_CORE_SOURCES}} ${{MAM_SPARSE_CORTEX_M_SOURCES}})
        target_include_directories(app PRIVATE ${{MAM_SPARSE_INCLUDE_DIR}})
        target_link_libraries(app PRIVATE m)
    """))
    (tmp_path / "main.c").write_text(textwrap.dedent("""
        #include <stdio.h>
        #include "mam_sparse/core.h"
        int main(void) {
          int32_t mult = 0, shift = 0;
          char msg[128];
          int st = mam_quantize_multiplier(0.375, &mult, &shift);
          int bad = mam_validate(NULL, msg, sizeof msg);
          printf("%d %ld %ld %s|%s\\n", st, (long)mult, (long)shift, mam_status_name(bad), msg);
          return 0;
        }
    """))
    build = tmp_path / "build"
    for cmd in (["cmake", "-S", str(tmp_path), "-B", str(build)],
                ["cmake", "--build", str(build)]):
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = subprocess.run([str(build / "app")], capture_output=True, text=True, check=True)
    # 0.375 = 0.75 * 2^-1: multiplier round(0.75 * 2^31), shift -1 (TFLite's QuantizeMultiplier).
    assert out.stdout.strip() == \
        "0 1610612736 -1 MAM_ERR_ARGUMENT|MAM_SPARSE: no layer description"
