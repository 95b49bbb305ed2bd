"""Per-cell data carried with each batch: obs columns (categorical ones encoded once to integer
codes) and obsm arrays (read from their memory maps, batch rows only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..archive._constants import FileNames
from ..archive._obsm import open_obsm
from ..archive._reader import load_feature_index
from ..errors import ArchiveError


class ObsColumns:
    """Selected obs columns of an archive, held in memory as arrays indexed by row.

    Strings and categoricals (stored as objects) become ``int64`` codes into ``categories[col]``
    (sorted, so codes do not depend on row order); numeric columns keep their dtype.
    """

    def __init__(self, path: str | Path, columns: list[str], n_rows: int) -> None:
        index = load_feature_index(path, FileNames.OBS_FEATURES)
        if columns and index.number_of_rows() != n_rows:
            raise ArchiveError(f"{path}: the obs index covers {index.number_of_rows()} rows, expected the archive's {n_rows}")
        self.values: dict[str, np.ndarray] = {}
        self.categories: dict[str, list] = {}
        for col in columns:
            parts = []
            for b, features in enumerate(index._feature_arr):
                if col not in features:
                    have = sorted(set().union(*(f.keys() for f in index._feature_arr)))
                    raise KeyError(f"obs column {col!r} is missing from block {b} of {path}; columns: {have}")
                parts.append(np.asarray(features[col]))
            values = np.concatenate(parts) if parts else np.empty(0)
            if values.dtype.kind in "OUS":
                codes, cats = pd.factorize(pd.Series(values, dtype=object).astype(str), sort=True)
                self.values[col] = codes.astype(np.int64)
                self.categories[col] = list(cats)
            else:
                self.values[col] = values
        self.columns = list(columns)

    def take(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {col: torch.from_numpy(np.ascontiguousarray(self.values[col][rows])) for col in self.columns}


class ObsmArrays:
    """Selected obsm arrays of an archive, memory-mapped (checked on open: rows and file size)."""

    def __init__(self, path: str | Path, keys: list[str], n_rows: int) -> None:
        self.arrays = {key: open_obsm(path, key, n_rows) for key in keys}

    def take(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """``(len(rows), width)`` tensors of the batch's rows (copies: the maps stay read-only)."""
        return {key: torch.from_numpy(np.ascontiguousarray(a[rows])) for key, a in self.arrays.items()}
