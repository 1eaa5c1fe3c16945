"""Real ECG records (PhysioNet's MIT-BIH Arrhythmia Database and alike) read with wfdb.

Records are read from local files (``100.hea`` + ``100.dat``); ``download_records`` fetches a
PhysioNet database with wfdb's own downloader for users with internet access. Nothing here
downloads implicitly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .windows import cut_windows, resample, scale_windows

__all__ = ["UnusableRecord", "load_record_windows", "read_record_lead", "list_records", "download_records",
           "bandpass_filter"]

_WHERE = "load_record_windows"


class UnusableRecord(ValueError):
    """A record that holds no window of the requested lead: it lacks the lead, the lead is
    flat, or the record is shorter than one window. A directory load skips such records."""


def _record_base(record_path) -> Path:
    """Record path without the ``.hea``/``.dat`` extension (wfdb's record name)."""
    p = Path(record_path)
    if p.suffix in (".hea", ".dat", ".atr", ".xws"):
        p = p.with_suffix("")
    return p


def list_records(directory) -> list[Path]:
    """The records of a directory (one per ``*.hea`` header), sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"list_records: '{d}' is not a directory")
    return sorted(p.with_suffix("") for p in d.glob("*.hea"))


def read_record_lead(record_path, lead="MLII", *, where=_WHERE):
    """One lead of a local WFDB record as physical units: ``(signal float64 [n], fs)``.

    ``lead`` is a signal name from the header (e.g. ``"MLII"``) or a channel index.
    """
    import wfdb

    base = _record_base(record_path)
    if not Path(f"{base}.hea").is_file():
        raise FileNotFoundError(f"{where}: record '{base}' not found (no file '{base}.hea')")
    try:
        header = wfdb.rdheader(str(base))
    except Exception as exc:
        raise ValueError(f"{where}: record '{base}' has an unreadable header: {exc}") from exc
    names = list(header.sig_name or [])
    if isinstance(lead, (int, np.integer)) and not isinstance(lead, bool):
        if not 0 <= lead < len(names):
            raise UnusableRecord(
                f"{where}: record '{base}' has no channel {lead}; it has {len(names)} "
                f"channels {names}"
            )
        channel = int(lead)
    else:
        if lead not in names:
            raise UnusableRecord(f"{where}: record '{base}' has no lead {lead!r}; leads are {names}")
        channel = names.index(lead)
    _check_signal_files(header, base, where)
    try:
        record = wfdb.rdrecord(str(base), channels=[channel], physical=True)
    except Exception as exc:
        raise ValueError(f"{where}: cannot read record '{base}': {exc}") from exc
    signal = np.asarray(record.p_signal[:, 0], dtype=np.float64)
    bad = ~np.isfinite(signal)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"{where}: record '{base}' lead {names[channel]!r} has {int(bad.sum())} non-finite "
            f"samples (first at sample {first}, {first / record.fs:.3f} s); clean or crop the record"
        )
    if signal.size and np.ptp(signal) == 0:
        raise UnusableRecord(
            f"{where}: record '{base}' lead {names[channel]!r} is flat: all {signal.size} "
            f"samples are {signal[0]:g} {(record.units or ['?'])[0]} (a lead that was off?)"
        )
    return signal, float(record.fs)


#: bytes per sample of the WFDB signal formats (wfdb's own table, for the size check)
_FORMAT_BYTES = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5,
                 "310": 4 / 3, "311": 4 / 3}


def _check_signal_files(header, base, where):
    """Each signal file the header names exists and is as long as the header says: wfdb's own
    errors for a missing or truncated file do not say which."""
    files = {}
    for name, fmt, offset in zip(header.file_name or [], header.fmt or [],
                                 header.byte_offset or [None] * len(header.file_name or [])):
        files.setdefault(name, []).append((str(fmt), int(offset or 0)))
    for name, signals in files.items():
        path = Path(base).parent / name
        if not path.is_file():
            raise ValueError(f"{where}: record '{base}': its signal file '{path}' is missing")
        per_sample = [_FORMAT_BYTES.get(fmt) for fmt, _ in signals]
        if None in per_sample or header.sig_len is None:
            continue  # a format without a fixed size: wfdb reads it
        need = int(np.ceil(sum(per_sample) * int(header.sig_len))) + max(o for _, o in signals)
        have = path.stat().st_size
        if have < need:
            raise ValueError(
                f"{where}: record '{base}': '{path.name}' holds {have} bytes but the header's "
                f"{header.sig_len} samples x {len(signals)} signals (format "
                f"{signals[0][0]}) need {need}: the file is truncated or the header overstates "
                "the length")


def bandpass_filter(signal, fs, band=(0.5, 40.0), order=4):
    """Zero-phase Butterworth band-pass of a signal sampled at ``fs`` Hz (forward-backward,
    second-order sections): removes baseline wander (below ``band[0]``) and mains / muscle
    noise (above ``band[1]``) before windowing. ``order`` is per pass (the response is applied
    twice). Raises ValueError naming the band if it does not fit below fs / 2."""
    from scipy import signal as sps

    lo, hi = (float(v) for v in band)
    if not 0.0 < lo < hi < fs / 2:
        raise ValueError(f"bandpass_filter: band is ({lo:g}, {hi:g}) Hz; need 0 < low < high < "
                         f"fs/2 = {fs / 2:g} Hz")
    sos = sps.butter(int(order), (lo, hi), btype="bandpass", fs=float(fs), output="sos")
    x = np.asarray(signal, np.float64)
    padlen = min(len(x) - 1, 3 * (2 * sos.shape[0] + 1))  # scipy's default, capped
    return sps.sosfiltfilt(sos, x, padlen=max(padlen, 0))


def _record_windows(base, lead, fs, length, overlap, scale, bandpass=None):
    signal, fs_in = read_record_lead(base, lead)
    if bandpass is not None:
        signal = bandpass_filter(signal, fs_in, bandpass)
    x = resample(signal, fs_in, fs, name=f"{_WHERE}: record '{base}'")
    if x.size < length:
        raise UnusableRecord(
            f"{_WHERE}: record '{base}' is shorter than one window: {signal.size} samples at "
            f"{fs_in:g} Hz = {x.size} samples at {fs:g} Hz < length {length}"
        )
    w = cut_windows(x, length, overlap, name=_WHERE)
    return scale_windows(w) if scale == "window" else w.astype(np.float32)


def load_record_windows(record_path, lead="MLII", fs=256, length=256, overlap=0, *, scale="window",
                        bandpass=None, skipped=None):
    """Windows ``float32 [n, length]`` of one lead of a local WFDB record, or of every record of
    a directory (concatenated in record-name order).

    The lead is resampled from the record's rate to ``fs`` with a polyphase filter (360 -> 256 Hz
    for MIT-BIH), cut into windows that start every ``length - overlap`` samples (the incomplete
    tail is dropped) and, like the synthetic data, min-max scaled to [0, 1] per window
    (``scale=None`` keeps physical units, e.g. mV). A constant window scales to zeros.
    ``bandpass=(low, high)`` (Hz, e.g. ``(0.5, 40)``) filters the lead first with
    :func:`bandpass_filter` (zero-phase Butterworth), at the record's own rate: real records
    carry baseline wander and mains interference that synthetic windows do not.

    Errors name the record and the problem: a missing record (FileNotFoundError); a missing or
    truncated signal file, a header that states more samples than the file holds, an unknown
    lead, a flat lead (every sample equal), a record shorter than one window, non-finite
    samples, a sampling rate :func:`ecg_data.resample` cannot take (ValueError). In a
    directory, records that lack the lead, are flat or are shorter than one window are skipped
    with a warning (MIT-BIH records 102 and 104 have no MLII), each appended to ``skipped`` (a
    list, if given) as ``(record name, reason)``; an error is raised if no record is left.
    Damaged records (truncated, non-finite, lying headers) stop the load with their error.
    """
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"{_WHERE}: length is {length!r}; must be an int >= 1")
    if not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < length:
        raise ValueError(f"{_WHERE}: overlap is {overlap!r}; must be an int in [0, length={length})")
    if not fs > 0:
        raise ValueError(f"{_WHERE}: fs is {fs!r}; must be > 0")
    if scale not in ("window", None):
        raise ValueError(f"{_WHERE}: scale is {scale!r}; must be 'window' or None")
    path = Path(record_path)
    if not path.is_dir():
        return _record_windows(_record_base(path), lead, fs, length, overlap, scale, bandpass)

    records = list_records(path)
    if not records:
        raise FileNotFoundError(f"{_WHERE}: directory '{path}' holds no WFDB record (*.hea)")
    parts, skips = [], [] if skipped is None else skipped
    for base in records:
        try:
            parts.append(_record_windows(base, lead, fs, length, overlap, scale, bandpass))
        except UnusableRecord as exc:
            warnings.warn(f"skipping: {exc}", stacklevel=2)
            skips.append((base.name, str(exc)))
    if not parts:
        raise ValueError(
            f"{_WHERE}: no record of directory '{path}' gave a window of lead {lead!r} "
            f"(skipped {[name for name, _ in skips]})"
        )
    return np.concatenate(parts, axis=0)


def download_records(dest_dir, database="mitdb", records="all"):
    """Download a PhysioNet database (default: MIT-BIH Arrhythmia, ``mitdb``) into ``dest_dir``
    with wfdb's downloader; needs internet access. Returns ``dest_dir`` as a Path.

    ``records``: ``"all"`` or a list of record names such as ``["100", "101"]``.
    """
    import wfdb

    dest = Path(dest_dir)
    os.makedirs(dest, exist_ok=True)
    try:
        wfdb.dl_database(database, dl_dir=str(dest), records=records)
    except Exception as exc:
        raise RuntimeError(
            f"download_records: downloading PhysioNet database {database!r} "
            f"(records {records!r}) into '{dest}' failed: {exc}"
        ) from exc
    return dest
