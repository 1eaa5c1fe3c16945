"""Command line for the data: ``mam-tf data synth|records|download`` (argparse).

``add_data_commands(subparsers)`` plugs the ``data`` command into another program's parser
(``mam-tf``'s); ``python -m ecg_data.cli data ...`` runs it alone.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["add_data_commands", "main"]


def _run_synth(args):
    from .dataset import build_synthetic_dataset, synthetic_dataset_path

    hr = (args.hr_min, args.hr_max)
    cache_dir = False if args.no_cache else args.cache_dir
    kw = dict(splits=tuple(args.splits))
    t = time.perf_counter()
    data = build_synthetic_dataset(
        args.windows, args.length, args.fs, hr, args.snr_db, args.seed, cache_dir=cache_dir,
        progress=args.progress, workers=args.workers, **kw,
    )
    dt = time.perf_counter() - t
    sizes = ", ".join(f"{k} {v.shape[0]}" for k, v in data.items())
    print(f"ECGSYN data set: {sizes} windows of {args.length} samples at {args.fs:g} Hz, "
          f"heart rate {hr[0]:g}-{hr[1]:g} bpm, "
          f"{'no noise' if args.snr_db is None else f'SNR {args.snr_db:g} dB'}, seed {args.seed} "
          f"({dt:.1f} s)")
    if cache_dir is not False:
        path = synthetic_dataset_path(
            args.windows, args.length, args.fs, hr, args.snr_db, args.seed, cache_dir=cache_dir, **kw
        )
        print(f"cached in {path}")
    return 0


def _run_records(args):
    import numpy as np

    from .records import load_record_windows

    import warnings

    skipped = []
    with warnings.catch_warnings():  # each skip is counted and listed below instead
        warnings.filterwarnings("ignore", message="skipping: ")
        x = load_record_windows(args.path, lead=args.lead, fs=args.fs, length=args.length,
                                overlap=args.overlap, skipped=skipped)
    print(f"{x.shape[0]} windows of {x.shape[1]} samples, lead {args.lead} at {args.fs:g} Hz "
          f"from '{args.path}'")
    if skipped:
        print(f"skipped {len(skipped)} record(s):")
        for _, reason in skipped:
            print(f"  {reason.split(': ', 1)[-1]}")
    if args.out:
        np.savez(args.out, windows=x)
        print(f"written to {args.out}")
    return 0


def _run_download(args):
    from mam_tf.common.cliargs import required_out

    from .records import download_records

    required_out(args)
    dest = download_records(args.out, database=args.database, records=args.records or "all")
    print(f"PhysioNet database {args.database} downloaded into {dest}")
    return 0


def add_data_commands(subparsers):
    """Add the ``data`` command (``synth``, ``records``, ``download``) to argparse subparsers.

    Every leaf sets ``func``: ``args.func(args)`` runs it and returns an exit code.
    """
    from mam_tf.common.cliargs import add_deprecated, add_out

    data = subparsers.add_parser(
        "data",
        help="ECG data: synthetic ECGSYN data set, windows of WFDB records",
        description="ECG windows for the models: the synthetic ECGSYN data set of the paper "
        "(100 000 windows, 80/10/10), windows of local PhysioNet/WFDB records, and downloads.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="{synth,records,download}", required=True)

    s = sub.add_parser(
        "synth",
        help="build (or load from cache) the synthetic ECGSYN data set",
        description="Generate ECGSYN windows (McSharry et al. 2003), heart rate uniform per "
        "window, random phase, optional white noise, each window scaled to [0, 1], split "
        "train/val/test and cached as .npz under a key made of all parameters.",
    )
    s.add_argument("--windows", type=int, default=100_000, help="number of windows (default: %(default)s)")
    s.add_argument("--length", type=int, default=256, help="samples per window (default: %(default)s)")
    s.add_argument("--fs", type=float, default=256, help="sampling rate, Hz (default: %(default)s)")
    s.add_argument("--hr-min", type=float, default=60.0, help="lowest heart rate, bpm (default: %(default)s)")
    s.add_argument("--hr-max", type=float, default=100.0, help="highest heart rate, bpm (default: %(default)s)")
    s.add_argument("--snr-db", type=float, default=None,
                   help="add white Gaussian noise at this SNR in dB (default: none; the group's "
                        "code uses 25/35/45)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    s.add_argument("--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VAL", "TEST"), help="split fractions (default: 0.8 0.1 0.1)")
    s.add_argument("--cache-dir", default=None,
                   help="cache directory (default: $MAM_TF_DATA_DIR or ~/.cache/mam-tf/ecg_data)")
    s.add_argument("--no-cache", action="store_true", help="generate without reading or writing a cache")
    s.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU); the data do not depend on it")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default; --no-progress: none)")
    s.set_defaults(func=_run_synth)

    r = sub.add_parser(
        "records",
        help="cut windows from local WFDB records (e.g. MIT-BIH)",
        description="Read one lead of a WFDB record (or of every record in a directory), "
        "resample it (polyphase), cut windows and scale each to [0, 1].",
    )
    r.add_argument("path", help="record path without extension (e.g. mitdb/100) or a directory")
    r.add_argument("--lead", default="MLII", help="lead name (default: %(default)s)")
    r.add_argument("--fs", type=float, default=256, help="output sampling rate, Hz (default: %(default)s)")
    r.add_argument("--length", type=int, default=256, help="samples per window (default: %(default)s)")
    r.add_argument("--overlap", type=int, default=0, help="samples shared by consecutive windows (default: %(default)s)")
    add_out(r, "write the windows to this .npz (key 'windows')")
    r.set_defaults(func=_run_records)

    d = sub.add_parser(
        "download",
        help="download a PhysioNet database with wfdb (needs internet)",
        description="Download a PhysioNet database (default: MIT-BIH Arrhythmia) with wfdb's "
        "downloader.",
    )
    d.add_argument("--database", default="mitdb", help="PhysioNet database name (default: %(default)s)")
    add_out(d, "the folder to download into", required=True, metavar="DIR")
    add_deprecated(d, "--dest", "-o/--out", dest="out")
    d.add_argument("--records", nargs="*", default=None, help="record names (default: all)")
    d.set_defaults(func=_run_download)
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ecg_data.cli", description="ecg_data commands")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{data}")
    add_data_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # a user error: one line, argparse's exit status
        parser.exit(2, f"{parser.prog} data {args.data_command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
