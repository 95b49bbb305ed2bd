"""One ``.h5ad`` file to one SCDL archive, streaming row blocks so memory stays bounded."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
import warnings
from pathlib import Path

import numpy as np

from ..archive._dtypes import check_data_dtype
from ..archive._writer import ArchiveWriter
from ..errors import ConversionError
from ._cancel import check_cancelled, interruptible
from ..archive._rowfiles import RowFiles
from ._copy import AUTO, ValueCast, copy_matrix
from ._h5ad import H5adSource, features_of
from ._matrix import ScatterReader, check_row_range
from ._obsm import check_keys, copy_obsm, plan_obsm, probe_obsm
from ._source import Source, table_names

log = logging.getLogger(__name__)

#: Stored values per block. 16M values are 64-128 MiB of input plus its cast: the RSS bound.
MAX_BLOCK_VALUES = 1 << 24


@interruptible
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
    allow_missing_neighbors: bool = False,
    overwrite: bool = False,
    max_block_values: int = MAX_BLOCK_VALUES,
    progress: bool = False,
    keep_column_order: bool = False,
    allow_nonfinite: bool = False,
    obsm_keys: Sequence[str] | None = None,
    row_order: str = "input",
    seed: int | None = None,
    max_memory: int | str | None = None,
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
    load_neighbors, neighbor_key, allow_missing_neighbors
        Also store ``obsp[neighbor_key]`` (sparse or dense) as the neighbor arrays. A missing key
        is a ``ConversionError`` naming the input and its obsp keys; with
        ``allow_missing_neighbors`` it warns and stores none, as upstream does (and as
        :class:`~scdl_gpu.SingleCellMemMapDataset`, upstream's API, converts).
    keep_column_order
        ``False`` (default): store every row by increasing column (values follow; repeated
        columns keep their order), so loading needs no per-batch sort. ``True``: input order,
        byte for byte as upstream converts; :class:`~scdl_gpu.SingleCellMemMapDataset` and
        :class:`~scdl_gpu.SingleCellCollection` (upstream's API) convert that way.
    allow_nonfinite
        Store NaN and infinity in a float archive. By default they are an error naming the
        input and the first row holding one.
    obsm_keys
        Also keep these ``obsm`` arrays (embeddings, spatial coordinates) as ``obsm/<key>.npy``
        beside the archive, in their dtype (a CSR one is stored dense), read in row blocks of at
        most ``max_block_values`` values. A key the input lacks, or a DataFrame or CSC one, is an
        error; keys must be usable as file names (letters, digits, ``_ . -``).
    row_order, seed, max_memory
        ``"shuffle"`` stores the rows in the uniformly random order of ``seed``, in memory
        bounded by ``max_memory`` (obs gains ``source_row``); see :func:`~scdl_gpu.convert_many`.

    SIGINT and SIGTERM (when called from the main thread) stop the conversion at the next row
    block: the partial output is removed and ``ConversionInterrupted`` (a ``KeyboardInterrupt``)
    is raised.

    Returns
    -------
    Path
        The archive directory.
    """
    src = Path(h5ad_path)
    if not src.is_file():
        raise FileNotFoundError(f"Error: could not find h5ad path {h5ad_path}")
    data_dtype = check_data_dtype(data_dtype)
    obsm_keys = check_keys(obsm_keys)
    size_mb = src.stat().st_size / 1024**2
    max_rows = int(load_block_row_size) if size_mb >= paginated_load_cutoff else 1 << 62
    if max_rows < 1:
        raise ValueError(f"load_block_row_size must be positive, got {load_block_row_size}")
    if row_order != "input" or seed is not None:  # convert_many checks them
        from ._many import convert_many

        return convert_many(
            [src], archive_path, data_dtype=data_dtype, data_dtype_tolerance=data_dtype_tolerance,
            use_X_not_raw=use_X_not_raw, neighbor_key=neighbor_key if load_neighbors else None,
            paginated_load_cutoff=paginated_load_cutoff, load_block_row_size=load_block_row_size,
            var_feature_index_name=var_feature_index_name, obs_feature_index_name=obs_feature_index_name,
            overwrite=overwrite, max_block_values=max_block_values, progress=progress,
            keep_column_order=keep_column_order, allow_nonfinite=allow_nonfinite,
            row_order=row_order, seed=seed, max_memory=max_memory, obsm_keys=obsm_keys,
        ).archive
    with H5adSource(src, use_X_not_raw) as source:
        if load_neighbors and source.neighbors(neighbor_key) is None:
            check_neighbors_allowed(neighbor_key, [(src, source.neighbor_keys())], allow_missing_neighbors)
            load_neighbors = False
        return write_source(
            source, archive_path, label=str(h5ad_path), data_dtype=data_dtype, data_dtype_tolerance=data_dtype_tolerance,
            neighbor_key=neighbor_key if load_neighbors else None, var_feature_index_name=var_feature_index_name,
            obs_feature_index_name=obs_feature_index_name, overwrite=overwrite, max_block_values=max_block_values,
            max_rows=max_rows, progress=progress, keep_column_order=keep_column_order, allow_nonfinite=allow_nonfinite,
            obsm_keys=obsm_keys,
        )


def write_source(
    source: Source,
    archive_path: str | os.PathLike,
    *,
    rows: tuple[int, int] | None = None,
    label: str | None = None,
    data_dtype: str | None = None,
    data_dtype_tolerance: float = 1e-08,
    neighbor_key: str | None = None,
    var_feature_index_name: str = "var_feature_id",
    obs_feature_index_name: str = "obs_feature_id",
    overwrite: bool = False,
    max_block_values: int = MAX_BLOCK_VALUES,
    max_rows: int = 1 << 62,
    progress: bool = False,
    keep_column_order: bool = False,
    allow_nonfinite: bool = False,
    obsm_keys: Sequence[str] = (),
) -> Path:
    """Write one opened input (or only its rows ``rows = (start, stop)``) as one archive.

    The body of every single-input conversion (:func:`convert_h5ad`, an atlas member). Only the
    rows of the range are read, except from column-major inputs (CSC, Matrix Market), whose rows
    are spread over the whole file. ``data_dtype="auto"`` stages the values in the input's dtype
    and stores them in the smallest dtype that holds them all. A neighbor graph links cells of
    the whole input, so it cannot be cut into row ranges.
    """
    label = label or str(source.path)
    n_in = source.shape[0]
    start, stop = (0, n_in) if rows is None else check_row_range(rows[0], rows[1], n_in, label)
    part = (start, stop) != (0, n_in)
    if part and neighbor_key is not None:
        raise ConversionError(
            f"{label}: the neighbor graph obsp[{neighbor_key!r}] links cells across the whole input, so it cannot be "
            "split into row ranges; convert it whole or without the graph"
        )
    matrix = source.matrix.select_rows(start, stop) if part else source.matrix
    obs, var = source.obs(), source.var()
    if part:
        obs = obs.iloc[start:stop]
    n_rows, n_vars = matrix.shape
    obsm = plan_obsm([(label, probe_obsm(source, obsm_keys), source.obsm_keys())], obsm_keys)
    auto = data_dtype == AUTO
    with ArchiveWriter(archive_path, n_vars=n_vars, data_dtype=None if auto else data_dtype, overwrite=overwrite) as w:
        w.add_var_block(n_rows, features_of(var, var_feature_index_name), label, names=table_names(var))
        w.add_obs_block(features_of(obs, obs_feature_index_name), label, names=table_names(obs))
        if neighbor_key is not None:
            copy_neighbors(source, neighbor_key, w, max_block_values)
        cast = ValueCast(data_dtype, data_dtype_tolerance, allow_nonfinite=allow_nonfinite)
        # auto: the dtype is known once every value has been seen, so the rows wait in a segment
        sink = RowFiles(w.segment_dir("rows"), cast.staging_dtype(matrix.dtype), w.col_dtype) if auto else w.rows
        bar = _progress(progress, n_rows, Path(source.path).name)
        try:
            unsorted = copy_matrix(
                matrix, sink, cast, max_block_values, max_rows,
                on_rows=bar.update if bar else None, sort_rows=not keep_column_order,
            )
        finally:
            if bar is not None:
                bar.close()
        if auto:
            segment = sink.close(fsync=False)
            w.set_data_dtype(cast.stats.smallest_dtype())
            w.append_segment(segment)
        for key, (dtype, width) in obsm.items():
            reader = source.obsm(key)
            reader = reader.select_rows(start, stop) if part else reader
            copy_obsm(reader, n_rows, w.add_obsm(key, dtype, n_rows, width), 0, max_block_values)
        if unsorted:
            done = "kept as given" if keep_column_order else "sorted"
            log.info("%s: %d rows with unsorted columns, %s", label, unsorted, done)
        return w.commit()


def _progress(enabled: bool, total: int, name: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cells", unit_scale=True, desc=f"converting {name}")


def check_neighbors_allowed(key: str, missing: list[tuple[os.PathLike, list[str]]], allowed: bool) -> None:
    """Inputs without the neighbor graph ``key`` (each with the keys it has): an error naming them,
    or, when ``allowed``, a warning that no graph is stored (upstream's behaviour)."""
    where = ", ".join(f"{path} (obsp keys: {', '.join(keys) if keys else 'none'})" for path, keys in missing)
    if not allowed:
        raise ConversionError(
            f"Neighbor key '{key}' not found in {where}; pass allow_missing_neighbors=True to convert without a neighbor graph"
        )
    warnings.warn(f"Neighbor key '{key}' not found in {where}; no neighbor arrays written.", UserWarning, stacklevel=3)


def copy_neighbors(source: Source, key: str, sink, max_values: int, row_offset: int = 0) -> None:
    """Append ``source``'s graph ``key`` as neighbor rows (indices shifted by ``row_offset``)."""
    graph = source.neighbors(key)
    n_rows = source.shape[0]
    if graph is None:  # callers check first (check_neighbors_allowed); the file changed under us
        raise ConversionError(f"{source.path}: neighbor matrix '{key}' disappeared during conversion")
    if graph.shape != (n_rows, n_rows):
        raise ConversionError(f"{source.path}: neighbor matrix '{key}' is {graph.shape}, expected ({n_rows}, {n_rows})")
    if isinstance(graph, ScatterReader):
        # A graph stored column-major: k entries per cell, small enough to transpose in memory.
        import scipy.sparse as sp

        rows, cols, vals = (np.concatenate(parts) for parts in zip(*graph.entries(1 << 62))) if graph.nnz else ([], [], [])
        csr = sp.csr_matrix((vals, (rows, cols)), shape=graph.shape)
        blocks = [(csr.indptr, csr.indices, csr.data)]
    else:
        blocks = graph.blocks(max_values, 1 << 62)
    for indptr, indices, values in blocks:
        check_cancelled()
        sink.append_neighbor_rows(indptr, np.asarray(indices, np.uint64) + np.uint64(row_offset), values)
