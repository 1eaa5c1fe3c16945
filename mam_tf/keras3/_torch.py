"""The MAM op on the PyTorch backend: forward in chunks of input columns, routed gradient by
``index_add_``, joined by a ``torch.autograd.Function`` (docs/operator-contract.md section 1;
``tests/npref.py``).

Memory: the forward holds at most ``B x c x M`` products at a time (``c`` from
:func:`mam_tf.keras3._chunks.chunk_columns`, 2**22 products by default), never the
``B x N x M`` product tensor; the backward holds ``O(B*M + B*N + N*M)``.
"""
from __future__ import annotations

import torch

from mam_tf.keras3._chunks import chunk_columns

__all__ = ["forward", "backward", "mam_reduce"]


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


def forward(x, w, chunk=None):
    """x [B, N], w [N, M] -> (y [B, M], amax int64 [B, M], amin int64 [B, M])."""
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


def backward(g, x, w, amax, amin):
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


class _MAMReduce(torch.autograd.Function):
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
    return _MAMReduce.apply(x, w)
