"""One ``.h5ad`` file to one SCDL archive, streaming row blocks so memory stays bounded."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np

from ..archive._dtypes import cast_checked, check_data_dtype
from ..archive._writer import ArchiveWriter
from ..errors import ConversionError
from ._h5ad import (
    CSCReader,
    MatrixReader,
    check_column_indices,
    features_of,
    matrix_key,
    neighbor_element,
    open_matrix,
    read_dataframe,
    var_key,
)

log = logging.getLogger(__name__)

#: Stored values per block. 16M values are 64-128 MiB of input plus its cast: the RSS bound.
MAX_BLOCK_VALUES = 1 << 24


def convert_h5ad(
    h5ad_path: str | os.PathLike,
    archive_path: str | os.PathLike,
    *,
    data_dtype: str | None = None,
    data_dtype_tolerance: float = 1e-08,
    use_X_not_raw: bool = False,
    paginated_load_cutoff: float = 10_000,
    load_block_row_size: int = 1_000_000,
    var_feature_index_name: str = "var_feature_id",
    obs_feature_index_name: str = "obs_feature_id",
    load_neighbors: bool = False,
    neighbor_key: str = "next_cell_ids",
    overwrite: bool = False,
    max_block_values: int = MAX_BLOCK_VALUES,
    progress: bool = False,
) -> Path:
    """Convert an AnnData file into an SCDL archive at ``archive_path``.

    Parameters
    ----------
    h5ad_path
        Input file, opened read-only. CSR, CSC and dense matrices; current and pre-0.7 layouts.
    archive_path
        Output directory. It appears only once complete (written to a temporary sibling first).
    data_dtype
        Stored value dtype (``uint8`` … ``float64``; default float32). Values an integer type
        cannot hold raise ``ValueError``; precision loss beyond ``data_dtype_tolerance`` warns.
    use_X_not_raw
        Convert ``X`` instead of the default ``raw.X``.
    paginated_load_cutoff, load_block_row_size
        Upstream's switches. Conversion always streams; for files larger than
        ``paginated_load_cutoff`` MiB, blocks hold at most ``load_block_row_size`` rows.
        Every block also holds at most ``max_block_values`` stored values, which bounds memory.
    load_neighbors, neighbor_key
        Also store ``obsp[neighbor_key]`` (sparse or dense) as the neighbor arrays; a missing key
        warns and stores none, as upstream does.

    Returns
    -------
    Path
        The archive directory.
    """
    src = Path(h5ad_path)
    if not src.is_file():
        raise FileNotFoundError(f"Error: could not find h5ad path {h5ad_path}")
    data_dtype = check_data_dtype(data_dtype)
    size_mb = src.stat().st_size / 1024**2
    max_rows = int(load_block_row_size) if size_mb >= paginated_load_cutoff else 1 << 62
    if max_rows < 1:
        raise ValueError(f"load_block_row_size must be positive, got {load_block_row_size}")
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise ConversionError(f"{src} is not a readable HDF5/h5ad file: {e}") from e
    with f:
        mkey = matrix_key(f, use_X_not_raw)
        matrix = open_matrix(f[mkey], f"{src}:{mkey}")
        n_rows, n_vars = matrix.shape
        obs = read_dataframe(f, "obs", src)
        var = read_dataframe(f, var_key(f, mkey), src)
        if len(obs) != n_rows or len(var) != n_vars:
            raise ConversionError(
                f"{src}: {mkey} is {n_rows} x {n_vars} but obs has {len(obs)} rows and var {len(var)}"
            )
        with ArchiveWriter(archive_path, n_vars=n_vars, data_dtype=data_dtype, overwrite=overwrite) as w:
            label = str(h5ad_path)
            w.add_var_block(n_rows, features_of(var, var_feature_index_name), label, names=_names(var))
            w.add_obs_block(features_of(obs, obs_feature_index_name), label, names=_names(obs))
            if load_neighbors:
                _copy_neighbors(f, neighbor_key, n_rows, w, src, max_block_values)
            bar = _progress(progress, n_rows, src.name)
            try:
                _copy_matrix(matrix, w, data_dtype, data_dtype_tolerance, max_block_values, max_rows, bar)
            finally:
                if bar is not None:
                    bar.close()
            return w.commit()


def _names(df) -> np.ndarray:
    return np.asarray(df.index.astype(str))


def _progress(enabled: bool, total: int, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cells", unit_scale=True, desc=f"converting {name}")


def _copy_matrix(
    matrix: MatrixReader, w: ArchiveWriter, data_dtype: str, tol: float, max_values: int, max_rows: int, bar
) -> None:
    n_vars = matrix.shape[1]
    if isinstance(matrix, CSCReader):
        _scatter_csc(matrix, w, data_dtype, tol, max_values)
        if bar is not None:
            bar.update(matrix.shape[0])
        return
    row = 0
    for indptr, indices, data in matrix.blocks(max_values, max_rows):
        n = len(indptr) - 1
        where = f"{matrix.where} rows {row} to {row + n}"
        check_column_indices(indices, n_vars, where)
        w.append_rows(indptr, indices.astype(w.col_dtype, copy=False), cast_checked(data, data_dtype, tol, where))
        row += n
        if bar is not None:
            bar.update(n)


def _scatter_csc(matrix: CSCReader, w: ArchiveWriter, data_dtype: str, tol: float, max_values: int) -> None:
    """CSC to CSR in two passes: count entries per row, then scatter each column block into place.

    Columns are visited in order, so every row's column indices come out sorted.
    """
    counts = matrix.row_counts(max_values)
    indptr, out_data, out_cols = w.allocate_rows(counts)
    cursor = indptr[:-1].astype(np.int64)
    for rows, cols, vals in matrix.column_blocks(max_values):
        order = np.argsort(rows, kind="stable")  # by row, keeping column order inside a row
        rows_s = rows[order]
        per_row = np.bincount(rows_s, minlength=len(cursor))
        first = np.cumsum(per_row) - per_row  # position of each row's first entry in rows_s
        rank = np.arange(len(rows_s)) - first[rows_s]
        pos = cursor[rows_s] + rank
        out_data[pos] = cast_checked(vals[order], data_dtype, tol, f"{matrix.where} columns")
        out_cols[pos] = cols[order].astype(w.col_dtype)
        cursor += per_row
    if isinstance(out_data, np.memmap):
        out_data.flush()
        out_cols.flush()


def _copy_neighbors(f: h5py.File, key: str, n_rows: int, w: ArchiveWriter, src: Path, max_values: int) -> None:
    import warnings

    elem = neighbor_element(f, key)
    if elem is None:
        warnings.warn(f"Neighbor key '{key}' not found in {src}; no neighbor arrays written.", UserWarning, stacklevel=3)
        return
    graph = open_matrix(elem, f"{src}:obsp/{key}")
    if graph.shape != (n_rows, n_rows):
        raise ConversionError(f"{src}: neighbor matrix '{key}' is {graph.shape}, expected ({n_rows}, {n_rows})")
    if isinstance(graph, CSCReader):
        # A symmetric-looking graph stored CSC: small enough to transpose in memory (k per cell).
        import scipy.sparse as sp

        csc = sp.csc_matrix((graph.data[:], graph.indices[:], graph.indptr[:]), shape=graph.shape)
        csr = csc.tocsr()
        w.append_neighbor_rows(csr.indptr, csr.indices, csr.data)
        return
    for indptr, indices, values in graph.blocks(max_values, 1 << 62):
        w.append_neighbor_rows(indptr, indices, values)
