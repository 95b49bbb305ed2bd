"""Matrix readers: one row block (or, for column-major inputs, one entry block) at a time.

Readers are chosen from a registry keyed by the element's anndata encoding (``csr_matrix``,
``csc_matrix``, ``array``), with the pre-0.7 layouts (``h5sparse_format`` groups, datasets
without attributes) mapped onto the same keys. Two kinds exist:

* row readers (:meth:`MatrixReader.blocks`) give CSR row blocks in row order;
* scatter readers (:class:`ScatterReader`) cannot be read by rows (CSC, Matrix Market), so they
  give the entries per row first (:meth:`~ScatterReader.row_counts`), then ``(row, column,
  value)`` triples in any order (:meth:`~ScatterReader.entries`), which are scattered into place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import h5py
import numpy as np

from ..errors import ConversionError
from ._cancel import check_cancelled

CSRBlock = tuple[np.ndarray, np.ndarray, np.ndarray]  # (indptr, indices, data), indptr absolute

_READERS: dict[str, Callable[[h5py.Group | h5py.Dataset, str], "MatrixReader"]] = {}


def register(encoding: str):
    def deco(cls):
        _READERS[encoding] = cls
        return cls

    return deco


def _attr_str(elem, name: str) -> str:
    v = elem.attrs.get(name, "")
    return v.decode() if isinstance(v, bytes) else str(v)


def encoding_of(elem: h5py.Group | h5py.Dataset) -> str:
    """The anndata encoding of a matrix element, mapping legacy layouts onto current names."""
    enc = _attr_str(elem, "encoding-type")
    if enc:
        return enc
    if isinstance(elem, h5py.Dataset):
        return "array"
    legacy = _attr_str(elem, "h5sparse_format")
    if legacy in ("csr", "csc"):
        return f"{legacy}_matrix"
    return ""


def open_matrix(elem: h5py.Group | h5py.Dataset, where: str) -> "MatrixReader":
    """A row-block reader for a matrix element; ``where`` names the file and key in errors."""
    enc = encoding_of(elem)
    try:
        cls = _READERS[enc]
    except KeyError:
        raise ConversionError(
            f"{where}: unsupported matrix encoding {enc or '(none)'!r}; expected one of {sorted(_READERS)}"
        ) from None
    return cls(elem, where)


class MatrixReader:
    """Common surface: ``shape`` (cells, genes), ``dtype``, ``nnz`` (None when unknown), ``where``.

    ``row_start`` is the input row that row 0 of this reader is: :meth:`select_rows` gives a
    reader of a row range (an atlas member cut from a large input) that reads only those rows.
    """

    kind = ""
    where = ""
    shape: tuple[int, int]
    dtype: np.dtype
    nnz: int | None
    row_start = 0

    def blocks(self, max_values: int, max_rows: int) -> Iterator[CSRBlock]:
        raise NotImplementedError

    def select_rows(self, start: int, stop: int) -> "MatrixReader":
        """This matrix's rows ``start`` to ``stop`` (of this reader) as a reader of their own."""
        start, stop = check_row_range(start, stop, self.shape[0], self.where)
        out = copy.copy(self)
        out.row_start = self.row_start + start
        out.shape = (stop - start, self.shape[1])
        out.where = f"{self.where} rows {out.row_start} to {out.row_start + stop - start}"
        return out


def check_row_range(start: int, stop: int, n_rows: int, where: str) -> tuple[int, int]:
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= n_rows:
        raise ValueError(f"{where}: row range {start} to {stop} is outside its {n_rows} rows")
    return start, stop


class ScatterReader(MatrixReader):
    """An input whose rows are not contiguous; converted in two passes (count, then scatter)."""

    def blocks(self, max_values: int, max_rows: int) -> Iterator[CSRBlock]:
        raise ConversionError(f"{self.where}: this input is converted by scattering entries, not by row blocks")

    def row_counts(self, max_values: int, keep: np.ndarray | None = None) -> np.ndarray:
        """Stored entries per row (pass 1), int64 of length ``shape[0]``.

        With ``keep`` (a boolean per column), only entries in kept columns are counted.
        """
        raise NotImplementedError

    def entries(self, max_values: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(rows, columns, values)`` of at most about ``max_values`` entries each (pass 2).

        Within a row, entries keep the order in which they are given.
        """
        raise NotImplementedError

    def select_rows(self, start: int, stop: int) -> "ScatterReader":
        start, stop = check_row_range(start, stop, self.shape[0], self.where)
        return _ScatterRows(self, start, stop)


class _ScatterRows(ScatterReader):
    """Rows ``start`` to ``stop`` of a scatter input: every pass reads the whole input (its rows
    are spread over it) and keeps the entries of these rows."""

    def __init__(self, base: ScatterReader, start: int, stop: int) -> None:
        self.base, self.start, self.stop = base, start, stop
        self.kind, self.dtype, self.nnz = base.kind, base.dtype, None
        self.row_start = base.row_start + start
        self.shape = (stop - start, base.shape[1])
        self.where = f"{base.where} rows {self.row_start} to {self.row_start + stop - start}"

    def row_counts(self, max_values: int, keep: np.ndarray | None = None) -> np.ndarray:
        return self.base.row_counts(max_values, keep)[self.start : self.stop]

    def entries(self, max_values: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for rows, cols, vals in self.base.entries(max_values):
            mine = (rows >= self.start) & (rows < self.stop)
            yield rows[mine] - self.start, cols[mine], vals[mine]


@register("csr_matrix")
class CSRReader(MatrixReader):
    kind = "csr"
    _INDPTR_CHUNK = 1 << 20  # rows of indptr read at a time, so indptr never sits whole in memory

    def __init__(self, group: h5py.Group, where: str) -> None:
        self.where = where
        for k in ("data", "indices", "indptr"):
            if k not in group:
                raise ConversionError(f"{where}: sparse matrix group has no '{k}' dataset")
        self.data, self.indices, self.indptr = group["data"], group["indices"], group["indptr"]
        for key, ds in (("indices", self.indices), ("indptr", self.indptr)):
            if ds.dtype.kind not in "iu":
                # Reading them as integers would truncate silently; anndata refuses such files too.
                raise ConversionError(
                    f"{where}/{key}: the sparse matrix stores its {key} as {ds.dtype}; integer {key} are required"
                )
        shape = group.attrs.get("shape", group.attrs.get("h5sparse_shape"))
        if shape is None:
            raise ConversionError(f"{where}: sparse matrix group has no 'shape' attribute")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = self.data.dtype
        major = self.shape[0] if self.kind == "csr" else self.shape[1]
        if self.indptr.shape[0] != major + 1:
            raise ConversionError(
                f"{where}: indptr has {self.indptr.shape[0]} entries; shape {self.shape} needs {major + 1}"
            )
        self.nnz = int(self.indptr[-1]) if major else 0
        if self.data.shape[0] < self.nnz or self.indices.shape[0] < self.nnz:
            raise ConversionError(
                f"{where}: indptr ends at {self.nnz} but data has {self.data.shape[0]} and "
                f"indices {self.indices.shape[0]} entries (truncated file?)"
            )

    def spans(self, n: int, max_values: int, max_rows: int, first: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        """Split major-axis slots ``first`` to ``n`` into runs of at most ``max_rows`` and about ``max_values``."""
        for c0 in range(first, n, self._INDPTR_CHUNK):
            ip = self.indptr[c0 : min(n, c0 + self._INDPTR_CHUNK) + 1].astype(np.int64)
            if np.any(np.diff(ip) < 0):
                raise ConversionError(f"{self.where}: indptr decreases near row {c0}")
            s, m = 0, len(ip) - 1
            while s < m:
                e = int(np.searchsorted(ip, ip[s] + max_values, side="right")) - 1
                e = min(max(e, s + 1), s + max_rows, m)
                yield c0 + s, c0 + e, ip[s : e + 1]
                s = e

    def select_rows(self, start: int, stop: int) -> "CSRReader":
        out = super().select_rows(start, stop)
        out.nnz = int(self.indptr[out.row_start + out.shape[0]]) - int(self.indptr[out.row_start]) if out.shape[0] else 0
        return out

    def blocks(self, max_values: int, max_rows: int) -> Iterator[CSRBlock]:
        """Row blocks; ``indices`` and ``data`` are views of buffers reused by the next block."""
        data_buf = indices_buf = None
        for _, _, ip in self.spans(self.row_start + self.shape[0], max_values, max_rows, self.row_start):
            lo, hi = int(ip[0]), int(ip[-1])
            if data_buf is None or hi - lo > len(data_buf):
                # One allocation, reused: fresh buffers per block cost more in page faults than the read.
                size = max(hi - lo, min(max_values, self.nnz))
                data_buf = np.empty(size, self.data.dtype)
                indices_buf = np.empty(size, self.indices.dtype)
            yield ip, _read_into(self.indices, lo, hi, indices_buf), _read_into(self.data, lo, hi, data_buf)


@register("csc_matrix")
class CSCReader(ScatterReader, CSRReader):
    """CSC is read by columns and scattered into rows."""

    kind = "csc"

    def row_counts(self, max_values: int, keep: np.ndarray | None = None) -> np.ndarray:
        counts = np.zeros(self.shape[0], np.int64)
        for c0, c1, ip in self.spans(self.shape[1], max_values, 1 << 30):
            check_cancelled()
            rows = self.indices[int(ip[0]) : int(ip[-1])]
            if keep is not None:
                rows = rows[np.repeat(keep[c0:c1], np.diff(ip))]
            _check_index_range(rows, self.shape[0], self.where, "row")
            counts += np.bincount(rows, minlength=self.shape[0])
        return counts

    def entries(self, max_values: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Column-major triples, so every row's columns come out sorted."""
        for c0, c1, ip in self.spans(self.shape[1], max_values, 1 << 30):
            lo, hi = int(ip[0]), int(ip[-1])
            cols = np.repeat(np.arange(c0, c1, dtype=np.int64), np.diff(ip))
            yield self.indices[lo:hi].astype(np.int64), cols, self.data[lo:hi]


@register("array")
class DenseReader(MatrixReader):
    """Dense X: row blocks aligned to HDF5 chunks, zeros dropped."""

    kind = "dense"

    def __init__(self, ds: h5py.Dataset, where: str) -> None:
        if ds.ndim != 2:
            raise ConversionError(f"{where}: dense matrix has {ds.ndim} dimensions, expected 2")
        self.ds, self.where = ds, where
        self.shape = (int(ds.shape[0]), int(ds.shape[1]))
        self.dtype = ds.dtype
        self.nnz = None

    def blocks(self, max_values: int, max_rows: int) -> Iterator[CSRBlock]:
        n, m = self.shape
        rows = max(1, min(max_rows, max_values // max(m, 1)))
        chunk = self.ds.chunks[0] if self.ds.chunks else 1
        if rows > chunk:
            rows -= rows % chunk  # whole chunks: each compressed chunk is decoded once
        offset, first = 0, self.row_start
        for r0 in range(first, first + n, rows):
            dense = self.ds[r0 : min(first + n, r0 + rows)]
            mask = dense != 0
            counts = mask.sum(axis=1)
            r, c = np.nonzero(mask)
            indptr = np.empty(len(dense) + 1, np.int64)
            indptr[0] = offset
            np.cumsum(counts, out=indptr[1:])
            indptr[1:] += offset
            offset = int(indptr[-1])
            yield indptr, c, dense[r, c]


def _read_into(ds: h5py.Dataset, lo: int, hi: int, buf: np.ndarray) -> np.ndarray:
    out = buf[: hi - lo]
    if hi > lo:
        ds.read_direct(out, np.s_[lo:hi], np.s_[0 : hi - lo])
    return out


def _check_index_range(idx: np.ndarray, bound: int, where: str, what: str) -> None:
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= bound):
        raise ConversionError(
            f"{where}: {what} indices range from {int(idx.min())} to {int(idx.max())}, outside [0, {bound})"
        )


def check_column_indices(indices: np.ndarray, n_vars: int, where: str) -> None:
    _check_index_range(indices, n_vars, where, "column")
