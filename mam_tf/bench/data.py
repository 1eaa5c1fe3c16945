"""Benchmark: ECGSYN windows per second, ecg_data vs neurokit2, measured in the same run.

    mam-tf bench data --windows 100000

neurokit2 (``pip install mam-tf[bench]``) is timed two ways: one ``ecg_simulate(method="ecgsyn")``
call per window (what per-window heart rates and phases need; slow, so timed on a small subset
and the rate extrapolated, as printed), and one long trace at a single heart rate sliced into
windows (the cheapest way to get many windows from it, without per-window heart rates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from ecg_data.synthetic import synthetic_windows
from ecg_data.windows import scale_windows
from mam_tf.common import machine

__all__ = ["run_benchmark", "save_plot", "add_bench_command"]


def run_benchmark(
    windows=100_000,
    length=256,
    fs=256,
    heart_rate=(60.0, 100.0),
    workers=None,
    single_windows=8192,
    nk_windows=20,
    nk_trace_windows=240,
    seed=0,
    log=print,
):
    """Time ours and neurokit2's ECGSYN; returns a dict of the figures (and logs them)."""
    res = {"machine": machine.describe()}
    workers = workers or os.cpu_count() or 1
    res["sizes"] = {
        "windows": windows, "length": length, "fs": fs, "heart_rate": list(heart_rate),
        "workers": workers, "single_windows": min(single_windows, windows),
        "nk_windows": nk_windows, "nk_trace_windows": nk_trace_windows,
    }
    m = res["machine"]
    log("ECG data benchmark: ECGSYN windows per second, ecg_data vs neurokit2, same run")
    log(machine.line(m))
    log(f"sizes: {windows} windows x {length} samples at {fs} Hz, heart rate "
        f"{heart_rate[0]:g}-{heart_rate[1]:g} bpm, no noise, scaled to [0, 1] per window")

    t = time.perf_counter()
    x = synthetic_windows(windows, length, fs, heart_rate, seed=seed, workers=workers)
    dt = time.perf_counter() - t
    res["ours"] = {"windows": windows, "seconds": dt, "windows_per_s": windows / dt,
                   "workers": workers}
    plural = "es" if workers > 1 else ""
    log(f"ours, {workers} worker process{plural} (start-up included): {windows} windows in {dt:.2f} s "
        f"= {windows / dt:,.0f} windows/s")
    assert x.shape == (windows, length)

    n1 = min(single_windows, windows)
    t = time.perf_counter()
    synthetic_windows(n1, length, fs, heart_rate, seed=seed + 1, workers=1)
    dt1 = time.perf_counter() - t
    res["ours_1_process"] = {"windows": n1, "seconds": dt1, "windows_per_s": n1 / dt1}
    log(f"ours, 1 process: {n1} windows in {dt1:.2f} s = {n1 / dt1:,.0f} windows/s")

    try:
        t = time.perf_counter()
        import neurokit2 as nk
        res["machine"]["neurokit2"] = nk.__version__
        log(f"neurokit2 {nk.__version__} (import took {time.perf_counter() - t:.1f} s, not counted)")
    except ImportError:
        log("neurokit2 is not installed (pip install 'mam-tf[bench]'): no baseline, no ratio")
        return res

    rng = np.random.default_rng(seed)
    hrs = rng.uniform(heart_rate[0], heart_rate[1], nk_windows)
    out = np.empty((nk_windows, length), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        for i, hr in enumerate(hrs):
            sig = nk.ecg_simulate(duration=length / fs, sampling_rate=fs, heart_rate=float(hr),
                                  noise=0, method="ecgsyn", random_state=i)
            out[i] = scale_windows(np.asarray(sig)[:length])
        dtn = time.perf_counter() - t
    rate_call = nk_windows / dtn
    res["neurokit2_per_window"] = {"windows": nk_windows, "seconds": dtn, "windows_per_s": rate_call,
                                   "extrapolated_seconds": windows / rate_call}
    log(f"neurokit2, one ecg_simulate call per window (per-window heart rate): measured on "
        f"{nk_windows} windows, {dtn:.2f} s = {rate_call:,.1f} windows/s; extrapolated to "
        f"{windows} windows: {windows / rate_call:,.0f} s")

    mid = 0.5 * (heart_rate[0] + heart_rate[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        sig = nk.ecg_simulate(duration=nk_trace_windows * length / fs, sampling_rate=fs,
                              heart_rate=mid, noise=0, method="ecgsyn", random_state=seed)
        xs = scale_windows(np.asarray(sig)[: nk_trace_windows * length].reshape(-1, length))
        dtt = time.perf_counter() - t
    rate_trace = len(xs) / dtt
    res["neurokit2_sliced_trace"] = {"windows": len(xs), "seconds": dtt, "windows_per_s": rate_trace,
                                     "heart_rate": mid, "extrapolated_seconds": windows / rate_trace}
    log(f"neurokit2, one {nk_trace_windows * length / fs:g}-s trace at {mid:g} bpm sliced into "
        f"{len(xs)} windows (one heart rate for all): {dtt:.2f} s = {rate_trace:,.1f} windows/s; "
        f"extrapolated to {windows} windows: {windows / rate_trace:,.0f} s")

    ours = res["ours"]["windows_per_s"]
    ours1 = res["ours_1_process"]["windows_per_s"]
    res["ratio"] = {
        "vs_per_window": ours / rate_call, "vs_sliced_trace": ours / rate_trace,
        "1_process_vs_per_window": ours1 / rate_call, "1_process_vs_sliced_trace": ours1 / rate_trace,
    }
    r = res["ratio"]
    log(f"ratio ours / neurokit2: {r['vs_per_window']:,.0f}x vs per-window calls, "
        f"{r['vs_sliced_trace']:,.0f}x vs the sliced trace ({workers} processes); "
        f"{r['1_process_vs_per_window']:,.0f}x and {r['1_process_vs_sliced_trace']:,.0f}x "
        f"with 1 process (neurokit2 runs in 1)")
    return res


def _average_beat(sig, hr, fs):
    from scipy.signal import find_peaks

    sig = (sig - sig.min()) / (sig.max() - sig.min())
    pk = find_peaks(sig, height=0.6, distance=int(0.4 * 60 / hr * fs))[0]
    pre, post = int(0.35 * fs), int(0.5 * fs)
    pk = pk[(pk >= pre) & (pk + post < len(sig))]
    return np.stack([sig[p - pre : p + post] for p in pk]).mean(axis=0), pre


def save_plot(path, fs=256, heart_rate=80.0, seed=0):
    """PNG: a few windows of the data set, and the average beat next to neurokit2's ECGSYN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xn = synthetic_windows(4, 256, fs, (60, 100), snr_db=25, seed=seed, return_heart_rate=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    t = np.arange(256) / fs
    for i in range(4):
        axes[0].plot(t, xn[0][i] + 1.1 * i, lw=1, label=f"{xn[1][i]:.0f} bpm")
    axes[0].set(title="data-set windows (25 dB SNR, each scaled to [0, 1])", xlabel="s", yticks=[])
    axes[0].legend(fontsize=7, loc="upper right")
    long = synthetic_windows(2, 20 * fs, fs, heart_rate, scale=None, seed=seed)
    ours = np.mean([_average_beat(w, heart_rate, fs)[0] for w in long], axis=0)
    pre = int(0.35 * fs)
    tb = (np.arange(ours.size) - pre) / fs
    axes[1].plot(tb, ours, label="ecg_data", lw=2)
    try:
        import neurokit2 as nk

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = nk.ecg_simulate(duration=20, sampling_rate=fs, heart_rate=heart_rate, noise=0,
                                  method="ecgsyn", random_state=seed)
        theirs, _ = _average_beat(np.asarray(ref), heart_rate, fs)
        r = np.corrcoef(ours, theirs)[0, 1]
        axes[1].plot(tb, theirs, "--", label=f"neurokit2 ECGSYN (r = {r:.4f})", lw=1.5)
    except ImportError:
        pass
    axes[1].set(title=f"average beat at {heart_rate:g} bpm", xlabel="s from R peak")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _add_arguments(p):
    from mam_tf.common.cliargs import add_deprecated, add_out

    p.add_argument("--windows", type=int, default=100_000,
                   help="windows generated by ecg_data (default: %(default)s, the data set's size)")
    p.add_argument("--length", type=int, default=256, help="samples per window (default: %(default)s)")
    p.add_argument("--fs", type=float, default=256, help="sampling rate, Hz (default: %(default)s)")
    p.add_argument("--hr-min", type=float, default=60.0, help="lowest heart rate, bpm (default: %(default)s)")
    p.add_argument("--hr-max", type=float, default=100.0, help="highest heart rate, bpm (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for ecg_data (default: one per CPU)")
    p.add_argument("--single-windows", type=int, default=8192,
                   help="windows for the 1-process measurement of ecg_data (default: %(default)s)")
    p.add_argument("--nk-windows", type=int, default=20,
                   help="windows for neurokit2's one-call-per-window timing, extrapolated "
                        "(default: %(default)s)")
    p.add_argument("--nk-trace-windows", type=int, default=240,
                   help="windows in neurokit2's single long trace (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_out(p, "also write the figures as JSON to this file")
    add_deprecated(p, "--json", "-o/--out", dest="out")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="also plot example windows and the average beat against neurokit2's")
    p.set_defaults(func=_run)
    return p


def _run(args):
    res = run_benchmark(
        windows=args.windows, length=args.length, fs=args.fs, heart_rate=(args.hr_min, args.hr_max),
        workers=args.workers, single_windows=args.single_windows, nk_windows=args.nk_windows,
        nk_trace_windows=args.nk_trace_windows, seed=args.seed,
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
        print(f"figures written to {args.out}")
    if args.plot:
        save_plot(args.plot, fs=args.fs, seed=args.seed)
        print(f"plot written to {args.plot}")
    return 0


_DESCRIPTION = (
    "Time ECGSYN window generation: ecg_data's vectorized generator against neurokit2's "
    "ecg_simulate(method='ecgsyn') called once per window (timed on --nk-windows windows and "
    "extrapolated) and as one long trace sliced into windows, all in the same run. Prints the "
    "machine, the sizes, windows/s and the ratios."
)


def add_bench_command(subparsers):
    """Add ``data`` (this benchmark) to an argparse subparsers object, e.g. ``mam-tf bench``'s."""
    p = subparsers.add_parser("data", help="windows/s of the ECGSYN generator vs neurokit2",
                              description=_DESCRIPTION)
    return _add_arguments(p)
