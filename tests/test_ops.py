"""The MAM reduction against the numpy statement of docs/operator-contract.md section 1."""
import numpy as np
import pytest

import npref
from mam_tf.train import mam_op
from mam_tf.train.compat import tf


def _grads(x, w, g, fn=mam_op.mam_reduce):
    x = tf.constant(x)
    w = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = fn(x, w)
        loss = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(loss, [x, w])
    return y.numpy(), dx.numpy(), dw.numpy()


def _check_against_numpy(x, w, chunk_columns=None):
    y, amax, amin = mam_op.mam_forward_reference(x, w, chunk_columns=chunk_columns)
    ry, ramax, ramin = npref.mam_forward(x, w)
    np.testing.assert_array_equal(y.numpy(), ry)
    np.testing.assert_array_equal(amax.numpy(), ramax)
    np.testing.assert_array_equal(amin.numpy(), ramin)
    return ramax, ramin


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 4), (7, 37, 5), (16, 300, 9), (2, 1000, 3)])
@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_forward_matches_numpy_for_any_chunking(rng, shape, chunk):
    b, n, m = shape
    x = rng.standard_normal((b, n)).astype(np.float32)
    w = rng.standard_normal((n, m)).astype(np.float32)
    _check_against_numpy(x, w, chunk)


def test_all_negative_products_pick_the_true_max(rng):
    # A running max that starts at 0 or at the smallest positive float would report 0 here.
    x = rng.uniform(0.5, 2.0, (6, 50)).astype(np.float32)
    w = -rng.uniform(0.5, 2.0, (50, 4)).astype(np.float32)
    y, _, _ = mam_op.mam_forward_reference(x, w, chunk_columns=16)
    assert (y.numpy() < 0).all()
    _check_against_numpy(x, w, 16)


@pytest.mark.parametrize("chunk", [None, 2, 3])
def test_exact_ties_go_to_the_lowest_index_across_chunks(chunk):
    # Every product of a row equal: argmax and argmin both the first column.
    x = np.ones((2, 10), np.float32)
    w = np.full((10, 3), 0.5, np.float32)
    w[:, 1] = -2.0
    _, amax, amin = mam_op.mam_forward_reference(x, w, chunk_columns=chunk)
    assert (amax.numpy() == 0).all() and (amin.numpy() == 0).all()
    # Ties between columns 3 and 8 (max) and 4 and 6 (min), chunk boundaries in between.
    x = np.ones((1, 10), np.float32)
    w = np.zeros((10, 1), np.float32)
    w[[3, 8], 0] = 5.0
    w[[4, 6], 0] = -5.0
    _, amax, amin = mam_op.mam_forward_reference(x, w, chunk_columns=chunk)
    assert amax.numpy()[0, 0] == 3 and amin.numpy()[0, 0] == 4


def test_zero_input_selects_index_zero_and_counts_twice():
    x = np.zeros((1, 5), np.float32)
    w = np.arange(1, 16, dtype=np.float32).reshape(5, 3)
    g = np.array([[1.0, 2.0, 3.0]], np.float32)
    y, dx, dw = _grads(x, w, g)
    np.testing.assert_array_equal(y, np.zeros((1, 3)))
    # All products are 0: column 0 is both argmax and argmin, so it gets g twice.
    np.testing.assert_array_equal(dx, [[2 * (1 * 1 + 2 * 2 + 3 * 3), 0, 0, 0, 0]])
    np.testing.assert_array_equal(dw, np.zeros((5, 3)))


def test_zero_weight_row_gives_zero_output_and_routes_to_first_input(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2)).astype(np.float32)
    w[:, 1] = 0.0
    g = np.ones((4, 2), np.float32)
    y, dx, dw = _grads(x, w, g)
    np.testing.assert_array_equal(y[:, 1], 0.0)
    np.testing.assert_allclose(dw[0, 1], 2 * x[:, 0].sum(), rtol=1e-6)
    np.testing.assert_array_equal(dw[1:, 1], 0.0)


def test_single_input_is_twice_the_product(rng):
    x = rng.standard_normal((5, 1)).astype(np.float32)
    w = rng.standard_normal((1, 3)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    y, dx, dw = _grads(x, w, g)
    np.testing.assert_allclose(y, 2 * x * w, rtol=1e-6)
    np.testing.assert_allclose(dx, (2 * g * w).sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(dw, (2 * g * x).sum(0, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 9, 4), (8, 40, 6), (32, 200, 16)])
def test_gradients_match_numpy_routing(rng, shape):
    b, n, m = shape
    x = rng.standard_normal((b, n)).astype(np.float32)
    w = rng.standard_normal((n, m)).astype(np.float32)
    x[0, :3] = 0.0  # a few exact zero products: ties between zeros
    g = rng.standard_normal((b, m)).astype(np.float32)
    y, dx, dw = _grads(x, w, g)
    _, amax, amin = npref.mam_forward(x, w)
    rdx, rdw = npref.mam_backward(g, x, w, amax, amin)
    np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, rdw, rtol=1e-5, atol=1e-6)


def test_gradient_matches_finite_differences_away_from_ties(rng):
    x = rng.standard_normal((3, 7)).astype(np.float64)
    w = rng.standard_normal((7, 4)).astype(np.float64)
    theoretical, numerical = tf.test.compute_gradient(mam_op.mam_reduce, [x, w], delta=1e-6)
    for t, nu in zip(theoretical, numerical):
        np.testing.assert_allclose(t, nu, rtol=1e-5, atol=1e-6)


def test_xla_and_eager_agree(rng):
    x = rng.standard_normal((8, 130)).astype(np.float32)
    w = rng.standard_normal((130, 5)).astype(np.float32)
    g = rng.standard_normal((8, 5)).astype(np.float32)

    @tf.function(jit_compile=True)
    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            loss = tf.reduce_sum(mam_op.mam_reduce(x, w) * g)
        return loss, tape.gradient(loss, [x, w])

    loss, (dx, dw) = step(tf.constant(x), tf.constant(w))
    y, rdx, rdw = _grads(x, w, g)
    np.testing.assert_allclose(loss.numpy(), (y * g).sum(), rtol=1e-5)
    np.testing.assert_allclose(dx.numpy(), rdx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw.numpy(), rdw, rtol=1e-6, atol=1e-7)


def test_unknown_kernel_shape_is_refused():
    @tf.function(input_signature=[tf.TensorSpec([2, None]), tf.TensorSpec([None, 3])])
    def f(x, w):
        return mam_op.mam_forward_reference(x, w)

    with pytest.raises(ValueError, match="kernel shape must be static"):
        f.get_concrete_function()
