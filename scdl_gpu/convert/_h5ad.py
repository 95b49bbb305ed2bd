"""``.h5ad`` inputs: locate the matrix and tables of an AnnData file and read them through h5py.

Files are always opened read-only; the matrix is read by the readers of :mod:`._matrix`, the
obs/var tables by anndata's own element readers.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..errors import ConversionError
from ._matrix import MatrixReader, _attr_str, open_matrix
from ._obsm import ObsmReader, h5ad_obsm, h5ad_obsm_keys
from ._source import Source
from ._warnings import filtered_warnings

# -- locating elements ---------------------------------------------------------------------------
def matrix_key(f: h5py.File, use_X_not_raw: bool) -> str:
    """``X`` or the raw matrix (``raw/X``, or the pre-0.7 top-level ``raw.X``)."""
    if use_X_not_raw:
        if "X" not in f:
            raise ValueError("This file does not have count data; set use_X_not_raw=False to use raw counts instead.")
        return "X"
    for key in ("raw/X", "raw.X"):
        if key in f:
            return key
    raise ValueError("This file does not have raw count data; set use_X_not_raw=True to use normalized counts instead.")


def var_key(f: h5py.File, mkey: str) -> str:
    """The var table that describes the columns of matrix ``mkey`` (raw has its own var)."""
    return {"X": "var", "raw/X": "raw/var", "raw.X": "raw.var"}[mkey]


NEIGHBOR_GROUPS = ("obsp", "uns/neighbors")  # current layout, then pre-0.7 files


def neighbor_element(f: h5py.File, key: str) -> h5py.Group | h5py.Dataset | None:
    for group in NEIGHBOR_GROUPS:
        if f"{group}/{key}" in f:
            return f[f"{group}/{key}"]
    return None


def read_dataframe(f: h5py.File, key: str, path: Path) -> pd.DataFrame:
    """An obs/var table as pandas, through anndata's own element readers.

    Current encodings are read element by element (nothing else in the file is loaded); the
    pre-0.7 compound-dataset layout goes through ``anndata.read_h5ad(backed="r")``.
    """
    import anndata as ad

    elem = f.get(key)
    if elem is None:
        raise ConversionError(f"{path}: no '{key}' table")
    from anndata import OldFormatWarning

    # anndata's notices about old encodings (and moving old graphs) are not the user's problem
    with filtered_warnings("ignore", OldFormatWarning, FutureWarning):
        try:
            if isinstance(elem, h5py.Group) and _attr_str(elem, "encoding-type") == "dataframe":
                from anndata.io import read_elem

                return read_elem(elem)
            adata = ad.read_h5ad(path, backed="r")
        except UnicodeDecodeError as e:
            column = _undecodable_column(elem)
            what = f"column {column!r}" if column is not None else "a column"
            raise ConversionError(
                f"{path}: {key} {what} holds text that is not valid UTF-8 ({e.reason} at byte {e.start} of a value)"
            ) from e
    try:
        if key in ("obs",):
            return adata.obs.copy()
        if key in ("var",):
            return adata.var.copy()
        if adata.raw is None:
            raise ConversionError(f"{path}: no raw var table")
        return adata.raw.var.copy()
    finally:
        adata.file.close()


def _undecodable_column(elem: h5py.Group | h5py.Dataset) -> str | None:
    """The first column of a table whose strings do not decode as UTF-8 (the index included)."""
    from anndata.io import read_elem

    if isinstance(elem, h5py.Group):
        index = _attr_str(elem, "_index")
        order = elem.attrs.get("column-order", [])
        for name in [index, *[c.decode() if isinstance(c, bytes) else str(c) for c in order]]:
            if name in elem:
                try:
                    read_elem(elem[name])
                except UnicodeDecodeError:
                    return f"{name} (the index)" if name == index else name
                except Exception:  # another problem of that column: not the one being located
                    continue
        return None
    for name in elem.dtype.names or ():  # pre-0.7 layout: one compound dataset
        for v in elem[name]:
            try:
                if isinstance(v, bytes):
                    v.decode("utf-8")
            except UnicodeDecodeError:
                return name
    return None


def features_of(df: pd.DataFrame, index_name: str) -> dict[str, np.ndarray]:
    """Upstream's rule: one array per column; the index only when there are no columns."""
    if df.columns.size > 0:
        return {str(col): np.array(df[col].values) for col in df.columns}
    if df.index.size > 0:
        return {index_name: np.asarray(df.index.values)}
    return {}


class H5adSource(Source):
    """An AnnData file: ``raw.X`` (default) or ``X``, with ``obs`` and the matching ``var``."""

    kind = "h5ad"

    def __init__(self, path: Path, use_X_not_raw: bool = False) -> None:
        super().__init__(path)
        try:
            self._file = h5py.File(path, "r")
        except OSError as e:
            raise ConversionError(f"{path} is not a readable HDF5/h5ad file: {e}") from e
        try:
            self.key = matrix_key(self._file, use_X_not_raw)
            self.matrix = open_matrix(self._file[self.key], f"{path}:{self.key}")
        except BaseException:
            self._file.close()
            raise

    def obs(self) -> pd.DataFrame:
        return self._checked(read_dataframe(self._file, "obs", self.path), 0, "obs")

    def var(self) -> pd.DataFrame:
        return self._checked(read_dataframe(self._file, var_key(self._file, self.key), self.path), 1, "var")

    def neighbors(self, key: str) -> MatrixReader | None:
        elem = neighbor_element(self._file, key)
        return None if elem is None else open_matrix(elem, f"{self.path}:obsp/{key}")

    def obsm_keys(self) -> list[str]:
        return h5ad_obsm_keys(self._file)

    def obsm(self, key: str) -> ObsmReader | None:
        return h5ad_obsm(self._file, key, self.path)

    def neighbor_keys(self) -> list[str]:
        groups = [self._file[g] for g in NEIGHBOR_GROUPS if isinstance(self._file.get(g), h5py.Group)]
        return sorted({k for g in groups for k, e in g.items() if _is_matrix(e)})

    def close(self) -> None:
        self._file.close()


def _is_matrix(elem) -> bool:
    """A dense 2-D dataset or a sparse group (skips uns/neighbors' ``params`` and the like)."""
    return (isinstance(elem, h5py.Dataset) and elem.ndim == 2) or (isinstance(elem, h5py.Group) and "indptr" in elem)
