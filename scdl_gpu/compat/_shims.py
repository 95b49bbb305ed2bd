"""Upstream names with no direct counterpart in scdl_gpu: its abstract dataset bases and the
current-schema-version constructor. Loaded only by the compatibility layer."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch.utils.data import Dataset

from ..archive._header import CURRENT_SCDL_VERSION, SCDLVersion
from ..collection import SingleCellCollection
from ..dataset import SingleCellMemMapDataset


class SingleCellRowDatasetCore(ABC):
    """Upstream's interface of a ragged cell-by-feature matrix (``bionemo.scdl.api``)."""

    @abstractmethod
    def load_h5ad(self, h5ad_path: str) -> None: ...

    @abstractmethod
    def number_nonzero_values(self) -> int: ...

    @abstractmethod
    def number_of_values(self) -> int: ...

    @abstractmethod
    def number_of_rows(self) -> int: ...

    @abstractmethod
    def shape(self) -> tuple[int, list[int]]: ...

    def sparsity(self) -> float:
        """The fraction of zero values; 0.0 when there are no values."""
        total = self.number_of_values()
        return (total - self.number_nonzero_values()) / total if total else 0.0

    @abstractmethod
    def version(self) -> str: ...


class SingleCellRowDataset(SingleCellRowDatasetCore, Dataset):
    """Upstream's interface of a row dataset that loads from and saves to an archive."""

    @abstractmethod
    def load(self, data_path: str) -> None: ...

    @abstractmethod
    def save(self, data_path: str) -> None: ...


# isinstance checks written against upstream's bases hold for ours.
SingleCellRowDataset.register(SingleCellMemMapDataset)
SingleCellRowDatasetCore.register(SingleCellCollection)


def CurrentSCDLVersion() -> SCDLVersion:  # noqa: N802 - upstream's name (a class there)
    """The schema version this package writes (upstream: ``CurrentSCDLVersion()``)."""
    return CURRENT_SCDL_VERSION
