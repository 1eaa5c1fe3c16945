"""`pip install mam-tf` from a wheel (not editable) carries and runs everything a checkout does.

An sdist is built from a copy of the repository's packaged files, a wheel from that sdist (as
pip builds one from PyPI), and pip installs the wheel, not editable, into a fresh virtual
environment; everything then runs there, from a folder outside the checkout. The wheel's
dependencies are not downloaded or unpacked again (TensorFlow alone is gigabytes): the fresh
environment reads them from the test environment's site-packages through a ``.pth`` line placed
after its own, so pip installs the wheel with ``--no-deps``, and the test checks that nothing of
mam_tf comes from anywhere but the fresh environment (the checkout's editable install is not
visible there: its ``.pth`` hook is not run for a folder a ``.pth`` line adds).

In that environment: the C core is built from the wheel's sources into an empty cache, and a
converted model runs on it (never the numpy fallback) with the same integers as the numpy
reference; the firmware sources `bench mcu` builds are there, file for file as the repository
tracks them. Then the smoke of a user's first hour, through the installed ``mam-tf`` command: a
MAMDense model trains, is pruned and converted, ``mam-tf check`` passes it, the host runtime
runs it on the C core, ``mam-tf bench mcu --quick`` runs, and ``mam-tf export-tflm`` writes a
folder whose sources compile for Cortex-M7 through its own CMakeLists.txt. The smoke prints its
wall time.
"""
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import sysconfig
import venv
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
    import importlib.metadata as md
    dist = md.distribution("mam-tf")
    assert Path(dist.locate_file("mam_tf")).resolve().is_relative_to(site), dist.locate_file("")
    assert not any(f.name.startswith("__editable__") for f in site.iterdir())
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


_SMOKE = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    import numpy as np

    start = time.monotonic()
    mam = str(Path(sys.executable).parent / "mam-tf")  # the installed console script

    def cli(*args):
        t = time.monotonic()
        run = subprocess.run([mam, *args], capture_output=True, text=True)
        assert run.returncode == 0, (args, run.stdout[-3000:], run.stderr[-3000:])
        print(f"mam-tf {args[0]}: {time.monotonic() - t:.0f} s", flush=True)
        return run.stdout

    from mam_tf import MAMDense, VanishingContributions, pruning, keras
    from mam_tf.deploy.convert import convert
    from mam_tf.deploy.runtime import Interpreter
    from mam_tf._native import tflm_ops_dir

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (256, 32)).astype("float32")
    y = np.sort(x, axis=1)[:, ::4]
    inp = keras.Input((32,))
    model = keras.Model(inp, MAMDense(8, beta=1.0)(inp))
    model.compile("adam", "mse")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[VanishingContributions(length=2)])
    pruned = pruning.prune_magnitude(model, remaining=0.2)
    pruning.fine_tune(pruned, x, y, optimizer="adam", loss="mse", epochs=1, verbose=0)
    pruned = pruning.strip_pruning(pruned)
    kernel = pruned.layers[-1].get_weights()[0]
    assert 0 < np.count_nonzero(kernel) <= 0.25 * kernel.size, np.count_nonzero(kernel)
    Path("model.tflite").write_bytes(convert(pruned, x, mode="int8"))
    print(f"trained, pruned, converted: {time.monotonic() - start:.0f} s", flush=True)

    assert "model.tflite: ok" in cli("check", "model.tflite")
    interp = Interpreter("model.tflite")
    assert interp.backend == "core", interp.backend  # not the numpy fallback
    y_dev = interp.run(x)
    err = np.abs(y_dev - pruned.predict(x, verbose=0)).max()
    assert err < 0.05 * np.ptp(y_dev), err  # int8 of the Keras model, not noise
    assert "every kernel's output equals the host core's" in cli("bench", "mcu", "--quick")
    assert "MicroMutableOpResolver<1> (MAM_SPARSE)" in cli("export-tflm", "model.tflite",
                                                            "-o", "mam_tf_model")
    Path("fw").mkdir()
    Path("fw/CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\\nproject(fw C CXX ASM)\\n"
        "add_subdirectory(../mam_tf_model mam_tf_model)\\n")
    toolchain = tflm_ops_dir() / "firmware" / "cmake" / "arm-none-eabi-cortex-m7.cmake"
    for cmd in (["cmake", "-S", "fw", "-B", "fw/build", f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
                 "-DMAM_TF_CORE_ONLY=ON"], ["cmake", "--build", "fw/build"]):
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, (cmd, run.stdout[-3000:], run.stderr[-3000:])
    nm = subprocess.run(["arm-none-eabi-nm", "fw/build/mam_tf_model/libmam_sparse_core.a"],
                        capture_output=True, text=True, check=True).stdout
    assert " T mam_sparse_s8_armv7em" in nm  # the Cortex-M7 kernels, compiled
    print(f"SMOKE OK {time.monotonic() - start:.0f} s")
""")


def _fresh_venv(path: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed by pip, not editable; the wheel's
    dependencies read from this environment's site-packages (after the fresh one's own).
    Returns its python and its site-packages."""
    venv.create(path, with_pip=False, symlinks=True)
    python = path / "bin" / "python"
    fresh_site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                      "print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (fresh_site / "zz_mam_tf_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    run = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                          "--no-deps", "--no-index", "-q", str(wheel)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return python, fresh_site


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
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    smoke_start = time.monotonic()
    python, site = _fresh_venv(tmp_path / "venv", wheel)

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

    env = {k: v for k, v in os.environ.items()
           if k not in ("MAM_TF_CORE_LIB", "PYTHONPATH", "VIRTUAL_ENV")}
    # An empty cache, so the core is built from the wheel's sources; the fused training kernel
    # (whose sources the wheel carries, checked above) stays off: compiling it takes a minute.
    env.update(MAM_TF_CACHE=str(tmp_path / "cache"), MAM_TF_FUSED="0",
               PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}")
    work = tmp_path / "work"  # outside the checkout: nothing importable from the cwd
    work.mkdir()
    run = subprocess.run([str(python), "-c", _CHILD, str(site)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "OK" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]

    missing = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
    if missing and not os.environ.get("MAM_TF_REQUIRE_MCU"):
        pytest.skip(f"{', '.join(missing)} not on PATH: the smoke's Cortex-M7 steps cannot run")
    run = subprocess.run([str(python), "-c", _SMOKE], cwd=work, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0 and "SMOKE OK" in run.stdout, \
        run.stdout[-3000:] + run.stderr[-3000:]
    print(run.stdout)
    print(f"install smoke in a fresh venv: {time.monotonic() - smoke_start:.0f} s wall "
          f"(load average {os.getloadavg()[0]:.1f})")
