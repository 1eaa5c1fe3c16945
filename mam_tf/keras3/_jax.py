"""The MAM op on the JAX backend: forward in chunks of input columns, routed gradient by
scatter-add, joined by ``jax.custom_vjp`` (docs/operator-contract.md section 1; ``tests/npref.py``).

Memory: the forward holds at most ``B x c x M`` products at a time (``c`` from
:func:`mam_tf.keras3._chunks.chunk_columns`, 2**22 products by default), never the
``B x N x M`` product tensor; the backward holds ``O(B*M + B*N + N*M)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mam_tf.keras3._chunks import chunk_columns

__all__ = ["forward", "backward", "mam_reduce"]


def _chunk_stats(xc, wc, offset):
    """max, argmax, min, argmin over one chunk of columns; ties go to the lowest index."""
    c = xc.shape[1]
    p = xc[:, :, None] * wc[None, :, :]  # [B, c, M]
    cmax = p.max(axis=1)
    cmin = p.min(axis=1)
    iota = jnp.arange(c, dtype=jnp.int32)[None, :, None]
    # The first index equal to the extreme; a NaN product matches nothing, so clamp the index
    # into the row (as the TensorFlow reference does).
    amax = jnp.where(p == cmax[:, None, :], iota, c).min(axis=1)
    amin = jnp.where(p == cmin[:, None, :], iota, c).min(axis=1)
    return cmax, jnp.minimum(amax, c - 1) + offset, cmin, jnp.minimum(amin, c - 1) + offset


def _merge(state, chunk):
    """Strict comparisons: on a tie the earlier chunk (lower index) keeps the selection."""
    rmax, ramax, rmin, ramin = state
    cmax, camax, cmin, camin = chunk
    take_max = cmax > rmax
    take_min = cmin < rmin
    return (jnp.where(take_max, cmax, rmax), jnp.where(take_max, camax, ramax),
            jnp.where(take_min, cmin, rmin), jnp.where(take_min, camin, ramin))


def forward(x, w, chunk=None):
    """x [B, N], w [N, M] -> (y [B, M], amax int32 [B, M], amin int32 [B, M])."""
    b, n = x.shape
    m = w.shape[1]
    c = min(int(chunk or chunk_columns(b, n, m)), n)
    n_full = n // c
    state = _chunk_stats(x[:, :c], w[:c], 0)
    if n_full > 1:
        def body(k, st):
            start = k * c
            xc = lax.dynamic_slice_in_dim(x, start, c, axis=1)
            wc = lax.dynamic_slice_in_dim(w, start, c, axis=0)
            return _merge(st, _chunk_stats(xc, wc, start))

        state = lax.fori_loop(1, n_full, body, state)
    if n - n_full * c:
        start = n_full * c
        state = _merge(state, _chunk_stats(x[:, start:], w[start:], start))
    rmax, ramax, rmin, ramin = state
    return rmax + rmin, ramax, ramin


def backward(g, x, w, amax, amin):
    """Routes g [B, M] to the selected pairs; a pair that is both argmax and argmin gets g twice."""
    m = w.shape[1]
    cols = jnp.arange(m)[None, :]
    rows = jnp.arange(x.shape[0])[:, None]
    x_max = jnp.take_along_axis(x, amax, axis=1)
    x_min = jnp.take_along_axis(x, amin, axis=1)
    dw = jnp.zeros_like(w).at[amax, cols].add(g * x_max).at[amin, cols].add(g * x_min)
    dx = jnp.zeros_like(x).at[rows, amax].add(g * w[amax, cols]).at[rows, amin].add(
        g * w[amin, cols])
    return dx, dw


@jax.custom_vjp
def mam_reduce(x, w):
    """y = max_i(x_i w_ij) + min_i(x_i w_ij) for x [B, N], w [N, M], with routed gradients."""
    return forward(x, w)[0]


def _fwd(x, w):
    y, amax, amin = forward(x, w)
    return y, (x, w, amax, amin)


def _bwd(res, g):
    return backward(g, *res)


mam_reduce.defvjp(_fwd, _bwd)
