"""`pip install mam-tf` is light; what needs an extra says which one, in one line.

The truth the extras are checked against is written here, by hand: which distribution provides
each optional module, and which must stay out of the base install.
"""
import importlib.machinery
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

from mam_tf.common import extras

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

#: optional module -> the distribution pip installs for it
DISTRIBUTION = {"wfdb": "wfdb", "pywt": "PyWavelets", "scipy": "scipy",
                "matplotlib": "matplotlib", "neurokit2": "neurokit2", "pytest": "pytest",
                "nbclient": "nbclient", "nbformat": "nbformat", "ray": "ray"}
#: never in the base install: the reproductions', the benchmarks', the tests' and the C build's
HEAVY = {"wfdb", "PyWavelets", "scipy", "matplotlib", "neurokit2", "cmake", "pytest", "ray"}


def _names(requirements):
    import re

    return {re.split(r"[<>=!~\[;\s]", r, maxsplit=1)[0].lower() for r in requirements}


def test_base_install_is_the_keras_side_and_the_converter():
    base = _names(PROJECT["dependencies"])
    assert not base & {h.lower() for h in HEAVY}, base & {h.lower() for h in HEAVY}
    assert {"tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy"} <= base


def test_each_optional_module_is_installed_by_the_extra_named_for_it():
    assert set(extras.EXTRA_OF) == set(DISTRIBUTION)
    optional = PROJECT["optional-dependencies"]
    for module, extra in extras.EXTRA_OF.items():
        assert DISTRIBUTION[module].lower() in _names(optional[extra]), (module, extra)
    assert "cmake" in _names(optional["deploy"])
    # [test] brings every other extra, so the whole suite runs after `pip install -e .[test]`.
    assert "mam-tf[deploy,experiments,bench,cluster]" in optional["test"]


class _HideWfdb(importlib.machinery.PathFinder):
    """The path finder, as it would be were wfdb not installed."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name == "wfdb" else super().find_spec(name, path, target)


@pytest.fixture
def no_wfdb(monkeypatch):
    import mam_tf  # noqa: F401  (installs the finder)

    meta = [(_HideWfdb if f is importlib.machinery.PathFinder else f) for f in sys.meta_path]
    monkeypatch.setattr(sys, "meta_path", meta)
    monkeypatch.delitem(sys.modules, "wfdb", raising=False)


def test_a_missing_extra_is_named_on_import_and_not_on_probe(no_wfdb, tmp_path):
    from ecg_data.records import read_record_lead

    (tmp_path / "100.hea").write_text("")
    with pytest.raises(ModuleNotFoundError) as info:
        read_record_lead(tmp_path / "100")
    text = str(info.value)
    assert info.value.name == "wfdb" and "\n" not in text, text
    assert "pip install 'mam-tf[experiments]'" in text, text
    assert importlib.util.find_spec("wfdb") is None  # probes still see "not installed"
    import numpy  # noqa: F401  (an installed module is untouched)


def test_a_command_needing_a_missing_extra_fails_with_one_line(no_wfdb, tmp_path, capsys):
    from mam_tf.cli import main

    (tmp_path / "100.hea").write_text("")
    assert main(["data", "records", str(tmp_path / "100")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mam-tf data records: error: No module named 'wfdb'"), err
    assert "mam-tf[experiments]" in err, err
