"""The `mam-tf` command line: help texts and the convert -> run round trip."""
import argparse
import subprocess
import sys

import numpy as np
import pytest

from mam_tf import MAMDense, keras
from mam_tf.cli import build_parser, main


def _commands(parser, path=()):
    """Every (command path, parser) of the `mam-tf` tree, found by walking argparse's
    sub-parsers (a new command is covered without being listed here)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


COMMANDS = dict(_commands(build_parser()))
#: the old spellings of output options, now hidden aliases of -o/--out
OLD_OUTPUTS = {"--output", "--dest", "--json"}


def test_the_walk_finds_every_command():
    # a floor, not the list: the walk above is what the other tests use
    for path in [(), ("convert",), ("run",), ("check",), ("fuzz",), ("bench", "mcu"),
                 ("bench", "train"), ("bench", "data"), ("reproduce", "biocas"),
                 ("reproduce", "mwscas"), ("data", "synth"), ("data", "records"),
                 ("data", "download")]:
        assert path in COMMANDS, path


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "mam-tf")
def test_every_command_explains_itself(path, capsys):
    parser = COMMANDS[path]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*path, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert parser.description, f"mam-tf {' '.join(path)} has no description"
    assert " ".join(parser.description.split())[:60] in text
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # a deprecated alias: hidden
            assert not set(action.option_strings) & set(text.split()), action.option_strings
            continue
        # a sub-command list shows each command with its one-line help
        shown = (action._choices_actions if isinstance(action, argparse._SubParsersAction)
                 else [action])
        for item in shown:
            names = item.option_strings or [item.metavar or item.dest]
            for name in names:
                assert name in text, f"mam-tf {' '.join(path)} --help does not name {name}"
            assert item.help, f"mam-tf {' '.join(path)}: {names[0]} has no help"
            assert " ".join(item.help.split()).split("%(")[0][:30] in text, names
        assert not set(action.option_strings) & OLD_OUTPUTS, (path, action.option_strings)


def test_every_command_that_writes_takes_dash_o_out():
    # (mam-tf reproduce belongs to the experiments, which take the same vocabulary on their own)
    writers = [p for p, parser in COMMANDS.items() if p[:1] != ("reproduce",)
               and any("--out" in a.option_strings for a in parser._actions)]
    for path in [("convert",), ("run",), ("fuzz",), ("bench", "train"), ("bench", "mcu"),
                 ("bench", "data"), ("data", "records"), ("data", "download")]:
        assert path in writers, path
    for path in writers:
        action = next(a for a in COMMANDS[path]._actions if "--out" in a.option_strings)
        assert action.option_strings == ["-o", "--out"] and action.dest == "out", path


@pytest.mark.parametrize("argv, dest, value, new", [
    (["convert", "m.keras", "--output", "m.tflite"], "out", "m.tflite", "-o/--out"),
    (["convert", "m.keras", "-o", "m.tflite", "--per-tensor"], "per_row", False, "--no-per-row"),
    (["convert", "m.keras", "-o", "m.tflite", "--allow-no-mam"], "require_mam", False,
     "--no-require-mam"),
    (["convert", "m.keras", "-o", "m.tflite", "--samples", "7"], "calibration_samples", 7,
     "--calibration-samples"),
    (["run", "m.tflite", "--data", "x.npy", "--output", "y.npy"], "out", "y.npy", "-o/--out"),
    (["bench", "train", "--json", "r.json"], "out", "r.json", "-o/--out"),
    (["bench", "data", "--json", "r.json"], "out", "r.json", "-o/--out"),
    (["bench", "mcu", "--rows", "12"], "units", 12, "--units"),
    (["bench", "mcu", "--cols", "34"], "inputs", 34, "--inputs"),
    (["data", "download", "--dest", "d"], "out", "d", "-o/--out"),
])
def test_old_flags_still_work_and_say_once_what_replaced_them(argv, dest, value, new, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    old = next(a for a in argv if a.startswith("--") and a not in ("--data",))
    assert len(err) == 1 and f"{old} is deprecated" in err[0] and f"use {new}" in err[0], err


def test_new_flags_set_the_api_arguments_of_their_name(capsys):
    args = build_parser().parse_args(["convert", "m.keras", "-o", "m.tflite", "--no-per-row",
                                      "--no-require-mam", "--calibration-samples", "9"])
    assert (args.per_row, args.require_mam, args.calibration_samples) == (False, False, 9)
    defaults = build_parser().parse_args(["convert", "m.keras", "-o", "m.tflite"])
    assert (defaults.per_row, defaults.require_mam, defaults.calibration_samples) == (True, True,
                                                                                      500)
    assert capsys.readouterr().err == ""  # the new spellings print no deprecation


def test_convert_without_out_is_refused_by_name(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "m.keras")]) == 2
    assert "mam-tf convert: error: -o/--out is required" in capsys.readouterr().err


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
    main(["run", str(out), "--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")])
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (40, 12)
    np.testing.assert_allclose(y, model.predict(x, verbose=0), atol=0.05 * np.abs(y).max())


def test_convert_refusal_is_a_clean_message(tmp_path, capsys):
    inp = keras.Input((4,))
    keras.Model(inp, MAMDense(2, beta=0.5, name="half")(inp)).save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    assert main(["convert", str(tmp_path / "m.keras"), "--data", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "m.tflite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mam-tf convert: error: "), err
    assert "MAMDense 'half': beta is 0.5" in err[0], err
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


# TensorFlow's own lines, as TensorFlow writes them (independent of mam_tf.common.quiet.NOISE)
TF_NOISE = ("oneDNN custom operations", "cuda drivers", "cuInit", "absl::InitializeLog",
            "fully_quantize:", "This TensorFlow binary is optimized", "cpu_feature_guard")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quiet")
    inp = keras.Input((12,))
    keras.Model(inp, MAMDense(6, activation="relu", name="m")(inp)).save(folder / "m.keras")
    np.save(folder / "x.npy", np.random.default_rng(0).uniform(0, 1, (40, 12)).astype(np.float32))
    return folder


def _convert_in_a_fresh_process(folder, *flags):
    import os

    # the user's own TF_CPP_MIN_LOG_LEVEL would decide instead of mam-tf: not set here
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "mam_tf.cli", *flags, "convert", str(folder / "m.keras"),
         "--data", str(folder / "x.npy"), "-o", str(folder / "m.tflite")],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout and "MAM_SPARSE" in proc.stdout  # its own results stay
    return proc.stderr


@pytest.mark.slow
def test_a_command_is_quiet_about_tensorflow_by_default_and_verbose_on_demand(keras_file):
    quiet = _convert_in_a_fresh_process(keras_file)
    noise = [line for line in quiet.splitlines() if any(n in line for n in TF_NOISE)]
    assert noise == [], noise
    assert not any(line.startswith(("I0", "W0")) for line in quiet.splitlines()), quiet
    loud = _convert_in_a_fresh_process(keras_file, "--verbose")
    # --verbose leaves TensorFlow at its own level: its start-up and converter lines come back
    assert any(n in loud for n in ("fully_quantize:", "oneDNN custom operations",
                                   "cuda drivers")), loud[-3000:]
