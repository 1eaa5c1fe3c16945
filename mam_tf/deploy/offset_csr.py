"""The offset-CSR layout of a pruned int8 weight matrix (docs/operator-contract.md, section 2).

A weight matrix ``W`` with M rows (outputs) and N columns (inputs) is stored as

- ``values``     int8  [E]: the stored entries, row after row, columns increasing;
- ``offsets``    uint8 [E]: columns skipped since the previous entry of the same row
  (or since the start of the row);
- ``row_counts`` int16 [M]: the number of entries of each row.

A skip longer than 255 columns is bridged by dummy entries ``(value 0, offset 255)``, each
advancing 256 columns. Decoding: ``col = -1; for each entry: col += offset + 1``.

Orientation: ``encode`` takes ``W`` as [M, N] (one row per output neuron). A Keras ``Dense`` /
``MAMDense`` kernel is [N, M] (inputs first): callers pass ``kernel.T``.

This module is plain numpy (no TensorFlow), so the host runtime and the tests import it fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["OffsetCSR", "encode", "MAX_ROW_ENTRIES", "MAX_SKIP"]

#: The most entries one row may hold (row_counts is int16).
MAX_ROW_ENTRIES = 32767
#: The longest skip one offset can say; longer skips need dummy entries.
MAX_SKIP = 255


def _layer(name: Optional[str]) -> str:
    return f"layer '{name}'" if name else "layer"


def _as_1d(arr, dtype, what: str) -> np.ndarray:
    """A contiguous 1-D array of ``dtype``; refuses values that ``dtype`` cannot hold."""
    a = np.asarray(arr)
    if a.ndim != 1:
        raise ValueError(f"OffsetCSR.{what} must be 1-D, got shape {a.shape}")
    if a.dtype == dtype:
        return np.ascontiguousarray(a)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"OffsetCSR.{what} must hold integers, got dtype {a.dtype}")
    info = np.iinfo(dtype)
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise ValueError(
            f"OffsetCSR.{what} holds {a.min()}..{a.max()}, outside {np.dtype(dtype).name} "
            f"range {info.min}..{info.max}"
        )
    return np.ascontiguousarray(a.astype(dtype))


def _decode_columns(offsets, rc: np.ndarray, e: int) -> np.ndarray:
    """The decoded column of each of the first ``e`` entries (int64 [e]): per row, from -1,
    ``col += offset + 1``. ``rc`` (int64, non-negative) sums to ``e``."""
    if e == 0:
        return np.zeros(0, np.int64)
    steps = np.asarray(offsets).astype(np.int64)[:e] + 1
    csum = np.cumsum(steps)
    starts = np.cumsum(rc) - rc                       # first entry of each row
    base = (csum - steps)[np.minimum(starts, e - 1)]  # steps taken before the row
    return csum - np.repeat(base, rc) - 1


def layout_error(offsets, row_counts, values_len: int, n: int) -> Optional[str]:
    """The first rule of the C core's layout checks (``mam_validate``, with its words) that an
    offset-CSR layout breaks, or None: no negative row count, row counts summing to the number
    of values, every decoded column < N. ``offsets`` and ``row_counts`` hold what they say
    (lengths are checked by the callers, before these arrays are read)."""
    rc = np.asarray(row_counts).astype(np.int64)
    if (rc < 0).any():
        j = int(np.flatnonzero(rc < 0)[0])
        return f"row {j} has a negative row count {int(rc[j])}"
    if int(rc.sum()) != values_len:
        return f"row_counts sum to {int(rc.sum())} but values has {values_len} entries"
    cols = _decode_columns(offsets, rc, values_len)
    starts = np.cumsum(rc) - rc
    beyond = np.flatnonzero(cols >= n)
    if beyond.size:
        k = int(beyond[0])
        j = int(np.searchsorted(np.cumsum(rc), k, side="right"))
        return (f"row {j} entry {k - int(starts[j])} decodes column {int(cols[k])} >= "
                f"in_features {n}")
    return None


@dataclass(eq=False)
class OffsetCSR:
    """A pruned int8 weight matrix in offset-CSR form (see the module docstring).

    ``shape`` is (M, N): M rows = outputs, N columns = inputs. The arrays are converted to
    their contract dtypes on construction; their consistency is checked by :meth:`check`
    (which :meth:`decode` and :meth:`columns` call), not on construction, so that corrupted
    layouts can be represented (tests of the kernels' validation need them).
    """

    values: np.ndarray
    offsets: np.ndarray
    row_counts: np.ndarray
    shape: Tuple[int, int]

    def __post_init__(self):
        self.values = _as_1d(self.values, np.int8, "values")
        self.offsets = _as_1d(self.offsets, np.uint8, "offsets")
        self.row_counts = _as_1d(self.row_counts, np.int16, "row_counts")
        if len(self.shape) != 2:
            raise ValueError(f"OffsetCSR.shape must be (M, N), got {self.shape!r}")
        self.shape = (int(self.shape[0]), int(self.shape[1]))

    # -- sizes --------------------------------------------------------------------------
    @property
    def num_entries(self) -> int:
        """E: the stored entries, dummies included."""
        return int(self.values.shape[0])

    @property
    def num_dummies(self) -> int:
        """Entries that only bridge a skip longer than 255 (value 0, offset 255)."""
        return int(np.count_nonzero((self.values == 0) & (self.offsets == MAX_SKIP)))

    def nbytes(self, has_bias: bool = True, *, bias_itemsize: int = 4) -> int:
        """Footprint of the layer in bytes, exactly ``2*E + 2*M + 4*M``
        (docs/operator-contract.md section 2).

        Counted: ``values`` (1 byte per entry) + ``offsets`` (1 byte per entry) = 2*E,
        ``row_counts`` (int16) = 2*M, and the bias (int32, 4*M) when ``has_bias``. Nothing
        else: no tensor headers, no quantization parameters (scales, multipliers), no
        flatbuffer padding. In 16x8 mode the bias is int64: pass ``bias_itemsize=8`` to count
        its real size (the contract's formula counts 4 bytes per bias).
        """
        m = self.shape[0]
        return 2 * self.num_entries + 2 * m + (bias_itemsize * m if has_bias else 0)

    # -- structure ----------------------------------------------------------------------
    def check(self, name: Optional[str] = None) -> None:
        """Raise ValueError unless the layout is consistent (docs/operator-contract.md section 4).

        Checks, in O(E): len(values) == len(offsets) == sum(row_counts), len(row_counts) == M,
        no negative row count, every decoded column < N.
        """
        m, n = self.shape
        where = _layer(name)
        if m < 1 or n < 1:
            raise ValueError(f"{where}: shape {self.shape} must have M >= 1 and N >= 1")
        if self.row_counts.shape[0] != m:
            raise ValueError(
                f"{where}: row_counts has {self.row_counts.shape[0]} entries, shape says M = {m}"
            )
        if self.offsets.shape[0] != self.num_entries:
            raise ValueError(f"{where}: values has {self.num_entries} entries but offsets has "
                             f"{self.offsets.shape[0]}")
        problem = layout_error(self.offsets, self.row_counts, self.num_entries, n)
        if problem:
            raise ValueError(f"{where}: {problem}")

    def _columns_unchecked(self) -> np.ndarray:
        return _decode_columns(self.offsets, self.row_counts.astype(np.int64), self.num_entries)

    def columns(self) -> np.ndarray:
        """The decoded column of every entry (int64 [E]), dummies included."""
        self.check()
        return self._columns_unchecked()

    def row_ids(self) -> np.ndarray:
        """The row of every entry (int64 [E])."""
        return np.repeat(np.arange(self.shape[0], dtype=np.int64), self.row_counts.astype(np.int64))

    def decode(self) -> np.ndarray:
        """The dense int8 [M, N] matrix (zeros where nothing is stored)."""
        cols = self.columns()
        dense = np.zeros(self.shape, np.int8)
        dense[self.row_ids(), cols] = self.values
        return dense


def encode(w_int8, name: Optional[str] = None) -> OffsetCSR:
    """Encode a pruned int8 weight matrix ``w_int8`` [M rows = outputs, N columns = inputs].

    Keras kernels are [N, M]: pass ``kernel.T``. Zero weights are pruned (not stored); skips
    longer than 255 columns get dummy entries ``(0, 255)``; trailing zeros need no entry.
    Raises ValueError (naming ``name`` and the row) when a row needs more than 32767 entries.
    """
    w = np.asarray(w_int8)
    where = _layer(name)
    if w.ndim != 2:
        raise ValueError(f"{where}: weights must be a 2-D [M, N] matrix, got shape {w.shape}")
    m, n = w.shape
    if m < 1 or n < 1:
        raise ValueError(f"{where}: weights shape {w.shape} must have M >= 1 and N >= 1")
    if w.dtype != np.int8:
        if not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"{where}: weights must be int8, got dtype {w.dtype}")
        if w.size and (w.min() < -128 or w.max() > 127):
            raise ValueError(f"{where}: weights hold {w.min()}..{w.max()}, outside int8")
        w = w.astype(np.int8)

    rows, cols = np.nonzero(w)  # row-major: columns increase within each row
    rows = rows.astype(np.int64)
    cols = cols.astype(np.int64)
    prev = np.empty_like(cols)
    if cols.size:
        prev[0] = -1
        prev[1:] = cols[:-1]
        prev[1:][rows[1:] != rows[:-1]] = -1
    gap = cols - prev - 1
    dummies = gap // (MAX_SKIP + 1)          # each dummy advances 256 columns
    per_nonzero = dummies + 1
    row_counts = np.bincount(rows, weights=per_nonzero, minlength=m).astype(np.int64)
    if (row_counts > MAX_ROW_ENTRIES).any():
        j = int(np.flatnonzero(row_counts > MAX_ROW_ENTRIES)[0])
        raise ValueError(
            f"{where}: row {j} needs {int(row_counts[j])} entries, more than the "
            f"{MAX_ROW_ENTRIES} an int16 row count can hold; prune it further"
        )
    e = int(per_nonzero.sum())
    pos = np.cumsum(per_nonzero) - 1         # where each real entry lands
    values = np.zeros(e, np.int8)
    offsets = np.full(e, MAX_SKIP, np.uint8)
    values[pos] = w[rows, cols]
    offsets[pos] = (gap % (MAX_SKIP + 1)).astype(np.uint8)
    return OffsetCSR(values, offsets, row_counts.astype(np.int16), (m, n))
