"""``SingleCellMemMapDataset``: bionemo-scdl's dataset API over an SCDL archive.

Same constructor, methods and return types as upstream; archives open read-only, rows obey
Python indexing, the header is rebuilt on every write, and the neighbor sampler is per-process.
"""

from __future__ import annotations

import operator
import os
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
import torch

from ._neighbors import NeighborMixin
from .archive._atomic import mapped_file_matches, rebuilt
from .archive._bounds import check_columns, check_span
from .archive._cast import cast_archive_data
from .archive._concat import DEFAULT_CHUNK, concat_archives
from .archive._constants import DEFAULT_DTYPES, SCDL_PACKAGE_VERSION, FileNames, Mode, NeighborSamplingStrategy
from .archive._dtypes import cast_checked, check_data_dtype
from .archive._feature_index import ObservedFeatureIndex, VariableFeatureIndex
from .archive._generation import pinned_open
from .archive._header import build_archive_header, feature_index_info
from .archive._partition import DEFAULT_CHUNK_SIZE, partition_archive
from .archive._memmap import map_raw, write_raw
from .archive._obsm import obsm_keys as _obsm_keys
from .archive._obsm import open_obsm
from .archive._reader import load_feature_index, open_arrays
from .archive._writer import write_json
from .convert import convert_h5ad
from .convert._h5ad import H5adSource
from .errors import ArchiveError

if TYPE_CHECKING:
    import pandas as pd


@pinned_open
def _open_generation(path, load_neighbors: bool):
    """The arrays and the gene tables of one directory generation. Every row read needs the gene
    tables; loading them later by path could meet the next generation, or the old one being
    deleted, after an in-place replace (cast, save, ``--overwrite``) by another process."""
    return open_arrays(path, load_neighbors=load_neighbors), load_feature_index(path, FileNames.VAR_FEATURES)


class SingleCellMemMapDataset(NeighborMixin, torch.utils.data.Dataset):
    """A cell-by-gene CSR matrix on disk, one row per cell; a torch ``Dataset`` of rows.

    Open an archive with ``SingleCellMemMapDataset(path)``; convert an AnnData file with
    ``SingleCellMemMapDataset(path, h5ad_path=...)``. ``ds[i]`` is a ``(2, nnz_i)`` tensor of
    values and column indices, as upstream; see :func:`scdl_gpu.collate_sparse_matrix_batch`.
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        h5ad_path: str | os.PathLike | None = None,
        num_elements: int | None = None,
        num_rows: int | None = None,
        mode: Mode = Mode.READ_APPEND,
        paginated_load_cutoff: int = 10_000,
        load_block_row_size: int = 1_000_000,
        var_feature_index_name: str = "var_feature_id",
        obs_feature_index_name: str = "obs_feature_id",
        load_neighbors: bool = False,
        neighbor_key: str = "next_cell_ids",
        neighbor_sampling_strategy: str = NeighborSamplingStrategy.RANDOM,
        fallback_to_identity: bool = True,
        data_dtype: str | None = None,
        data_dtype_tolerance: float = 1e-08,
        use_X_not_raw: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        if data_dtype is not None:
            check_data_dtype(data_dtype)
        self.data_path = data_path
        self.mode = Mode(mode)
        self.paginated_load_cutoff = paginated_load_cutoff
        self.load_block_row_size = load_block_row_size
        self.var_feature_index_name = var_feature_index_name
        self.obs_feature_index_name = obs_feature_index_name
        self.use_X_not_raw = use_X_not_raw
        self.data_dtype_tolerance = data_dtype_tolerance
        self.allow_nonfinite = allow_nonfinite
        self._data_dtype = data_dtype  # for load_h5ad; an opened archive keeps its own
        self._reserved = False
        self._init_neighbors(load_neighbors, neighbor_key, neighbor_sampling_strategy, fallback_to_identity)
        path = Path(data_path)
        if self.mode is Mode.CREATE_APPEND and path.exists():
            raise FileExistsError(f"Output directory already exists: {data_path}")
        if h5ad_path is not None and path.exists():
            raise FileExistsError(
                "Invalid input; both an existing SCMMAP and an h5ad file were passed. "
                "Please pass either an existing SCMMAP or an h5ad file."
            )
        if path.exists():
            self.load(data_path)
        elif h5ad_path is not None:
            self._convert(h5ad_path, paginated_load_cutoff)
        elif isinstance(num_rows, int) and isinstance(num_elements, int):
            self._create_empty(path, num_rows, num_elements, data_dtype)
        else:
            raise ValueError("An np.memmap path, an h5ad path, or the number of elements and rows is required")

    # -- opening and creating -----------------------------------------------------------------
    def load(self, stored_path: str | os.PathLike) -> None:
        """Open an existing archive read-only (checks every file against the header and row_ptr)."""
        arrays, self._var_feature_index = _open_generation(stored_path, self.load_neighbors)
        self.data_path = stored_path
        # chunked archives: data/col_index read through their chunks, row_index is global (in memory)
        self.data, self.row_index, self.col_index = arrays.data, arrays.row_ptr, arrays.col_ptr
        self._chunks = arrays.chunks
        self.dtypes = {**DEFAULT_DTYPES, **arrays.dtypes}
        self.header = arrays.header
        self.metadata = arrays.metadata
        self._obs_feature_index = None
        self._version = SCDL_PACKAGE_VERSION
        self._reserved = arrays.reserved
        self._attach_neighbors(arrays.neighbors)

    def _create_empty(self, path: Path, num_rows: int, num_elements: int, data_dtype: str | None) -> None:
        if num_rows <= 0 or num_elements <= 0:
            raise ValueError(f"num_rows and num_elements must be positive, got {num_rows} and {num_elements}")
        path.mkdir(parents=True)
        write_json(path / FileNames.VERSION.value, SCDL_PACKAGE_VERSION)
        self.dtypes = dict(DEFAULT_DTYPES)
        self.dtypes[FileNames.DATA.value] = check_data_dtype(data_dtype)
        sizes = {FileNames.DATA: num_elements, FileNames.COLPTR: num_elements, FileNames.ROWPTR: num_rows + 1}
        mapped = {}
        for member, n in sizes.items():
            with open(path / member.value, "wb") as f:
                f.truncate(n * np.dtype(self.dtypes[member.value]).itemsize)
            mapped[member] = map_raw(path / member.value, self.dtypes[member.value], n, writable=True)
        self.data, self.col_index, self.row_index = mapped[FileNames.DATA], mapped[FileNames.COLPTR], mapped[FileNames.ROWPTR]
        self.header = None
        self._chunks = None
        self.metadata = {}
        self._var_feature_index = VariableFeatureIndex()
        self._obs_feature_index = ObservedFeatureIndex()
        self._version = SCDL_PACKAGE_VERSION
        self._reserved = True  # rows count once written (or converted into by load_h5ad), as upstream
        self._attach_neighbors(None)

    # -- converting into this dataset (upstream's load_h5ad family) -------------------------------
    def load_h5ad(self, anndata_path: str | os.PathLike) -> None:
        """Convert an AnnData file into this dataset's directory and open it (upstream's method).

        Files of ``paginated_load_cutoff`` MB or more are read ``load_block_row_size`` rows at a
        time. The archive is replaced whole once the conversion is complete. The dataset must hold
        no rows yet (a ``num_rows``/``num_elements`` preallocation): upstream would overwrite the
        arrays and append a second gene table, leaving an inconsistent archive; use :meth:`concat`.
        """
        self._convert(anndata_path, self.paginated_load_cutoff)

    def regular_load_h5ad(self, anndata_path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, int]:
        """:meth:`load_h5ad` without paging; returns the file's ``(var, obs, num_rows)`` as upstream.

        Unlike upstream, which leaves the gene and cell tables to ``load_h5ad``, the whole archive
        (tables included) is written: the directory never holds arrays without their tables."""
        self._convert(anndata_path, float("inf"))
        return self._tables(anndata_path)

    def paginated_load_h5ad(self, anndata_path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame, int]:
        """:meth:`regular_load_h5ad`, reading ``load_block_row_size`` rows at a time."""
        self._convert(anndata_path, 0)
        return self._tables(anndata_path)

    def _tables(self, h5ad_path) -> tuple[pd.DataFrame, pd.DataFrame, int]:
        with H5adSource(Path(h5ad_path), self.use_X_not_raw) as source:
            return source.var(), source.obs(), int(source.shape[0])

    def _convert(self, h5ad_path, paginated_load_cutoff: float) -> None:
        path = Path(self.data_path)
        if not Path(h5ad_path).is_file():
            raise FileNotFoundError(f"Error: could not find h5ad path {h5ad_path}")
        if path.exists():
            if self.number_of_rows():
                raise ValueError(
                    f"{path} already holds {self.number_of_rows()} rows; load_h5ad converts into an empty "
                    "dataset only. Convert the file to its own archive and concat it."
                )
            if self._writable_dirty():
                self.save()  # a preallocation becomes an archive, which the conversion then replaces
        convert_h5ad(
            h5ad_path,
            path,
            data_dtype=self._data_dtype,
            data_dtype_tolerance=self.data_dtype_tolerance,
            use_X_not_raw=self.use_X_not_raw,
            paginated_load_cutoff=paginated_load_cutoff,
            load_block_row_size=self.load_block_row_size,
            var_feature_index_name=self.var_feature_index_name,
            obs_feature_index_name=self.obs_feature_index_name,
            load_neighbors=self.load_neighbors,
            neighbor_key=getattr(self, "neighbor_key", "next_cell_ids"),
            allow_missing_neighbors=True,  # upstream's API warns and loads no neighbors
            overwrite=path.exists(),
            keep_column_order=True,  # upstream's API: the same bytes as upstream's conversion
            allow_nonfinite=self.allow_nonfinite,  # upstream stores NaN silently; we refuse unless asked
        )
        self.load(path)

    @property
    def _is_chunked(self) -> bool:
        """Whether the archive is stored in upstream's chunked layout (upstream's attribute name)."""
        return getattr(self, "_chunks", None) is not None

    def to_chunked(self, output_path: str | os.PathLike | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   delete_original: bool = False) -> "SingleCellMemMapDataset":
        """This archive in upstream's chunked layout, ``chunk_size`` rows per chunk, as a new dataset.

        ``output_path=None`` replaces this archive in place (atomically; this dataset then reads the
        chunked archive too). ``delete_original`` removes this archive once the chunked one is complete.
        """
        if self._is_chunked:
            raise ValueError(f"{self.data_path} is already chunked (chunks of {self._chunks.chunk_size} rows)")
        if self._writable_dirty():
            self.save()
        partition_archive(self.data_path, output_path, chunk_size, delete_original)
        target = self.data_path if output_path is None else output_path
        if output_path is None:
            self.load(target)
            return self
        kw = {}
        if self.load_neighbors:
            kw = {"load_neighbors": True, "neighbor_key": self.neighbor_key, "fallback_to_identity": self.fallback_to_identity,
                  "neighbor_sampling_strategy": self.neighbor_sampling_strategy}
        return SingleCellMemMapDataset(target, **kw)

    def _refuse_chunked(self, what: str) -> None:
        if self._is_chunked:
            raise ValueError(f"{self.data_path} is a chunked archive (read-only here); {what} its flat source "
                             "and partition it again")

    @property
    def header_path(self) -> str:
        return str(Path(self.data_path) / FileNames.HEADER.value)

    def var_features(self) -> VariableFeatureIndex:
        """The gene tables, one block per distinct table (loaded on first use)."""
        if self._var_feature_index is None:
            self._var_feature_index = load_feature_index(self.data_path, FileNames.VAR_FEATURES)
        return self._var_feature_index

    def obs_features(self) -> ObservedFeatureIndex:
        """The cell tables (loaded on first use); ``ds.obs_features()[i]`` or ``[a:b]``."""
        if self._obs_feature_index is None:
            self._obs_feature_index = load_feature_index(self.data_path, FileNames.OBS_FEATURES)
        return self._obs_feature_index

    def var_names(self, row: int = 0) -> np.ndarray | None:
        """Gene ids (AnnData ``var_names``) of the gene table used by ``row``; None if not stored.

        An archive of 0 cells can still hold its gene table: ``row=0`` then reads its first block."""
        index = self.var_features()
        if self.number_of_rows() == 0 and operator.index(row) == 0:
            return index.names(0) if len(index) else None
        return index.names(index._get_dataset_id(self._check_row(row)))

    def obs_names(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Cell barcodes (AnnData ``obs_names``) of rows ``[start, stop)``."""
        return self.obs_features().names_for_rows(start, self.number_of_rows() if stop is None else stop)

    def obsm_keys(self) -> list[str]:
        """Keys of the per-cell arrays kept at conversion (``obsm_keys=``), as AnnData's ``obsm_keys()``."""
        return _obsm_keys(self.data_path)

    def obsm(self, key: str) -> np.ndarray:
        """The ``(rows, width)`` array ``obsm[key]`` kept at conversion, memory-mapped read-only.

        Its header is checked against the archive's rows and its file size (``ArchiveError``
        naming the file); an unknown key raises ``KeyError`` listing the stored ones.
        """
        return open_obsm(self.data_path, key, self.number_of_rows())

    # -- rows ---------------------------------------------------------------------------------
    def _check_row(self, index) -> int:
        """Python semantics for negative rows; anything outside the dataset is an IndexError."""
        i = operator.index(index)
        n = len(self.row_index) - 1
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"Row index {i} out of range for dataset with {n} rows")
        return j

    def _row_slices(self, index) -> tuple[np.ndarray, np.ndarray]:
        """The row's values and columns, checked: its span inside ``data.npy`` and every column below
        the row's gene count (``ArchiveError`` naming the file otherwise, never a wild read)."""
        i = self._check_row(index)
        lo, hi = check_span(self.data_path, self.row_index, i, len(self.data))
        values, columns = self.data[lo:hi], self.col_index[lo:hi]
        var = self.var_features()
        if len(var):
            check_columns(self.data_path, columns, i, var.number_vars_at_row(i))
        return values, columns

    def get_row(
        self,
        index: int,
        return_var_features: bool = False,
        var_feature_names: list[str] | None = None,
        return_obs_features: bool = False,
        obs_feature_names: list[str] | None = None,
    ):
        """``((values, columns), var_features, obs_features)`` for one row; slices of the memmaps."""
        i = self._check_row(index)
        values, columns = self._row_slices(i)
        var = self.var_features().lookup(i, select_features=var_feature_names)[0] if return_var_features else None
        obs = self.obs_features().lookup(i, select_features=obs_feature_names)[0] if return_obs_features else None
        return (values, columns), var, obs

    def get_row_padded(
        self,
        index: int,
        return_var_features: bool = False,
        var_feature_names: list[str] | None = None,
        return_obs_features: bool = False,
        obs_feature_names: list[str] | None = None,
    ):
        """``(dense float64 row of the row's gene count, var_features, obs_features)``."""
        i = self._check_row(index)
        (values, columns), var, obs = self.get_row(
            i, return_var_features, var_feature_names, return_obs_features, obs_feature_names
        )
        dense = np.zeros(self.var_features().number_vars_at_row(i), dtype=np.float64)
        dense[columns] = values
        return dense, var, obs

    def get_row_column(self, index: int, column: int, impute_missing_zeros: bool = True):
        """The stored value at ``(index, column)``; correct for rows with unsorted columns."""
        values, columns = self._row_slices(index)
        hits = np.flatnonzero(columns == column)
        if hits.size:
            return values[hits[-1]]  # the last duplicate wins, as in get_row_padded
        return 0.0 if impute_missing_zeros else None

    def __getitem__(self, idx) -> torch.Tensor:
        """A ``(2, nnz)`` tensor: row 0 values, row 1 column indices (NumPy dtype promotion)."""
        if isinstance(idx, torch.Tensor):
            idx = idx.item()
        i = self._check_row(idx)
        values, columns = self._row_slices(i)
        row = torch.from_numpy(np.stack([values, columns]))
        width = self._num_cols(i)
        if width is not None:
            row.scdl_num_cols = width  # lets the collate default to the gene count
        return row

    def _num_cols(self, i: int) -> int | None:
        """Row ``i``'s gene count, None without a var index (collates then use upstream's width)."""
        var = self.var_features()
        return var.number_vars_at_row(i) if len(var) else None

    def __len__(self) -> int:
        return self.number_of_rows()

    # -- sizes --------------------------------------------------------------------------------
    def number_of_rows(self) -> int:
        """Rows of the archive; 0 for a preallocation nothing was written into (its reserved rows
        read as empty rows, as upstream's)."""
        if self._reserved and not int(self.row_index[-1]):
            return 0
        return len(self.row_index) - 1

    def number_of_variables(self) -> list[int]:
        dims = self.var_features().column_dims()
        return list(dims) if dims else [0]

    def number_of_values(self) -> int:
        return int(sum(self.var_features().number_of_values()))

    def number_nonzero_values(self) -> int:
        return int(self.data.size)

    def sparsity(self) -> float:
        total = self.number_of_values()
        return (total - self.number_nonzero_values()) / total if total else 0.0

    def shape(self) -> tuple[int, list[int]]:
        return self.number_of_rows(), self.number_of_variables()

    def version(self) -> str:
        return self._version

    # -- writing ------------------------------------------------------------------------------
    def save(self, output_path: str | None = None) -> bool:
        """Write header (always rebuilt), metadata (true row count), features; flush arrays.

        The archive is rebuilt beside itself (hard links to the arrays) and exchanged in whole,
        so a reader never sees a header of this save with metadata or features of the last.
        """
        if output_path is not None:
            raise NotImplementedError("Saving to separate path is not yet implemented.")
        self._refuse_chunked("save")
        path = Path(self.data_path)
        for arr in (self.data, self.row_index, self.col_index):
            if isinstance(arr, np.memmap) and arr.mode != "r":
                arr.flush()
        var, obs = self.var_features(), self.obs_features()  # loaded from the archive before it is replaced
        header = self._build_header(var, obs)
        metadata = {**self.metadata, "num_rows": self.number_of_rows()}
        rewritten = (FileNames.VAR_FEATURES, FileNames.OBS_FEATURES, FileNames.HEADER, FileNames.METADATA)
        with rebuilt(path, omit=[m.value for m in rewritten], check=self._check_mapped_arrays) as tmp:
            var.save(str(tmp / FileNames.VAR_FEATURES.value))
            obs.save(str(tmp / FileNames.OBS_FEATURES.value))
            header.save(str(tmp / FileNames.HEADER.value))
            write_json(tmp / FileNames.METADATA.value, metadata)
            if not (tmp / FileNames.VERSION.value).exists():
                write_json(tmp / FileNames.VERSION.value, SCDL_PACKAGE_VERSION)
        self.header, self.metadata = header, metadata
        self._remap_writable()
        return True

    def _build_header(self, var, obs):
        return build_archive_header(
            dtypes={k: self.dtypes[k] for k in (FileNames.DATA.value, FileNames.ROWPTR.value, FileNames.COLPTR.value)},
            lengths={
                FileNames.DATA.value: int(self.data.size),
                FileNames.ROWPTR.value: int(self.row_index.size),
                FileNames.COLPTR.value: int(self.col_index.size),
            },
            feature_indices=[
                feature_index_info(FileNames.VAR_FEATURES.value, var.number_of_rows(), len(var)),
                feature_index_info(FileNames.OBS_FEATURES.value, obs.number_of_rows(), len(obs)),
            ],
        )

    def _check_mapped_arrays(self, source: Path) -> None:
        """The arrays about to be saved under this header must be the files this dataset maps:
        another process may have replaced the archive (a cast, say) since it was opened."""
        for arr, member in ((self.data, FileNames.DATA), (self.row_index, FileNames.ROWPTR), (self.col_index, FileNames.COLPTR)):
            if not mapped_file_matches(arr, source / member.value):
                raise ArchiveError(
                    f"{Path(self.data_path) / member.value} was replaced on disk since this dataset opened it; "
                    "reopen the archive before saving it"
                )

    def _remap_writable(self) -> None:
        """Writable maps follow the saved files (the same inodes, unless links had to be copies)."""
        path = Path(self.data_path)
        for attr, member in (("data", FileNames.DATA), ("row_index", FileNames.ROWPTR), ("col_index", FileNames.COLPTR)):
            arr = getattr(self, attr)
            if isinstance(arr, np.memmap) and arr.mode != "r" and arr.size:
                setattr(self, attr, map_raw(path / member.value, self.dtypes[member.value], arr.size, writable=True))

    def cast_data_to_dtype(self, dtype: str, allow_lossy: bool = False) -> None:
        """Rewrite ``data.npy`` as ``dtype`` (atomically: the archive is replaced whole), and remap.

        Values the new dtype cannot hold (negative or too large for an unsigned type) raise
        ``ValueError`` and leave the archive untouched. So does a cast that would change values
        by more than ``data_dtype_tolerance`` (normalised floats into integers, float64 into
        float32), unless ``allow_lossy``: then it casts and warns, as upstream always does.
        """
        self._refuse_chunked("cast")
        if self._writable_dirty():
            self.save()
        try:
            cast_archive_data(self.data_path, dtype, self.data_dtype_tolerance, allow_lossy=allow_lossy)
        finally:
            self.load(self.data_path)

    def concat(
        self,
        other_dataset,
        extend_copy_size: int = DEFAULT_CHUNK,
        output_path: str | None = None,
        destroy_on_copy: bool = False,
    ) -> None:
        """Append other archives' rows (and features, and neighbor graphs) to this one.

        The result is written beside the target and swapped in when complete, so a failure
        leaves this archive as it was. With ``output_path`` the result goes there instead.
        Chunked archives are read through their chunks; the result is always a flat archive
        (``to_chunked`` partitions it again).
        """
        others = other_dataset if isinstance(other_dataset, list) else [other_dataset]
        if not all(isinstance(o, SingleCellMemMapDataset) for o in others):
            raise ValueError(
                f"Expecting either a {SingleCellMemMapDataset} or a list thereof. Actually got: {type(other_dataset)}"
            )
        if self._writable_dirty():
            self.save()
        paths = [Path(self.data_path)] + [Path(o.data_path) for o in others]
        target = Path(output_path) if output_path is not None else Path(self.data_path)
        concat_archives(paths, target, overwrite=output_path is None, chunk=max(1, int(extend_copy_size)))
        if destroy_on_copy:
            for p in paths[1:] + ([paths[0]] if output_path is not None else []):
                shutil.rmtree(p, ignore_errors=True)
        self.load(target)

    def _writable_dirty(self) -> bool:
        """Arrays created in memory-mapped write mode (num_rows/num_elements) must be saved first."""
        return isinstance(self.data, np.memmap) and self.data.mode != "r" and self.header is None

    def __repr__(self) -> str:
        return f"SingleCellMemMapDataset({str(self.data_path)!r}, rows={self.number_of_rows()}, nnz={self.number_nonzero_values()})"

