"""The `mam-tf` command line: help texts and the convert -> run round trip."""
import subprocess
import sys

import numpy as np
import pytest

from mam_tf import MAMDense, keras
from mam_tf.cli import build_parser, main


@pytest.mark.parametrize("argv", [[], ["bench"], ["convert"], ["run"], ["reproduce"], ["reproduce", "mwscas"], ["bench", "train"], ["bench", "data"], ["data"]])
def test_every_command_explains_itself(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv + ["--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "convert" in capsys.readouterr().out


def test_convert_then_run_from_the_command_line(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,))
    model = keras.Model(inp, keras.layers.Dense(12)(MAMDense(6, activation="relu", name="m")(inp)))
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).uniform(0, 1, (40, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "m.tflite"
    main(["convert", str(tmp_path / "m.keras"), "--data", str(tmp_path / "x.npy"), "-o", str(out),
          "--header", str(tmp_path / "m.h")])
    text = capsys.readouterr().out
    assert "MAM_SPARSE" in text and out.exists() and (tmp_path / "m.h").exists()
    main(["run", str(out), "--data", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")])
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (40, 12)
    np.testing.assert_allclose(y, model.predict(x, verbose=0), atol=0.05 * np.abs(y).max())


def test_convert_refusal_is_a_clean_message(tmp_path):
    inp = keras.Input((4,))
    keras.Model(inp, MAMDense(2, beta=0.5, name="half")(inp)).save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(SystemExit, match="MAMDense 'half': beta is 0.5"):
        main(["convert", str(tmp_path / "m.keras"), "--data", str(tmp_path / "x.npy"),
              "-o", str(tmp_path / "m.tflite")])
    assert not (tmp_path / "m.tflite").exists()


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "mam_tf.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "mam-tf" in proc.stdout


def test_readme_demo_command_passes_its_arguments_to_the_demo():
    """`bash scripts/demo.sh ARGS` sets up the environment and hands ARGS to
    `mam-tf reproduce mwscas --scale demo`."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # MAM_TF_NO_INSTALL: the test venv is used as it is (an install would repoint it here).
    env = {**os.environ, "MAM_TF_VENV": sys.prefix, "MAM_TF_NO_INSTALL": "1",
           "PYTHONPATH": str(root)}
    proc = subprocess.run(["bash", str(root / "scripts" / "demo.sh"), "--help"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--train-records" in proc.stdout and "usage: mam-tf reproduce mwscas" in proc.stdout
