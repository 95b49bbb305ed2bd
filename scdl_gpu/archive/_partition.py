"""Write a flat archive's rows as upstream's chunked layout (``partition_scdl``), atomically.

The chunked archive is built in a hidden partial directory beside its destination: each chunk's
arrays streamed from the source's maps, every other file of the source (metadata, feature
indices, neighbor arrays, sidecars) hard-linked (copied across filesystems), a header with the
source's global lengths plus :class:`ChunkedInfo`, the checksum manifest. Then it is renamed into
place; the source is deleted (``delete_original``) only after that. In place (destination = source)
the chunked archive is exchanged with the flat one in one rename.
"""

from __future__ import annotations

import logging
import operator
import os
from pathlib import Path

import numpy as np

from ._atomic import _link_tree, exchange, new_partial_dir, remove_tree, same_directory
from ._cast import archive_header
from ._chunked import chunk_dir
from ._checksums import write_manifest
from ._concat import DEFAULT_CHUNK
from ._constants import CHUNK_DIR_FORMAT, Backend, FileNames
from ._header import ChunkedInfo, SCDLHeader
from ._memmap import fsync_dir, write_raw
from ._reader import ArchiveArrays, open_arrays
from ..errors import ArchiveError

__all__ = ["DEFAULT_CHUNK_SIZE", "partition_archive", "partition_scdl", "rewrite_rows"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 100_000  #: rows per chunk (upstream's default)
_CSR = (FileNames.DATA, FileNames.ROWPTR, FileNames.COLPTR)


def check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool):
        raise TypeError("chunk_size must be an integer, got bool")
    n = operator.index(chunk_size)
    if n < 1:
        raise ValueError(f"chunk_size must be at least 1, got {n}")
    if n > 2**32 - 1:
        raise ValueError(f"chunk_size must fit the header's u32, got {n}")
    return n


def partition_archive(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    delete_original: bool = False,
) -> SCDLHeader:
    """Write the flat archive at ``input_path`` as a chunked archive at ``output_path`` (``None``:
    replace the input in place); returns the new header.

    Raises ``ValueError`` for a ``chunk_size`` below 1 or an input that is already chunked,
    ``FileExistsError`` when ``output_path`` exists (and is not the input).
    """
    chunk_size = check_chunk_size(chunk_size)

    def refuse_chunked(arrays: ArchiveArrays) -> None:
        if arrays.chunks is not None:
            raise ValueError(f"{input_path} is already chunked (chunks of {arrays.chunks.chunk_size} rows)")

    header = rewrite_rows(input_path, output_path, lambda arrays, tmp: _write_chunks(arrays, tmp, chunk_size),
                          delete_original, check=refuse_chunked)
    log.info("%s: %d rows in %d chunks of %d", output_path or input_path, header.chunked_info.total_rows,
             header.chunked_info.num_chunks, chunk_size)
    return header


def rewrite_rows(input_path, output_path, write, delete_original: bool = False, check=None, omit=()) -> SCDLHeader:
    """The archive at ``input_path`` with its CSR arrays rewritten by ``write(arrays, tmp)`` (which
    returns the new header) into ``output_path`` (``None``: in place), atomically: the other files
    hard-linked (but the top-level names in ``omit``), the checksum manifest written, then one
    rename. ``check(arrays)`` may refuse the input first."""
    src = Path(input_path)
    dst = src if output_path is None else Path(output_path)
    in_place = os.path.lexists(dst) and os.path.lexists(src) and os.path.samefile(src, dst)
    if os.path.lexists(dst) and not in_place:
        raise FileExistsError(f"Output path already exists: {dst}")
    arrays = open_arrays(src)
    if check is not None:
        check(arrays)
    chunk_dirs = {CHUNK_DIR_FORMAT.format(k) for k in range(arrays.chunks.num_chunks)} if arrays.chunks else set()
    fd = os.open(arrays.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the generation just opened
    try:
        tmp = new_partial_dir(dst)
        try:
            _link_tree(fd, tmp, {m.value for m in _CSR} | {FileNames.HEADER.value} | chunk_dirs | set(omit))
            header = write(arrays, tmp)
            write_manifest(tmp)
            fsync_dir(tmp)
            if not same_directory(src, fd):
                raise ArchiveError(f"{src} was replaced by another writer meanwhile; nothing was written")
            exchange(tmp, dst, replace=in_place)
        except BaseException:
            remove_tree(tmp)
            raise
    finally:
        os.close(fd)
    if delete_original and not in_place:
        del arrays
        remove_tree(src)
    return header


def partition_scdl(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    delete_original: bool = False,
) -> SCDLHeader:
    """bionemo-scdl's ``partition_scdl`` (``bionemo.scdl.scripts.partition_scdl``): the chunked
    archive at ``output_path``, which must not exist; returns its header."""
    if os.path.lexists(output_path):
        raise FileExistsError(f"Output path already exists: {output_path}")
    return partition_archive(input_path, output_path, chunk_size, delete_original)


def _write_chunks(arrays: ArchiveArrays, tmp: Path, chunk_size: int, write_member=None,
                  backend: Backend = Backend.CHUNKED_MEMMAP_V0) -> SCDLHeader:
    """Each chunk's ``row_ptr.npy`` (starting at 0), then its values and columns: raw, or through
    ``write_member(chunk dir, member, source array, first value, end)``; then the header."""
    n_rows, row_ptr = arrays.n_rows, arrays.row_ptr
    info = ChunkedInfo(chunk_size, -(-n_rows // chunk_size), n_rows)
    rp_dt = np.dtype(arrays.dtypes[FileNames.ROWPTR.value])
    for k in range(info.num_chunks):
        lo = k * chunk_size
        rp = np.asarray(row_ptr[lo : lo + info.rows_of(k) + 1])
        d = chunk_dir(tmp, k)
        d.mkdir()
        a, b = int(rp[0]), int(rp[-1])
        _write_file(d / FileNames.ROWPTR.value, [(rp - rp[0]).astype(rp_dt)])
        for member, source in ((FileNames.DATA, arrays.data), (FileNames.COLPTR, arrays.col_ptr)):
            if write_member is not None:
                write_member(d, member, source, a, b)
                continue
            _write_file(d / member.value, (source[s : min(s + DEFAULT_CHUNK, b)] for s in range(a, b, DEFAULT_CHUNK)))
    header = archive_header(tmp, arrays.dtypes, {FileNames.DATA.value: arrays.nnz,
                                                 FileNames.ROWPTR.value: n_rows + 1, FileNames.COLPTR.value: arrays.nnz})
    header.backend, header.chunked_info = backend, info
    header.save(tmp / FileNames.HEADER.value)
    return header


def _write_file(path: Path, blocks) -> None:
    with open(path, "wb") as f:
        for block in blocks:
            write_raw(f, block)
        f.flush()
        os.fsync(f.fileno())
