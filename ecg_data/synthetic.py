"""Synthetic ECG windows from the ECGSYN dynamical model (McSharry et al., IEEE TBME 2003).

The model
---------
ECGSYN moves a point on a 3-D trajectory::

    x' = a x - w y,   y' = a y + w x,   a = 1 - sqrt(x^2 + y^2),   w = 2 pi / RR(t)
    z' = - sum_i a_i dth_i exp(-dth_i^2 / (2 b_i^2)) - (z - z0(t)),  dth_i = (th - th_i) mod 2pi
    z0(t) = A sin(2 pi f_resp t)                                       (respiration, baseline)

with one Gaussian term per wave (P, Q, R, S, T); ``th = atan2(y, x)``, and the ECG is ``z``.
``RR(t)`` is the RR tachogram: a random process with a bimodal (LF 0.1 Hz / HF 0.25 Hz)
spectrum, mean ``60 / hr`` and standard deviation ``hr_std`` bpm; as in ECGSYN, ``w`` is held
constant from one R peak to the next (R-to-R interval = the tachogram at the first R peak).
The angles ``th_i`` and widths ``b_i`` are scaled with the mean heart rate as in ECGSYN
(``sqrt(hr/60)`` for the widths and the Q/S angles, its square root for the P/T angles).

How it is integrated, and why that is the 3-D trajectory
--------------------------------------------------------
ECGSYN starts on the limit cycle ``(x, y) = (1, 0)``; there ``a = 0`` stays zero, so the (x, y)
equations reduce *exactly* to ``th' = w(t)``. With ``w`` piecewise constant between R peaks,
``th`` is piecewise linear in time and is evaluated in closed form (no integration error).
The ``z`` equation is linear in ``z``: ``z' = g(t) - z``, with the Gaussian forcing ``g`` known at
every instant once ``th(t)`` is. It is integrated with the classical fixed-step RK4 at an internal
rate ``q * fs``; for a linear equation one RK4 step is *algebraically* the affine map
``z[k+1] = c_z z[k] + c_0 g(t_k) + c_h g(t_k + h/2) + c_1 g(t_k + h)``, so the whole integration
is a first-order recursive filter, run as numpy prefix sums over hundreds of windows at once
(the forcing, five Gaussians per half step, is the bulk of the work). The respiration term is
linear and slow: its exact (closed-form) response is added instead of being integrated.

Stability and rate: RK4 is stable on ``z' = -z`` for ``h < 2.78 s``, so any internal rate is
stable; the rate is chosen for accuracy (the R Gaussian is about 12 ms wide at 100 bpm).
``q = 2`` (512 Hz at fs = 256, ECGSYN's default internal rate) keeps scaled windows within
2e-5 of a 32x finer integration (tested); output samples are every q-th internal
sample, as in ECGSYN.
A literal RK4 of the 3-D (x, y, z) system with ``th = atan2(y, x)``, ``_simulate_reference_3d``,
is kept for the tests: with a constant RR they agree to 1e-6 (with heart-rate variability the
literal RK4 loses accuracy at the jumps of ``w`` between beats, where this closed form does not).

Start of a window: each window starts at a random instant of a beat (``u * RR``, u uniform,
after an R peak; windows are not aligned on an R peak). The integration starts at that R peak
with the exact ``z`` there, computed without integrating: over one beat of length RR the
linear ``z`` equation maps ``z_start`` to ``exp(-RR) z_start + I(hr, RR)``, where the one-beat
response ``I`` is tabulated once (``_beat_response_table``, over heart rate x RR/mean RR); so
the RR intervals of the ``HISTORY_S`` = 8 s of beats before the window (read backwards from
the same tachogram) give ``z`` at its first R peak; the respiration part has a closed-form
steady state. Starting from an arbitrary ``z`` instead would need several seconds of
integration to forget it (``z`` decays at 1/s). The windows agree with a 20-s integration of
their actual history to 2e-5 of their range (tested).

Scaling
-------
Each window is scaled to [0, 1] on its own (min-max per window) after the noise is added.
Per window because the same scaling must apply, without stored statistics, to real records whose
gain and baseline differ from record to record and drift within a record; because ECGSYN's raw
amplitude depends on the heart rate (z scales roughly with 1/w), so a data-set scaling would
encode the heart rate in the amplitude; and because it gives every window the full input range
the 16-bit quantized network sees on the microcontroller. Caveat: near 60 bpm, a 1-s window can
hold no complete R peak (the RR interval is longer than the window; about 0.2% of the windows at
60-100 bpm); its other waves are then stretched to [0, 1]. ``scale=None`` returns the model's
raw ``z`` (noise included) instead.

Noise: white Gaussian, per window, of variance ``var(clean window) / 10^(snr_db/10)``: the SNR
is relative to the window's AC power (an ECG's DC level is arbitrary).

Determinism: windows are generated in chunks of ``CHUNK_SIZE``; chunk ``c`` draws from
``SeedSequence(seed, spawn_key=(c,))`` (model and noise from two separate children), always for
a full chunk. So the output depends on the seed only, never on the number of worker processes,
and the first k windows of a call with n > k windows are those of a call with k windows.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
import multiprocessing

import numpy as np

from .windows import scale_windows

__all__ = ["EcgsynModel", "synthetic_windows", "add_noise", "CHUNK_SIZE", "GENERATOR_VERSION"]

#: Windows per independently seeded chunk. Part of the definition of the output: changing it
#: changes the windows a seed produces (hence also part of the data-set cache key).
CHUNK_SIZE = 1024

#: Bumped whenever the generator's output for given parameters changes (cache invalidation).
GENERATOR_VERSION = 1

_TWO_PI = 2.0 * math.pi
_RR_SERIES_LEN = 256  # seconds of tachogram per window, sampled at 1 Hz (ECGSYN's sfrr)
_HISTORY_MARGIN = 32.0  # seconds of tachogram kept before each window's start

#: Seconds of past beats (their RR intervals) that set z at the first R peak; what lies
#: further back weighs less than exp(-HISTORY_S) = 3e-4 and is taken as periodic, which is
#: exact but for heart-rate variability (a 1e-2 effect): about 3e-6 is left.
HISTORY_S = 8.0

#: Seconds integrated before each window, besides a random fraction of a beat (the window's
#: phase). None are needed: the integration starts at an R peak from the exact z there.
WARMUP_S = 0.0

#: Internal (integration) rate / fs. 2 gives ECGSYN's default 512 Hz at fs = 256.
DEFAULT_OVERSAMPLING = 2


@dataclass(frozen=True)
class EcgsynModel:
    """ECGSYN parameters (defaults: McSharry et al. 2003 / PhysioNet ecgsyn).

    Order of the waves: P, Q, R, S, T. ``theta_deg`` are the angles of the extrema in degrees,
    ``a`` the z-amplitudes, ``b`` the Gaussian widths (rad), all at 60 bpm.
    """

    theta_deg: tuple[float, ...] = (-70.0, -15.0, 0.0, 15.0, 100.0)
    a: tuple[float, ...] = (1.2, -5.0, 30.0, -7.5, 0.75)
    b: tuple[float, ...] = (0.25, 0.1, 0.1, 0.1, 0.4)
    hr_std: float = 1.0  # bpm
    lf_hf_ratio: float = 0.5
    f_lf: float = 0.1
    f_hf: float = 0.25
    f_lf_std: float = 0.01
    f_hf_std: float = 0.01
    resp_amplitude: float = 0.005
    resp_freq: float = 0.25

    def __post_init__(self):
        if not (len(self.theta_deg) == len(self.a) == len(self.b) and len(self.a) >= 1):
            raise ValueError(
                f"EcgsynModel: theta_deg, a and b must have the same length; got "
                f"{len(self.theta_deg)}, {len(self.a)}, {len(self.b)}"
            )
        if any(b <= 0 for b in self.b):
            raise ValueError(f"EcgsynModel: widths b must be > 0; got {self.b}")
        if self.hr_std < 0:
            raise ValueError(f"EcgsynModel: hr_std is {self.hr_std}; must be >= 0")

    def wave_params(self, hr):
        """Per-window angles (rad), amplitudes and widths, scaled with the mean heart rate ``hr``.

        Returns three arrays of shape ``[len(hr), n_waves]``.
        """
        hr = np.asarray(hr, dtype=np.float64)[:, None]
        hrfact = np.sqrt(hr / 60.0)
        hrfact2 = np.sqrt(hrfact)
        theta = np.deg2rad(np.asarray(self.theta_deg))[None, :]
        # ECGSYN: P and T angles scale with hrfact2, Q and S with hrfact, R stays at 0.
        # Generalised to any number of waves: the outermost ones (P, T) get hrfact2.
        n = len(self.a)
        tscale = np.ones((hr.shape[0], n))
        if n == 5:
            tscale = np.concatenate([hrfact2, hrfact, np.ones_like(hr), hrfact, hrfact2], axis=1)
        theta = theta * tscale
        a = np.broadcast_to(np.asarray(self.a, dtype=np.float64)[None, :], theta.shape)
        b = np.asarray(self.b, dtype=np.float64)[None, :] * hrfact
        return theta, a, b


# ---------------------------------------------------------------------------------------------
# Random draws (one chunk)


def _rr_spectrum(model: EcgsynModel, n: int) -> np.ndarray:
    """Amplitude of the RR process at the rfft frequencies k/n Hz (k = 0 .. n/2), ECGSYN's shape."""
    f = np.arange(n // 2 + 1) / n
    lf = model.lf_hf_ratio * np.exp(-0.5 * ((f - model.f_lf) / model.f_lf_std) ** 2) / model.f_lf_std
    hf = 1.0 * np.exp(-0.5 * ((f - model.f_hf) / model.f_hf_std) ** 2) / model.f_hf_std
    return np.sqrt(lf + hf)


def _chunk_rngs(seed: int, chunk_index: int):
    root = np.random.SeedSequence(entropy=seed, spawn_key=(chunk_index,))
    model_ss, noise_ss = root.spawn(2)
    return np.random.default_rng(model_ss), np.random.default_rng(noise_ss)


def _draw_chunk(seed, chunk_index, heart_rate, length, fs, model, q, warmup=None):
    """Random parameters of the ``CHUNK_SIZE`` windows of one chunk (always a full chunk).

    Returns a dict of per-window arrays: ``hr`` (mean heart rate), ``tau`` (R peaks, s, relative
    to the start of the integration grid, ``tau[:, 0] == 0``), ``rr`` (the RR interval that
    starts at each R peak), ``j0`` (internal-grid index of the window's first sample),
    ``resp_phase`` (respiration phase at grid time 0), and, for the tests, ``s0`` and
    ``rr_series`` (where the grid starts in the 1-Hz tachogram, and the tachogram).
    """
    warmup = WARMUP_S if warmup is None else float(warmup)
    rng, _ = _chunk_rngs(seed, chunk_index)
    c = CHUNK_SIZE
    lo, hi = heart_rate
    hr = lo + (hi - lo) * rng.random(c)
    u_phase = rng.random(c)
    resp_phase = _TWO_PI * rng.random(c)
    s0_frac = rng.random(c)
    n = _RR_SERIES_LEN
    spec_phase = _TWO_PI * rng.random((c, n // 2 + 1))

    # RR tachogram at 1 Hz: random-phase synthesis of ECGSYN's LF/HF spectrum, then set to the
    # requested mean and standard deviation (per series, as ECGSYN does).
    amp = _rr_spectrum(model, n)
    spec = amp[None, :] * np.exp(1j * spec_phase)
    spec[:, 0] = 0.0
    spec[:, -1] = spec[:, -1].real
    x = np.fft.irfft(spec, n=n, axis=1)
    x /= x.std(axis=1, keepdims=True)
    rrmean = 60.0 / hr
    rrstd = 60.0 * model.hr_std / hr**2
    rr_series = rrmean[:, None] + rrstd[:, None] * x
    if np.any(rr_series <= 0):
        raise ValueError(
            f"synthetic_windows: hr_std {model.hr_std} bpm is too large for heart rate "
            f"{hr[np.argmin(rr_series.min(axis=1))]:.1f} bpm (non-positive RR interval)"
        )

    # R peaks: tau_0 = a random instant s0 of the tachogram (kept _HISTORY_MARGIN s from both
    # ends so that tests can look at the beats before it), tau_{b+1} = tau_b + RR(tau_b).
    dur = (length - 1) / fs
    span = warmup + 2.0 * (dur + 2.0 * rr_series.max())
    room = n - 2 - 2 * _HISTORY_MARGIN - span
    if room <= 0:
        raise ValueError(
            f"synthetic_windows: windows of {length} samples at {fs} Hz (plus {warmup} s of "
            f"warm-up) do not fit in the {n}-s tachogram"
        )
    s0 = _HISTORY_MARGIN + s0_frac * room
    rows = np.arange(c)

    def rr_at(t):
        i = np.floor(t).astype(np.int64)
        frac = t - i
        return (1 - frac) * rr_series[rows, i] + frac * rr_series[rows, i + 1]

    h = 1.0 / (q * fs)
    taus = [np.zeros(c)]
    rrs = [rr_at(s0)]
    # The beats before tau_0, newest first, back HISTORY_S seconds: tau_{b-1} solves
    # tau_{b-1} + RR(tau_{b-1}) = tau_b, a contraction (|dRR/dt| << 1) solved by iteration.
    hist = []
    t_back = np.zeros(c)
    while not hist or np.min(-t_back) < HISTORY_S:
        t = t_back - rrs[0]
        for _ in range(4):  # error shrinks by |dRR/dt| ~ 0.01 per step: 1e-8 s after 4
            t = t_back - rr_at(s0 + t)
        hist.append(t_back - t)
        t_back = t
    # The window starts warmup + u * RR_0 after tau_0 = the start of the integration (an R peak),
    # on the output grid (1/fs): u uniform makes the window's phase in its beat uniform.
    j0 = q * np.floor((warmup + u_phase * rrs[0]) * fs).astype(np.int64)
    t_end = (j0 + q * (length - 1)) * h
    while True:
        nxt = taus[-1] + rrs[-1]
        taus.append(nxt)
        rrs.append(rr_at(s0 + nxt))
        if np.all(nxt > t_end + h):
            break
    tau = np.stack(taus, axis=1)
    # Rows of a block are laid end to end for np.interp: a power-of-two stride longer than any
    # row's grid or beats, times the window's index in the chunk.
    stride = 2.0 ** math.ceil(math.log2(max(tau.max(), (j0.max() + q * length) * h) + 1.0))
    return dict(
        hr=hr,
        j0=j0,
        tau=tau,
        rr=np.stack(rrs, axis=1),
        rr_hist=np.stack(hist, axis=1),
        row_offset=stride * np.arange(c),
        resp_phase=resp_phase,
        s0=s0,
        rr_series=rr_series,
    )


# ---------------------------------------------------------------------------------------------
# Periodic-orbit initial condition


def _gauss_forcing(theta, wave_theta, wave_a, wave_b):
    """ECGSYN's z forcing ``-sum_i a_i d_i exp(-d_i^2 / 2 b_i^2)``, ``d_i = wrap(theta - th_i)``.

    ``theta`` [c, t] in [0, 2 pi), computed in its dtype (float32 in production: twice as fast,
    and 1e-7 relative error on a forcing is far below the integration error); wave arrays
    [c, waves]. With th_i in [-pi, pi), d = theta - th_i lies in [-pi, 3 pi): one conditional
    subtraction wraps it to [-pi, pi), as ECGSYN's ``rem`` does.
    """
    dt = theta.dtype.type
    out = np.zeros(theta.shape, dtype=theta.dtype)
    th = (np.asarray(wave_theta) + math.pi) % _TWO_PI - math.pi
    for i in range(th.shape[1]):
        d = theta - th[:, i : i + 1].astype(dt)
        d -= dt(_TWO_PI) * (d >= dt(math.pi))
        e = d * d
        e *= (-0.5 / wave_b[:, i : i + 1] ** 2).astype(dt)
        np.exp(e, out=e)
        e *= d
        e *= wave_a[:, i : i + 1].astype(dt)
        out -= e
    return out


def _rk4_coefficients(h: float):
    """One RK4 step of z' = g(t) - z as z1 = cz z0 + c0 g(t) + ch g(t + h/2) + c1 g(t + h)."""

    def step(z, g0, gh, g1):
        k1 = g0 - z
        k2 = gh - (z + 0.5 * h * k1)
        k3 = gh - (z + 0.5 * h * k2)
        k4 = g1 - (z + h * k3)
        return z + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    return (step(1.0, 0, 0, 0), step(0.0, 1, 0, 0), step(0.0, 0, 1, 0), step(0.0, 0, 0, 1))


HR_STEP, RATIO_POINTS = 1.0, 41  # grid of _beat_response_table (bilinear error ~1e-5)


@functools.lru_cache(maxsize=16)
def _beat_response_table(model: EcgsynModel, hr_lo: float, hr_hi: float, steps: int = 512):
    """I(hr, RR): z at the end of one beat started from z = 0 at its R peak (Gaussian terms only),
    over a grid of mean heart rate x RR / mean RR, integrated with ``steps`` RK4 steps per beat.

    Since z' = g - z is linear, a beat of length RR maps z at its first R peak to
    ``z_end = exp(-RR) z_start + I(hr, RR)``: this table turns a list of past RR intervals into
    the exact z at an R peak, with no integration (see ``_r_peak_z``).
    """
    hr_grid = np.linspace(hr_lo, hr_hi, max(2, int(np.ceil((hr_hi - hr_lo) / HR_STEP)) + 1))
    ratio_grid = np.linspace(0.75, 1.25, RATIO_POINTS)
    hr = np.repeat(hr_grid, ratio_grid.size)
    period = (60.0 / hr) * np.tile(ratio_grid, hr_grid.size)
    th, a, b = model.wave_params(hr)
    phase = np.linspace(0.0, _TWO_PI, 2 * steps + 1)[None, :]
    theta = np.broadcast_to(phase % _TWO_PI, (hr.size, phase.size)).astype(np.float32)
    g = _gauss_forcing(theta, th, a, b).astype(np.float64)
    z = np.zeros(hr.size)
    # Per-row step sizes, so the affine RK4 coefficients are per row too.
    cz, c0, ch, c1 = _rk4_coefficients_vec(period / steps)
    for k in range(steps):
        z = cz * z + c0 * g[:, 2 * k] + ch * g[:, 2 * k + 1] + c1 * g[:, 2 * k + 2]
    return hr_grid, ratio_grid, z.reshape(hr_grid.size, ratio_grid.size)


def _rk4_coefficients_vec(h):
    h = np.asarray(h, dtype=np.float64)
    cz = 1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24
    c0 = h / 6 * (1 - h + h**2 / 2 - h**3 / 4)
    ch = h / 6 * (4 - 2 * h + h**2 / 2)
    c1 = h / 6
    return cz, c0, ch, c1


def _beat_response(model, hr, rr, hr_range):
    """I(hr, rr) by bilinear interpolation of ``_beat_response_table`` (a smooth function)."""
    lo, hi = hr_range
    hr_grid, ratio_grid, table = _beat_response_table(model, float(lo) - 1.0, float(hi) + 1.0)
    ratio = rr * hr / 60.0
    if np.any(ratio < ratio_grid[0]) or np.any(ratio > ratio_grid[-1]):
        raise ValueError(
            f"synthetic_windows: hr_std {model.hr_std} bpm makes RR intervals deviate more than "
            f"25% from the mean; use a smaller hr_std"
        )
    fi = np.interp(hr, hr_grid, np.arange(hr_grid.size))
    fj = np.interp(ratio, ratio_grid, np.arange(ratio_grid.size))
    i = np.minimum(np.floor(fi).astype(int), hr_grid.size - 2)
    j = np.minimum(np.floor(fj).astype(int), ratio_grid.size - 2)
    di, dj = fi - i, fj - j
    return (
        (1 - di) * (1 - dj) * table[i, j]
        + di * (1 - dj) * table[i + 1, j]
        + (1 - di) * dj * table[i, j + 1]
        + di * dj * table[i + 1, j + 1]
    )


def _r_peak_z(model, hr, rr_hist, hr_range):
    """z (Gaussian part) at the R peak tau_0 given the RR intervals of the beats before it,
    ``rr_hist`` [c, K] = (RR_-1, ..., RR_-K), newest first.

    Before beat -K the orbit is taken as periodic (z = I / (1 - e^-RR) at its R peak); its
    weight at tau_0 is exp(-sum RR) < exp(-HISTORY_S). Then each beat applies
    z <- exp(-RR) z + I(hr, RR), exactly as the integration would.
    """
    hr = np.asarray(hr, dtype=np.float64)
    rr_hist = np.asarray(rr_hist, dtype=np.float64).reshape(hr.size, -1)
    resp = _beat_response(
        model, np.repeat(hr, rr_hist.shape[1]), rr_hist.ravel(), hr_range
    ).reshape(rr_hist.shape)
    decay = np.exp(-rr_hist)
    z = resp[:, -1] / (1.0 - decay[:, -1])
    for k in range(rr_hist.shape[1] - 1, -1, -1):
        z = decay[:, k] * z + resp[:, k]
    return z


def _resp_steady_state(model, t, phase):
    """Steady state of z' = -(z - A sin(w t + phase)) (the respiration part of z)."""
    w = _TWO_PI * model.resp_freq
    return model.resp_amplitude / (1 + w * w) * (np.sin(w * t + phase) - w * np.cos(w * t + phase))


# ---------------------------------------------------------------------------------------------
# Simulation of one block of windows


def _theta_on_grid(times, tau, row_offset):
    """Phase in [0, 2 pi) at ``times`` [t] (s, shared by all rows) given R peaks ``tau`` [c, B].

    theta grows linearly from 0 to 2 pi between consecutive R peaks (w = 2 pi / RR constant over
    the beat): one np.interp over all rows at once, the rows kept apart by ``row_offset`` [c]
    (seconds; fixed per window by the chunk draw, so that a window's values are bit-for-bit the
    same whichever other windows share its block).
    """
    c, n_beats = tau.shape
    off = np.asarray(row_offset, dtype=np.float64)[:, None]
    if c > 1 and not np.all(np.diff(off[:, 0]) > 0):
        raise AssertionError("_theta_on_grid: row offsets must increase (rows in chunk order)")
    beat = np.interp(
        (times[None, :] + off).ravel(),
        (tau + off).ravel(),
        np.tile(np.arange(n_beats, dtype=np.float64), c),
    ).reshape(c, times.size)
    beat -= np.floor(beat)
    beat *= _TWO_PI
    return beat


def _affine_recurrence(a, u, y_prev):
    """y[k] = a y[k-1] + u[k] along axis 1, y[-1] = y_prev: a first-order recursive filter.

    Closed form per segment, y[k] = a^k (a y_prev + sum_{j<=k} a^-j u[j]), so it runs as numpy
    cumulative sums; segments of 512 steps keep a^-j below e^(512 h) (e^1 at 512 Hz).
    """
    c, n = u.shape
    out = np.empty((c, n))
    seg = 512
    k = np.arange(seg, dtype=np.float64)
    apow = a**k  # a^k
    ainv = a ** (-k)
    carry = np.asarray(y_prev, dtype=np.float64)
    for s in range(0, n, seg):
        e = min(s + seg, n)
        m = e - s
        acc = np.cumsum(u[:, s:e] * ainv[None, :m], axis=1)
        acc += (a * carry)[:, None]
        acc *= apow[None, :m]
        out[:, s:e] = acc
        carry = acc[:, -1]
    return out


def _simulate_block(p, length, q, fs, model, hr_range, z_init=None):
    """Raw z (model units) of the windows described by the draws ``p``: [c, length] float64.

    The integration grid starts at time 0 (``tau[:, 0] == 0``, an R peak, unless ``z_init`` is
    given) with step h = 1 / (q fs); output sample i of a window is grid point j0 + q i.
    The respiration term is linear and slow: its exact response (the closed-form steady state,
    which the R-peak initial condition starts on) is added at the output samples instead of
    being integrated; ``_simulate_reference_3d`` integrates it and the tests compare the two.
    """
    h = 1.0 / (q * fs)
    n_steps = int(p["j0"].max()) + (length - 1) * q
    times = (0.5 * h) * np.arange(2 * n_steps + 1)
    theta = _theta_on_grid(times, p["tau"], p["row_offset"]).astype(np.float32)
    wth, wa, wb = model.wave_params(p["hr"])
    g = _gauss_forcing(theta, wth, wa, wb)
    cz, c0, ch, c1 = _rk4_coefficients(h)
    u = np.float32(c0) * g[:, 0:-1:2]
    u += np.float32(ch) * g[:, 1::2]
    u += np.float32(c1) * g[:, 2::2]
    if z_init is None:
        z_init = _r_peak_z(model, p["hr"], p["rr_hist"], hr_range)
    else:
        z_init = z_init - _resp_steady_state(model, 0.0, p["resp_phase"])
    z_rest = _affine_recurrence(cz, u, z_init)  # z_rest[k] = z(t_{k+1})
    idx = p["j0"][:, None] + q * np.arange(length)[None, :]
    z = np.concatenate([z_init[:, None], z_rest], axis=1)
    z = np.take_along_axis(z, idx, axis=1)
    return z + _resp_steady_state(model, idx * h, p["resp_phase"][:, None])


def _simulate_reference_3d(p, length, q, fs, model, hr_range):
    """Literal ECGSYN: RK4 on (x, y, z) with th = atan2(y, x), at the same internal rate.

    Slow (a Python loop over time steps); used by the tests to check ``_simulate_block``.
    """
    c = p["hr"].shape[0]
    h = 1.0 / (q * fs)
    n_steps = int(p["j0"].max()) + (length - 1) * q
    wth, wa, wb = model.wave_params(p["hr"])
    tau = p["tau"]
    wresp = _TWO_PI * model.resp_freq

    def omega(t):
        bidx = np.clip((t[:, None] >= tau).sum(axis=1) - 1, 0, tau.shape[1] - 2)
        rows = np.arange(c)
        return _TWO_PI / (tau[rows, bidx + 1] - tau[rows, bidx])

    def deriv(t, s):
        x, y, z = s
        alpha = 1.0 - np.sqrt(x * x + y * y)
        w = omega(t)
        th = np.arctan2(y, x) % _TWO_PI
        g = _gauss_forcing(th[:, None], wth, wa, wb)[:, 0]
        z0 = model.resp_amplitude * np.sin(wresp * t + p["resp_phase"])
        return np.stack([alpha * x - w * y, alpha * y + w * x, g - (z - z0)])

    z_init = _r_peak_z(model, p["hr"], p["rr_hist"], hr_range) + _resp_steady_state(
        model, 0.0, p["resp_phase"]
    )
    s = np.stack([np.ones(c), np.zeros(c), z_init])
    zs = [s[2].copy()]
    for k in range(n_steps):
        t = np.full(c, k * h)
        k1 = deriv(t, s)
        k2 = deriv(t + h / 2, s + h / 2 * k1)
        k3 = deriv(t + h / 2, s + h / 2 * k2)
        k4 = deriv(t + h, s + h * k3)
        s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        zs.append(s[2].copy())
    z = np.stack(zs, axis=1)
    idx = p["j0"][:, None] + q * np.arange(length)[None, :]
    return np.take_along_axis(z, idx, axis=1)


# ---------------------------------------------------------------------------------------------
# Noise, scaling, chunk driver


def add_noise(x, snr_db, rng):
    """Add white Gaussian noise to each row of ``x`` at ``snr_db`` relative to the row's AC power."""
    x = np.asarray(x, dtype=np.float64)
    power = x.var(axis=-1, keepdims=True)
    sigma = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return x + sigma * rng.standard_normal(x.shape)


_BLOCK = 256  # at most this many windows simulated at once inside a chunk


def _generate_chunk(args):
    (seed, chunk_index, n_take, heart_rate, length, fs, snr_db, scale, model, q) = args
    p = _draw_chunk(seed, chunk_index, heart_rate, length, fs, model, q)
    out = np.empty((n_take, length))
    # Blocks of windows with similar start indices waste little padding (a block's grid runs
    # to its latest window's end). The order of computation does not change any window.
    order = np.argsort(p["j0"][:n_take], kind="stable")
    # About 2**21 grid points per block (16 MB per float64 array), whatever the window length.
    points = 2 * (int(p["j0"].max()) + q * length)
    block = int(np.clip(2**21 // points, 8, _BLOCK))
    for start in range(0, n_take, block):
        rows = np.sort(order[start : start + block])  # increasing row offsets for np.interp
        sub = {k: v[rows] for k, v in p.items()}
        out[rows] = _simulate_block(sub, length, q, fs, model, heart_rate)
    if snr_db is not None:
        _, noise_rng = _chunk_rngs(seed, chunk_index)
        noise = noise_rng.standard_normal((CHUNK_SIZE, length))[:n_take]
        sigma = np.sqrt(out.var(axis=1, keepdims=True) / 10.0 ** (snr_db / 10.0))
        out += sigma * noise
    if scale == "window":
        return scale_windows(out), p["hr"][:n_take]
    return out.astype(np.float32), p["hr"][:n_take]


def _check_args(n_windows, length, fs, heart_rate, snr_db, seed, scale, internal_rate, workers):
    if not isinstance(n_windows, (int, np.integer)) or n_windows < 0:
        raise ValueError(f"synthetic_windows: n_windows is {n_windows!r}; must be an int >= 0")
    if not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"synthetic_windows: length is {length!r}; must be an int >= 2")
    if not fs > 0:
        raise ValueError(f"synthetic_windows: fs is {fs!r}; must be > 0")
    if np.ndim(heart_rate) == 0:
        heart_rate = (float(heart_rate), float(heart_rate))
    if len(heart_rate) != 2:
        raise ValueError(f"synthetic_windows: heart_rate is {heart_rate!r}; must be (low, high) bpm")
    lo, hi = (float(v) for v in heart_rate)
    if not (20.0 <= lo <= hi <= 250.0):
        raise ValueError(
            f"synthetic_windows: heart_rate is {heart_rate!r}; need 20 <= low <= high <= 250 bpm"
        )
    if snr_db is not None and not np.isfinite(snr_db):
        raise ValueError(f"synthetic_windows: snr_db is {snr_db!r}; must be finite or None")
    if scale not in ("window", None):
        raise ValueError(f"synthetic_windows: scale is {scale!r}; must be 'window' or None")
    q = int(round(internal_rate / fs)) if internal_rate is not None else DEFAULT_OVERSAMPLING
    if q < 1 or (internal_rate is not None and abs(q * fs - internal_rate) > 1e-9 * internal_rate):
        raise ValueError(
            f"synthetic_windows: internal_rate {internal_rate!r} must be an integer multiple of "
            f"fs {fs!r}"
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"synthetic_windows: seed is {seed!r}; must be an int >= 0")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"synthetic_windows: workers is {workers!r}; must be an int >= 1 or None")
    return (lo, hi), q


def _mp_context():
    # forkserver: workers fork from a clean server process, never from a parent that may hold
    # TensorFlow's threads; spawn where forkserver does not exist.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def synthetic_windows(
    n_windows,
    length=256,
    fs=256,
    heart_rate=(60, 100),
    snr_db=None,
    seed=0,
    *,
    scale="window",
    model: EcgsynModel | None = None,
    internal_rate=None,
    workers=1,
    progress=False,
    return_heart_rate=False,
):
    """ECGSYN windows, float32 ``[n_windows, length]``, each scaled to [0, 1].

    Args:
      n_windows: number of windows.
      length: samples per window.
      fs: sampling rate (Hz).
      heart_rate: ``(low, high)`` bpm, drawn uniformly per window; a number for a fixed rate.
      snr_db: additive white Gaussian noise at this SNR (per window, relative to its AC power),
        or None for none.
      seed: the output is a function of the seed and the other arguments only (not of
        ``workers``).
      scale: ``"window"`` (min-max to [0, 1] per window, see module doc) or None (raw model z).
      model: ECGSYN parameters (defaults: the paper's).
      internal_rate: integration rate in Hz, an integer multiple of fs (default 2 * fs).
      workers: worker processes (None: one per CPU). Same output for any value. With more
        than one, a script that calls this needs the usual ``if __name__ == "__main__":`` guard
        (multiprocessing's forkserver imports the main module).
      progress: show a tqdm progress bar over chunks.
      return_heart_rate: also return the mean heart rate drawn for each window.
    """
    heart_rate, q = _check_args(
        n_windows, length, fs, heart_rate, snr_db, seed, scale, internal_rate, workers
    )
    model = model or EcgsynModel()
    n_chunks = -(-n_windows // CHUNK_SIZE)
    tasks = [
        (seed, c, min(CHUNK_SIZE, n_windows - c * CHUNK_SIZE), heart_rate, length, fs, snr_db,
         scale, model, q)
        for c in range(n_chunks)
    ]
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, n_chunks))
    out = np.empty((n_windows, length), dtype=np.float32)
    hrs = np.empty(n_windows)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_windows, unit="win", desc="ECGSYN windows")
    pool = None
    try:
        if workers > 1:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
        results = pool.map(_generate_chunk, tasks) if pool else map(_generate_chunk, tasks)
        for c, (x, hr) in enumerate(results):
            out[c * CHUNK_SIZE : c * CHUNK_SIZE + len(x)] = x
            hrs[c * CHUNK_SIZE : c * CHUNK_SIZE + len(x)] = hr
            if bar is not None:
                bar.update(len(x))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    if return_heart_rate:
        return out, hrs
    return out
