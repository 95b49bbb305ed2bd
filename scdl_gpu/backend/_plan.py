"""Where a batch's rows live in the archive, and which of them can be read as one span."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowPlan:
    """A batch of rows, in request order, as source spans of the value/column files.

    ``in_ptr`` (int64, B+1) places each row in the staged (concatenated) arrays. Rows that follow
    each other in the archive and in the request form one span (``span_src`` first value,
    ``span_out`` position in the staged arrays, ``span_len`` values), so block sampling reads a
    few long spans while random sampling reads one span per row.
    """

    rows: np.ndarray
    in_ptr: np.ndarray
    span_src: np.ndarray
    span_out: np.ndarray
    span_len: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.in_ptr[-1])

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def plan_rows(row_ptr: np.ndarray, rows) -> RowPlan:
    """Plan the batch ``rows`` (any order, repeats allowed) of an archive with pointers ``row_ptr``."""
    rows = np.asarray(rows)
    if rows.ndim != 1:
        raise ValueError(f"rows must be a 1-D array of row ids, got shape {rows.shape}")
    if rows.size and rows.dtype.kind not in "iu":
        raise TypeError(f"rows must be integers, got {rows.dtype}")
    rows = rows.astype(np.int64, copy=False)
    n = len(row_ptr) - 1
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        bad = rows[(rows < 0) | (rows >= n)][0]
        raise IndexError(f"row {int(bad)} out of range for an archive of {n} rows")
    starts = np.asarray(row_ptr[rows], dtype=np.int64)
    lengths = np.asarray(row_ptr[rows + 1], dtype=np.int64) - starts
    in_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=in_ptr[1:])
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:] != rows[:-1] + 1
    heads = np.flatnonzero(first)
    span_out = in_ptr[heads]
    span_len = np.diff(np.append(span_out, in_ptr[-1]))
    return RowPlan(rows, in_ptr, starts[heads], span_out, span_len)
