"""Find conversion inputs under the paths a user gives, and open each with the right reader."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import h5py

from ..errors import ConversionError
from ._source import Source

log = logging.getLogger(__name__)

H5AD_SUFFIXES = (".h5ad",)
H5_SUFFIXES = (".h5", ".hdf5")


def _mtx_file(directory: Path) -> Path | None:
    from ._tenx import mtx_matrix_file

    return mtx_matrix_file(directory)


def discover_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into the inputs to convert, in a stable order.

    A directory is searched recursively for ``*.h5ad``, 10x ``*.h5`` files and Matrix Market
    directories (holding ``matrix.mtx[.gz]``). Cell Ranger writes the same matrix both as
    ``<name>.h5`` and as the directory ``<name>/``; the directory is then skipped. Inputs found
    under one directory are sorted by path; the directories and files given keep their order.
    A path given twice is converted once.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"Input not found: {p}")
        if p.is_file():
            found.append(p)
        elif _mtx_file(p) is not None:
            found.append(p)
        else:
            found.extend(_search(p))
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _search(directory: Path) -> list[Path]:
    hits: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        root_p = Path(root)
        for name in files:
            if name.endswith(H5AD_SUFFIXES + H5_SUFFIXES) and not name.startswith("."):
                hits.append(root_p / name)
        for name in list(dirs):
            sub = root_p / name
            if _mtx_file(sub) is None:
                continue
            dirs.remove(name)  # a matrix directory is one input, not a tree to search
            if any((root_p / (name + s)).is_file() for s in H5_SUFFIXES):
                log.info("skipping %s: the same matrix is in %s.h5", sub, name)
                continue
            hits.append(sub)
    return sorted(hits)


def open_source(path: str | os.PathLike, *, use_X_not_raw: bool = False, genome: str | None = None) -> Source:
    """Open one input: an ``.h5ad`` file, a 10x HDF5 file or a Matrix Market directory."""
    from ._h5ad import H5adSource
    from ._tenx import MtxSource, TenxH5Source, is_tenx_h5

    p = Path(path)
    if p.is_dir():
        if _mtx_file(p) is None:
            raise ConversionError(f"{p} is a directory without matrix.mtx or matrix.mtx.gz")
        return MtxSource(p)
    if not p.is_file():
        raise FileNotFoundError(f"Input not found: {p}")
    if p.suffix.lower() in H5_SUFFIXES:
        try:
            with h5py.File(p, "r") as f:
                tenx = is_tenx_h5(f)
        except OSError as e:
            raise ConversionError(f"{p} is not a readable HDF5 file: {e}") from e
        if tenx:
            return TenxH5Source(p, genome=genome)
    elif p.suffix.lower() not in H5AD_SUFFIXES:
        raise ConversionError(f"{p}: unsupported input; expected .h5ad, a 10x .h5 file or a Matrix Market directory")
    return H5adSource(p, use_X_not_raw)
