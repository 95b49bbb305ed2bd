"""Per-cell arrays kept beside the archive (AnnData ``.obsm``: embeddings, spatial coordinates).

Each key is one standard ``.npy`` file, ``obsm/<key>.npy``, of shape ``(archive rows, width)``:
NumPy's own header records its dtype and shape, so nothing else describes it. bionemo-scdl reads
fixed file names and never looks in ``obsm/``, so an archive with obsm files stays an upstream
archive; the checksum manifest covers them like every other file.

Files are created at their final size and written by row ranges (``os.pwrite`` at the row's
offset), so several workers, threads or processes, can fill their own rows of one file at once.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArchiveError
from ._parse import npy_header, parsing

__all__ = ["OBSM_DIR", "ObsmTarget", "check_key", "create_obsm", "merge_obsm", "obsm_keys", "obsm_outline", "obsm_problems",
           "open_obsm"]

OBSM_DIR = "obsm"
# Keys become file names: refused (never encoded) unless plainly safe on every filesystem.
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_KINDS = "biuf"  # bool, integers and floats; the .npy keeps the input's dtype
_FILL_BYTES = 16 << 20  # rows of NaN written at a time for an input without the key

ObsmSpec = tuple[np.dtype, int]  # (dtype, width) of one key


def check_key(key) -> str:
    """``key`` if it can name a file, else ``ValueError`` saying which characters are allowed."""
    if not isinstance(key, str) or not _KEY_RE.match(key) or key.endswith(".npy"):
        raise ValueError(
            f"obsm key {key!r} cannot be stored: keys name files, so they may hold only letters, digits, "
            f"'_', '.' and '-' (not first), up to 128 characters"
        )
    return key


def obsm_path(archive_dir: str | os.PathLike, key: str) -> Path:
    return Path(archive_dir) / OBSM_DIR / f"{check_key(key)}.npy"


def check_dtype(dtype, where: str) -> np.dtype:
    """The little-endian form of a storable dtype; anything but numbers and booleans raises."""
    dt = np.dtype(dtype)
    if dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None:
        raise ValueError(f"{where}: dtype {dt} cannot be stored as an obsm array; expected numbers or booleans")
    return dt.newbyteorder("<")


@dataclass(frozen=True)
class ObsmTarget:
    """One obsm file being written: rows go to ``offset + row * width * itemsize``. Picklable, so a
    worker process writes its own rows."""

    path: Path
    offset: int
    dtype: str
    n_rows: int
    width: int

    def write(self, row0: int, block: np.ndarray) -> None:
        """Write rows ``[row0, row0 + len(block))``, cast to the file's dtype."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.width or not 0 <= row0 <= self.n_rows - len(block):
            raise ValueError(
                f"{self.path.name}: rows {row0} to {row0 + len(block)} of width "
                f"{block.shape[1] if block.ndim == 2 else block.shape} do not fit its ({self.n_rows}, {self.width}) array"
            )
        dt = np.dtype(self.dtype)
        if block.dtype.kind == "f" and dt.kind in "iub" and not np.isfinite(block).all():
            raise ValueError(f"{self.path.name}: NaN or infinity cannot be stored in its {dt} rows")
        data = memoryview(np.ascontiguousarray(block, dtype=dt)).cast("B")
        pos = self.offset + row0 * self.width * dt.itemsize
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while data:  # pwrite may write less than asked
                n = os.pwrite(fd, data, pos)
                data, pos = data[n:], pos + n
        finally:
            os.close(fd)

    def sync(self) -> None:
        """Flush the file to disk (the writer calls it once, at commit)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fill(self, row0: int, n: int) -> None:
        """Rows ``[row0, row0 + n)`` of NaN: an input that lacks this key."""
        if np.dtype(self.dtype).kind != "f":
            raise ValueError(f"{self.path.name}: NaN or infinity cannot be stored in its {np.dtype(self.dtype)} rows")
        step = max(1, _FILL_BYTES // max(1, self.width * np.dtype(self.dtype).itemsize))
        for r in range(row0, row0 + n, step):
            self.write(r, np.full((min(step, row0 + n - r), self.width), np.nan, dtype=self.dtype))


def create_obsm(archive_dir: str | os.PathLike, key: str, dtype, n_rows: int, width: int) -> ObsmTarget:
    """Create ``obsm/<key>.npy`` at its final size (unwritten rows read as zeros); returns its target."""
    path = obsm_path(archive_dir, key)
    dt = check_dtype(dtype, str(path))
    path.parent.mkdir(exist_ok=True)
    header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": (int(n_rows), int(width))}
    with open(path, "xb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(n_rows) * int(width) * dt.itemsize)
    return ObsmTarget(path, offset, dt.str, int(n_rows), int(width))


def obsm_keys(archive_dir: str | os.PathLike) -> list[str]:
    """Keys stored with the archive (the names of its ``obsm/*.npy`` files), sorted."""
    d = Path(archive_dir) / OBSM_DIR
    if not d.is_dir():
        return []
    return sorted(p.name[:-4] for p in d.iterdir() if p.name.endswith(".npy") and _KEY_RE.match(p.name[:-4]))


def _checked_header(path: Path, n_rows: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an obsm file, checked against the archive's rows."""
    shape, fortran, dtype, offset = npy_header(path)  # the size after the header is checked there
    if fortran or len(shape) != 2 or dtype.kind not in _KINDS or dtype.fields is not None:
        layout = "Fortran-order " if fortran else ""
        raise ArchiveError(f"{path} holds a {layout}{shape} {dtype} array; expected a C-order (rows, width) array of numbers")
    if shape[0] != n_rows:
        raise ArchiveError(f"{path} has {shape[0]} rows but the archive has {n_rows}")
    return shape, dtype, offset


def open_obsm(archive_dir: str | os.PathLike, key: str, n_rows: int) -> np.ndarray:
    """The ``(n_rows, width)`` array of ``key``, memory-mapped read-only; its header and size are
    checked against the archive's ``n_rows`` first (``ArchiveError`` naming the file)."""
    path = obsm_path(archive_dir, key)
    if not path.is_file():
        have = obsm_keys(archive_dir)
        raise KeyError(f"{archive_dir} has no obsm array {key!r}; it has {have or 'none'}")
    shape, dtype, offset = _checked_header(path, n_rows)
    if not math.prod(shape):
        return np.empty(shape, dtype)
    with parsing(path, "obsm array"):
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def obsm_outline(archive_dir: str | os.PathLike, n_rows: int) -> dict[str, tuple[str, int] | None]:
    """``(dtype, width)`` of each stored key from its header alone; None for a damaged file."""
    out = {}
    for key in obsm_keys(archive_dir):
        try:
            shape, dtype, _ = _checked_header(obsm_path(archive_dir, key), n_rows)
            out[key] = (dtype.name, int(shape[1]))
        except ArchiveError:
            out[key] = None
    return out


def obsm_problems(archive_dir: str | os.PathLike, n_rows: int | None) -> list[str]:
    """One line per damaged or foreign file under ``obsm/`` (for validate); [] when all are sound."""
    d = Path(archive_dir) / OBSM_DIR
    if not d.exists():
        return []
    if not d.is_dir():
        return [f"{d} is not a directory; obsm arrays are stored as {OBSM_DIR}/<key>.npy"]
    problems = []
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or p.name.endswith(".partial"):
            continue  # files in flight: validate reports them as leftovers
        if not (p.is_file() and p.name.endswith(".npy") and _KEY_RE.match(p.name[:-4])):
            problems.append(f"{p} is not an obsm array file ({OBSM_DIR}/<key>.npy).")
            continue
        try:
            if n_rows is None:
                npy_header(p)
            else:
                _checked_header(p, n_rows)
        except ArchiveError as e:
            problems.append(str(e))
    return problems


def merge_obsm(sources: Sequence[tuple[str, dict[str, ObsmSpec]]], keys: Sequence[str]) -> dict[str, ObsmSpec]:
    """The stored dtype and width of each key over many inputs, concatenated in row order.

    ``sources`` pairs each input's name with its keys' ``(dtype, width)``. An input without a key
    contributes NaN rows, so the key becomes floating point (integers and booleans: float64).
    Widths must agree; a key no input holds raises. Both errors (``ValueError``) name the inputs.
    """
    out = {}
    for key in keys:
        have = [(name, specs[key]) for name, specs in sources if key in specs]
        if not have:
            listed = "; ".join(f"{name}: {sorted(specs) or 'none'}" for name, specs in sources)
            raise ValueError(f"obsm key {key!r} is in none of the inputs (their obsm keys: {listed})")
        widths = {w for _, (_, w) in have}
        if len(widths) > 1:
            listed = ", ".join(f"{name} ({w})" for name, (_, w) in have)
            raise ValueError(f"obsm key {key!r} has different widths across inputs: {listed}")
        dtype = np.result_type(*(dt for _, (dt, _) in have))
        if len(have) < len(sources) and dtype.kind != "f":
            dtype = np.dtype(np.float64)  # NaN rows for the inputs without the key
        out[key] = (check_dtype(dtype, f"obsm key {key!r}"), widths.pop())
    return out
