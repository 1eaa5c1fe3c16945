"""ecg_data.synthetic: the ECGSYN generator, its validity, determinism and the data-set builder."""

import argparse
import json
import math
import warnings

import numpy as np
import pytest
from scipy.signal import find_peaks

import ecg_data
from ecg_data import synthetic as S
from ecg_data.cli import add_data_commands

FS = 256
HR = (60.0, 100.0)


def _peaks(w, fs=FS):
    """R peaks of a window scaled to [0, 1]: maxima above 0.6, at least 0.25 s apart."""
    return find_peaks(w, height=0.6, distance=int(0.25 * fs))[0]


# --- shape, range, determinism -------------------------------------------------------------


def test_windows_are_float32_scaled_to_unit_range_per_window():
    x = ecg_data.synthetic_windows(300, seed=1)
    assert x.shape == (300, 256) and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(x.min(axis=1), 0.0)
    np.testing.assert_array_equal(x.max(axis=1), 1.0)


def test_same_seed_same_windows_other_seed_other_windows():
    a = ecg_data.synthetic_windows(50, seed=7)
    b = ecg_data.synthetic_windows(50, seed=7)
    c = ecg_data.synthetic_windows(50, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_output_does_not_depend_on_worker_count_and_is_prefix_stable():
    n = S.CHUNK_SIZE + 200  # two chunks, the second partial
    one = ecg_data.synthetic_windows(n, seed=3, workers=1)
    two = ecg_data.synthetic_windows(n, seed=3, workers=2)
    np.testing.assert_array_equal(one, two)
    # The first windows do not depend on how many windows were asked for.
    np.testing.assert_array_equal(ecg_data.synthetic_windows(40, seed=3), one[:40])
    np.testing.assert_array_equal(
        ecg_data.synthetic_windows(S.CHUNK_SIZE + 10, seed=3), one[: S.CHUNK_SIZE + 10]
    )


def test_windows_are_not_aligned_on_the_r_peak():
    x = ecg_data.synthetic_windows(400, seed=2)
    first_peak = np.array([np.argmax(w) for w in x])
    # A random phase per window spreads the position of the maximum over the whole window.
    hist, _ = np.histogram(first_peak, bins=4, range=(0, 256))
    assert hist.min() > 0.1 * len(x), hist


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_windows=-1), "n_windows is -1"),
        (dict(n_windows=4, length=1), "length is 1"),
        (dict(n_windows=4, heart_rate=(100, 60)), r"heart_rate is \(100, 60\)"),
        (dict(n_windows=4, snr_db=float("nan")), "snr_db is nan"),
        (dict(n_windows=4, scale="global"), "scale is 'global'"),
        (dict(n_windows=4, internal_rate=300), "internal_rate 300"),
        (dict(n_windows=4, workers=0), "workers is 0"),
        (dict(n_windows=4, seed=-1), "seed is -1"),
    ],
)
def test_bad_arguments_are_named_in_the_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ecg_data.synthetic_windows(**kwargs)


# --- the integration ----------------------------------------------------------------------


def _draws(n, q, model=None, length=256, seed=0):
    p = S._draw_chunk(seed, 0, HR, length, FS, model or S.EcgsynModel(), q)
    return {k: v[:n] for k, v in p.items()}


def test_rk4_affine_map_is_one_rk4_step():
    h = 0.013
    cz, c0, ch, c1 = S._rk4_coefficients(h)
    vec = S._rk4_coefficients_vec(np.array([h]))
    np.testing.assert_allclose([cz, c0, ch, c1], [v[0] for v in vec], rtol=1e-14)
    # On z' = -z the RK4 factor is the 4th-order Taylor polynomial of exp(-h).
    assert cz == pytest.approx(sum((-h) ** k / math.factorial(k) for k in range(5)), rel=1e-15)


def test_default_internal_rate_is_converged():
    model = S.EcgsynModel()
    q = S.DEFAULT_OVERSAMPLING
    z = S._simulate_block(_draws(24, q), 256, q, FS, model, HR)
    fine = S._simulate_block(_draws(24, 32 * q), 256, 32 * q, FS, model, HR)
    err = np.abs(ecg_data.scale_windows(z) - ecg_data.scale_windows(fine)).max()
    assert err < 2e-5, err


def test_fast_path_equals_literal_3d_rk4_when_rr_is_constant():
    # With a constant RR the literal RK4 of (x, y, z) (theta = atan2(y, x), respiration inside
    # the ODE) has no jump of w to trip on: both must agree to float precision.
    model = S.EcgsynModel(hr_std=0.0)
    p = _draws(6, 2, model)
    fast = S._simulate_block(p, 256, 2, FS, model, HR)
    ref = S._simulate_reference_3d(p, 256, 2, FS, model, HR)
    span = np.ptp(ref, axis=1)
    assert np.abs(fast - ref).max() / span.min() < 1e-5


def _with_long_history(p, q, model, history=20.0):
    """The same windows integrated from z = 0 over `history` s of the beats before them."""
    h = 1.0 / (q * FS)
    c = p["hr"].shape[0]
    rows = np.arange(c)

    def rr_at(t):
        i = np.floor(t).astype(int)
        f = t - i
        return (1 - f) * p["rr_series"][rows, i] + f * p["rr_series"][rows, i + 1]

    prev = [np.zeros(c)]
    while np.min(-prev[-1]) < history:
        t = prev[-1] - rr_at(p["s0"] + prev[-1])
        for _ in range(30):  # tau_{b-1} + RR(tau_{b-1}) = tau_b, by fixed point
            t = prev[-1] - rr_at(p["s0"] + t)
        prev.append(t)
    prev = np.stack(prev[::-1], axis=1)
    shift = np.ceil(-prev[:, 0].min() / h) * h
    tau = np.concatenate([prev[:, :-1], p["tau"]], axis=1) + shift
    w = 2 * np.pi * model.resp_freq
    return dict(
        hr=p["hr"], tau=tau, rr=np.diff(tau, axis=1, append=np.inf), rr_hist=p["rr_hist"],
        j0=p["j0"] + int(round(shift / h)), resp_phase=p["resp_phase"] - w * shift,
        row_offset=2.0 ** np.ceil(np.log2(max(tau.max(), (p["j0"].max() + shift / h + 256 * q) * h) + 1))
        * rows,
    )


def test_start_from_past_rr_intervals_matches_a_20_s_history_integration():
    model = S.EcgsynModel()
    q = S.DEFAULT_OVERSAMPLING
    p = _draws(64, q, model)
    z = S._simulate_block(p, 256, q, FS, model, HR)
    z_ref = S._simulate_block(_with_long_history(p, q, model), 256, q, FS, model, HR, z_init=np.zeros(64))
    err = np.abs(ecg_data.scale_windows(z) - ecg_data.scale_windows(z_ref)).max()
    # Left: the bilinear interpolation of the one-beat response table (and RK4's 1e-5).
    assert err < 2e-5, err
    # Without that start (z = 0 at the first R peak) the same windows are far off.
    z0 = S._simulate_block(p, 256, q, FS, model, HR, z_init=np.zeros(64))
    assert np.abs(ecg_data.scale_windows(z0) - ecg_data.scale_windows(z_ref)).max() > 1000 * err


# --- validity -----------------------------------------------------------------------------


@pytest.mark.parametrize("hr_std, tol", [(0.0, 0.1), (1.0, 1.0)])
def test_measured_heart_rate_matches_the_requested_one(hr_std, tol):
    # 30-s windows so that ~30-50 beats are averaged. Without heart-rate variability the only
    # error is the R-peak timing (1/fs); with the default 1 bpm variability, the 30-s mean may
    # drift from the requested mean by a fraction of that 1 bpm.
    model = S.EcgsynModel(hr_std=hr_std)
    x, hr = ecg_data.synthetic_windows(
        24, length=30 * FS, heart_rate=HR, seed=5, model=model, return_heart_rate=True
    )
    measured = np.array([60.0 / (np.diff(_peaks(w)).mean() / FS) for w in x])
    assert np.abs(measured - hr).max() < tol
    # The requested rates themselves cover the range.
    assert hr.min() >= HR[0] and hr.max() <= HR[1] and np.ptp(hr) > 0.5 * (HR[1] - HR[0])


def test_heart_rates_are_uniform_over_the_range():
    from scipy.stats import kstest

    _, hr = ecg_data.synthetic_windows(2000, seed=11, return_heart_rate=True)
    assert kstest(hr, "uniform", args=(HR[0], HR[1] - HR[0])).pvalue > 1e-3


def _average_beat(sig, hr, fs=FS):
    sig = (sig - sig.min()) / (sig.max() - sig.min())
    pk = find_peaks(sig, height=0.6, distance=int(0.4 * 60 / hr * fs))[0]
    pre, post = int(0.35 * fs), int(0.5 * fs)
    pk = pk[(pk >= pre) & (pk + post < len(sig))]
    assert len(pk) >= 10
    return np.stack([sig[p - pre : p + post] for p in pk]).mean(axis=0), pre


@pytest.mark.parametrize("hr", [60.0, 90.0])
def test_average_beat_matches_neurokit2_ecgsyn(hr):
    nk = pytest.importorskip("neurokit2")
    x = ecg_data.synthetic_windows(2, length=20 * FS, heart_rate=hr, scale=None, seed=1)
    ours = np.mean([_average_beat(w, hr)[0] for w in x], axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nk.ecg_simulate(duration=20, sampling_rate=FS, heart_rate=hr, noise=0,
                              method="ecgsyn", random_state=0)
    theirs, pre = _average_beat(np.asarray(ref), hr)
    assert np.corrcoef(ours, theirs)[0, 1] >= 0.9
    # P (before the QRS), Q, S and T (after) sit where ECGSYN puts them, within 2 samples.
    p_win, t_win = slice(0, pre - int(0.06 * FS)), slice(pre + int(0.1 * FS), None)
    q_win, s_win = slice(pre - 15, pre), slice(pre, pre + 15)
    for win, f in [(p_win, np.argmax), (t_win, np.argmax), (q_win, np.argmin), (s_win, np.argmin)]:
        assert abs(int(f(ours[win])) - int(f(theirs[win]))) <= 2


def test_noise_is_white_gaussian_at_the_requested_snr():
    n, snr = 400, 20.0
    clean = ecg_data.synthetic_windows(n, seed=4, scale=None).astype(np.float64)
    noisy = ecg_data.synthetic_windows(n, seed=4, snr_db=snr, scale=None).astype(np.float64)
    noise = noisy - clean
    measured = 10 * np.log10(clean.var(axis=1) / noise.var(axis=1))
    # Per window the noise power estimate has relative std sqrt(2/256) (0.38 dB); averaged over
    # 400 windows the mean is within 0.02 dB (1 sigma) of the target.
    assert abs(measured.mean() - snr) < 0.1
    assert measured.std() < 1.0
    # White: no correlation between neighbouring samples; zero mean.
    u = noise / noise.std(axis=1, keepdims=True)
    lag1 = np.mean(u[:, 1:] * u[:, :-1])
    assert abs(lag1) < 5 / np.sqrt(u[:, 1:].size)
    assert abs(u.mean()) < 5 / np.sqrt(u.size)
    # Scaled noisy windows are still in [0, 1].
    scaled = ecg_data.synthetic_windows(n, seed=4, snr_db=snr)
    assert scaled.min() == 0.0 and scaled.max() == 1.0


# --- the data set ---------------------------------------------------------------------------


def test_dataset_splits_and_cache(tmp_path, monkeypatch):
    data = ecg_data.build_synthetic_dataset(200, seed=9, cache_dir=tmp_path, progress=False, workers=1)
    assert set(data) == {"train", "val", "test"}
    assert [len(data[k]) for k in ("train", "val", "test")] == [160, 20, 20]
    assert all(v.dtype == np.float32 and v.shape[1] == 256 for v in data.values())
    np.testing.assert_array_equal(
        np.concatenate([data["train"], data["val"], data["test"]]),
        ecg_data.synthetic_windows(200, seed=9),
    )
    path = ecg_data.synthetic_dataset_path(200, seed=9, cache_dir=tmp_path)
    assert path.is_file()
    with np.load(path) as f:
        assert json.loads(str(f["params"]))["n_windows"] == 200

    # Second call: read from the cache, nothing generated.
    def boom(*a, **k):
        raise AssertionError("generated again instead of loading the cache")

    monkeypatch.setattr(S, "synthetic_windows", boom)
    again = ecg_data.build_synthetic_dataset(200, seed=9, cache_dir=tmp_path, progress=False)
    for k in data:
        np.testing.assert_array_equal(again[k], data[k])
    # Any parameter change is another key.
    assert ecg_data.synthetic_dataset_path(200, seed=9, snr_db=35, cache_dir=tmp_path) != path
    assert ecg_data.synthetic_dataset_path(200, seed=10, cache_dir=tmp_path) != path
    assert ecg_data.synthetic_dataset_path(200, seed=9, heart_rate=(60, 90), cache_dir=tmp_path) != path


def test_corrupt_cache_is_rebuilt(tmp_path):
    path = ecg_data.synthetic_dataset_path(30, seed=1, cache_dir=tmp_path)
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable cache"):
        data = ecg_data.build_synthetic_dataset(30, seed=1, cache_dir=tmp_path, progress=False)
    assert sum(len(v) for v in data.values()) == 30
    with np.load(path) as f:
        assert f["train"].shape == (24, 256)


def test_cli_data_synth_builds_the_cache(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="mam-tf")
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["data", "synth", "--windows", "50", "--seed", "2", "--snr-db", "35",
         "--cache-dir", str(tmp_path), "--no-progress", "--workers", "1"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "train 40, val 5, test 5" in out
    assert ecg_data.synthetic_dataset_path(50, seed=2, snr_db=35, cache_dir=tmp_path).is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "synth", "--help"])
    assert "--snr-db" in capsys.readouterr().out


def test_benchmark_prints_both_rates_and_the_ratio(capsys):
    pytest.importorskip("neurokit2")
    from mam_tf.cli import main

    assert main(["bench", "data", "--windows", "64", "--single-windows", "32", "--workers", "1",
                 "--nk-windows", "2", "--nk-trace-windows", "4"]) == 0
    out = capsys.readouterr().out
    for needle in ["machine: ", " cores", "64 windows x 256 samples", "ours, 1 worker", "ecg_simulate call per window",
                   "extrapolated", "sliced into 4 windows", "ratio ours / neurokit2"]:
        assert needle in out, needle
