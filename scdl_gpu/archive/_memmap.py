"""Raw array files: headerless little-endian arrays named ``*.npy`` (not real .npy files)."""

from __future__ import annotations

import errno
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


MAP_RESERVE = 2048  #: maps left for everything else a process holds (allocations, libraries, other archives)
MAP_CHECK_FROM = 1024  #: fewer new maps than this are not checked (reading /proc/self/maps costs ~1 ms)


def _max_map_count() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None  # not Linux, or not readable: nothing to check against


def _maps_in_use() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


def check_map_room(needed: int, what: str) -> None:
    """Raise ``OSError(ENOMEM)`` saying so when mapping ``needed`` more files would pass the kernel's
    limit on one process's memory maps (``vm.max_map_count``, 65,530 by default): past it ``mmap``
    fails part-way with a bare "Cannot allocate memory". ``what`` names who needs them."""
    limit = _max_map_count() if needed >= MAP_CHECK_FROM else None
    if limit is None:
        return
    used = _maps_in_use()
    if used + needed + MAP_RESERVE > limit:
        raise OSError(errno.ENOMEM, f"{what} needs {needed:,} memory maps, and this process already holds {used:,} "
                      f"of the {limit:,} the kernel allows one process (vm.max_map_count, keeping {MAP_RESERVE:,} "
                      f"spare); raise the limit (as root: sysctl -w vm.max_map_count={2 * (used + needed + MAP_RESERVE)}), "
                      "or write the archive with fewer, larger chunks")


def map_raw(path: Path, dtype: str | np.dtype, length: int, writable: bool = False) -> np.ndarray:
    """Memory-map the first ``length`` items of a raw array file (read-only unless ``writable``).

    Empty arrays come back as plain empty ndarrays: mmap cannot map zero bytes, and upstream's
    1-byte placeholder files for empty arrays must read as empty too.
    """
    dt = np.dtype(dtype)
    if length == 0:
        return np.empty(0, dtype=dt)
    return np.memmap(path, dtype=dt, mode="r+" if writable else "r", shape=(length,))


def map_values(path: Path, dtype: str | np.dtype, nnz: int, pointers: str, writable: bool = False) -> np.ndarray:
    """Map a value or column file that must hold exactly ``nnz`` items (the end of ``pointers``,
    the row pointer file named in the error). Upstream writes a 1-byte placeholder for an empty
    array (1 item for uint8 too): it reads as empty."""
    from ._parse import parsing  # _parse maps .npy files through this module

    if nnz == 0 and path.is_file() and path.stat().st_size < max(2, np.dtype(dtype).itemsize):
        return np.empty(0, dtype)
    n = raw_length(path, dtype)
    if n != nnz:
        raise ArchiveError(
            f"{path} holds {n} {np.dtype(dtype).name} values but {pointers} ends at {nnz} "
            f"({'truncated' if n < nnz else 'extra data'}; or the header's dtypes are wrong)"
        )
    with parsing(path):
        return map_raw(path, dtype, n, writable)


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
