"""The MAM op on the JAX backend (docs/operator-contract.md section 1; ``tests/npref.py``),
joined to its routed gradient by ``jax.custom_vjp``, on one of two paths:

- the fused CPU kernel (float32 on the CPU backend): the library of
  :mod:`mam_tf.common.fusedcpu` built with JAX's FFI headers, whose XLA FFI handlers are
  registered as the custom-call targets ``mam_tf_fused_forward`` / ``mam_tf_fused_backward``.
  It works under ``jax.jit`` and in Keras' compiled train step, runs on XLA's intra-op threads
  and gives the same bits as the TensorFlow op for any thread count;
- the chunked array path (other dtypes, other devices, no C++ compiler, ``MAM_TF_FUSED=0``):
  forward in chunks of input columns, gradient by scatter-add. When the kernel cannot build,
  one ``FusedKernelWarning`` says why.

Memory: the fused path holds only its inputs and outputs; the chunked forward at most
``B x c x M`` products at a time (``c`` from :func:`mam_tf.keras3._chunks.chunk_columns`,
2**22 products by default), never the ``B x N x M`` product tensor; either backward holds
``O(B*M + B*N + N*M)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mam_tf.common import fusedbuild, fusedcpu
from mam_tf.keras3._chunks import chunk_columns

__all__ = ["forward", "backward", "mam_reduce", "chunked_forward", "chunked_backward",
           "fused_usable", "loader", "FORWARD_TARGET", "BACKWARD_TARGET"]

FORWARD_TARGET = "mam_tf_fused_forward"
BACKWARD_TARGET = "mam_tf_fused_backward"
_registered: set = set()


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


def chunked_forward(x, w, chunk=None):
    """x [B, N], w [N, M] -> (y [B, M], amax int32 [B, M], amin int32 [B, M]), in chunks of
    ``chunk`` input columns (default: :func:`chunk_columns`)."""
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


def chunked_backward(g, x, w, amax, amin):
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


def _load():
    import jaxlib

    path = fusedcpu.build(prefix=f"xla-{jaxlib.__version__}",
                          flags=("-DMAM_FUSED_XLA_FFI", f"-I{jax.ffi.include_dir()}"))
    lib = fusedcpu.load(path)
    for name, symbol in ((FORWARD_TARGET, lib.MamFusedForward),
                         (BACKWARD_TARGET, lib.MamFusedBackward)):
        if name not in _registered:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
            _registered.add(name)
    with jax.ensure_compile_time_eval():  # the first check may come while a function traces
        fusedbuild.self_test(_fused_forward, _fused_backward)
    return lib


#: The XLA FFI library, built and registered on first use (``loader.reset()`` forgets it).
loader = fusedbuild.LazyKernel(_load, "chunked JAX path")


def fused_usable(*arrays) -> bool:
    """Whether the fused kernel takes these arrays: all float32, JAX computing on the CPU,
    the library available (built, registered, self-tested) and ``MAM_TF_FUSED`` not 0."""
    return (all(jnp.result_type(a) == jnp.float32 for a in arrays)
            and jax.default_backend() == "cpu" and loader.available())


def _fused_forward(x, w):
    b, m = x.shape[0], w.shape[1]
    out = (jax.ShapeDtypeStruct((b, m), jnp.float32),
           jax.ShapeDtypeStruct((b, m), jnp.int32), jax.ShapeDtypeStruct((b, m), jnp.int32))
    return jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")(x, w)


def _fused_backward(g, x, w, amax, amin):
    out = (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct(w.shape, jnp.float32))
    return jax.ffi.ffi_call(BACKWARD_TARGET, out, vmap_method="sequential")(
        g, x, w, jnp.asarray(amax, jnp.int32), jnp.asarray(amin, jnp.int32))


def forward(x, w, chunk=None):
    """x [B, N], w [N, M] -> (y [B, M], amax int32 [B, M], amin int32 [B, M]): the fused
    kernel where :func:`fused_usable`, else the chunked path (always when ``chunk`` is given)."""
    if chunk is None and fused_usable(x, w):
        return tuple(_fused_forward(x, w))
    return chunked_forward(x, w, chunk)


def backward(g, x, w, amax, amin):
    """(dx, dw) for g [B, M] and forward's indices, on the path ``forward`` takes."""
    if fused_usable(g, x, w):
        return tuple(_fused_backward(g, x, w, amax, amin))
    return chunked_backward(g, x, w, amax, amin)


def _nondiff(fwd_fn, bwd_fn):
    """``fwd_fn``'s y as a differentiable function of (x, w), its gradient from ``bwd_fn``."""
    @jax.custom_vjp
    def reduce(x, w):
        return fwd_fn(x, w)[0]

    def fwd(x, w):
        y, amax, amin = fwd_fn(x, w)
        return y, (x, w, amax, amin)

    def bwd(res, g):
        return tuple(bwd_fn(g, *res))

    reduce.defvjp(fwd, bwd)
    return reduce


_fused_reduce = _nondiff(_fused_forward, _fused_backward)
_chunked_reduce = _nondiff(chunked_forward, chunked_backward)


def mam_reduce(x, w):
    """y = max_i(x_i w_ij) + min_i(x_i w_ij) for x [B, N], w [N, M], with routed gradients."""
    if fused_usable(x, w):
        return _fused_reduce(x, w)
    return _chunked_reduce(x, w)
