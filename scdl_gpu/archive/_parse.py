"""Reading archive files under one guard: whatever a parser raises on damaged bytes becomes an
:class:`~scdl_gpu.errors.ArchiveError` naming the file.

The parsers an archive goes through fail in their own ways: ``json`` (``ValueError``,
``UnicodeDecodeError``, ``RecursionError``), NumPy's ``.npy`` header (``tokenize.TokenError``,
``SyntaxError``, ``ValueError``), pyarrow (``pyarrow.lib.ArrowException`` and its ``OSError`` /
``MemoryError`` subclasses, ``KeyError``), C++ on absurd sizes (``RuntimeError``,
``MemoryError``), ``struct.error``, ``OSError``. A caller should catch one type, and be told which
file to look at. Sizes are checked against the file before anything is allocated, so a flipped
byte in a length field is an error, not a terabyte allocation.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ArchiveError, ArchiveNotFoundError

__all__ = ["parsing", "read_json", "npy_header", "read_npy"]


@contextlib.contextmanager
def parsing(path: Path | str, what: str = "") -> Iterator[None]:
    """Run the body as the parse of ``path``: ``ArchiveError`` (ours) passes through, a vanished
    file becomes ``ArchiveNotFoundError``, an ``OSError`` of ENOMEM (a map the kernel refused)
    passes through, anything else ``ArchiveError`` naming ``path``."""
    try:
        yield
    except ArchiveError:
        raise
    except FileNotFoundError as e:
        raise ArchiveNotFoundError(f"{path} does not exist ({e})") from e
    except OSError as e:
        if e.errno != errno.ENOMEM:
            raise _damaged(path, what, e) from e
        raise  # the kernel out of memory or of maps (vm.max_map_count): not the file's fault
    except Exception as e:  # any parser failure on damaged bytes; BaseException (Ctrl-C) passes
        raise _damaged(path, what, e) from e


def _damaged(path, what: str, e: Exception) -> ArchiveError:
    detail = f"{type(e).__name__}: {e}"[:500]
    return ArchiveError(f"Cannot read {what + ' ' if what else ''}{path}: {detail}; the file is damaged")


def read_json(path: Path):
    """A JSON file's value; ``ArchiveNotFoundError`` when missing, ``ArchiveError`` when unreadable."""
    if not path.is_file():
        raise ArchiveNotFoundError(f"{path} does not exist")
    with parsing(path):
        raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ArchiveError(f"{path} is not valid JSON: {e}") from e


def npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` file, its size checked: the
    data that follows the header must be exactly what the header declares (no more, no less)."""
    if not path.is_file():
        raise ArchiveNotFoundError(f"{path} does not exist")
    with parsing(path, ".npy file"):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ArchiveError(f"{path}: .npy format version {version}, expected (1, 0) or (2, 0)")
            offset = f.tell()
        if any(d < 0 for d in shape):
            raise ArchiveError(f"{path}: the .npy header declares shape {shape}, expected non-negative dimensions")
        need = math.prod(shape) * dtype.itemsize
        have = path.stat().st_size - offset
        if not dtype.hasobject and need != have:
            raise ArchiveError(
                f"{path}: the .npy header declares a {shape} {dtype} array ({need} bytes), "
                f"expected the {have} bytes that follow it"
            )
    return shape, fortran, dtype, offset


def read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` file's array (memory-mapped when ``mmap``), never unpickled, its size checked first."""
    shape, fortran, dtype, offset = npy_header(path)
    if dtype.hasobject:
        raise ArchiveError(f"{path} holds Python objects ({dtype}), expected numbers or strings; it is not unpickled")
    order = "F" if fortran else "C"
    with parsing(path, ".npy file"):
        if mmap and math.prod(shape):
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
        flat = np.fromfile(path, dtype=dtype, count=math.prod(shape), offset=offset)
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
