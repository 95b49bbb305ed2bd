"""Command-line tools: ``scdl-gpu`` (convert, info, validate, cast) and ``convert_h5ad_to_scdl``."""

from ._main import main

__all__ = ["main"]
