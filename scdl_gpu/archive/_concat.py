"""Concatenate archives into a new one by streaming appends (never loading a member whole)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._constants import FileNames
from ._dtypes import determine_dtype, smallest_uint_dtype
from ._feature_index import ObservedFeatureIndex, VariableFeatureIndex
from ._obsm import merge_obsm, obsm_keys, open_obsm
from ._reader import load_feature_index, open_arrays
from ._writer import ArchiveWriter

DEFAULT_CHUNK = 10 * 1024 * 1024  # stored values per copy step (upstream's extend_copy_size)


def merged_dtypes(paths: Sequence[Path]) -> dict[str, str]:
    """dtypes of the concatenation: widest per family; mixing ints and floats raises."""
    members = [open_arrays(p) for p in paths]
    data = [m.dtypes[FileNames.DATA.value] for m in members]
    try:
        data_dtype = determine_dtype(data)
    except ValueError:
        names = ", ".join(f"{p} ({d})" for p, d in zip(paths, data))
        raise ValueError(f"Cannot merge datasets with a mix of int and float dtypes for data: {names}") from None
    return {
        FileNames.DATA.value: data_dtype,
        FileNames.COLPTR.value: determine_dtype([m.dtypes[FileNames.COLPTR.value] for m in members]),
        FileNames.ROWPTR.value: smallest_uint_dtype(sum(m.nnz for m in members)),
    }


def concat_archives(
    paths: Sequence[str | Path], out: str | Path, *, overwrite: bool = False, chunk: int = DEFAULT_CHUNK
) -> Path:
    """Write the rows of every archive in ``paths``, in order, into a new archive ``out``.

    Values are widened to the common dtype, feature indices concatenated (identical var tables
    merge into one block, as upstream does), and neighbor graphs concatenated with their indices
    offset, when every member has one. obsm arrays are concatenated too, NaN rows standing in
    for a member without the key (see :func:`~scdl_gpu.archive._obsm.merge_obsm`). ``out`` may
    be one of ``paths`` with ``overwrite=True``: the new archive replaces it only once complete.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("Nothing to concatenate.")
    dtypes = merged_dtypes(paths)
    # An unfilled preallocation (upstream's num_rows/num_elements, saved empty) holds no rows.
    members = [m for m in (open_arrays(p, load_neighbors=True) for p in paths) if not m.reserved]
    with_neighbors = [m.neighbors is not None for m in members]
    if any(with_neighbors) and not all(with_neighbors):
        missing = [str(m.path) for m in members if m.neighbors is None]
        warnings.warn(f"Neighbor arrays dropped: these archives have none: {missing}", UserWarning, stacklevel=2)
    obsm = [{k: open_obsm(m.path, k, m.n_rows) for k in obsm_keys(m.path)} for m in members]
    keys = sorted(set().union(*obsm))
    specs = merge_obsm([(str(m.path), {k: (a.dtype, a.shape[1]) for k, a in o.items()}) for m, o in zip(members, obsm)], keys)
    var_index, obs_index = VariableFeatureIndex(), ObservedFeatureIndex()
    for m in members:
        var_index.concat(load_feature_index(m.path, FileNames.VAR_FEATURES))
        obs_index.concat(load_feature_index(m.path, FileNames.OBS_FEATURES))
    with ArchiveWriter(
        out, n_vars=0, data_dtype=dtypes[FileNames.DATA.value], col_dtype=dtypes[FileNames.COLPTR.value], overwrite=overwrite
    ) as w:
        total = sum(m.n_rows for m in members)
        targets = {k: w.add_obsm(k, dtype, total, width) for k, (dtype, width) in specs.items()}
        row_offset = 0
        for m, arrays in zip(members, obsm):
            _copy_obsm(arrays, targets, row_offset, m.n_rows, chunk)
            _copy_rows(m, w, chunk)
            if all(with_neighbors):
                ip, idx, vals = m.neighbors
                for s, e in row_chunks(ip, chunk):
                    lo, hi = int(ip[s]), int(ip[e])
                    w.append_neighbor_rows(ip[s : e + 1], idx[lo:hi].astype(np.uint64) + row_offset, vals[lo:hi])
            row_offset += m.n_rows
        w.var_index, w.obs_index = var_index, obs_index
        return w.commit()


def row_chunks(row_ptr: np.ndarray, chunk: int):
    """Row ranges ``[s, e)`` holding about ``chunk`` stored values each (at least one row)."""
    n = len(row_ptr) - 1
    s = 0
    while s < n:
        e = int(np.searchsorted(row_ptr, int(row_ptr[s]) + chunk, side="right")) - 1
        e = min(max(e, s + 1), n)
        yield s, e
        s = e


def _copy_rows(m, w: ArchiveWriter, chunk: int) -> None:
    for s, e in row_chunks(m.row_ptr, chunk):
        ip = np.asarray(m.row_ptr[s : e + 1], dtype=np.int64)
        lo, hi = int(ip[0]), int(ip[-1])
        w.append_rows(ip, m.col_ptr[lo:hi].astype(w.col_dtype), m.data[lo:hi].astype(w.data_dtype))


def _copy_obsm(arrays: dict, targets: dict, row_offset: int, n_rows: int, chunk: int) -> None:
    """One member's rows of every obsm key, ``chunk`` values at a time (NaN for a key it lacks)."""
    for k, target in targets.items():
        if k not in arrays:
            target.fill(row_offset, n_rows)
            continue
        step = max(1, chunk // max(1, target.width))
        for r in range(0, n_rows, step):
            target.write(row_offset + r, arrays[k][r : r + step])
