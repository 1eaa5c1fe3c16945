"""Broken WFDB records get one clear line naming the record and the problem, or a counted
skip: never a traceback, never NaN windows.

Each case is written with wfdb's own writer and then damaged the way such files are found:
a missing or truncated signal file, a header that states more samples than the file holds,
no MLII lead, NaN or flat-line samples, a record shorter than one window, an empty folder, a
sampling rate the resampler cannot take.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

wfdb = pytest.importorskip("wfdb")

from ecg_data import UnusableRecord, load_record_windows  # noqa: E402

FS = 360


def _write(folder, name, signal=None, names=("MLII", "V5"), fs=FS):
    folder.mkdir(parents=True, exist_ok=True)
    if signal is None:
        t = np.arange(FS * 4) / FS
        signal = np.stack([np.sin(2 * np.pi * 1.2 * t), np.cos(2 * np.pi * 1.2 * t)], 1)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * signal.shape[1], sig_name=list(names),
                p_signal=signal, fmt=["212"] * signal.shape[1], write_dir=str(folder))
    return folder / name


def _signal():
    t = np.arange(FS * 4) / FS
    return np.stack([np.sin(2 * np.pi * 1.2 * t), np.cos(2 * np.pi * 1.2 * t)], 1)


def _missing_dat(d):
    p = _write(d, "r1")
    os.remove(f"{p}.dat")
    return p


def _truncated_dat(d):
    p = _write(d, "r2")
    data = open(f"{p}.dat", "rb").read()
    open(f"{p}.dat", "wb").write(data[: len(data) // 3])
    return p


def _header_lies(d):
    p = _write(d, "r3")
    lines = open(f"{p}.hea").read().splitlines()
    first = lines[0].split()
    first[3] = str(int(first[3]) * 5)  # the record line's sample count
    lines[0] = " ".join(first)
    open(f"{p}.hea", "w").write("\n".join(lines) + "\n")
    return p


def _no_mlii(d):
    return _write(d, "r4", names=("V1", "V5"))


def _nan_samples(d):
    s = _signal()
    s[100:150, 0] = np.nan
    return _write(d, "r5", s)


def _flat_line(d):
    s = _signal()
    s[:, 0] = 0.25
    return _write(d, "r6", s)


def _shorter_than_a_window(d):
    return _write(d, "r7", _signal()[:100])


def _odd_rate(d):
    return _write(d, "r8", fs=0.5)


# (make the record, the exception, words the one line must hold besides the record's name)
CASES = [
    (_missing_dat, ValueError, ["r1.dat", "missing"]),
    (_truncated_dat, ValueError, ["r2.dat", "truncated"]),
    (_header_lies, ValueError, ["r3.dat", "7200 samples", "overstates"]),
    (_no_mlii, UnusableRecord, ["no lead 'MLII'", "'V1'"]),
    (_nan_samples, ValueError, ["50 non-finite samples", "sample 100"]),
    (_flat_line, UnusableRecord, ["flat", "0.25"]),
    (_shorter_than_a_window, UnusableRecord, ["shorter than one window"]),
    (_odd_rate, ValueError, ["0.5 Hz", "256 Hz"]),
]


@pytest.mark.parametrize("make, error, words", CASES, ids=[c[0].__name__ for c in CASES])
def test_a_broken_record_is_one_line_naming_it(tmp_path, make, error, words):
    base = make(tmp_path / "rec")
    with pytest.raises(error) as info:
        load_record_windows(base)
    message = str(info.value)
    assert f"'{base}'" in message and "\n" not in message, message
    assert all(w in message for w in words), message
    out = subprocess.run([sys.executable, "-m", "mam_tf.cli", "data", "records", str(base)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and base.name in lines[0], out.stderr


def test_an_empty_folder_says_it_holds_no_record(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no WFDB record"):
        load_record_windows(tmp_path / "none")


def test_a_folder_skips_unusable_records_and_counts_them(tmp_path, capsys):
    d = tmp_path / "db"
    _write(d, "good")
    for make in (_no_mlii, _flat_line, _shorter_than_a_window):
        make(d)
    skipped = []
    with pytest.warns(UserWarning, match="skipping"):
        x = load_record_windows(d, skipped=skipped)
    # the good record alone: 4 s at 360 Hz -> 1440 samples at 256 Hz... cut into 256-sample windows
    assert x.shape == (len(range(0, 4 * 256 - 256 + 1, 256)), 256)
    assert np.isfinite(x).all()
    assert sorted(name for name, _ in skipped) == ["r4", "r6", "r7"]
    from mam_tf.cli import main

    assert main(["data", "records", str(d)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 record(s)" in printed and "is flat" in printed


def test_a_folder_stops_at_a_damaged_record_naming_it(tmp_path):
    d = tmp_path / "db"
    _write(d, "good")
    _truncated_dat(d)
    with pytest.raises(ValueError, match="r2.dat' holds"):
        load_record_windows(d)
