"""The C side names exactly what mam_tf/deploy/options.py defines (no TFLM needed: the sources are read).

The TFLM glue reads the custom options by key, the core checks the version and the
activation codes, the Python registerer adds the ops by name: if any of them drifted from
``mam_tf.deploy.options``, a converted model would be refused (or misread) on the device while the
host runtime accepted it.
"""
import re
from pathlib import Path

from mam_tf.deploy import options

TFLM_OPS = Path(__file__).resolve().parent.parent / "tflm_ops"
GLUE = (TFLM_OPS / "tflm" / "mam_sparse_op.cc").read_text()
REGISTERER = (TFLM_OPS / "tflm" / "python_registerer.cc").read_text()


def _code(text):
    """C/C++ source without comments, so that a key in a comment does not count."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def test_glue_option_keys_are_exactly_those_of_options_py():
    keys = re.findall(r'constexpr char (kKey\w+)\[\] = "([^"]*)";', _code(GLUE))
    assert sorted(k for _, k in keys) == sorted(options.KEYS), keys
    read = re.findall(r"ReadIntOption\(\s*map\s*,\s*(kKey\w+)", _code(GLUE))
    assert sorted(read) == sorted(name for name, _ in keys), read  # each read, once
    # No key read any other way (a literal straight into the map).
    assert not re.search(r'map\s*\[\s*"', _code(GLUE))


def test_core_checks_the_version_of_options_py():
    core = _code("\n".join(f.read_text() for f in sorted((TFLM_OPS / "src").rglob("*.c"))))
    versions = re.findall(r"d->version != (\d+)", core)
    assert versions == [str(options.VERSION)], versions


def test_core_activation_codes_are_those_of_options_py():
    header = _code((TFLM_OPS / "include" / "mam_sparse" / "core.h").read_text())
    acts = {int(v): k for k, v in re.findall(r"#define MAM_ACT_(\w+) (\d+)", header)}
    assert acts == options.ACTIVATIONS


def test_registerer_adds_both_ops_under_the_names_of_options_py():
    code = _code(REGISTERER)
    added = re.findall(r'AddCustom\(\s*"(\w+)"\s*,\s*tflite::Register_(\w+)\(\)\s*\)', code)
    assert sorted(added) == sorted([(options.MAM_SPARSE, options.MAM_SPARSE),
                                    (options.MAC_SPARSE, options.MAC_SPARSE)]), added
    name = re.findall(r'extern "C" bool (\w+)\(tflite::PythonOpsResolver\* \w+\)', code)
    exported = re.findall(r"global:\s*(\w+);", (TFLM_OPS / "tflm" / "python_exports.map").read_text())
    assert name == exported == ["mam_tf_register_ops"], (name, exported)
