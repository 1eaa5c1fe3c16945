"""The MAM reduction and its routed gradient (docs/operator-contract.md, section 1).

For x of shape [B, N] and a Keras kernel w of shape [N, M] (inputs x units):

    y[b, j]    = max_i(x[b, i] * w[i, j]) + min_i(x[b, i] * w[i, j])
    amax[b, j] = the LOWEST i reaching the max, amin[b, j] the lowest i reaching the min

Only the selected pair receives gradient; a pair that is both argmax and argmin (all
products equal) is counted twice, since it is both the max and the min term.

The reference path here is pure TensorFlow, so it also runs on GPU and under XLA. It walks
the inputs in chunks of ``c`` columns and keeps running max/min/argmax/argmin, so its extra
memory is O(B * c * M), never the O(B * N * M) product tensor.
"""
from __future__ import annotations

import contextlib
import os
import threading

from mam_tf.train import fused
from mam_tf.train.tfcore import tf

__all__ = [
    "mam_reduce",
    "mam_forward",
    "mam_backward",
    "mam_forward_reference",
    "mam_backward_reference",
    "mam_reduce_builtin",
    "builtin_graph",
    "in_builtin_graph",
]

# How many products one chunk may hold (B * c * M), assuming a batch of 128 when the batch
# size is not known when the graph is built. 2**22 float32 products = 16 MiB per chunk.
_CHUNK_PRODUCTS = int(os.environ.get("MAM_TF_CHUNK_PRODUCTS", 2**22))
_ASSUMED_BATCH = 128


def _chunk_columns(batch, n, m):
    """Number of input columns per chunk: a static Python int (XLA needs static slices)."""
    b = batch if isinstance(batch, int) and batch > 0 else _ASSUMED_BATCH
    return int(max(1, min(n, _CHUNK_PRODUCTS // max(1, b * m))))


def _chunk_stats(xc, wc, offset):
    """max, argmax, min, argmin over one chunk of columns; ties go to the lowest index."""
    c = xc.shape[1]
    p = xc[:, :, None] * wc[None, :, :]  # [B, c, M]
    cmax = tf.reduce_max(p, axis=1)
    cmin = tf.reduce_min(p, axis=1)
    iota = tf.range(c, dtype=tf.int32)[None, :, None]
    # The first index equal to the extreme. A NaN product matches nothing: clamp so the
    # index stays inside the row and gradients land somewhere defined.
    amax = tf.reduce_min(tf.where(tf.equal(p, cmax[:, None, :]), iota, c), axis=1)
    amin = tf.reduce_min(tf.where(tf.equal(p, cmin[:, None, :]), iota, c), axis=1)
    amax = tf.minimum(amax, c - 1) + offset
    amin = tf.minimum(amin, c - 1) + offset
    return cmax, amax, cmin, amin


def _merge(state, chunk):
    """Combine running stats with a later chunk: strict comparisons keep earlier indices on ties."""
    rmax, ramax, rmin, ramin = state
    cmax, camax, cmin, camin = chunk
    take_max = cmax > rmax
    take_min = cmin < rmin
    return (
        tf.where(take_max, cmax, rmax),
        tf.where(take_max, camax, ramax),
        tf.where(take_min, cmin, rmin),
        tf.where(take_min, camin, ramin),
    )


def mam_forward_reference(x, w, chunk_columns=None):
    """Pure-TensorFlow MAM forward: returns (y, amax, amin) as (float [B, M], int32, int32)."""
    x = tf.convert_to_tensor(x)
    w = tf.convert_to_tensor(w, dtype=x.dtype)
    n = w.shape[0]
    m = w.shape[1]
    if n is None or m is None:
        raise ValueError(f"mam_forward: the kernel shape must be static, got {w.shape}")
    c = chunk_columns or _chunk_columns(x.shape[0], n, m)
    c = min(int(c), n)
    n_full = n // c
    rem = n - n_full * c

    state = _chunk_stats(x[:, :c], w[:c], 0)
    if n_full > 1:

        def body(k, smax, samax, smin, samin):
            start = k * c
            xc = tf.slice(x, [0, start], [-1, c])
            wc = tf.slice(w, [start, 0], [c, -1])
            xc.set_shape([x.shape[0], c])
            return (k + 1,) + _merge((smax, samax, smin, samin), _chunk_stats(xc, wc, start))

        _, *state = tf.while_loop(
            lambda k, *_: k < n_full,
            body,
            (tf.constant(1, tf.int32),) + tuple(state),
            parallel_iterations=1,
        )
    if rem:
        start = n_full * c
        state = _merge(tuple(state), _chunk_stats(x[:, start:], w[start:], start))
    rmax, ramax, rmin, ramin = state
    return rmax + rmin, ramax, ramin


def mam_backward_reference(g, x, w, amax, amin):
    """Routes the upstream gradient g [B, M] to the selected pairs: returns (dx, dw)."""
    n = int(w.shape[0])
    m = int(w.shape[1])
    batch = tf.shape(x, out_type=tf.int64)[0]
    amax = tf.cast(amax, tf.int64)
    amin = tf.cast(amin, tf.int64)
    cols = tf.range(m, dtype=tf.int64)[None, :]
    rows = tf.range(batch, dtype=tf.int64)[:, None]
    x_max = tf.gather(x, amax, axis=1, batch_dims=1)
    x_min = tf.gather(x, amin, axis=1, batch_dims=1)
    w_flat = tf.reshape(w, [-1])
    w_max = tf.gather(w_flat, amax * m + cols)
    w_min = tf.gather(w_flat, amin * m + cols)
    # Index flattening in int64: N * M or B * N may pass 2**31 for big layers.
    dw = tf.math.unsorted_segment_sum(
        tf.concat([tf.reshape(g * x_max, [-1]), tf.reshape(g * x_min, [-1])], 0),
        tf.concat([tf.reshape(amax * m + cols, [-1]), tf.reshape(amin * m + cols, [-1])], 0),
        n * m,
    )
    dx = tf.math.unsorted_segment_sum(
        tf.concat([tf.reshape(g * w_max, [-1]), tf.reshape(g * w_min, [-1])], 0),
        tf.concat([tf.reshape(rows * n + amax, [-1]), tf.reshape(rows * n + amin, [-1])], 0),
        batch * n,
    )
    return tf.reshape(dx, tf.shape(x)), tf.reshape(dw, [n, m])


def mam_forward(x, w):
    """MAM forward through the fastest available implementation: (y, amax, amin)."""
    if fused.usable(x, w):  # float32 on the CPU outside XLA: the fused C++ kernel
        return fused.forward(x, w)
    return mam_forward_reference(x, w)


def mam_backward(g, x, w, amax, amin):
    """MAM backward through the fastest available implementation: (dx, dw)."""
    if fused.usable(x, w):
        return fused.backward(g, x, w, amax, amin)
    return mam_backward_reference(g, x, w, amax, amin)


@tf.custom_gradient
def mam_reduce(x, w):
    """y = max_i(x_i w_ij) + min_i(x_i w_ij) for x [B, N], w [N, M], with routed gradients."""
    y, amax, amin = mam_forward(x, w)

    def grad(g):
        return mam_backward(g, x, w, amax, amin)

    return y, grad


def mam_reduce_builtin(x, w):
    """MAM with TFLite builtin ops only (RESHAPE, MUL, REDUCE_MAX, REDUCE_MIN, ADD).

    Materialises the [B, N, M] products: meant for export (batch 1), where the converter
    calibrates this graph on true MAM activations and then replaces it by one MAM_SPARSE op.
    """
    p = tf.expand_dims(x, -1) * w
    return tf.reduce_max(p, axis=1) + tf.reduce_min(p, axis=1)


#: Name scope of the builtin MAM pattern inside an exported layer's scope.
EXPORT_SCOPE = "mam_reduce"

_export = threading.local()


@contextlib.contextmanager
def builtin_graph():
    """Within this context MAM layers trace with :func:`mam_reduce_builtin` (for export)."""
    previous = getattr(_export, "active", False)
    _export.active = True
    try:
        yield
    finally:
        _export.active = previous


def in_builtin_graph() -> bool:
    return getattr(_export, "active", False)
