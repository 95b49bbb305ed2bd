"""``AtlasDataset``: read-only random access to an atlas's rows, in its gene vocabulary.

The return conventions of :class:`~scdl_gpu.SingleCellMemMapDataset` (so it works with
:func:`~scdl_gpu.collate_sparse_matrix_batch` and torch's ``DataLoader``), over global row ids:
``ds[i]`` is a ``(2, nnz_i)`` tensor of values and vocabulary columns, ``get_row`` gives
``((values, columns), var, obs)``, ``get_row_padded`` a dense float64 row as wide as the vocabulary.
"""

from __future__ import annotations

import operator
import os

import numpy as np
import torch

from .archive._bounds import column_error
from .archive._constants import FileNames
from .archive._reader import load_feature_index
from .backend._atlas import AtlasBackend
from .backend._plan import plan_rows


class AtlasDataset(torch.utils.data.Dataset):
    """Rows of an atlas of member archives, each mapped onto the atlas's gene vocabulary.

    Values keep their member's stored dtype; columns are vocabulary columns (``uint32``, as
    archives store them). Members are opened and checked against ``atlas.json`` as the loader
    opens them (a member replaced under the atlas is an ``ArchiveError``), and every row read is
    bounds-checked (``ArchiveError`` naming the member's file).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.data_path = path
        self._backend = AtlasBackend(path)
        self.atlas = self._backend.atlas
        self._obs: dict[int, object] = {}
        self._col_dtype = np.uint32 if self.atlas.n_genes <= np.iinfo(np.uint32).max else np.uint64

    # -- rows ---------------------------------------------------------------------------------
    def _check_row(self, index) -> int:
        i = operator.index(index)
        n = self.atlas.n_rows
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"Row index {i} out of range for dataset with {n} rows")
        return j

    def _row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k, local = (int(a[0]) for a in self.atlas.locate(np.array([i])))
        m = self._backend.members[k]
        r = m.reader
        plan = plan_rows(r.row_ptr, np.array([local], np.int64), r.n_data, r.path)  # checks the span
        data, cols, starts = m.fetch(plan)
        s, n = int(starts[0]), plan.nnz
        seg = np.asarray(cols[s : s + n])
        if n and int(seg.max()) >= r.width:
            raise column_error(r.path, local, int(seg.max()), r.width)
        values = np.asarray(data[s : s + n])
        values = values.view(np.float16) if m.f16 else values
        mapped = m.cmap[seg]
        keep = mapped >= 0
        values, mapped = values[keep], mapped[keep]
        if m.sort:
            order = np.argsort(mapped, kind="stable")
            values, mapped = values[order], mapped[order]
        return values, mapped.astype(self._col_dtype)

    def get_row(self, index: int, return_var_features: bool = False, var_feature_names: list[str] | None = None,
                return_obs_features: bool = False, obs_feature_names: list[str] | None = None):
        """``((values, columns), var_features, obs_features)``: columns in the vocabulary; the var
        features are ``[gene ids of the vocabulary]``, the obs features the row's own (its member's)."""
        i = self._check_row(index)
        row = self._row(i)
        var = [self.atlas.genes] if return_var_features else None
        obs = self._obs_lookup(i, obs_feature_names) if return_obs_features else None
        return row, var, obs

    def get_row_padded(self, index: int, return_var_features: bool = False, var_feature_names: list[str] | None = None,
                       return_obs_features: bool = False, obs_feature_names: list[str] | None = None):
        """``(dense float64 row as wide as the vocabulary, var_features, obs_features)``."""
        (values, columns), var, obs = self.get_row(index, return_var_features, var_feature_names,
                                                   return_obs_features, obs_feature_names)
        dense = np.zeros(self.atlas.n_genes, dtype=np.float64)
        dense[columns] = values
        return dense, var, obs

    def __getitem__(self, idx) -> torch.Tensor:
        """A ``(2, nnz)`` tensor: row 0 values, row 1 vocabulary columns (NumPy dtype promotion)."""
        if isinstance(idx, torch.Tensor):
            idx = idx.item()
        values, columns = self._row(self._check_row(idx))
        row = torch.from_numpy(np.stack([values, columns]))
        row.scdl_num_cols = self.atlas.n_genes  # the collate's default width
        return row

    def _obs_lookup(self, i: int, names):
        k, local = (int(a[0]) for a in self.atlas.locate(np.array([i])))
        if k not in self._obs:
            self._obs[k] = load_feature_index(self.atlas.member_path(k), FileNames.OBS_FEATURES)
        index = self._obs[k]
        return index.lookup(local, select_features=names)[0] if len(index) else []

    # -- sizes --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.atlas.n_rows

    def number_of_rows(self) -> int:
        return self.atlas.n_rows

    def number_of_variables(self) -> list[int]:
        return [self.atlas.n_genes]

    def number_nonzero_values(self) -> int:
        """Stored values of the members (the vocabulary may drop some of them from rows)."""
        return self.atlas.n_values

    def var_names(self, row: int = 0) -> np.ndarray:
        """The vocabulary's gene ids: column ``j`` of every row (whichever ``row``) is gene ``var_names()[j]``."""
        return np.asarray(self.atlas.genes)

    def shape(self) -> tuple[int, list[int]]:
        return self.number_of_rows(), self.number_of_variables()

    def close(self) -> None:
        self._backend.close()

    def __repr__(self) -> str:
        return f"AtlasDataset({str(self.data_path)!r}, rows={len(self)}, genes={self.atlas.n_genes}, members={len(self.atlas.members)})"


__all__ = ["AtlasDataset"]
