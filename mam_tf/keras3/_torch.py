"""The MAM op on the PyTorch backend (docs/operator-contract.md section 1; ``tests/npref.py``),
joined to its routed gradient by a ``torch.autograd.Function``, on one of two paths:

- the fused CPU kernel (float32 CPU tensors): the library of :mod:`mam_tf.common.fusedcpu`
  called through its C ABI (ctypes, without the GIL) on contiguous tensors, on
  ``torch.get_num_threads()`` of torch's own OpenMP threads (the library is built with
  ``-fopenmp`` and shares torch's libgomp); the same bits as the TensorFlow op for any thread
  count.
  Its indices are int32;
- the chunked array path (other dtypes, other devices, no C++ compiler, ``MAM_TF_FUSED=0``):
  forward in chunks of input columns, gradient by ``index_add_``; int64 indices. When the
  kernel cannot build, one ``FusedKernelWarning`` says why.

Memory: the fused path holds only its inputs and outputs; the chunked forward at most
``B x c x M`` products at a time (``c`` from :func:`mam_tf.keras3._chunks.chunk_columns`,
2**22 products by default), never the ``B x N x M`` product tensor; either backward holds
``O(B*M + B*N + N*M)``.
"""
from __future__ import annotations

import torch

from mam_tf.common import fusedbuild, fusedcpu
from mam_tf.keras3._chunks import chunk_columns

__all__ = ["forward", "backward", "mam_reduce", "chunked_forward", "chunked_backward",
           "fused_usable", "loader", "MAMReduce"]


def _load():
    # With OpenMP the work runs on torch's own OpenMP threads (mam_fused_cpu.cc, OmpPool); a
    # compiler without OpenMP builds the library with its own pool of threads instead.
    try:
        path = fusedcpu.build(prefix="cpu-omp", flags=("-fopenmp", "-DMAM_FUSED_OPENMP"))
    except RuntimeError:
        path = fusedcpu.build()
    return fusedcpu.load(path)


#: The C library, built on first use (``loader.reset()`` forgets the outcome).
loader = fusedbuild.LazyKernel(_load, "chunked PyTorch path")


def _chunk_stats(xc, wc, offset):
    """max, argmax, min, argmin over one chunk of columns; ties go to the lowest index."""
    c = xc.shape[1]
    p = xc[:, :, None] * wc[None, :, :]  # [B, c, M]
    cmax = p.amax(dim=1)
    cmin = p.amin(dim=1)
    iota = torch.arange(c, dtype=torch.int64, device=p.device)[None, :, None]
    big = torch.full_like(iota, c)
    # The first index equal to the extreme (torch's own argmax does not promise the first);
    # a NaN product matches nothing, so clamp the index into the row.
    amax = torch.where(p == cmax[:, None, :], iota, big).amin(dim=1).clamp_(max=c - 1) + offset
    amin = torch.where(p == cmin[:, None, :], iota, big).amin(dim=1).clamp_(max=c - 1) + offset
    return cmax, amax, cmin, amin


def _merge(state, chunk):
    """Strict comparisons: on a tie the earlier chunk (lower index) keeps the selection."""
    rmax, ramax, rmin, ramin = state
    cmax, camax, cmin, camin = chunk
    take_max = cmax > rmax
    take_min = cmin < rmin
    return (torch.where(take_max, cmax, rmax), torch.where(take_max, camax, ramax),
            torch.where(take_min, cmin, rmin), torch.where(take_min, camin, ramin))


def chunked_forward(x, w, chunk=None):
    """x [B, N], w [N, M] -> (y [B, M], amax int64 [B, M], amin int64 [B, M]), in chunks of
    ``chunk`` input columns (default: :func:`chunk_columns`)."""
    with torch.no_grad():
        b, n = x.shape
        m = w.shape[1]
        c = min(int(chunk or chunk_columns(b, n, m)), n)
        state = None
        for start in range(0, n, c):
            stats = _chunk_stats(x[:, start:start + c], w[start:start + c], start)
            state = stats if state is None else _merge(state, stats)
        rmax, ramax, rmin, ramin = state
        return rmax + rmin, ramax, ramin


def chunked_backward(g, x, w, amax, amin):
    """Routes g [B, M] to the selected pairs; a pair that is both argmax and argmin gets g twice."""
    with torch.no_grad():
        b, n = x.shape
        m = w.shape[1]
        cols = torch.arange(m, device=x.device)[None, :]
        rows = torch.arange(b, device=x.device)[:, None]
        w_flat = w.reshape(-1)
        dw = torch.zeros(n * m, dtype=w.dtype, device=w.device)
        dx = torch.zeros(b * n, dtype=x.dtype, device=x.device)
        for idx in (amax, amin):
            dw.index_add_(0, (idx * m + cols).reshape(-1), (g * torch.gather(x, 1, idx)).reshape(-1))
            dx.index_add_(0, (rows * n + idx).reshape(-1), (g * w_flat[idx * m + cols]).reshape(-1))
        return dx.reshape(b, n), dw.reshape(n, m)


def fused_usable(*tensors) -> bool:
    """Whether the fused kernel takes these tensors: all float32 on the CPU, the library
    available (built, loaded, self-tested) and ``MAM_TF_FUSED`` not 0."""
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            and loader.available())


def _fused_forward(x, w):
    x, w = x.detach().contiguous(), w.detach().contiguous()
    (b, n), m = x.shape, w.shape[1]
    y = torch.empty((b, m), dtype=torch.float32)
    amax = torch.empty((b, m), dtype=torch.int32)
    amin = torch.empty((b, m), dtype=torch.int32)
    fusedcpu.forward(loader.get(), x.data_ptr(), w.data_ptr(), b, n, m, y.data_ptr(),
                     amax.data_ptr(), amin.data_ptr(), torch.get_num_threads())
    return y, amax, amin


def _fused_backward(g, x, w, amax, amin):
    g, x, w = (t.detach().contiguous() for t in (g, x, w))
    amax, amin = (t.detach().to(torch.int32).contiguous() for t in (amax, amin))
    (b, n), m = x.shape, w.shape[1]
    dx = torch.empty((b, n), dtype=torch.float32)
    dw = torch.empty((n, m), dtype=torch.float32)
    fusedcpu.backward(loader.get(), g.data_ptr(), x.data_ptr(), w.data_ptr(), amax.data_ptr(),
                      amin.data_ptr(), b, n, m, dx.data_ptr(), dw.data_ptr(),
                      torch.get_num_threads())
    return dx, dw


def _check_shapes(x, w, *per_output):
    """Raises unless x is [B, N], w [N, M] and each of per_output [B, M]."""
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"mam_reduce: x must be [batch, inputs] and w [inputs, units], got x "
                         f"{tuple(x.shape)} and w {tuple(w.shape)}")
    want = (x.shape[0], w.shape[1])
    if any(tuple(t.shape) != want for t in per_output):
        raise ValueError(f"mam_reduce backward: g, amax and amin must be {want}, got "
                         f"{[tuple(t.shape) for t in per_output]}")


def forward(x, w, chunk=None):
    """x [B, N], w [N, M] -> (y [B, M], amax [B, M], amin [B, M]): the fused kernel (int32
    indices) where :func:`fused_usable`, else the chunked path (int64 indices; always when
    ``chunk`` is given)."""
    if chunk is None and fused_usable(x, w):
        _check_shapes(x, w)
        return _fused_forward(x, w)
    return chunked_forward(x, w, chunk)


def backward(g, x, w, amax, amin):
    """(dx, dw) for g [B, M] and forward's indices, on the path ``forward`` takes."""
    if fused_usable(g, x, w):
        _check_shapes(x, w, g, amax, amin)
        return _fused_backward(g, x, w, amax, amin)
    return chunked_backward(g, x, w, amax, amin)


class MAMReduce(torch.autograd.Function):
    """y of x [B, N] and w [N, M] with the routed gradient, on the path ``forward`` takes (the
    ``grad_fn`` of a MAM output is this Function's node, ``MAMReduceBackward``)."""

    @staticmethod
    def forward(ctx, x, w):
        y, amax, amin = forward(x, w)
        ctx.save_for_backward(x, w, amax, amin)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, amax, amin = ctx.saved_tensors
        return backward(g.contiguous(), x, w, amax, amin)


def mam_reduce(x, w):
    """y = max_i(x_i w_ij) + min_i(x_i w_ij) for x [B, N], w [N, M], with routed gradients."""
    return MAMReduce.apply(x, w)
