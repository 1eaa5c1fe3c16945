"""Compressed-sensing toolkit for the Deep Neural Oracle of seed 000.

Conventions: windows are rows, ``x`` [N, n]; a sensing matrix ``A`` [m, n] measures
``y = x A^T`` [N, m]; a wavelet basis ``D`` [n, n] has the basis vectors as columns, so
``x = c D^T`` for coefficients ``c = x D`` [N, n] (D orthonormal). A support is a boolean mask
over the n coefficients; the oracle's reconstruction on support S is
``x_hat = D_S pinv(A D_S) y`` (least squares).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "sensing_matrix",
    "wavelet_basis",
    "measure",
    "wavelet_coefficients",
    "support_labels",
    "least_squares_reconstruction",
    "rsnr",
    "arsnr",
]


def sensing_matrix(m, n, kind="gaussian", orthonormal_rows=False, seed=0):
    """A random sensing matrix ``[m, n]`` (float64), a function of its arguments only.

    ``kind``: ``"gaussian"`` (i.i.d. N(0, 1) entries) or ``"antipodal"`` (i.i.d. +-1, equally
    likely). ``orthonormal_rows``: replace the rows by an orthonormal basis of their span
    (QR of A^T), so ``A A^T = I``; the entries are then no longer +-1.
    """
    if not (isinstance(m, (int, np.integer)) and isinstance(n, (int, np.integer)) and 1 <= m <= n):
        raise ValueError(f"sensing_matrix: need integers 1 <= m <= n; got m={m!r}, n={n!r}")
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        a = rng.standard_normal((m, n))
    elif kind == "antipodal":
        a = np.where(rng.random((m, n)) < 0.5, -1.0, 1.0)
    else:
        raise ValueError(f"sensing_matrix: kind is {kind!r}; must be 'gaussian' or 'antipodal'")
    if orthonormal_rows:
        q, r = np.linalg.qr(a.T)
        # Fix the signs (QR is unique up to them) so the result is a function of A only.
        q = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
        a = q.T
    return a


def wavelet_basis(n, wavelet="sym6", level=None):
    """Orthonormal wavelet basis ``D`` [n, n] (columns = basis vectors), periodized DWT.

    ``wavelet``: an orthogonal PyWavelets wavelet (``"sym6"`` = Symmlet-6, ``"db4"``, ...).
    ``level``: decomposition depth, default PyWavelets' maximum useful level for n and the
    filter length; n must be divisible by ``2**level``. Coefficient order is PyWavelets'
    ``wavedec`` order: ``[cA_L, cD_L, cD_{L-1}, ..., cD_1]``, so ``x @ D`` equals the
    concatenated ``pywt.wavedec(x, wavelet, mode="periodization", level=level)`` (to ~1e-12).
    """
    import pywt

    try:
        w = pywt.Wavelet(wavelet)
    except ValueError as exc:
        raise ValueError(f"wavelet_basis: unknown wavelet {wavelet!r}") from exc
    if not w.orthogonal:
        raise ValueError(f"wavelet_basis: wavelet {wavelet!r} is not orthogonal (no orthonormal basis)")
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"wavelet_basis: n is {n!r}; must be an int >= 2")
    if level is None:
        level = max(1, pywt.dwt_max_level(n, w.dec_len))
    if not isinstance(level, (int, np.integer)) or level < 1 or n % (2**level):
        raise ValueError(
            f"wavelet_basis: level is {level!r}; n = {n} must be divisible by 2**level (level >= 1)"
        )
    # Row i of the stacked coefficients of e_i is <e_i, psi_j> = psi_j[i]: D's columns are psi_j.
    coeffs = pywt.wavedec(np.eye(n), w, mode="periodization", level=level, axis=1)
    D = np.concatenate(coeffs, axis=1)
    # PyWavelets tabulates some filters (the Symmlets among them) to about 1e-12, so its DWT is
    # orthogonal only to that precision. The polar factor U V^T of D = U S V^T is the nearest
    # orthogonal matrix: it moves D by the same ~1e-12 and makes D^T D = I to float precision.
    U, _, Vt = np.linalg.svd(D)
    return U @ Vt


def measure(x, A):
    """Measurements ``y = x A^T`` [N, m] of windows ``x`` [N, n]."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(A, dtype=np.float64).T


def wavelet_coefficients(x, D):
    """Coefficients ``c = x D`` [N, n] of windows ``x`` [N, n] in the orthonormal basis ``D``."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(D, dtype=np.float64)


def _check_cs(x, A, D, where):
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    A = np.asarray(A, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    n = x.shape[-1]
    if A.ndim != 2 or A.shape[1] != n:
        raise ValueError(f"{where}: A has shape {A.shape}; expected [m, {n}] for windows of {n}")
    if D.shape != (n, n):
        raise ValueError(f"{where}: D has shape {D.shape}; expected [{n}, {n}]")
    return x, A, D


# Errors within this fraction of ||x||^2 of the best one count as ties (float round-off:
# 1e-20 is an RSNR of 200 dB); among tied k, the smallest is chosen.
_TIE = 1e-20


def support_labels(x, A, D, k_max=None, *, return_k=False, batch=512):
    """Oracle support labels: for each window, the top-k wavelet coefficients (largest |c|),
    k <= k_max (default m) chosen to maximize the RSNR of the least-squares reconstruction
    ``x_hat = D_S pinv(A D_S) A x`` on that support.

    Returns a boolean mask [N, n] over the coefficients (and k [N] with ``return_k``). Ties
    within float round-off (e.g. every k >= the sparsity of an exactly sparse window) go to the
    smallest k.

    All k at once: with ``A D_perm = Q R`` (QR of the m x k_max matrix of the sorted columns),
    the LS solution on the first k columns is ``R_k^-1 Q_k^T y`` and ``R_k^-1`` is the leading
    block of ``R^-1``; so all k_max solutions are prefix sums of ``R^-1 diag(Q^T y)``.
    """
    x, A, D = _check_cs(x, A, D, "support_labels")
    m, n = A.shape
    k_max = m if k_max is None else int(k_max)
    if not 1 <= k_max <= m:
        raise ValueError(f"support_labels: k_max is {k_max}; must be in [1, m={m}]")
    labels = np.zeros(x.shape, dtype=bool)
    ks = np.zeros(x.shape[0], dtype=np.int64)
    AD = A @ D
    upper = np.triu(np.ones((k_max, k_max), dtype=bool))  # [i, j]: i <= j
    for s in range(0, x.shape[0], batch):
        xb = x[s : s + batch]
        c = xb @ D
        order = np.argsort(-np.abs(c), axis=1, kind="stable")
        cs = np.take_along_axis(c, order, axis=1)
        y = xb @ A.T
        M = np.swapaxes(AD[:, order[:, :k_max]], 0, 1)  # [b, m, k_max]
        Q, R = np.linalg.qr(M)
        b = np.einsum("bmk,bm->bk", Q, y)
        with np.errstate(all="ignore"):
            Rinv = np.linalg.inv(R)
            # Z[:, i, j] = coefficient i of the LS solution on the first j+1 columns (i <= j).
            Z = np.cumsum(Rinv * b[:, None, :], axis=2)
            err_in = np.where(upper[None], (cs[:, :k_max, None] - Z) ** 2, 0.0).sum(axis=1)
        tail = np.cumsum((cs**2)[:, ::-1], axis=1)[:, ::-1]  # tail[:, i] = sum_{l >= i} cs_l^2
        err = err_in + np.concatenate([tail[:, 1:], np.zeros((len(xb), 1))], axis=1)[:, :k_max]
        err = np.where(np.isfinite(err), err, np.inf)
        energy = (xb**2).sum(axis=1)
        best = err.min(axis=1)
        k = 1 + np.argmax(err <= (best + _TIE * energy)[:, None], axis=1)
        ks[s : s + batch] = k
        rows = np.arange(len(xb))[:, None]
        keep = np.arange(n)[None, :] < k[:, None]
        lab = np.zeros((len(xb), n), dtype=bool)
        lab[rows, order] = keep
        labels[s : s + batch] = lab
    return (labels, ks) if return_k else labels


def least_squares_reconstruction(y, A, D, support):
    """``x_hat = D_S pinv(A D_S) y`` per window: y [N, m], support bool [N, n] -> x_hat [N, n].

    An empty support gives zeros; a support larger than m gives the minimum-norm solution.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    A = np.asarray(A, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    support = np.atleast_2d(np.asarray(support, dtype=bool))
    m, n = A.shape
    if y.shape[1] != m or support.shape != (y.shape[0], n) or D.shape != (n, n):
        raise ValueError(
            f"least_squares_reconstruction: shapes y {y.shape}, A {A.shape}, D {D.shape}, "
            f"support {support.shape} do not match ([N, m], [m, n], [n, n], [N, n])"
        )
    AD = A @ D
    c = np.zeros((y.shape[0], n))
    for i in range(y.shape[0]):
        S = np.flatnonzero(support[i])
        if S.size:
            c[i, S] = np.linalg.lstsq(AD[:, S], y[i], rcond=None)[0]
    return c @ D.T


def rsnr(x, x_hat):
    """Reconstruction SNR per window (last axis), dB: ``20 log10(||x|| / ||x - x_hat||)``.

    A perfect reconstruction gives +inf.
    """
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"rsnr: x has shape {x.shape} but x_hat has shape {x_hat.shape}")
    with np.errstate(divide="ignore"):
        return 20.0 * (
            np.log10(np.linalg.norm(x, axis=-1)) - np.log10(np.linalg.norm(x - x_hat, axis=-1))
        )


def arsnr(x, x_hat) -> float:
    """Average RSNR over windows, dB (the metric of seeds 000 and 004)."""
    return float(np.mean(rsnr(x, x_hat)))
