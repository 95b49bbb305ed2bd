"""Write an archive by streaming CSR row blocks into a temporary sibling, then renaming it.

Nothing under the final name exists until :meth:`ArchiveWriter.commit` has written every file,
so an interrupted conversion never leaves something that opens as a valid archive.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ._atomic import exchange, new_partial_dir
from ._checksums import write_manifest
from ._constants import DEFAULT_DTYPES, LAYOUT_FILE, SCDL_PACKAGE_VERSION, FileNames
from ._dtypes import check_data_dtype, col_dtype_for, smallest_uint_dtype
from ._feature_index import ObservedFeatureIndex, VariableFeatureIndex
from ._header import build_archive_header, feature_index_info
from ._memmap import fsync_dir, write_raw
from ._obsm import OBSM_DIR, ObsmTarget, create_obsm
from ._rowfiles import RowFiles, Segment

log = logging.getLogger(__name__)



def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


class ArchiveWriter:
    """Streams rows into a new archive at ``path``.

    Parameters
    ----------
    path
        Final archive directory; must not exist (unless ``overwrite``).
    n_vars
        Number of columns (genes); fixes the column-index dtype (smallest unsigned type).
    data_dtype
        Stored value dtype, one of the format's unsigned or float types (default float32).
    col_dtype
        Override for the column-index dtype (used when concatenating wider archives).

    Use as a context manager: leaving the block by an exception deletes the partial directory.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_vars: int,
        data_dtype: str | None = None,
        col_dtype: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"Output archive already exists: {self.path}")
            if not (self.path / FileNames.METADATA.value).is_file():
                # overwrite replaces archives, never an arbitrary directory or file
                raise FileExistsError(f"{self.path} exists and is not an SCDL archive; refusing to replace it")
        self.data_dtype = check_data_dtype(data_dtype)
        self.col_dtype = col_dtype or col_dtype_for(n_vars)
        self.n_vars = int(n_vars)
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Named after this process, and what killed runs left beside path is removed first.
        self.tmp = new_partial_dir(self.path)
        self.rows = RowFiles(self.tmp, self.data_dtype, self.col_dtype)
        self.var_index = VariableFeatureIndex()
        self.obs_index = ObservedFeatureIndex()
        self._neighbors: _NeighborWriter | None = None
        self._obsm: dict[str, ObsmTarget] = {}
        self._closed = False
        #: A seeded shuffle's record in scdl_gpu.json (``{"row_order": "shuffle", "shuffle_seed": n}``,
        #: set by the converter that shuffled); none means input after input.
        self.row_order: dict = {}

    # -- rows ---------------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return self.rows.n_rows

    @property
    def nnz(self) -> int:
        return self.rows.nnz

    def append_rows(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        """Append a CSR row block (see :meth:`RowFiles.append_rows`)."""
        self.rows.append_rows(indptr, indices, data)

    def allocate_rows(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reserve rows of known lengths to scatter into (see :meth:`RowFiles.allocate_rows`)."""
        return self.rows.allocate_rows(counts)

    def set_data_dtype(self, data_dtype: str) -> None:
        """Choose the stored value dtype late (``auto``: once every value has been seen)."""
        if self.nnz:
            raise RuntimeError("the data dtype cannot change once values are written")
        self.data_dtype = self.rows.data_dtype = check_data_dtype(data_dtype)

    def segment_dir(self, name: str) -> Path:
        """A fresh directory for one input's rows inside the partial archive (so abort removes it)."""
        d = self.tmp / "segments" / name
        d.mkdir(parents=True)
        return d

    def append_segment(self, segment: Segment) -> None:
        """Append a finished segment's rows (widening dtypes where needed), then delete it."""
        self.rows.append_segment(segment)
        segment.remove()

    # -- neighbors ----------------------------------------------------------------------------
    def append_neighbor_rows(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        """Append rows of the cell-cell neighbor graph (same CSR convention as :meth:`append_rows`)."""
        if self._neighbors is None:
            self._neighbors = _NeighborWriter(self.tmp)
        self._neighbors.append(indptr, indices, values)

    # -- obsm ---------------------------------------------------------------------------------
    def add_obsm(self, key: str, dtype, n_rows: int, width: int) -> ObsmTarget:
        """Create ``obsm/<key>.npy`` for ``n_rows`` rows (the archive's, once written); fill it
        through the returned target, by row ranges, from any thread or process."""
        if key in self._obsm:
            raise ValueError(f"obsm key {key!r} given twice")
        self._obsm[key] = target = create_obsm(self.tmp, key, dtype, n_rows, width)
        return target

    # -- features -----------------------------------------------------------------------------
    def add_var_block(self, n_rows: int, features: dict, label: str | None, names=None) -> None:
        self.var_index.append_features(n_rows, features, label, names=names)

    def add_obs_block(self, features: dict, label: str | None, names=None) -> None:
        self.obs_index.append_features(features, label, names=names)

    # -- finish -------------------------------------------------------------------------------
    def commit(self) -> Path:
        """Write header, metadata and features, then move the directory to its final name."""
        self.rows.close()
        self._closed = True
        tmp = self.tmp
        shutil.rmtree(tmp / "segments", ignore_errors=True)
        row_dtype = smallest_uint_dtype(self.nnz)
        self.rows.finish_row_ptr(row_dtype)
        if self._neighbors is not None:
            self._neighbors.close(self.n_rows)
        for key, target in self._obsm.items():
            if target.n_rows != self.n_rows:
                raise ValueError(f"obsm array {key!r} has {target.n_rows} rows but {self.n_rows} rows were written")
            target.sync()
        if self._obsm:
            fsync_dir(tmp / OBSM_DIR)
        for name, index in ((FileNames.VAR_FEATURES, self.var_index), (FileNames.OBS_FEATURES, self.obs_index)):
            rows = index.number_of_rows()
            if len(index) and rows != self.n_rows:
                raise ValueError(f"{name.value} covers {rows} rows but {self.n_rows} rows were written")
            index.save(str(tmp / name.value))
        header = build_archive_header(
            dtypes={
                FileNames.DATA.value: self.data_dtype,
                FileNames.ROWPTR.value: row_dtype,
                FileNames.COLPTR.value: self.col_dtype,
            },
            lengths={
                FileNames.DATA.value: self.nnz,
                FileNames.ROWPTR.value: self.n_rows + 1,
                FileNames.COLPTR.value: self.nnz,
            },
            feature_indices=[
                feature_index_info(FileNames.VAR_FEATURES.value, self.var_index.number_of_rows(), len(self.var_index)),
                feature_index_info(FileNames.OBS_FEATURES.value, self.obs_index.number_of_rows(), len(self.obs_index)),
            ],
        )
        header.save(str(tmp / FileNames.HEADER.value))
        write_json(tmp / FileNames.METADATA.value, {"num_rows": self.n_rows})
        write_json(tmp / LAYOUT_FILE, {"n_rows": self.n_rows, "nnz": self.nnz, "rows_sorted": self.rows.rows_sorted, **self.row_order})
        write_json(tmp / FileNames.VERSION.value, SCDL_PACKAGE_VERSION)
        write_manifest(tmp)  # last: it records every file above
        fsync_dir(tmp)
        # One atomic exchange: the path holds the whole old or the whole new archive throughout.
        exchange(tmp, self.path, replace=self.overwrite)
        log.info("wrote %s: %d rows, %d values", self.path, self.n_rows, self.nnz)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial directory."""
        if not self._closed:
            self.rows.close(fsync=False)
            self._closed = True
        if self._neighbors is not None:
            self._neighbors.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


class _NeighborWriter:
    """The three neighbor arrays, with upstream's fixed dtypes (uint64 / uint32 / float32)."""

    def __init__(self, tmp: Path) -> None:
        self.files = {
            name: open(tmp / name, "wb")
            for name in (FileNames.NEIGHBOR_INDICES_PTR.value, FileNames.NEIGHBOR_INDICES.value, FileNames.NEIGHBOR_VALUES.value)
        }
        write_raw(self.files[FileNames.NEIGHBOR_INDICES_PTR.value], np.zeros(1, np.uint64))
        self.rows = 0
        self.nnz = 0

    def append(self, indptr, indices, values) -> None:
        indptr = np.asarray(indptr, dtype=np.int64)
        nnz = int(indptr[-1] - indptr[0])
        if len(indices) != nnz or len(values) != nnz:
            raise ValueError("neighbor block: indptr, indices and values disagree")
        if nnz and (np.min(indices) < 0 or np.max(indices) >= 2**32):
            raise ValueError("neighbor indices must lie in [0, 2**32)")
        f = self.files
        write_raw(f[FileNames.NEIGHBOR_INDICES_PTR.value], (indptr[1:] - indptr[0] + self.nnz).astype(np.uint64))
        write_raw(f[FileNames.NEIGHBOR_INDICES.value], np.asarray(indices).astype(DEFAULT_DTYPES[FileNames.NEIGHBOR_INDICES.value]))
        write_raw(f[FileNames.NEIGHBOR_VALUES.value], np.asarray(values).astype(DEFAULT_DTYPES[FileNames.NEIGHBOR_VALUES.value]))
        self.rows += len(indptr) - 1
        self.nnz += nnz

    def close(self, n_rows: int) -> None:
        for f in self.files.values():
            f.close()
        if self.rows != n_rows:
            raise ValueError(f"neighbor graph has {self.rows} rows but the archive has {n_rows}")

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
