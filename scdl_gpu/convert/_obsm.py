"""``.obsm`` arrays of an input, read by row ranges so a large one is never loaded whole.

Dense arrays (anndata ``array`` encoding, attribute-less datasets, and fields of the pre-0.7
compound ``obsm`` dataset) are read as row slices through h5py and keep their dtype. A CSR
matrix is densified one row block at a time; CSC (not readable by rows) and DataFrames are
refused with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import h5py
import numpy as np

from ..archive._obsm import ObsmSpec, ObsmTarget, check_dtype, check_key, merge_obsm
from ..errors import ConversionError
from ._cancel import check_cancelled
from ._matrix import CSRReader, _attr_str, check_row_range, encoding_of

__all__ = ["ObsmReader", "check_keys", "copy_obsm", "h5ad_obsm", "h5ad_obsm_keys", "plan_obsm", "probe_obsm"]


class ObsmReader:
    """One obsm array: ``shape`` (cells, width), ``dtype``, and dense row blocks."""

    chunk_rows = 1  # rows per HDF5 chunk: blocks of whole chunks decode each chunk once

    def __init__(self, where: str, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.where, self.shape = where, (int(shape[0]), int(shape[1]))
        try:
            self.dtype = check_dtype(dtype, where)
        except ValueError as e:  # strings, records: not an array of numbers
            raise ConversionError(str(e)) from None

    def rows(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def select_rows(self, start: int, stop: int) -> "ObsmReader":
        """Rows ``start`` to ``stop`` as a reader of their own (an atlas member cut from an input)."""
        return _ObsmRows(self, start, stop)

    def blocks(self, max_values: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, dense rows)`` of at most ``max_values`` values each (one row at least)."""
        n, width = self.shape
        step = max(1, max_values // max(1, width))
        if step > self.chunk_rows:
            step -= step % self.chunk_rows
        for r0 in range(0, n, step):
            check_cancelled()
            yield r0, self.rows(r0, min(n, r0 + step))


class _ObsmRows(ObsmReader):
    def __init__(self, base: ObsmReader, start: int, stop: int) -> None:
        start, stop = check_row_range(start, stop, base.shape[0], base.where)
        super().__init__(f"{base.where} rows {start} to {stop}", (stop - start, base.shape[1]), base.dtype)
        self.base, self.start, self.chunk_rows = base, start, base.chunk_rows

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.base.rows(self.start + start, self.start + stop)


class _DenseObsm(ObsmReader):
    def __init__(self, ds, where: str, shape, dtype, chunks: tuple | None) -> None:
        super().__init__(where, shape, dtype)
        self.ds = ds
        self.chunk_rows = chunks[0] if chunks else 1

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.ds[start:stop]).reshape(stop - start, self.shape[1])


class _CSRObsm(ObsmReader):
    def __init__(self, group: h5py.Group, where: str) -> None:
        self.csr = CSRReader(group, where)
        super().__init__(where, self.csr.shape, self.csr.dtype)

    def rows(self, start: int, stop: int) -> np.ndarray:
        ip = self.csr.indptr[start : stop + 1].astype(np.int64)
        lo, hi = int(ip[0]), int(ip[-1])
        cols = self.csr.indices[lo:hi].astype(np.int64)
        if cols.size and (cols.min() < 0 or cols.max() >= self.shape[1]):
            raise ConversionError(f"{self.where}: column indices outside [0, {self.shape[1]})")
        out = np.zeros((stop - start, self.shape[1]), self.dtype)
        out[np.repeat(np.arange(stop - start), np.diff(ip)), cols] = self.csr.data[lo:hi]
        return out


def h5ad_obsm_keys(f: h5py.File) -> list[str]:
    elem = f.get("obsm")
    if isinstance(elem, h5py.Group):
        return sorted(elem.keys())
    if isinstance(elem, h5py.Dataset) and elem.dtype.names:  # pre-0.7: one compound dataset
        return sorted(elem.dtype.names)
    return []


def h5ad_obsm(f: h5py.File, key: str, path) -> ObsmReader | None:
    """A reader for ``obsm[key]`` of an open h5ad file, or None when the file has no such key."""
    where = f"{path}:obsm/{key}"
    elem = f.get("obsm")
    if isinstance(elem, h5py.Dataset):
        if not elem.dtype.names or key not in elem.dtype.names:
            return None
        field = elem.dtype[key]
        sub = field.subdtype
        base, width = (sub[0], int(np.prod(sub[1]))) if sub is not None else (field, 1)
        return _DenseObsm(elem.fields(key), where, (elem.shape[0], width), base, elem.chunks)
    if not isinstance(elem, h5py.Group) or key not in elem:
        return None
    item = elem[key]
    enc = encoding_of(item)
    if enc == "array" and isinstance(item, h5py.Dataset):
        if item.ndim not in (1, 2):
            raise ConversionError(f"{where}: a {item.ndim}-dimensional array; expected (cells, width)")
        shape = (item.shape[0], item.shape[1] if item.ndim == 2 else 1)
        return _DenseObsm(item, where, shape, item.dtype, item.chunks)
    if enc == "csr_matrix":
        return _CSRObsm(item, where)
    if enc == "csc_matrix":
        raise ConversionError(f"{where} is a CSC sparse matrix, which cannot be read by rows; store it as CSR or dense")
    if enc == "dataframe":
        raise ConversionError(f"{where} is a DataFrame; only numeric arrays can be kept (store its columns as obs)")
    raise ConversionError(f"{where}: unsupported encoding {enc or _attr_str(item, 'encoding-type') or '(none)'!r}")


def copy_obsm(reader: ObsmReader | None, n_rows: int, target: ObsmTarget, row_offset: int, max_values: int) -> None:
    """Write one input's rows of a key into ``target`` from ``row_offset``; NaN rows without a reader."""
    if reader is None:
        target.fill(row_offset, n_rows)
        return
    if reader.shape[0] != n_rows:
        raise ConversionError(f"{reader.where} has {reader.shape[0]} rows but the matrix has {n_rows}")
    if reader.shape[1] != target.width:
        raise ConversionError(f"{reader.where} is {reader.shape[1]} wide; the archive stores it {target.width} wide")
    for r0, block in reader.blocks(max_values):
        target.write(row_offset + r0, block)


def check_keys(keys: Sequence[str] | None) -> list[str]:
    """The requested keys, each one able to name a file, none twice (``ValueError`` otherwise)."""
    keys = [keys] if isinstance(keys, str) else list(keys or [])
    for key in keys:
        check_key(key)
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"obsm keys given more than once: {repeated}")
    return keys


def probe_obsm(source, keys: Sequence[str]) -> dict[str, ObsmSpec]:
    """``(dtype, width)`` of each requested key the input holds; one it holds but cannot store raises."""
    specs = {}
    for key in keys:
        reader = source.obsm(key)
        if reader is not None:
            if reader.shape[0] != source.shape[0]:
                raise ConversionError(f"{reader.where} has {reader.shape[0]} rows but the matrix has {source.shape[0]}")
            specs[key] = (reader.dtype, reader.shape[1])
    return specs


def plan_obsm(inputs: Sequence[tuple[str, dict[str, ObsmSpec], list[str]]], keys: Sequence[str]) -> dict[str, ObsmSpec]:
    """The stored ``(dtype, width)`` per key over inputs given as ``(name, specs, every obsm key)``
    (see :func:`~scdl_gpu.archive._obsm.merge_obsm`); errors name the inputs (and their obsm keys)."""
    for key in keys:
        if len(inputs) == 1 and key not in inputs[0][1]:
            name, _, have = inputs[0]
            raise ConversionError(f"{name} has no obsm key {key!r}; its obsm keys: {have or 'none'}")
        if all(key not in specs for _, specs, _ in inputs):
            listed = "; ".join(f"{name}: {have or 'none'}" for name, _, have in inputs)
            raise ConversionError(f"obsm key {key!r} is in none of the inputs (their obsm keys: {listed})")
    try:
        return merge_obsm([(name, specs) for name, specs, _ in inputs], keys)
    except ValueError as e:
        raise ConversionError(str(e)) from None
