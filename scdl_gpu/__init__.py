"""scdl_gpu: a GPU-native single-cell data loader over bionemo-scdl compatible archives.

The names below mirror bionemo-scdl's, so switching is a change of imports. Names are loaded on
first use: conversion workers and the command line import the archive and conversion layers
without paying for torch, and importing this package never imports CuPy or kvikio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ArchiveError": ".errors",
    "ArchiveNotFoundError": ".errors",
    "AtlasDataset": ".atlas_dataset",
    "ConversionError": ".errors",
    "ConversionReport": ".convert",
    "FileNames": ".archive",
    "HeaderSerializationError": ".errors",
    "Mode": ".archive",
    "NeighborSamplingStrategy": ".archive",
    "RemoteArchive": ".archive",
    "SingleCellCollection": ".collection",
    "SingleCellLoader": ".loader",
    "SingleCellMemMapDataset": ".dataset",
    "collate_neighbor_sparse_matrix_batch": ".collate",
    "collate_sparse_matrix_batch": ".collate",
    "convert_h5ad": ".convert",
    "convert_many": ".convert",
    "partition_scdl": ".archive",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scdl_gpu' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .archive import FileNames, Mode, NeighborSamplingStrategy, partition_scdl
    from .atlas_dataset import AtlasDataset
    from .collate import collate_neighbor_sparse_matrix_batch, collate_sparse_matrix_batch
    from .collection import SingleCellCollection
    from .loader import SingleCellLoader
    from .convert import ConversionReport, convert_h5ad, convert_many
    from .dataset import SingleCellMemMapDataset
    from .errors import ArchiveError, ArchiveNotFoundError, ConversionError, HeaderSerializationError
