"""Pruning masks and their footprint, in numpy: what the tf_keras path
(:mod:`mam_tf.train.pruning`) and the Keras 3 path (:mod:`mam_tf.keras3.pruning`) share.

Nothing here imports Keras or TensorFlow. The callers turn their layers into plain arrays:
the kernel [N inputs, M units], which of its weights are already pruned, and a score per
weight; this module ranks them, builds keep masks, counts selections and offset-CSR entries.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "SCOPES",
    "check_scope",
    "n_pruned",
    "n_kept",
    "keep_masks",
    "SelectionCounts",
    "selection_counts_from_indices",
    "csr_entries",
    "footprint_row",
    "footprint_total",
    "format_footprint",
]

SCOPES = ("layer", "global")


def check_scope(fn, scope):
    if scope not in SCOPES:
        raise ValueError(f"{fn}: scope must be one of {SCOPES}, got {scope!r}")


def n_pruned(sparsity, n):
    """How many of n weights a sparsity prunes: round(sparsity * n), halves up."""
    return int(math.floor(sparsity * n + 0.5))


def n_kept(remaining, n):
    """How many of n weights a ``remaining`` fraction keeps: round(remaining * n), halves up."""
    return int(math.floor(remaining * n + 0.5))


def keep_masks(fn, layers, count, scope):
    """Keep masks (True keeps) that prune exactly ``count(n)`` weights, lowest score first.

    ``layers``: ``[(name, kernel, pruned, score), ...]`` with arrays of one kernel's shape
    (``pruned``: bool, True where a weight is already pruned). ``count(n)``: how many of n
    weights to prune, n counted per layer (``scope="layer"``) or over all of them together
    (``scope="global"``). Weights already pruned go first; ties in score are broken by the
    smaller magnitude, then by position (row-major in the kernel, layers in order).
    Asking to prune fewer weights than are already pruned is refused: the new mask would
    bring pruned weights back. Returns ``{name: bool array}``.
    """
    groups = [layers] if scope == "global" else [[item] for item in layers]
    masks = {}
    for group in groups:
        pruned = np.concatenate([np.asarray(p, bool).ravel() for _, _, p, _ in group])
        absw = np.concatenate([np.abs(np.asarray(k, np.float64)).ravel() for _, k, _, _ in group])
        score = np.concatenate([np.asarray(s, np.float64).ravel() for _, _, _, s in group])
        n = pruned.size
        k = count(n)
        already = int(pruned.sum())
        if already > k:
            where = (f"layer '{group[0][0]}'" if scope == "layer"
                     else f"layers {[item[0] for item in group]}")
            raise ValueError(
                f"{fn}: {where} already has {already} of {n} weights pruned (remaining "
                f"{1 - already / n:.4g}); the target keeps {n - k}, which would bring back "
                "pruned weights: the new mask conflicts with the one held")
        ranked = np.lexsort((np.arange(n), absw, score, (~pruned).astype(np.int8)))
        keep = np.ones(n, bool)
        keep[ranked[:k]] = False
        start = 0
        for name, kernel, _, _ in group:
            size = int(np.size(kernel))
            masks[name] = keep[start:start + size].reshape(np.shape(kernel))
            start += size
    return masks


class SelectionCounts(NamedTuple):
    """How often each weight was chosen, over a data set: arrays of the kernel's shape [N, M]."""

    argmax: np.ndarray
    argmin: np.ndarray


def selection_counts_from_indices(amax, amin, n):
    """How often each weight of an [n, M] kernel was the argmax and the argmin of its row,
    from the indices [rows, M] of the MAM op: two int64 arrays [n, M]."""
    amax = np.asarray(amax, np.int64).reshape(-1, np.shape(amax)[-1])
    amin = np.asarray(amin, np.int64).reshape(amax.shape)
    m = amax.shape[1]
    cols = np.arange(m, dtype=np.int64)[None, :]
    out = []
    for idx in (amax, amin):
        out.append(np.bincount((idx * m + cols).ravel(), minlength=n * m).reshape(n, m))
    return out[0], out[1]


def csr_entries(mask_rows):
    """Offset-CSR entries E of a weight matrix given its nonzero mask, one row per output.

    docs/operator-contract.md section 2: every nonzero is stored, plus floor(gap / 256) dummy entries for
    each gap between consecutive stored columns of a row (and from the row start), with
    gap = c - prev - 1 and prev starting at -1. Trailing zeros cost nothing. The same count as
    ``mam_tf.deploy.offset_csr.encode(...).num_entries``, without quantizing.
    """
    mask_rows = np.asarray(mask_rows, bool)
    if mask_rows.ndim != 2:
        raise ValueError(f"csr_entries: mask must be [M rows, N columns], got {mask_rows.shape}")
    rows, cols = np.nonzero(mask_rows)  # row-major: columns increase within each row
    if rows.size == 0:
        return 0
    prev = np.empty_like(cols)
    prev[0] = -1
    prev[1:] = cols[:-1]
    prev[np.r_[True, rows[1:] != rows[:-1]]] = -1  # the first entry of each row
    gaps = cols - prev - 1
    return int(rows.size + (gaps // 256).sum())


def footprint_row(name, cls, kernel, use_bias):
    """One row of the pruning summary for a kernel [N, M] as it acts (masks applied):
    weights kept (``remaining``; ``sparsity`` = 1 - remaining, kept for one release), dense int8 bytes (M*N + 4*M bias) and offset-CSR bytes
    (2*E + 2*M + 4*M bias, E = :func:`csr_entries`)."""
    k = np.asarray(kernel)
    n, m = k.shape
    nonzero = k != 0
    entries = csr_entries(nonzero.T)
    bias = 4 * m if use_bias else 0
    return {
        "layer": name,
        "class": cls,
        "inputs": int(n),
        "units": int(m),
        "total": int(k.size),
        "nonzero": int(nonzero.sum()),
        "remaining": float(nonzero.sum() / k.size),
        "sparsity": float(1.0 - nonzero.sum() / k.size),
        "dense_int8_bytes": int(n * m + bias),
        "csr_entries": entries,
        "csr_bytes": int(2 * entries + 2 * m + bias),
    }


def footprint_total(rows):
    total = {
        "layer": "total", "class": "",
        "inputs": None, "units": None,
        **{key: sum(r[key] for r in rows)
           for key in ("total", "nonzero", "dense_int8_bytes", "csr_entries", "csr_bytes")},
    }
    total["remaining"] = float(total["nonzero"] / total["total"]) if total["total"] else 1.0
    total["sparsity"] = 1.0 - total["remaining"]
    return total


def format_footprint(rows, total):
    """The summary table as text."""
    head = (f"{'layer':<24}{'class':<10}{'N x M':>12}{'weights':>10}{'nonzero':>10}"
            f"{'remaining':>10}{'dense int8 B':>14}{'offset-CSR B':>14}")
    lines = [head, "-" * len(head)]
    for r in rows + [total]:
        shape = f"{r['inputs']}x{r['units']}" if r["inputs"] is not None else ""
        lines.append(f"{r['layer']:<24}{r['class']:<10}{shape:>12}{r['total']:>10}"
                     f"{r['nonzero']:>10}{r['remaining']:>10.4f}{r['dense_int8_bytes']:>14}"
                     f"{r['csr_bytes']:>14}")
    lines.append("bytes: dense int8 = M*N + 4*M (bias); offset-CSR = 2*E + 2*M + 4*M (bias), "
                 "E = stored entries incl. dummies (docs/operator-contract.md section 2)")
    return "\n".join(lines)
