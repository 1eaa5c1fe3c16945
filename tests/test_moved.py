"""The modules that moved to the layout by stage keep working under their old names for one
release, each import saying where the module went."""
import subprocess
import sys
import textwrap

import pytest

from mam_tf import _moved

# The flat modules of mam-tf 0.1 (before the layout by stage), written out here rather than
# read from the alias table, so that dropping an alias fails this test.
OLD_MODULES = ["layers", "ops", "fused", "training", "pruning", "quantization", "sparse",
               "reference", "options", "flatbuffer", "convert", "check", "fuzz", "runtime",
               "core", "sparse_op", "mcu", "bench_mcu", "bench_train"]


def _run(code):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def test_each_old_module_name_is_the_new_module_and_warns():
    out = _run(f"""
        import importlib, warnings
        for name in {OLD_MODULES!r}:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                old = importlib.import_module("mam_tf." + name)
            new = importlib.import_module({dict(_moved.MOVED)!r}["mam_tf." + name])
            assert old is new, (name, old, new)
            assert new.__name__ != "mam_tf." + name, new.__name__
            msgs = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
            assert any(f"mam_tf.{{name}} moved to {{new.__name__}}" in m for m in msgs), msgs
            print(name, new.__name__)
        """)
    assert len(out.stdout.split("\n")) > len(OLD_MODULES)


def test_the_warning_points_at_the_importing_line():
    out = _run("""
        import warnings
        warnings.simplefilter("always")
        import mam_tf.sparse  # the line the warning must name
        """)
    assert "<string>:4: MamTfDeprecationWarning: mam_tf.sparse moved to mam_tf.deploy.offset_csr" \
        in out.stderr, out.stderr


def test_import_mam_tf_loads_no_tensorflow_until_a_layer_is_asked_for():
    _run("""
        import sys
        import mam_tf
        assert "tensorflow" not in sys.modules and "tf_keras" not in sys.modules
        from mam_tf import MAMDense, pruning
        assert "tf_keras" in sys.modules
        assert MAMDense.__module__ == "mam_tf.train.layers"
        assert pruning.__name__ == "mam_tf.train.pruning"
        """)
