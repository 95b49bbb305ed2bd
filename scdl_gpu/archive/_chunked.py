"""Upstream's chunked storage of one archive (bionemo-framework PR #1424): the CSR rows split into
``chunk_{id:05d}/`` directories of ``chunk_size`` rows (the last holds the remainder), each with
its own headerless ``data.npy`` / ``row_ptr.npy`` / ``col_ptr.npy``; every chunk's ``row_ptr``
starts at 0. ``header.sch`` keeps the GLOBAL array lengths and carries :class:`ChunkedInfo`.

Global row ``r`` lives in chunk ``r // chunk_size`` at local row ``r % chunk_size``. Opening reads
every chunk's ``row_ptr`` once (8 bytes a row) to check it and to build the global row pointers,
whose value offsets number a virtual concatenation of the chunks' value files: so everything that
plans rows against ``row_ptr`` works unchanged, and only what copies values asks the chunk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArchiveError, ArchiveNotFoundError
from ._constants import CHUNK_DIR_FORMAT, COMPRESSION_FILE, Backend, FileNames
from ._header import ChunkedInfo, SCDLHeader
from ._memmap import check_map_room, map_values, raw_length
from ._parse import parsing

__all__ = ["ChunkedStorage", "ChunkedVector", "chunk_dir", "open_chunked", "value_files"]


def chunk_dir(root: Path, chunk: int) -> Path:
    return Path(root) / CHUNK_DIR_FORMAT.format(chunk)


def value_files(root: str | Path) -> list[Path]:
    """The files holding an archive's values and columns, in row order (each chunk's in turn for
    a chunked archive): what a reader of every row reads."""
    root = Path(root)
    chunks = sorted(root.glob("chunk_[0-9]*"))
    dirs = chunks if chunks and not (root / FileNames.DATA.value).exists() else [root]
    names = [m.value for m in (FileNames.DATA, FileNames.COLPTR)]
    if (root / COMPRESSION_FILE).exists():  # compressed chunks: what a reader reads is the frames
        names = [n.removesuffix(".npy") + ".frames" for n in names]
    return [d / n for d in dirs for n in names]


class ChunkedVector:
    """One logical 1-D array stored as consecutive pieces (each chunk's value or column file).

    Supports what readers of a flat array use: ``len``/``size``/``dtype``/``nbytes``, an element,
    a slice (a view of the piece when it lies inside one, as every row does; else a copy) and
    ``max()``. ``np.asarray`` concatenates the pieces (a full copy: scans should walk ``pieces``).
    """

    def __init__(self, pieces: list[np.ndarray], offsets: np.ndarray, dtype: np.dtype) -> None:
        self.pieces, self.offsets, self.dtype = pieces, offsets, np.dtype(dtype)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    shape = property(lambda self: (self.size,))
    ndim = 1
    itemsize = property(lambda self: self.dtype.itemsize)
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self) -> int:
        return self.size

    def _locate(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return k, i - int(self.offsets[k])

    def __getitem__(self, key):
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.size)
            if step != 1:
                raise IndexError("a chunked array takes slices with step 1 only")
            if hi <= lo:
                return np.empty(0, self.dtype)
            k, a = self._locate(lo)
            if hi <= int(self.offsets[k + 1]):
                return self.pieces[k][a : a + hi - lo]
            last, b = self._locate(hi - 1)
            parts = [self.pieces[k][a:]] + self.pieces[k + 1 : last] + [self.pieces[last][: b + 1]]
            return np.concatenate(parts)
        i = int(key) + (self.size if int(key) < 0 else 0)
        if not 0 <= i < self.size:
            raise IndexError(f"index {int(key)} out of range for {self.size} values")
        k, a = self._locate(i)
        return self.pieces[k][a]

    def max(self):
        tops = [p.max() for p in self.pieces if p.size]
        if not tops:
            raise ValueError("max() of an empty array")
        return max(tops)

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.pieces) if self.pieces else np.empty(0, self.dtype)
        return out.astype(dtype, copy=False) if dtype is not None else out


@dataclass
class ChunkedStorage:
    """Each chunk's mapped arrays; ``value_offsets[k]`` is chunk ``k``'s first value in the global
    (virtual) value numbering, so a global start ``s`` of a row of chunk ``k`` is local ``s - value_offsets[k]``."""

    path: Path
    info: ChunkedInfo
    data: list[np.ndarray]
    row_ptr: list[np.ndarray]
    col_ptr: list[np.ndarray]
    value_offsets: np.ndarray
    compressed = False  # a CompressedStorage decodes its chunks' arrays (see _compressed.py)

    @property
    def chunk_size(self) -> int:
        return self.info.chunk_size

    @property
    def num_chunks(self) -> int:
        return self.info.num_chunks

    def chunk_of(self, row: int) -> int:
        return int(row) // self.info.chunk_size

    def dir(self, chunk: int) -> Path:
        return chunk_dir(self.path, chunk)

    def file(self, chunk: int, member: FileNames) -> Path:
        """The file holding chunk ``chunk``'s values or columns (``member``)."""
        return self.dir(chunk) / member.value


def _open_chunk(root: Path, k: int, n_rows: int, dtypes: dict[str, str], values: bool = True):
    """Chunk ``k``'s arrays, checked: ``row_ptr`` has ``n_rows + 1`` entries, starts at 0, never
    decreases and ends at the length of the chunk's value and column files (not mapped, and
    ``None``, unless ``values``: a compressed chunk's are checked when decoded).

    Paths are joined as strings and the pointers read through one open file: an archive of 10^8
    rows has ~10^5 chunks, and pathlib's objects and a stat per check cost most of an open."""
    d = os.path.join(root, CHUNK_DIR_FORMAT.format(k))
    rp_path = os.path.join(d, FileNames.ROWPTR.value)
    rp_dt = np.dtype(dtypes[FileNames.ROWPTR.value])
    try:
        f = open(rp_path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        if not os.path.isdir(d):
            raise ArchiveNotFoundError(f"{d} is missing; {Path(root) / FileNames.HEADER.value} declares it") from None
        raise ArchiveNotFoundError(f"The mmap file at {rp_path} is missing") from None
    with f, parsing(rp_path):
        size = os.fstat(f.fileno()).st_size
        if size % rp_dt.itemsize:
            raise ArchiveError(f"{FileNames.ROWPTR.value} is {size} bytes, not a multiple of the {rp_dt.itemsize}-byte "
                               f"{rp_dt.name} items the header declares (truncated or mistyped file) in {d}")
        n = size // rp_dt.itemsize
        if n != n_rows + 1:
            raise ArchiveError(f"{rp_path} holds {n} row pointers; chunk {k} has {n_rows} rows (expected {n_rows + 1})")
        # read, not mapped: a chunk's pointers are small, and an archive of 10^8 rows has ~10^5 chunks,
        # more maps than the kernel allows one process by default (vm.max_map_count, 65,530)
        rp = np.fromfile(f, dtype=rp_dt, count=n)
    if len(rp) != n:
        raise ArchiveError(f"{rp_path} holds {len(rp)} row pointers, expected {n} (it changed while read)")
    rp.setflags(write=False)  # as a read-only map was
    if int(rp[0]) != 0:
        raise ArchiveError(f"{rp_path} starts at {int(rp[0])}, expected 0 (every chunk's row_ptr starts at 0)")
    if n > 1 and bool(np.any(rp[1:] < rp[:-1])):
        raise ArchiveError(f"{rp_path} decreases; row pointers never do (the chunk is damaged)")
    nnz = int(rp[-1])
    if not values:
        return rp, None, None
    data, cols = (map_values(Path(d) / m.value, dtypes[m.value], nnz, rp_path) for m in (FileNames.DATA, FileNames.COLPTR))
    return rp, data, cols


def open_chunked(path: Path, header: SCDLHeader, dtypes: dict[str, str]):
    """``(global row_ptr, data, col_ptr, storage)`` of the chunked archive at ``path``: the global
    row pointers in memory (the header's ``row_ptr`` dtype), ``data``/``col_ptr`` as
    :class:`ChunkedVector`. Every mismatch raises ``ArchiveError`` naming the file at fault."""
    path = Path(path)
    info = header.chunked_info
    hpath = path / FileNames.HEADER.value
    declared = {m: header.get_array(m.name).length for m in (FileNames.DATA, FileNames.ROWPTR, FileNames.COLPTR)}
    if declared[FileNames.ROWPTR] != info.total_rows + 1:
        raise ArchiveError(f"{hpath} describes {declared[FileNames.ROWPTR]} row pointers but its chunked info "
                           f"{info.total_rows} rows (expected {info.total_rows + 1})")
    expected = {CHUNK_DIR_FORMAT.format(k) for k in range(info.num_chunks)}
    extra = sorted(p.name for p in path.glob("chunk_*") if p.name not in expected)
    if extra:
        raise ArchiveError(f"{path / extra[0]} is not one of the {info.num_chunks} chunks {hpath} declares")
    compressed = header.backend is Backend.COMPRESSED_CHUNKED_V0
    root = str(path)
    if not compressed:  # each chunk's values and columns stay mapped (a compressed chunk's only while decoded)
        check_map_room(2 * info.num_chunks, f"{path} ({info.num_chunks:,} chunks, their values and columns each mapped)")
    chunks = [_open_chunk(root, k, info.rows_of(k), dtypes, not compressed) for k in range(info.num_chunks)]
    offsets = np.zeros(info.num_chunks + 1, np.int64)
    np.cumsum([int(c[0][-1]) for c in chunks], out=offsets[1:])
    nnz = int(offsets[-1])
    for member in (FileNames.DATA, FileNames.COLPTR):
        if declared[member] != nnz:
            raise ArchiveError(f"{hpath} says {member.name} has {declared[member]} values; its chunks hold {nnz}")
    rp_dt = np.dtype(dtypes[FileNames.ROWPTR.value])
    if nnz > np.iinfo(rp_dt).max:
        raise ArchiveError(f"{hpath}: {nnz} values do not fit the declared {rp_dt.name} row pointers")
    row_ptr = np.empty(info.total_rows + 1, rp_dt)
    row_ptr[0] = 0
    for k, (rp, _, _) in enumerate(chunks):
        lo = k * info.chunk_size
        row_ptr[lo + 1 : lo + len(rp)] = rp[1:] + rp_dt.type(offsets[k])
    if compressed:
        from ._compressed import compressed_storage  # it builds on this module

        storage = compressed_storage(path, info, [c[0] for c in chunks], offsets, dtypes)
    else:
        storage = ChunkedStorage(path, info, [c[1] for c in chunks], [c[0] for c in chunks], [c[2] for c in chunks], offsets)
    data = ChunkedVector(storage.data, offsets, dtypes[FileNames.DATA.value])
    cols = ChunkedVector(storage.col_ptr, offsets, dtypes[FileNames.COLPTR.value])
    return row_ptr, data, cols, storage
