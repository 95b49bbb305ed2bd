"""The training loader: deterministic, sharded, resumable batches of an SCDL archive."""

from ._loader import SingleCellLoader

__all__ = ["SingleCellLoader"]
