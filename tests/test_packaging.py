"""`pip install mam-tf` from a wheel (not editable) carries and runs everything a checkout does.

An sdist is built from a copy of the repository's packaged files, a wheel from that sdist (as
pip builds one from PyPI), and the wheel is unpacked into a folder that a fresh Python process
puts first on its path. That process must find the C sources inside the package, build the C
core from them into an empty cache, convert a model and run it on the core (never the numpy
fallback), with the same integers as the numpy reference; the firmware sources `bench mcu`
builds must be there too, file for file as the repository tracks them.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: What the sdist is built from (the rest of the checkout is not packaged).
_PACKAGED = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "mam_tf", "ecg_data",
             "tflm_ops")

_CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import numpy as np

    site = Path(sys.argv[1]).resolve()
    import mam_tf
    assert Path(mam_tf.__file__).resolve().is_relative_to(site), mam_tf.__file__
    from mam_tf.deploy import check, native, runtime
    from mam_tf.device import mcu

    ops = site / "mam_tf" / "_native" / "tflm_ops"
    assert native._SOURCE_DIR == ops, native._SOURCE_DIR
    assert mcu._OPS == ops, mcu._OPS
    lib = native.library_path()  # built now, from the packaged sources
    assert lib.resolve().is_relative_to(Path(os.environ["MAM_TF_CACHE"]).resolve()), lib
    assert mcu.build_key()  # hashes the packaged firmware sources

    from mam_tf import MAMDense
    from mam_tf.deploy.convert import convert
    from mam_tf.train.compat import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12,))
    model = keras.Model(inp, MAMDense(6, activation="relu", name="m",
                                      bias_initializer="random_normal")(inp))
    w = model.get_layer("m").kernel.numpy()
    w[np.random.default_rng(0).random(w.shape) < 0.5] = 0.0  # a pruned layer
    model.get_layer("m").kernel.assign(w)
    data = np.random.default_rng(1).standard_normal((64, 12)).astype(np.float32)
    tfl = convert(model, data, mode="int8")
    assert check.check_model(tfl)[1] == []
    core = runtime.Interpreter(tfl, backend="core")
    assert core.backend == "core"
    x = core.quantize_input(data)
    y_core = core.run_raw(x)
    y_ref = runtime.Interpreter(tfl, backend="reference").run_raw(x)
    np.testing.assert_array_equal(y_core, y_ref)
    assert np.unique(y_core).size > 3  # not a constant output
    print("OK", lib)
""")


@pytest.mark.slow
def test_wheel_from_sdist_runs_the_c_core_and_carries_the_firmware(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH: the C core cannot be built")
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("build", "build-*", "__pycache__", "*.egg-info", "*.pyc")
    for name in _PACKAGED:
        s = REPO / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=ignore)
        else:
            shutil.copy2(s, src / name)
    # The PEP 517 hooks pip calls, with the setuptools already installed (no download).
    subprocess.run([sys.executable, "-c",
                    "from setuptools import build_meta as b; b.build_sdist('dist')"],
                   cwd=src, check=True, capture_output=True, text=True)
    (sdist,) = (src / "dist").glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        in_sdist = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(sdist), "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)

    tracked = subprocess.run(["git", "ls-files", "tflm_ops"], cwd=REPO, capture_output=True,
                             text=True)
    if tracked.returncode != 0 or not tracked.stdout:
        pytest.skip("not a git checkout: the tracked tflm_ops/ files are unknown")
    ops_files = set(tracked.stdout.split())
    assert ops_files <= in_sdist, sorted(ops_files - in_sdist)
    packaged = {"tflm_ops/" + n.split("mam_tf/_native/tflm_ops/", 1)[1] for n in names
                if n.startswith("mam_tf/_native/tflm_ops/")}
    assert packaged == ops_files, (sorted(ops_files - packaged), sorted(packaged - ops_files))
    assert "mam_tf/train/fused_kernel/mam_fused_op.cc" in names  # the fused op's sources

    env = {k: v for k, v in os.environ.items() if k not in ("MAM_TF_CORE_LIB", "PYTHONPATH")}
    # An empty cache, so the core is built from the wheel's sources; the fused training kernel
    # (whose sources the wheel carries, checked above) stays off: compiling it takes a minute.
    env.update(PYTHONPATH=str(site), MAM_TF_CACHE=str(tmp_path / "cache"), MAM_TF_FUSED="0")
    run = subprocess.run([sys.executable, "-c", _CHILD, str(site)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "OK" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
