"""ecg_data.records: local WFDB records written with wfdb.wrsamp, read back as windows."""

import argparse

import numpy as np
import pytest
import wfdb

import ecg_data
from ecg_data.cli import add_data_commands

FS_IN = 360  # MIT-BIH's rate


def _tone(t):
    """A test signal with content well inside the 128-Hz band of the 256-Hz output."""
    return 0.8 * np.sin(2 * np.pi * 3.0 * t) + 0.3 * np.sin(2 * np.pi * 17.0 * t + 0.4) + 0.5


def _write(directory, name, p_signal, sig_name=("MLII", "V1"), fs=FS_IN):
    p_signal = np.asarray(p_signal, dtype=np.float64)
    if p_signal.ndim == 1:
        p_signal = p_signal[:, None]
    wfdb.wrsamp(
        name, fs=fs, units=["mV"] * p_signal.shape[1], sig_name=list(sig_name),
        p_signal=p_signal, fmt=["16"] * p_signal.shape[1], write_dir=str(directory),
    )
    return directory / name


@pytest.fixture
def record(tmp_path):
    t = np.arange(20 * FS_IN) / FS_IN  # 20 s
    return _write(tmp_path, "100", np.stack([_tone(t), np.cos(2 * np.pi * 5 * t)], axis=1))


def test_record_is_resampled_to_256_hz_and_windowed(record):
    x = ecg_data.load_record_windows(record, scale=None)
    assert x.dtype == np.float32
    assert x.shape == (20, 256)  # 20 s at 256 Hz = 5120 samples = 20 windows
    t = np.arange(x.size) / 256.0
    err = np.abs(x.ravel() - _tone(t))
    # Away from the two ends, the polyphase filter reproduces the band-limited signal to well
    # below the 16-bit ADC step of wrsamp's auto gain plus the filter's passband ripple.
    assert err[64:-64].max() < 2e-3


def test_windows_are_scaled_per_window_like_the_synthetic_data(record):
    raw = ecg_data.load_record_windows(record, scale=None).astype(np.float64)
    x = ecg_data.load_record_windows(record)
    np.testing.assert_array_equal(x.min(axis=1), 0.0)
    np.testing.assert_array_equal(x.max(axis=1), 1.0)
    np.testing.assert_allclose(x, ecg_data.scale_windows(raw), atol=1e-6)


def test_lead_by_name_or_index_and_other_rate_and_length(record):
    v1 = ecg_data.load_record_windows(record, lead="V1", fs=128, length=64, scale=None)
    assert v1.shape == (20 * 128 // 64, 64)
    t = np.arange(v1.size) / 128.0
    assert np.abs(v1.ravel() - np.cos(2 * np.pi * 5 * t))[32:-32].max() < 2e-3
    np.testing.assert_array_equal(v1, ecg_data.load_record_windows(record, lead=1, fs=128, length=64, scale=None))
    # The path may name the header file.
    np.testing.assert_array_equal(
        ecg_data.load_record_windows(f"{record}.hea", lead="V1", fs=128, length=64, scale=None), v1
    )


def test_overlap_shifts_windows_by_length_minus_overlap(record):
    x = ecg_data.load_record_windows(record, overlap=192, scale=None)
    assert x.shape == (1 + (5120 - 256) // 64, 256)
    np.testing.assert_array_equal(x[1:, :192], x[:-1, 64:])


def test_a_directory_concatenates_its_records_in_name_order(tmp_path):
    t = np.arange(3 * FS_IN) / FS_IN
    _write(tmp_path, "b", np.stack([_tone(t), t], axis=1))
    _write(tmp_path, "a", np.stack([_tone(t) + 1.0, t], axis=1))
    x = ecg_data.load_record_windows(tmp_path, scale=None)
    a = ecg_data.load_record_windows(tmp_path / "a", scale=None)
    b = ecg_data.load_record_windows(tmp_path / "b", scale=None)
    assert len(a) == len(b) == 3
    np.testing.assert_array_equal(x, np.concatenate([a, b]))


def test_directory_skips_records_without_the_lead_with_a_warning(tmp_path):
    t = np.arange(3 * FS_IN) / FS_IN
    _write(tmp_path, "100", np.stack([_tone(t), t], axis=1))
    _write(tmp_path, "102", np.stack([_tone(t), t], axis=1), sig_name=("V5", "V2"))
    with pytest.warns(UserWarning, match=r"record '.*102' has no lead 'MLII'"):
        x = ecg_data.load_record_windows(tmp_path)
    assert x.shape == (3, 256)
    with pytest.raises(ValueError, match="no record of directory"):
        with pytest.warns(UserWarning):
            ecg_data.load_record_windows(tmp_path, lead="II")


def test_missing_record_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"record '.*/nothere' not found"):
        ecg_data.load_record_windows(tmp_path / "nothere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no WFDB record"):
        ecg_data.load_record_windows(empty)


def test_unknown_lead_lists_the_leads(record):
    with pytest.raises(ValueError, match=r"record '.*100' has no lead 'V5'; leads are \['MLII', 'V1'\]"):
        ecg_data.load_record_windows(record, lead="V5")
    with pytest.raises(ValueError, match=r"has no channel 2; it has 2 channels"):
        ecg_data.load_record_windows(record, lead=2)


def test_record_shorter_than_one_window_is_an_error(tmp_path):
    short = _write(tmp_path, "short", _tone(np.arange(300) / FS_IN), sig_name=("MLII",))
    with pytest.raises(ValueError, match=r"record '.*short' is shorter than one window: 300 samples"):
        ecg_data.load_record_windows(short)


def test_non_finite_samples_are_an_error_naming_the_record(tmp_path):
    sig = _tone(np.arange(4 * FS_IN) / FS_IN)
    sig[500] = np.nan
    bad = _write(tmp_path, "bad", sig, sig_name=("MLII",))
    with pytest.raises(ValueError, match=r"record '.*bad' lead 'MLII' has 1 non-finite samples \(first at sample 500"):
        ecg_data.load_record_windows(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(length=0), "length is 0"), (dict(overlap=256), "overlap is 256"),
     (dict(fs=0), "fs is 0"), (dict(scale="dataset"), "scale is 'dataset'")],
)
def test_bad_arguments_are_named(record, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ecg_data.load_record_windows(record, **kwargs)


def test_download_uses_wfdbs_downloader(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(wfdb, "dl_database", lambda db, dl_dir, records: calls.append((db, dl_dir, records)))
    assert ecg_data.download_records(tmp_path / "mitdb", records=["100"]) == tmp_path / "mitdb"
    assert calls == [("mitdb", str(tmp_path / "mitdb"), ["100"])]

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(wfdb, "dl_database", offline)
    with pytest.raises(RuntimeError, match="downloading PhysioNet database 'mitdb'.*no network"):
        ecg_data.download_records(tmp_path / "x")


def test_cli_data_records_writes_windows(record, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="mam-tf")
    add_data_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "w.npz"
    args = parser.parse_args(["data", "records", str(record), "--overlap", "128", "--out", str(out)])
    assert args.func(args) == 0
    assert "39 windows of 256 samples" in capsys.readouterr().out
    with np.load(out) as f:
        np.testing.assert_array_equal(f["windows"], ecg_data.load_record_windows(record, overlap=128))
