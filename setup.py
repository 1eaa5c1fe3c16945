"""Packaging hook: the wheel carries the C sources of the ops (``tflm_ops/``) as package data.

The tree stays at the repository's root, where a firmware engineer looks for it (and where it is
laid out as TFLite-Micro lays out a kernel); ``build_py`` copies it into the built package as
``mam_tf/_native/tflm_ops``, where :func:`mam_tf._native.tflm_ops_dir` finds it after a
non-editable install. The sdist carries the tree itself (``MANIFEST.in``), so a wheel built from
the sdist gets it the same way. Everything else is declared in ``pyproject.toml``.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TFLM_OPS = Path(__file__).resolve().parent / "tflm_ops"
#: Never packaged: local build folders and Python caches.
_IGNORE = shutil.ignore_patterns("build", "build-*", "build_*", "__pycache__", "*.pyc")


class BuildPyWithTflmOps(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's tflm_ops/ in place
        if not (TFLM_OPS / "CMakeLists.txt").is_file():
            raise FileNotFoundError(f"tflm_ops/ is missing from {TFLM_OPS.parent}: the wheel "
                                    "must carry the C sources the package builds on first use")
        dest = Path(self.build_lib) / "mam_tf" / "_native" / "tflm_ops"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(TFLM_OPS, dest, ignore=_IGNORE)


setup(cmdclass={"build_py": BuildPyWithTflmOps})
