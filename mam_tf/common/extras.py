"""The optional dependencies of mam-tf and the extra of ``pyproject.toml`` that installs each.

``pip install mam-tf`` gives the layer, pruning, quantization-aware training and the converter;
the rest comes with an extra: ``[deploy]`` (CMake, which builds the C core the host runtime, the
checker and ``bench mcu`` use), ``[experiments]`` (the reproductions: WFDB records, wavelets,
signal processing, figures), ``[bench]`` (the ECGSYN baseline and the benchmark figures),
``[cluster]`` (Ray, for ``mam-tf reproduce --ray``), ``[test]`` (all of them and the test
runner). CMake is a program, not a module: a missing one
is reported by :mod:`mam_tf.deploy.native` when it builds the core.

:func:`install` puts a last-resort import finder at the end of ``sys.meta_path``: when one of
these modules is not installed (every other finder has passed), the import fails with a
``ModuleNotFoundError`` whose one line names the extra to install. An installed module is never
touched, and code that probes with ``try: import x / except ImportError`` still sees an
``ImportError`` (and ``importlib.util.find_spec(x)`` still returns None).
"""
from __future__ import annotations

import sys

#: top-level module -> the extra that installs it
EXTRA_OF = {
    "wfdb": "experiments",
    "pywt": "experiments",
    "scipy": "experiments",
    "matplotlib": "experiments",
    "neurokit2": "bench",
    "ray": "cluster",
    "pytest": "test",
    "nbclient": "test",
    "nbformat": "test",
}


def missing_message(module: str) -> str:
    """The one line for a missing optional module, e.g. ``No module named 'wfdb': ...``."""
    extra = EXTRA_OF[module]
    return (f"No module named '{module}': it comes with mam-tf's [{extra}] extra "
            f"(pip install 'mam-tf[{extra}]')")


class _MissingExtraFinder:
    """Reached only for a module no other finder found: says which extra installs it."""

    def find_spec(self, name, path=None, target=None):
        # Top-level names only (a submodule's parent is imported first), and only inside an
        # `import` statement: a probe (importlib.util.find_spec) must still get None. The
        # caller of importlib's _find_spec tells which (CPython's import machinery).
        if name in EXTRA_OF and sys._getframe(2).f_code.co_name == "_find_and_load_unlocked":
            raise ModuleNotFoundError(missing_message(name), name=name)
        return None


def install() -> None:
    """Appends the finder to ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MissingExtraFinder) for f in sys.meta_path):
        sys.meta_path.append(_MissingExtraFinder())
