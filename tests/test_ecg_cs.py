"""ecg_data.cs: sensing matrices, wavelet basis, oracle support labels, LS reconstruction, RSNR."""

import math

import numpy as np
import pytest
import pywt

import ecg_data
from ecg_data import cs


# --- wavelet basis ----------------------------------------------------------------------------


@pytest.mark.parametrize("wavelet, n", [("sym6", 128), ("sym6", 256), ("db4", 256), ("haar", 64)])
def test_wavelet_basis_is_orthonormal_to_float_precision(wavelet, n):
    D = ecg_data.wavelet_basis(n, wavelet)
    eps = np.finfo(np.float64).eps
    assert np.abs(D.T @ D - np.eye(n)).max() < 20 * eps * math.sqrt(n)
    assert np.abs(D @ D.T - np.eye(n)).max() < 20 * eps * math.sqrt(n)


@pytest.mark.parametrize("wavelet, tol", [("sym6", 1e-11), ("db4", 1e-13)])
def test_wavelet_coefficients_are_pywavelets_periodized_dwt(wavelet, tol):
    # PyWavelets tabulates the Symmlet taps to ~1e-12 (its own DWT is orthogonal only to that),
    # Daubechies' to float precision: the basis follows pywt to the precision of pywt's filters.
    n = 256
    x = np.random.default_rng(0).standard_normal((5, n))
    level = pywt.dwt_max_level(n, pywt.Wavelet(wavelet).dec_len)
    ref = np.concatenate(pywt.wavedec(x, wavelet, mode="periodization", level=level, axis=1), axis=1)
    D = ecg_data.wavelet_basis(n, wavelet)
    assert np.abs(ecg_data.wavelet_coefficients(x, D) - ref).max() < tol
    np.testing.assert_allclose(ecg_data.wavelet_coefficients(x, D) @ D.T, x, atol=1e-12)


def test_wavelet_basis_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'bior2.2' is not orthogonal"):
        ecg_data.wavelet_basis(64, "bior2.2")
    with pytest.raises(ValueError, match="unknown wavelet 'nope'"):
        ecg_data.wavelet_basis(64, "nope")
    with pytest.raises(ValueError, match=r"n = 100 must be divisible by 2\*\*level"):
        ecg_data.wavelet_basis(100, "db2", level=3)


# --- sensing matrices ---------------------------------------------------------------------------


def test_antipodal_matrix_has_plus_minus_one_entries_in_equal_share():
    A = ecg_data.sensing_matrix(64, 256, "antipodal", seed=3)
    assert A.shape == (64, 256)
    assert set(np.unique(A)) == {-1.0, 1.0}
    assert abs(A.mean()) < 5 / math.sqrt(A.size)


def test_gaussian_matrix_has_standard_normal_entries():
    A = ecg_data.sensing_matrix(64, 256, "gaussian", seed=3)
    assert abs(A.mean()) < 5 / math.sqrt(A.size)
    assert abs(A.var() - 1.0) < 5 * math.sqrt(2 / A.size)


@pytest.mark.parametrize("kind", ["gaussian", "antipodal"])
def test_orthonormalized_rows_span_the_same_space(kind):
    A = ecg_data.sensing_matrix(32, 128, kind, seed=1)
    Q = ecg_data.sensing_matrix(32, 128, kind, orthonormal_rows=True, seed=1)
    np.testing.assert_allclose(Q @ Q.T, np.eye(32), atol=1e-13)
    # Same row space: projecting A's rows on Q's row space leaves them unchanged.
    np.testing.assert_allclose(A @ Q.T @ Q, A, atol=1e-11)


def test_sensing_matrix_is_a_function_of_the_seed():
    a = ecg_data.sensing_matrix(16, 64, seed=5)
    np.testing.assert_array_equal(a, ecg_data.sensing_matrix(16, 64, seed=5))
    assert not np.array_equal(a, ecg_data.sensing_matrix(16, 64, seed=6))
    with pytest.raises(ValueError, match="kind is 'bernoulli'"):
        ecg_data.sensing_matrix(16, 64, "bernoulli")
    with pytest.raises(ValueError, match="m=65, n=64"):
        ecg_data.sensing_matrix(65, 64)


# --- support labels and reconstruction --------------------------------------------------------


def _sparse_signals(n, k, count, D, rng):
    c = np.zeros((count, n))
    supports = np.zeros((count, n), dtype=bool)
    for i in range(count):
        idx = rng.choice(n, size=k, replace=False)
        c[i, idx] = rng.choice([-1, 1], size=k) * rng.uniform(0.5, 2.0, size=k)
        supports[i, idx] = True
    return c @ D.T, supports


@pytest.mark.parametrize("kind", ["gaussian", "antipodal"])
def test_exact_recovery_of_a_k_sparse_signal_on_its_true_support(kind):
    rng = np.random.default_rng(0)
    n, m, k = 128, 32, 6
    D = ecg_data.wavelet_basis(n)
    A = ecg_data.sensing_matrix(m, n, kind, orthonormal_rows=True, seed=2)
    x, support = _sparse_signals(n, k, 10, D, rng)
    x_hat = ecg_data.least_squares_reconstruction(ecg_data.measure(x, A), A, D, support)
    np.testing.assert_allclose(x_hat, x, atol=1e-12)
    assert ecg_data.rsnr(x, x_hat).min() > 200


def test_support_labels_of_a_k_sparse_signal_are_its_support():
    rng = np.random.default_rng(1)
    n, m, k = 128, 32, 5
    D = ecg_data.wavelet_basis(n)
    A = ecg_data.sensing_matrix(m, n, seed=4)
    x, support = _sparse_signals(n, k, 12, D, rng)
    labels, ks = ecg_data.support_labels(x, A, D, return_k=True)
    np.testing.assert_array_equal(ks, k)
    np.testing.assert_array_equal(labels, support)


def test_support_labels_maximize_the_reconstruction_snr_over_k():
    # Brute force: every k = 1..m, top-k coefficients, LS reconstruction, RSNR.
    n, m = 128, 24
    D = ecg_data.wavelet_basis(n)
    A = ecg_data.sensing_matrix(m, n, "antipodal", orthonormal_rows=True, seed=0)
    x = ecg_data.synthetic_windows(12, length=n, fs=128, snr_db=30, seed=0).astype(np.float64)
    labels, ks = ecg_data.support_labels(x, A, D, return_k=True, batch=5)
    y = ecg_data.measure(x, A)
    order = np.argsort(-np.abs(ecg_data.wavelet_coefficients(x, D)), axis=1, kind="stable")
    for i in range(len(x)):
        snr = []
        for k in range(1, m + 1):
            s = np.zeros((1, n), dtype=bool)
            s[0, order[i, :k]] = True
            snr.append(ecg_data.rsnr(x[i : i + 1], ecg_data.least_squares_reconstruction(y[i : i + 1], A, D, s))[0])
        assert ks[i] == 1 + int(np.argmax(snr))
        assert labels[i].sum() == ks[i]
        assert np.all(labels[i, order[i, : ks[i]]])
        best = ecg_data.least_squares_reconstruction(y[i : i + 1], A, D, labels[i : i + 1])
        assert ecg_data.rsnr(x[i : i + 1], best)[0] == pytest.approx(max(snr), abs=1e-9)
    # k adapts to the window (it is not simply m, where noise folding can cost more than it gains).
    assert ks.min() < ks.max() and ks.min() < m


def test_k_max_bounds_the_support():
    n, m = 64, 16
    D = ecg_data.wavelet_basis(n, "db4")
    A = ecg_data.sensing_matrix(m, n, seed=1)
    x = np.random.default_rng(2).standard_normal((4, n))
    labels, ks = ecg_data.support_labels(x, A, D, k_max=3, return_k=True)
    assert ks.max() <= 3 and np.array_equal(labels.sum(axis=1), ks)
    with pytest.raises(ValueError, match=r"k_max is 17; must be in \[1, m=16\]"):
        ecg_data.support_labels(x, A, D, k_max=17)


def test_empty_support_reconstructs_zero_and_shapes_are_checked():
    D = ecg_data.wavelet_basis(32, "haar")
    A = ecg_data.sensing_matrix(8, 32, seed=0)
    y = np.ones((2, 8))
    np.testing.assert_array_equal(
        ecg_data.least_squares_reconstruction(y, A, D, np.zeros((2, 32), bool)), np.zeros((2, 32))
    )
    with pytest.raises(ValueError, match="do not match"):
        ecg_data.least_squares_reconstruction(y, A, D, np.zeros((2, 31), bool))


# --- RSNR / ARSNR ---------------------------------------------------------------------------------


def test_arsnr_hand_computed_case():
    x = np.array([[3.0, 4.0], [0.0, 2.0]])
    x_hat = np.array([[3.0, 4.5], [0.0, 1.0]])
    # Window 1: ||x|| = 5, ||x - x_hat|| = 0.5 -> 20 log10(10) = 20 dB.
    # Window 2: ||x|| = 2, ||x - x_hat|| = 1   -> 20 log10(2) = 6.0206 dB.
    expected = np.array([20.0, 20.0 * math.log10(2.0)])
    np.testing.assert_allclose(ecg_data.rsnr(x, x_hat), expected, rtol=1e-14)
    assert ecg_data.arsnr(x, x_hat) == pytest.approx((20.0 + 20.0 * math.log10(2.0)) / 2, rel=1e-14)
    assert isinstance(ecg_data.arsnr(x, x_hat), float)


def test_rsnr_is_per_window_and_infinite_for_a_perfect_reconstruction():
    x = np.random.default_rng(0).standard_normal((3, 4, 16))
    r = ecg_data.rsnr(x, x + 0.1)
    assert r.shape == (3, 4)
    np.testing.assert_allclose(r, 20 * np.log10(np.linalg.norm(x, axis=-1) / (0.1 * 4)), rtol=1e-12)
    assert np.isinf(ecg_data.rsnr(x[0], x[0])).all()
    with pytest.raises(ValueError, match=r"x has shape \(3, 4, 16\) but x_hat has shape \(4, 16\)"):
        ecg_data.rsnr(x, x[0])


def test_public_api_is_exported():
    for name in ["synthetic_windows", "load_record_windows", "build_synthetic_dataset", "rsnr", "arsnr",
                 "sensing_matrix", "wavelet_basis", "support_labels", "least_squares_reconstruction"]:
        assert name in ecg_data.__all__ and callable(getattr(ecg_data, name))
    assert cs.arsnr is ecg_data.arsnr
