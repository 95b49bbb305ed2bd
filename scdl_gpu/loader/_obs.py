"""Per-cell data carried with each batch: obs columns (categorical ones encoded once to integer
codes) and obsm arrays (read from their memory maps, batch rows only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..archive._constants import SOURCE_FILE, FileNames
from ..archive._obsm import open_obsm
from ..archive._reader import load_feature_index
from ..errors import ArchiveError

MISSING_CODE = -1
"""Code of a cell whose input had no value for a string/categorical column (not in ``categories``)."""


class ObsColumns:
    """Selected obs columns of an archive, held in memory as arrays indexed by row.

    Strings and categoricals (stored as objects) become ``int64`` codes into ``categories[col]``
    (sorted, so codes do not depend on row order); numeric columns keep their dtype.

    A multi-input archive holds one obs block per input, and inputs need not share columns: a
    column is the union over blocks. Rows of a block without it read as missing: ``NaN`` for a
    numeric column (integers become float64 to hold it), code ``MISSING_CODE`` (-1) for a
    string/categorical one. A column no block has is a ``KeyError`` listing those there are.
    """

    def __init__(self, path, columns: list[str], n_rows: int) -> None:
        blocks, sizes = obs_blocks(path, n_rows) if columns else ([], [])
        path = _name_of(path)
        self.values: dict[str, np.ndarray] = {}
        self.categories: dict[str, list] = {}
        for col in columns:
            parts = [np.asarray(features[col]) if col in features else None for features in blocks]
            found = [p for p in parts if p is not None]
            if not found:
                have = sorted(set().union(*(f.keys() for f in blocks)))
                raise KeyError(f"obs column {col!r} is in none of the {len(blocks)} obs blocks of {path}; columns: {have}")
            if any(p.dtype.kind in "OUS" for p in found):
                text = [pd.Series(p, dtype=object).astype(str) if p is not None else pd.Series([None] * n, dtype=object) for p, n in zip(parts, sizes)]
                codes, cats = pd.factorize(pd.concat(text, ignore_index=True), sort=True)  # None -> -1
                self.values[col] = codes.astype(np.int64)
                self.categories[col] = list(cats)
            elif len(found) < len(parts):
                filled = [p.astype(np.float64) if p is not None else np.full(n, np.nan) for p, n in zip(parts, sizes)]
                self.values[col] = np.concatenate(filled)
            else:
                self.values[col] = np.concatenate(found)
        self.columns = list(columns)

    def take(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {col: torch.from_numpy(np.ascontiguousarray(self.values[col][rows])) for col in self.columns}


def _name_of(path):
    """What messages call ``path``: an opened Atlas by its directory."""
    from ..atlas import Atlas

    return path.root if isinstance(path, Atlas) else path


def obs_blocks(path, n_rows: int, member: bool = False) -> tuple[list[dict], list[int]]:
    """The obs blocks of an archive (one per input) and their rows; of an atlas (its directory, or
    an opened :class:`~scdl_gpu.atlas.Atlas`, whose members may be read from local mirrors), every
    member's blocks in member order (so a column one member lacks reads as missing for its rows; a
    member without obs is one block without columns)."""
    from ..atlas import Atlas, is_atlas, open_atlas

    if isinstance(path, Atlas) or is_atlas(path):
        atlas = path if isinstance(path, Atlas) else open_atlas(path)
        parts = [obs_blocks(atlas.member_path(i), m.n_rows, member=True) for i, m in enumerate(atlas.members)]
        return [b for bl, _ in parts for b in bl], [n for _, ns in parts for n in ns]
    index = load_feature_index(path, FileNames.OBS_FEATURES)
    if member and len(index) == 0:
        return [{}], [n_rows]
    if index.number_of_rows() != n_rows:
        raise ArchiveError(f"{path}: the obs index covers {index.number_of_rows()} rows, expected the archive's {n_rows}")
    blocks = index._feature_arr
    return blocks, [index._block_rows(b) for b in range(len(blocks))]


class ObsmArrays:
    """Selected obsm arrays of an archive, memory-mapped (checked on open: rows and file size)."""

    def __init__(self, path: str | Path, keys: list[str], n_rows: int) -> None:
        self.arrays = {key: open_obsm(path, key, n_rows) for key in keys}

    def take(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """``(len(rows), width)`` tensors of the batch's rows (copies: the maps stay read-only)."""
        return {key: torch.from_numpy(np.ascontiguousarray(a[rows])) for key, a in self.arrays.items()}


def input_groups(path: str | Path, n_rows: int) -> tuple[list[str], np.ndarray]:
    """The inputs an archive's rows came from, as far as it records them: (names, each row's index).

    Its obs blocks when it has several (the writer merges consecutive inputs with the same obs
    columns into one block, so these are runs of inputs; a block is named by its label, else
    ``input_<k>``); else the ``source_file`` column a shuffled conversion of several inputs writes;
    else one group.
    """

    index = load_feature_index(path, FileNames.OBS_FEATURES)
    blocks = index._feature_arr
    names = [lab if lab is not None else f"input_{k}" for k, lab in enumerate(index._labels)] or ["input_0"]
    if len(blocks) > 1 or not (blocks and SOURCE_FILE in blocks[0]):
        sizes = [index._block_rows(b) for b in range(len(blocks))] or [n_rows]
        if sum(sizes) != n_rows:
            raise ArchiveError(f"{path}: the obs index covers {sum(sizes)} rows, expected the archive's {n_rows}")
        return names, np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    source = ObsColumns(path, [SOURCE_FILE], n_rows)
    codes = source.values[SOURCE_FILE]
    if (codes < 0).any():
        raise ArchiveError(f"{path}: obs column {SOURCE_FILE!r} has rows without a value")
    return [str(c) for c in source.categories[SOURCE_FILE]], codes
