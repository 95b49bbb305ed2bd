"""The training loader: deterministic, sharded, resumable batches of an SCDL archive."""

__all__ = ["SingleCellLoader"]


def __getattr__(name: str):
    if name == "SingleCellLoader":  # lazily: the orders and the CLI need no torch
        from ._loader import SingleCellLoader

        return SingleCellLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
