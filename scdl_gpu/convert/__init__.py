"""h5ad to SCDL archive conversion."""

from ._convert import convert_h5ad

__all__ = ["convert_h5ad"]
