"""The three row arrays of a CSR matrix being written: values, column indices, row pointers.

:class:`RowFiles` is what :class:`~scdl_gpu.archive.ArchiveWriter` streams rows into, and what a
conversion worker writes one input into (a *segment*) before the segment is appended to the
archive. Row pointers are kept as uint64 until the total is known, then narrowed at commit.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._constants import FileNames
from ._memmap import map_raw, write_raw

ROWPTR_PARTIAL = "row_ptr.u64.partial"
COPY_ITEMS = 8 * 1024 * 1024  # items per step when a file is re-typed while copied


def _increasing(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per stored entry ``k`` but the last: whether entry ``k + 1`` is in a later row or a larger column."""
    if len(indices) < 2:
        return np.ones(0, dtype=bool)
    increasing = np.diff(indices.astype(np.int64, copy=False)) > 0
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < len(indices))]
    increasing[starts - 1] = True  # a row's first entry may be anything
    return increasing


def rows_are_sorted(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Whether every row of a CSR block has strictly increasing column indices (one vectorised pass)."""
    return bool(_increasing(np.asarray(indptr, dtype=np.int64) - int(indptr[0]), indices).all())


def unsorted_rows(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The rows of a CSR block (numbered from 0) whose column indices are not strictly increasing."""
    indptr = np.asarray(indptr, dtype=np.int64) - int(indptr[0])
    increasing = _increasing(indptr, indices)
    if increasing.all():
        return np.zeros(0, dtype=np.int64)
    # before[k]: out-of-order pairs (k', k' + 1) with k' < k; row r holds pairs indptr[r] .. indptr[r + 1] - 2
    before = np.zeros(len(indices) + 1, dtype=np.int64)
    np.cumsum(~increasing, out=before[1 : len(increasing) + 1])
    before[len(increasing) + 1 :] = before[len(increasing)]
    last = np.maximum(indptr[1:] - 1, indptr[:-1])
    return np.flatnonzero(before[last] > before[indptr[:-1]])


@dataclass(frozen=True)
class Segment:
    """A finished :class:`RowFiles` directory, as a picklable record (workers hand these back)."""

    directory: Path
    data_dtype: str
    col_dtype: str
    n_rows: int
    nnz: int
    rows_sorted: bool = False  # every row's column indices strictly increasing (False: unknown or not)

    def row_ptr(self) -> np.ndarray:
        """The segment's uint64 row pointers (``n_rows + 1``, from 0), memory-mapped."""
        return np.memmap(self.directory / ROWPTR_PARTIAL, dtype=np.uint64, mode="r")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row_ptr, col_ptr, data)`` of the segment, memory-mapped read-only."""
        return (
            self.row_ptr(),
            map_raw(self.directory / FileNames.COLPTR.value, self.col_dtype, self.nnz),
            map_raw(self.directory / FileNames.DATA.value, self.data_dtype, self.nnz),
        )

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class RowFiles:
    """Append-only CSR row storage in ``directory`` (``data.npy``, ``col_ptr.npy``, row pointers)."""

    def __init__(self, directory: Path, data_dtype: str, col_dtype: str) -> None:
        self.directory = Path(directory)
        self.data_dtype = np.dtype(data_dtype).name
        self.col_dtype = np.dtype(col_dtype).name
        self.n_rows = 0
        self.nnz = 0
        self._data = open(self.directory / FileNames.DATA.value, "wb")
        self._cols = open(self.directory / FileNames.COLPTR.value, "wb")
        self._rowptr = open(self.directory / ROWPTR_PARTIAL, "wb")
        write_raw(self._rowptr, np.zeros(1, np.uint64))
        self.closed = False
        self.rows_sorted = True  # until a row is seen unsorted, or rows are scattered unchecked

    def append_rows(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        """Append rows given as a CSR block; ``indptr`` may start at any offset.

        ``indices`` and ``data`` hold exactly the block's stored entries and must already have
        the files' dtypes (the caller decides how to cast, and how to warn or fail).
        """
        indptr = np.asarray(indptr, dtype=np.int64)
        n = len(indptr) - 1
        nnz = int(indptr[-1] - indptr[0]) if n >= 0 else 0
        if len(indices) != nnz or len(data) != nnz:
            raise ValueError(f"block has {nnz} entries by indptr but {len(indices)} indices and {len(data)} values")
        if indices.dtype != np.dtype(self.col_dtype) or data.dtype != np.dtype(self.data_dtype):
            raise TypeError(f"block dtypes {data.dtype}/{indices.dtype} != archive {self.data_dtype}/{self.col_dtype}")
        write_raw(self._data, data)
        write_raw(self._cols, indices)
        write_raw(self._rowptr, (indptr[1:] - indptr[0] + self.nnz).astype(np.uint64))
        if self.rows_sorted and nnz > 1:
            self.rows_sorted = rows_are_sorted(indptr, indices)
        self.n_rows += n
        self.nnz += nnz

    def allocate_rows(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reserve rows of known lengths and return writable ``(indptr, data, indices)`` to fill.

        For inputs that cannot be read row by row (CSC, Matrix Market): the caller scatters
        entries into the returned memmaps at ``indptr[row] + k``. Must be the only call that adds rows.
        """
        if self.n_rows:
            raise RuntimeError("allocate_rows must be the first and only way rows are added")
        counts = np.asarray(counts, dtype=np.uint64)
        indptr = np.zeros(len(counts) + 1, np.uint64)
        np.cumsum(counts, out=indptr[1:])
        nnz = int(indptr[-1])
        self._data.truncate(nnz * np.dtype(self.data_dtype).itemsize)
        self._cols.truncate(nnz * np.dtype(self.col_dtype).itemsize)
        self._data.seek(0, os.SEEK_END)
        self._cols.seek(0, os.SEEK_END)
        write_raw(self._rowptr, indptr[1:])
        self.n_rows, self.nnz = len(counts), nnz
        self.rows_sorted = False  # filled later by scattering: see record_scattered_order
        if nnz == 0:
            return indptr, np.empty(0, self.data_dtype), np.empty(0, self.col_dtype)
        self._data.flush()
        self._cols.flush()
        data = np.memmap(self.directory / FileNames.DATA.value, dtype=self.data_dtype, mode="r+", shape=(nnz,))
        cols = np.memmap(self.directory / FileNames.COLPTR.value, dtype=self.col_dtype, mode="r+", shape=(nnz,))
        return indptr, data, cols

    def record_scattered_order(self, rows_sorted: bool) -> None:
        """Record whether the rows filled through :meth:`allocate_rows` are all strictly increasing.

        The filler checks them (it holds the filled arrays); until then they count as unsorted.
        """
        self.rows_sorted = bool(rows_sorted)

    def append_segment(self, other: Segment) -> None:
        """Append the rows of a finished segment, converting dtypes where they differ.

        Same-dtype files are copied inside the kernel (``copy_file_range``); nothing is loaded whole.
        """
        self._flush()
        _append_file(other.directory / FileNames.DATA.value, other.data_dtype, self._data, self.data_dtype)
        _append_file(other.directory / FileNames.COLPTR.value, other.col_dtype, self._cols, self.col_dtype)
        ptr = other.row_ptr()
        for start in range(1, len(ptr), COPY_ITEMS):
            write_raw(self._rowptr, ptr[start : start + COPY_ITEMS] + np.uint64(self.nnz))
        del ptr
        self.rows_sorted = self.rows_sorted and other.rows_sorted
        self.n_rows += other.n_rows
        self.nnz += other.nnz

    def _flush(self) -> None:
        for f in (self._data, self._cols, self._rowptr):
            f.flush()

    def close(self, fsync: bool = True) -> Segment:
        """Flush and close the files; returns the record to append them elsewhere."""
        if not self.closed:
            for f in (self._data, self._cols, self._rowptr):
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
                f.close()
            self.closed = True
        return Segment(self.directory, self.data_dtype, self.col_dtype, self.n_rows, self.nnz, self.rows_sorted)

    def finish_row_ptr(self, row_dtype: str) -> None:
        """Write ``row_ptr.npy`` in ``row_dtype`` from the uint64 pointers (after :meth:`close`)."""
        _retype_file(self.directory / ROWPTR_PARTIAL, self.directory / FileNames.ROWPTR.value, np.uint64, row_dtype)


def _append_file(src: Path, src_dtype: str, out, out_dtype: str) -> None:
    if np.dtype(src_dtype) == np.dtype(out_dtype):
        with open(src, "rb") as f:
            _copy_bytes(f, out)
        return
    n = src.stat().st_size // np.dtype(src_dtype).itemsize
    if n == 0:
        return
    mm = np.memmap(src, dtype=src_dtype, mode="r", shape=(n,))
    for start in range(0, n, COPY_ITEMS):
        write_raw(out, mm[start : start + COPY_ITEMS].astype(out_dtype))
    del mm


def _copy_bytes(src, dst) -> None:
    """Copy an open file onto the end of another; in-kernel where the platform allows."""
    size = os.fstat(src.fileno()).st_size
    copied = 0
    if hasattr(os, "copy_file_range"):
        try:
            while copied < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - copied)
                if n == 0:
                    break
                copied += n
        except OSError:
            if copied:  # failed part-way: the destination is inconsistent
                raise
        dst.seek(0, os.SEEK_END)  # the kernel moved the descriptor; resync the buffered writer
        if copied == size:
            return
    src.seek(copied)
    shutil.copyfileobj(src, dst, 16 * 1024 * 1024)


def _retype_file(src: Path, dst: Path, src_dtype, dst_dtype) -> None:
    """Stream a raw array file into another dtype (row pointers are only known to fit at the end)."""
    n = src.stat().st_size // np.dtype(src_dtype).itemsize
    if np.dtype(src_dtype) == np.dtype(dst_dtype):
        os.replace(src, dst)
        return
    mm = np.memmap(src, dtype=src_dtype, mode="r", shape=(n,))
    with open(dst, "wb") as out:
        for start in range(0, n, COPY_ITEMS):
            write_raw(out, mm[start : start + COPY_ITEMS].astype(dst_dtype))
        out.flush()
        os.fsync(out.fileno())
    del mm
    src.unlink()
