"""Column order inside rows: count the rows that are not sorted and sort them, block by block.

Loading sorted rows needs no per-batch sort, so :func:`~scdl_gpu.convert_many` sorts every row's
entries by column (values follow) unless asked to keep the input order, as upstream
bionemo-scdl (and the upstream-compatible API built on :func:`~scdl_gpu.convert_h5ad`) does.

Entries with the same column in one row (legal, rare) keep their input order: the sort is
stable and such entries are neither summed nor dropped. Their row is not strictly increasing,
so an archive holding one records ``rows_sorted: false``.
"""

from __future__ import annotations

import numpy as np

from ..archive._concat import row_chunks
from ..archive._rowfiles import rows_are_sorted, unsorted_rows
from ._cancel import check_cancelled

#: Values sorted at once. Small sorts stay in cache: on a Tahoe-like block (17M values, 1,450 a
#: row, 62,710 genes, columns shuffled as by gene alignment) 64K-value pieces sort in 130 ms,
#: against 235 ms for the whole block's keys at once, 600 ms for scipy's ``sort_indices``
#: (unstable for repeated columns besides) and 730 ms for numpy's stable argsort.
SORT_CHUNK = 1 << 16


def order_rows(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, sort: bool) -> int:
    """Count the rows of a CSR block whose columns are not strictly increasing; sort them if ``sort``.

    ``indptr`` may start at any offset. Sorting happens in place, so ``indices`` and ``data``
    must be writable (a reader's buffer, a remapped copy or a writable memmap).
    """
    ptr = np.asarray(indptr, dtype=np.int64) - int(indptr[0])
    unsorted = 0
    for s, e in row_chunks(ptr, SORT_CHUNK):  # piece by piece: the checks' temporaries stay small too
        lo, hi = int(ptr[s]), int(ptr[e])
        piece = ptr[s : e + 1] - lo
        n_bad = len(unsorted_rows(piece, indices[lo:hi]))
        if sort and n_bad:
            order = stable_row_order(piece, indices[lo:hi])
            indices[lo:hi] = indices[lo:hi][order]
            data[lo:hi] = data[lo:hi][order]
        unsorted += n_bad
    return unsorted


def stable_row_order(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The permutation that sorts each row by column, entries of equal column in input order.

    ``indptr`` starts at 0. One 64-bit key per entry, ``(row, column, position)``, is unique,
    so a plain (fast, unstable) sort of the keys gives the stable order; the position bits are
    the permutation. Keys that would not fit 63 bits fall back to numpy's stable argsort.
    """
    n = len(indices)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    key = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))  # each entry's row
    cols = indices.astype(np.int64)
    pos_bits = (n - 1).bit_length()
    col_bits = int(cols.max()).bit_length()
    if (len(indptr) - 2).bit_length() + col_bits + pos_bits > 63:
        return np.argsort(key * (int(cols.max()) + 1) + cols, kind="stable")
    key <<= col_bits + pos_bits
    cols <<= pos_bits
    key |= cols
    key |= np.arange(n, dtype=np.int64)
    key.sort()
    key &= (1 << pos_bits) - 1
    return key


def order_allocated_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, max_values: int, sort: bool
) -> tuple[int, bool]:
    """:func:`order_rows` over rows filled in place (``allocate_rows``), ``max_values`` at a time.

    Returns the rows that were not strictly increasing as filled, and whether every row is
    strictly increasing now (what the archive records as ``rows_sorted``).
    """
    unsorted, all_sorted = 0, True
    for s, e in row_chunks(indptr, max_values):
        check_cancelled()
        ptr = np.asarray(indptr[s : e + 1], dtype=np.int64)
        lo, hi = int(ptr[0]), int(ptr[-1])
        n_bad = order_rows(ptr, indices[lo:hi], data[lo:hi], sort)
        unsorted += n_bad
        if n_bad and all_sorted:  # sorted rows may still repeat a column
            all_sorted = sort and rows_are_sorted(ptr, indices[lo:hi])
    return unsorted, all_sorted
