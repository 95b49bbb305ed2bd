"""Move one input's matrix into row storage: cast values, remap columns, sort rows, scatter column-major inputs.

The *sink* is a :class:`~scdl_gpu.archive._rowfiles.RowFiles`: an archive writer's ``rows`` or
a conversion worker's segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..archive._dtypes import cast_checked, check_data_dtype
from ..errors import ConversionError
from ._cancel import check_cancelled
from ._matrix import MatrixReader, ScatterReader, check_column_indices
from ._rows import order_allocated_rows, order_rows

AUTO = "auto"


@dataclass
class ColumnMap:
    """Where each input column goes in the output (``-1``: dropped)."""

    new_of_old: np.ndarray
    n_out: int

    def __post_init__(self) -> None:
        self.new_of_old = np.asarray(self.new_of_old, dtype=np.int64)
        self.keep = self.new_of_old >= 0
        self.drops = not bool(self.keep.all())
        self.identity = (not self.drops) and self.n_out == len(self.new_of_old) and bool(
            np.array_equal(self.new_of_old, np.arange(len(self.new_of_old)))
        )


@dataclass
class ValueStats:
    """What the stored values need, tracked while copying (for ``data_dtype="auto"``)."""

    nnz: int = 0
    dropped: int = 0  # stored values in columns the gene vocabulary drops
    min: float = 0.0
    max: float = 0.0
    integer: bool = True
    float32_exact: bool = True

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        lo, hi = values.min(), values.max()
        first = self.nnz == 0
        self.min = float(lo) if first else min(self.min, float(lo))
        self.max = float(hi) if first else max(self.max, float(hi))
        if values.dtype.kind == "f":
            if self.integer:
                self.integer = bool(np.isfinite(values).all() and (np.floor(values) == values).all())
            if self.float32_exact and values.dtype.itemsize > 4:
                with np.errstate(over="ignore"):
                    self.float32_exact = bool((values.astype(np.float32) == values).all())
        elif values.dtype.kind == "b":
            self.min, self.max = float(bool(self.min)), float(bool(self.max))
        self.nnz += int(values.size)

    def merge(self, other: "ValueStats") -> None:
        if other.nnz:
            self.min = other.min if not self.nnz else min(self.min, other.min)
            self.max = other.max if not self.nnz else max(self.max, other.max)
        self.nnz += other.nnz
        self.dropped += other.dropped
        self.integer &= other.integer
        self.float32_exact &= other.float32_exact

    def smallest_dtype(self) -> str:
        """The smallest format dtype that holds every value seen exactly."""
        from ..archive._dtypes import smallest_uint_dtype

        if self.integer and self.min >= 0:
            return smallest_uint_dtype(int(self.max))
        return "float32" if self.float32_exact else "float64"


@dataclass
class ValueCast:
    """Casts blocks of values to the stored dtype; with ``auto``, keeps them and records stats.

    NaN and infinity are refused (naming the input and row) unless ``allow_nonfinite``: a
    training run that meets them later has no way back to the cell they came from.
    """

    dtype: str | None
    tolerance: float = 1e-08
    stats: ValueStats = field(default_factory=ValueStats)
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        self.auto = self.dtype == AUTO
        if not self.auto:
            self.dtype = check_data_dtype(self.dtype)

    def staging_dtype(self, source: np.dtype) -> str:
        """The dtype values are written in before the final one is known (``auto`` only)."""
        if not self.auto:
            return self.dtype
        source = np.dtype(source)
        return "uint8" if source.kind == "b" else source.name

    def check_finite(self, values: np.ndarray, rows_of, where: str, target: str) -> None:
        """Refuse NaN/inf in ``values``; ``rows_of(k)`` gives the input row of entry ``k``."""
        if (self.allow_nonfinite and np.dtype(target).kind == "f") or values.dtype.kind not in "fc" or not values.size:
            return
        finite = np.isfinite(values)
        if finite.all():
            return
        k = int(np.argmin(finite))
        hint = (
            f"data_dtype {np.dtype(target).name} cannot store it"
            if np.dtype(target).kind != "f"
            else "non-finite values are refused; pass allow_nonfinite=True to store them"
        )
        raise ConversionError(
            f"{where}: row {rows_of(k)} holds {values[k].item()}, a non-finite value "
            f"({int(values.size - np.count_nonzero(finite))} in this block); {hint}"
        )

    def __call__(self, values: np.ndarray, target: str, where: str) -> np.ndarray:
        if self.auto:
            self.stats.update(values)
            return values.astype(target, copy=False)
        self.stats.nnz += int(values.size)
        return cast_checked(values, target, self.tolerance, where)


def copy_matrix(
    matrix: MatrixReader,
    sink,
    cast: ValueCast,
    max_values: int,
    max_rows: int = 1 << 62,
    columns: ColumnMap | None = None,
    on_rows: Callable[[int], None] | None = None,
    sort_rows: bool = True,
) -> int:
    """Write every row of ``matrix`` to ``sink``; ``on_rows(n)`` is called as rows are done.

    With ``sort_rows``, each row's entries are stored by increasing column (after ``columns``
    remaps them), else in input order. Returns how many rows were not strictly increasing as
    read (after remapping): the rows sorted, or left unsorted without ``sort_rows``.
    """
    if columns is not None and columns.identity:
        columns = None
    if isinstance(matrix, ScatterReader):
        unsorted = _scatter(matrix, sink, cast, max_values, columns, sort_rows)
        if on_rows is not None:
            on_rows(matrix.shape[0])
        return unsorted
    n_vars = matrix.shape[1]
    row = unsorted = 0
    for indptr, indices, data in matrix.blocks(max_values, max_rows):
        check_cancelled()  # between blocks: a signal stops the conversion within one block
        n = len(indptr) - 1
        where = f"{matrix.where} rows {row} to {row + n}"
        check_column_indices(indices, n_vars, where)
        if columns is not None:
            indptr, indices, data = _remap_block(indptr, indices, data, columns, cast.stats)
        cast.check_finite(data, lambda k, ip=indptr, r0=row: _row_of(ip, k, r0), matrix.where, sink.data_dtype)
        indices, data = indices.astype(sink.col_dtype, copy=False), cast(data, sink.data_dtype, where)
        unsorted += order_rows(indptr, indices, data, sort_rows)  # in place: the block's own buffers
        sink.append_rows(indptr, indices, data)
        row += n
        if on_rows is not None:
            on_rows(n)
    return unsorted


def _row_of(indptr: np.ndarray, k: int, first_row: int) -> int:
    """The row (counted in the whole input) of entry ``k`` of a block whose rows start at ``first_row``."""
    ptr = np.asarray(indptr, dtype=np.int64) - int(indptr[0])
    return first_row + int(np.searchsorted(ptr, k, side="right")) - 1


def _remap_block(indptr, indices, data, columns: ColumnMap, stats: ValueStats):
    """Map column indices through ``columns``, dropping entries of unmapped genes."""
    new = columns.new_of_old[indices]
    if not columns.drops:
        return indptr, new, data
    keep = new >= 0
    kept_before = np.zeros(len(keep) + 1, np.int64)
    np.cumsum(keep, out=kept_before[1:])
    new_indptr = kept_before[np.asarray(indptr, np.int64) - int(indptr[0])]
    stats.dropped += int(len(keep) - kept_before[-1])
    return new_indptr, new[keep], data[keep]


def _scatter(matrix: ScatterReader, sink, cast: ValueCast, max_values: int, columns: ColumnMap | None, sort: bool) -> int:
    """Two passes: count entries per row, then place each entry block at its rows' cursors.

    Entries of a row keep the order the reader gives them in (column order for CSC); a third
    pass over the filled rows sorts them (with ``sort``) and records whether they are sorted.
    Returns the rows not strictly increasing as filled.
    """
    keep = columns.keep if columns is not None and columns.drops else None
    counts = matrix.row_counts(max_values, keep)
    indptr, out_data, out_cols = sink.allocate_rows(counts)
    cursor = indptr[:-1].astype(np.int64)
    n_vars = matrix.shape[1]
    for rows, cols, vals in matrix.entries(max_values):
        check_cancelled()
        check_column_indices(cols, n_vars, f"{matrix.where} entries")
        if columns is not None:
            cols = columns.new_of_old[cols]
            if keep is not None:
                k = cols >= 0
                cast.stats.dropped += int(len(k) - np.count_nonzero(k))
                rows, cols, vals = rows[k], cols[k], vals[k]
        cast.check_finite(vals, lambda k, r=rows: int(r[k]), matrix.where, sink.data_dtype)
        order = np.argsort(rows, kind="stable")  # by row, keeping the given order inside a row
        rows_s = rows[order]
        per_row = np.bincount(rows_s, minlength=len(cursor))
        first = np.cumsum(per_row) - per_row  # position of each row's first entry in rows_s
        pos = cursor[rows_s] + (np.arange(len(rows_s)) - first[rows_s])
        out_data[pos] = cast(vals[order], sink.data_dtype, f"{matrix.where} entries")
        out_cols[pos] = cols[order].astype(sink.col_dtype)
        cursor += per_row
    if not np.array_equal(cursor, indptr[1:].astype(np.int64)):
        raise ValueError(f"{matrix.where}: the entries disagree with the row counts of the first pass")
    unsorted, rows_sorted = order_allocated_rows(indptr, out_cols, out_data, max_values, sort)
    sink.record_scattered_order(rows_sorted)
    if isinstance(out_data, np.memmap):
        out_data.flush()
        out_cols.flush()
    return unsorted
