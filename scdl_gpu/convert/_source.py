"""An input opened for conversion: its cell-by-gene matrix reader and its obs/var tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConversionError
from ._matrix import MatrixReader


class Source:
    """Base of every input kind (h5ad, 10x HDF5, Matrix Market directory).

    ``matrix`` reads cells as rows and genes as columns whatever the on-disk orientation.
    ``obs()`` has one row per cell (index: barcodes or obs names), ``var()`` one row per gene
    (index: gene ids). Sources are context managers; ``close`` releases open files.
    """

    kind = ""
    matrix: MatrixReader

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def obs(self) -> pd.DataFrame:
        raise NotImplementedError

    def var(self) -> pd.DataFrame:
        raise NotImplementedError

    def neighbors(self, key: str) -> MatrixReader | None:
        """The cell-cell graph stored under ``key``, or None when the input has none."""
        return None

    def obsm_keys(self) -> list[str]:
        """Keys of the per-cell arrays (AnnData ``.obsm``) the input holds."""
        return []

    def obsm(self, key: str):
        """A row-range reader (:class:`~._obsm.ObsmReader`) of ``obsm[key]``, or None when absent."""
        return None

    def neighbor_keys(self) -> list[str]:
        """Keys ``neighbors`` accepts (for messages naming what a mistyped key could have been)."""
        return []

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _checked(self, df: pd.DataFrame, axis: int, what: str) -> pd.DataFrame:
        """Refuse a table whose length disagrees with the matrix (a corrupt or mismatched input)."""
        if len(df) != self.shape[axis]:
            raise ConversionError(
                f"{self.path}: the matrix is {self.shape[0]} x {self.shape[1]} but {what} has {len(df)} rows"
            )
        return df


def table_names(df: pd.DataFrame) -> np.ndarray:
    """The index of an obs/var table as strings (barcodes, gene ids)."""
    return np.asarray(df.index.astype(str))
