"""``columns/``: an atlas-owned copy of a flat member's columns, already mapped onto the vocabulary.

Opt-in (``create_atlas(..., materialize=True)``): a batch then copies the member's columns as
they are instead of looking each one up in its map (the lookup held block order at about half
the speed of the same rows in one archive). Only members whose map keeps every gene in
increasing order qualify: their mapped rows keep the member's row pointers and sort order, so
the member's ``data.npy`` and ``row_ptr`` are read as before. The member is never rewritten.

The file is a ``.npy`` (one entry per member value, the smallest unsigned dtype that holds the
vocabulary's last column) named ``<member>-<crc of its map>.npy``, so a changed map never finds
an old copy under its name. Opening checks its length and dtype; ``scdl-gpu validate`` its crc32c.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import google_crc32c
import numpy as np

from ..archive._constants import FileNames
from ..archive._dtypes import smallest_uint_dtype
from ..archive._parse import npy_header, read_npy
from ..archive._reader import open_arrays
from ..errors import ArchiveError, ArchiveNotFoundError
from ._manifest import MANIFEST, Atlas, AtlasMember, replace_with

COLUMNS_DIR = "columns"
BLOCK_VALUES = 1 << 24  # values mapped at a time: 64 MiB of uint32 columns in, as much out


def eligible(member: AtlasMember) -> bool:
    """Whether the member's map keeps every gene in increasing order (then a mapped row is the
    member's row with other column numbers: same length, same order)."""
    return member.monotone and member.kept == member.n_genes


def write_mapped_columns(atlas_root: Path, member_path: Path, name: str, column_map: np.ndarray, n_values: int,
                         vocab_size: int) -> tuple[str, str, str]:
    """Write ``columns/<name>-<map crc>.npy``: the flat member's ``col_ptr.npy`` through
    ``column_map``, read and written in blocks; returns (relative path, crc32c, dtype).

    Raises ``ArchiveError`` naming the member's ``col_ptr.npy`` when a column is outside the map,
    ``ValueError`` when the member cannot be materialized (chunked, or a map that drops or
    reorders genes)."""
    cmap = np.ascontiguousarray(column_map, np.int32)
    if cmap.size and (cmap.min() < 0 or np.any(np.diff(cmap) <= 0)):
        raise ValueError(f"member {name!r}: its map drops or reorders genes; its columns are not materialized")
    arrays = open_arrays(member_path)
    if arrays.chunks is not None:
        raise ValueError(f"member {name!r} is chunked; only flat members' columns are materialized")
    cols = arrays.col_ptr
    if len(cols) != n_values:
        raise ArchiveError(f"{member_path / FileNames.COLPTR.value}: {len(cols)} columns, expected {n_values}")
    dtype = np.dtype(smallest_uint_dtype(max(vocab_size - 1, 0)))
    map_crc = f"{google_crc32c.value(cmap.tobytes()):08x}"
    rel = f"{COLUMNS_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{map_crc}.npy"
    target = Path(atlas_root) / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    crc = 0

    def write(f) -> None:
        nonlocal crc
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                    "fortran_order": False, "shape": (n_values,)})
        f.write(head.getvalue())
        crc = google_crc32c.value(head.getvalue())
        lookup = cmap.astype(dtype)
        for lo in range(0, n_values, BLOCK_VALUES):
            block = np.asarray(cols[lo : lo + BLOCK_VALUES])
            if block.size and int(block.max()) >= len(cmap):
                raise ArchiveError(f"{member_path / FileNames.COLPTR.value}: holds column {int(block.max())}, "
                                   f"expected < {len(cmap)} (the member's gene count); the archive is damaged")
            raw = lookup[block].tobytes()
            crc = google_crc32c.extend(crc, raw)
            f.write(raw)

    replace_with(target, write)
    return rel, f"{crc:08x}", dtype.name


def mapped_columns(atlas: Atlas, i: int) -> np.ndarray | None:
    """Member ``i``'s mapped columns, memory-mapped, or None when it has none. Checked cheaply
    (the file is there, its dtype and length are the recorded ones); the checksum is
    :func:`verify_mapped_columns`'s (``scdl-gpu validate``)."""
    m = atlas.members[i]
    if m.mapped_columns is None:
        return None
    path = atlas.root / m.mapped_columns
    try:
        shape, fortran, dtype, _ = npy_header(path)
    except ArchiveNotFoundError as e:
        raise ArchiveNotFoundError(f"{path}: the mapped columns of atlas member {m.name!r} are missing") from e
    if dtype != np.dtype(m.mapped_dtype) or dtype.kind != "u" or shape != (m.n_values,) or fortran:
        raise ArchiveError(f"{path}: expected {m.n_values} {m.mapped_dtype} mapped columns of member {m.name!r}, "
                           f"found {dtype} of shape {shape}")
    return read_npy(path, mmap=True) if m.n_values else np.zeros(0, dtype)


def verify_mapped_columns(atlas: Atlas, i: int) -> None:
    """Member ``i``'s mapped columns against their checksum in ``atlas.json`` (reads the whole file)."""
    if mapped_columns(atlas, i) is None:
        return
    m = atlas.members[i]
    path = atlas.root / m.mapped_columns
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 26):
            crc = google_crc32c.extend(crc, chunk)
    if f"{crc:08x}" != m.mapped_checksum:
        raise ArchiveError(f"{path}: the mapped columns of member {m.name!r} do not match their checksum in {MANIFEST}")


__all__ = ["COLUMNS_DIR", "eligible", "mapped_columns", "verify_mapped_columns", "write_mapped_columns"]
