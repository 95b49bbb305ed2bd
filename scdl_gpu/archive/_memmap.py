"""Raw array files: headerless little-endian arrays named ``*.npy`` (not real .npy files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ArchiveError, ArchiveNotFoundError


def raw_length(path: Path, dtype: str | np.dtype) -> int:
    """Number of ``dtype`` items in a raw array file; a size that is not a multiple raises."""
    if not path.is_file():
        raise ArchiveNotFoundError(f"The mmap file at {path} is missing")
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise ArchiveError(
            f"{path.name} is {size} bytes, not a multiple of the {itemsize}-byte {np.dtype(dtype).name} "
            f"items the header declares (truncated or mistyped file) in {path.parent}"
        )
    return size // itemsize


def map_raw(path: Path, dtype: str | np.dtype, length: int, writable: bool = False) -> np.ndarray:
    """Memory-map the first ``length`` items of a raw array file (read-only unless ``writable``).

    Empty arrays come back as plain empty ndarrays: mmap cannot map zero bytes, and upstream's
    1-byte placeholder files for empty arrays must read as empty too.
    """
    dt = np.dtype(dtype)
    if length == 0:
        return np.empty(0, dtype=dt)
    return np.memmap(path, dtype=dt, mode="r+" if writable else "r", shape=(length,))


def write_raw(f, array: np.ndarray) -> None:
    """Append an array's bytes to an open binary file, little-endian as the format stores them."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    f.write(memoryview(arr).cast("B"))


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename into it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
