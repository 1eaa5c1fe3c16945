"""tflm_ops/ as TFLite-Micro lays out a kernel, and the builds that follow it.

Every build of the core takes its file list from ``tflm_ops/sources.cmake`` while the build
caches (``mam_tf.deploy.native``, ``mam_tf.device.mcu``) hash what is on disk: a C file added to
``src/`` but not to the list would be hashed yet never compiled, and an edit of the list itself
must invalidate both caches.
"""
import re
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
    core_key, fw_key = native._source_hash(ops), mcu.build_key()
    lists = ops / "sources.cmake"
    lists.write_text(lists.read_text() + "\n# changed\n")
    assert native._source_hash(ops) != core_key
    assert mcu.build_key() != fw_key
    core_key, fw_key = native._source_hash(ops), mcu.build_key()
    (ops / "src" / "new_part.c").write_text("/* a new file of the core */\n")
    assert native._source_hash(ops) != core_key
    assert mcu.build_key() != fw_key
    fw_key = mcu.build_key()
    glue = ops / "tflm" / "mam_sparse_op.cc"  # compiled into the whole-model firmware
    glue.write_text(glue.read_text() + "\n// changed\n")
    assert mcu.build_key() != fw_key
