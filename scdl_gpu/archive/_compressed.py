"""Compressed chunks: upstream's chunked layout with each chunk's values and columns stored as
independently compressed frames (codecs in :mod:`._codecs`), decoded into a bounded cache.

Layout (``header.sch``: backend ``COMPRESSED_CHUNKED_V0``, :class:`ChunkedInfo`, global lengths)::

    scdl_gpu_compression.json   {"format": "scdl_gpu-compressed", "version": 1, "frame_bytes": F,
                                 "arrays": {"data.npy": PIPELINE, "col_ptr.npy": PIPELINE}}
    chunk_00000/row_ptr.npy     raw, starts at 0, as in the chunked layout (opening builds the
                                global row pointers from these, so every planner works unchanged)
    chunk_00000/data.frames     the chunk's values: frames of F uncompressed bytes, back to back
    chunk_00000/col_ptr.frames  its columns, the same way
    chunk_00000/frames.json     {"data.npy": {"nbytes": N, "crc32c": "8 hex", "frames": [sizes]}, ...}

``crc32c`` is the CRC-32C of the UNCOMPRESSED array; every decode checks it (hardware CRC costs
a few percent of a decode) besides every frame's size, so a flipped byte anywhere is an
``ArchiveError`` naming the file, never wrong values. Frames are independent: the CPU decodes a
chunk's frames on several threads (numcodecs releases the GIL) and a GPU reader can hand them to
nvCOMP's batched decoders as they are.

bionemo-scdl (0.1.3 and main) cannot parse backend 1001: its ``load`` warns that the header could
not be read and then raises ``FileNotFoundError`` for the missing root ``data.npy``; its chunked
reader (PR #1424) likewise never finds ``chunk_00000/data.npy``. It refuses; it never misreads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np

from ..errors import ArchiveError, ArchiveNotFoundError
from ._chunked import ChunkedStorage
from ._codecs import CODECS, DEFAULT_CODEC, DEFAULT_FRAME_BYTES, Pipeline, default_pipeline
from ._constants import CHUNK_DIR_FORMAT, COMPRESSION_FILE, Backend, FileNames
from ._spare import SpareBlocks
from ._header import ChunkedInfo, SCDLHeader
from ._parse import read_json
from ._readahead import read_ahead_later
from ._partition import _write_chunks, check_chunk_size, rewrite_rows

__all__ = ["COMPRESSION_FILE", "DEFAULT_CACHE_BYTES", "DEFAULT_COMPRESSED_CHUNK", "ChunkCache", "CompressedStorage",
           "FrameLayout", "compress_archive", "compressed_storage", "frames_file"]

log = logging.getLogger(__name__)

FRAMES_INDEX = "frames.json"
_FORMAT, _VERSION = "scdl_gpu-compressed", 1
#: Rows per chunk: the unit of decoding and of block order. Small enough that a 4,096-row batch in
#: block order mixes 4 chunks, large enough that 100M cells make ~100k chunk directories.
DEFAULT_COMPRESSED_CHUNK = 1024
# Decoded chunks kept per open archive (values + columns). Block order uses each chunk once an epoch and
# random order over an archive much larger than this misses anyway, so the cache mostly serves chunks
# shared by nearby batches; a smaller one also gives evicted memory back to decoding sooner (fresh memory
# costs a page fault per 4 KiB): the first 24 block batches of 4,096 ran 15% faster than at 512 MiB.
DEFAULT_CACHE_BYTES = 128 << 20
_MEMBERS = (FileNames.DATA, FileNames.COLPTR)


def frames_file(member: FileNames) -> str:
    """``data.frames`` / ``col_ptr.frames``: a chunk's compressed values / columns."""
    return member.value.removesuffix(".npy") + ".frames"


class ChunkCache:
    """Decoded chunks, least recently used first out, at most ``limit`` bytes (an entry larger than
    the limit is handed back but not kept). Thread-safe; decoding happens outside the lock."""

    def __init__(self, limit: int = DEFAULT_CACHE_BYTES, on_evict=None) -> None:
        self._items: OrderedDict = OrderedDict()
        self.on_evict = on_evict  #: called with each evicted value (under the cache's lock: keep it quick)
        self._lock = threading.Lock()
        self.nbytes = self.hits = self.misses = 0
        self.limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, n: int) -> None:
        if int(n) < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {n}")
        with self._lock:
            self._limit = int(n)
            self._evict()

    def get(self, key, count: bool = True):
        """The value cached under ``key`` or None; ``count=False``: a peek that neither counts nor
        refreshes the entry."""
        with self._lock:
            item = self._items.get(key)
            if not count:
                return None if item is None else item[0]
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, value, nbytes: int) -> None:
        with self._lock:
            if nbytes > self._limit or key in self._items:
                return
            self._items[key] = (value, nbytes)
            self.nbytes += nbytes
            self._evict()

    def _evict(self) -> None:
        while self.nbytes > self._limit and self._items:
            _, (value, n) = self._items.popitem(last=False)
            self.nbytes -= n
            if self.on_evict is not None:
                self.on_evict(value)

    def __len__(self) -> int:
        return len(self._items)


_pool: list = [None, None]  # (pid, executor): a forked child (DataLoader worker) makes its own


def _executor() -> ThreadPoolExecutor:
    if _pool[0] != os.getpid():
        _pool[:] = [os.getpid(), ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                                     thread_name_prefix="scdl-decode")]
    return _pool[1]


def _run(jobs: list, fn) -> list:
    if len(jobs) < 2:
        return [fn(j) for j in jobs]
    return list(_executor().map(fn, jobs))


class _Decoded(Sequence):
    """The chunks' decoded values (``which`` 0) or columns (1), decoded on first use: what
    :class:`ChunkedVector` reads as its pieces."""

    def __init__(self, storage: "CompressedStorage", which: int) -> None:
        self._storage, self._which = storage, which

    def __len__(self) -> int:
        return self._storage.num_chunks

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(f"chunk {k} out of range for {len(self)} chunks")
        return self._storage.decoded(k % len(self))[self._which]


@dataclass(frozen=True)
class FrameLayout:
    """One array of one chunk as stored: its file (``blob``: mapped), the frames' compressed ``sizes`` in
    file order, ``n`` items of ``dtype`` decoded, ``per_frame`` items a frame (the last one may hold
    fewer), the CRC-32C of the decoded array (8 hex digits) and the pipeline that wrote it."""

    path: Path
    blob: object
    sizes: list
    n: int
    dtype: np.dtype
    per_frame: int
    crc32c: str
    pipeline: Pipeline


@dataclass
class CompressedStorage(ChunkedStorage):
    """A compressed chunked archive: ``data``/``col_ptr`` decode chunks on first use, through ``cache``."""

    dtypes: dict = field(default_factory=dict)
    pipelines: dict = field(default_factory=dict)  # member value -> Pipeline
    frame_bytes: int = DEFAULT_FRAME_BYTES
    cache: ChunkCache = field(default_factory=ChunkCache)
    spare: SpareBlocks = field(default_factory=SpareBlocks)  # evicted chunks' memory, decoded into again
    compressed = True

    def __post_init__(self) -> None:
        self.cache.on_evict = self.spare.give
        self._lock = threading.RLock()  # a future already done runs its callback in the submitting thread
        self._ahead: dict = {}  # chunk -> its (values, columns) futures, while they decode
        _open_storages[id(self)] = self

    def file(self, chunk: int, member: FileNames) -> Path:
        return self.dir(chunk) / frames_file(member)

    def chunk_nbytes(self, chunk: int) -> int:
        """Bytes of chunk ``chunk`` decoded (values and columns)."""
        n = int(self.value_offsets[chunk + 1] - self.value_offsets[chunk])
        return n * sum(np.dtype(self.dtypes[m.value]).itemsize for m in _MEMBERS)

    def decoded(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk ``chunk``'s ``(values, columns)``, read-only, from the cache or decoded now."""
        return self.decode_many([chunk])[chunk]

    def will_need(self, chunks) -> None:
        """Start decoding those of ``chunks`` that are neither cached nor already on their way, on
        the decode pool, while the caller goes on (a loader hints the next batch's rows while it
        builds this one): their files are read and decoded there, and a later :meth:`decode_many`
        takes them as they finish. At most the cache's size is decoded ahead; the error of a
        damaged chunk is raised by the call that needs it."""
        budget, started = self.cache.limit, []
        with self._lock:
            budget -= sum(self.chunk_nbytes(k) for k in self._ahead)
            for k in dict.fromkeys(map(int, chunks)):
                n = self.chunk_nbytes(k) if 0 <= k < self.num_chunks else 0
                if not n or k in self._ahead or n > budget or self.cache.get(k, count=False) is not None:
                    continue
                budget -= n
                started.append(k)
        self.read_ahead(started)  # the disk starts now; the pool decodes them after the chunks queued before
        with self._lock:
            for k in started:
                if k not in self._ahead and self.cache.get(k, count=False) is None:
                    self._ahead[k] = self._submit(k)

    def read_ahead(self, chunks) -> None:
        """Start reading the compressed files of ``chunks`` into the page cache, on a thread of its own."""
        read_ahead_later(self.file(k, member) for k in map(int, chunks) for member in _MEMBERS)

    def decode_many(self, chunks) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``{chunk: (values, columns)}``: from the cache, from decoding already under way
        (:meth:`will_need`), or decoded now, every array of the chunks missing on the pool at once.
        Raises ``ArchiveError`` naming the file of a damaged chunk."""
        out, waits = {}, {}
        for k in dict.fromkeys(map(int, chunks)):
            hit = self.cache.get(k)
            if hit is not None:
                out[k] = hit
                continue
            with self._lock:
                ahead = self._ahead.get(k)
                if ahead is None:  # registered, so a read-ahead hint meanwhile does not decode it twice
                    ahead = self._ahead[k] = self._submit(k)
            waits[k] = ahead
        for k, (values, columns) in waits.items():
            pair = out[k] = (values.result(), columns.result())  # a damaged chunk raises here
            self.cache.put(k, pair, self.chunk_nbytes(k))
        return out

    def _submit(self, k: int):
        """Chunk ``k``'s values and columns decoding on the pool: two futures. Once both are done the
        chunk leaves the table of chunks under way and, decoded, enters the cache."""
        pool = _executor()
        pair = tuple(pool.submit(self._decode_array, k, member) for member in _MEMBERS)
        # The callbacks stay on the futures: they must not keep the futures (and so the decoded
        # arrays) alive through a reference cycle, or evicted memory could not be reused.
        holder = [pair]

        def finished(_) -> None:
            with self._lock:
                both = holder[0]
                if both is None or not all(f.done() for f in both):
                    return
                holder[0] = None
                if self._ahead.get(k) is both:
                    del self._ahead[k]
            if not any(f.cancelled() or f.exception() is not None for f in both):
                self.cache.put(k, (both[0].result(), both[1].result()), self.chunk_nbytes(k))

        for f in pair:
            f.add_done_callback(finished)
        return pair

    @property
    def decoding(self) -> bool:
        """Whether chunks are being decoded on the pool now."""
        with self._lock:
            return bool(self._ahead)

    def _decode_array(self, k: int, member: FileNames) -> np.ndarray:
        """One array of chunk ``k``, decoded frame by frame and checked against its CRC-32C as the
        frames come out (while they are still in cache), read-only."""
        entry = self._index(k)[member.value]
        arr, jobs = self._frames(k, member, entry)
        crc = 0
        for job in jobs:
            _decode_frame(job)
            crc = google_crc32c.extend(crc, _readonly_bytes(job[2]))
        if f"{crc:08x}" != entry["crc32c"]:
            raise ArchiveError(f"{self.file(k, member)}: the decoded {member.value} of chunk {k} fails its "
                               f"CRC-32C ({entry['crc32c']} in {self.dir(k) / FRAMES_INDEX}); the chunk is damaged")
        arr.setflags(write=False)
        return arr

    def frame_layout(self, k: int, member: FileNames, entry: dict | None = None) -> FrameLayout:
        """Where the frames of one array of chunk ``k`` are and what they decode to, with the file mapped,
        every size checked against the chunk's frame index (``entry``: its item, read when None) and row
        pointers before anything is decoded: what a decoder on another device needs."""
        entry = self._index(k)[member.value] if entry is None else entry
        path = self.file(k, member)
        dt = np.dtype(self.dtypes[member.value])
        n = int(self.value_offsets[k + 1] - self.value_offsets[k])
        if entry["nbytes"] != n * dt.itemsize:
            raise ArchiveError(f"{self.dir(k) / FRAMES_INDEX}: {member.value} is {entry['nbytes']} bytes decoded; "
                               f"the chunk's row_ptr.npy ends at {n} values ({n * dt.itemsize} bytes)")
        per_frame = self.frame_bytes // dt.itemsize
        sizes = entry["frames"]
        if len(sizes) != -(-n // per_frame):
            raise ArchiveError(f"{self.dir(k) / FRAMES_INDEX}: {member.value} lists {len(sizes)} frames; "
                               f"{n} values in frames of {per_frame} make {-(-n // per_frame)}")
        blob = _map_file(path, self.dir(k) / FRAMES_INDEX)
        if len(blob) != sum(sizes):
            raise ArchiveError(f"{path} is {len(blob)} bytes; its {len(sizes)} frames add up to {sum(sizes)} "
                               "(truncated or extended)")
        return FrameLayout(path, blob, sizes, n, dt, per_frame, entry["crc32c"], self.pipelines[member.value])

    def _frames(self, k: int, member: FileNames, entry: dict):
        """``(output array, decode jobs)`` of one array of chunk ``k``, checked (:meth:`frame_layout`)."""
        lay = self.frame_layout(k, member, entry)
        path, blob, sizes, n, dt, per_frame = lay.path, lay.blob, lay.sizes, lay.n, lay.dtype, lay.per_frame
        out = self.spare.empty(n, dt)
        pipe, view, jobs, at = self.pipelines[member.value], memoryview(blob), [], 0
        for j, size in enumerate(sizes):
            jobs.append((pipe, view[at : at + size], out[j * per_frame : (j + 1) * per_frame], path, j))
            at += size
        return out, jobs

    def _index(self, k: int) -> dict:
        path = self.dir(k) / FRAMES_INDEX
        doc = read_json(path)
        ok = isinstance(doc, dict)
        for member in _MEMBERS:
            e = doc.get(member.value) if ok else None
            ok = (isinstance(e, dict) and _is_int(e.get("nbytes")) and isinstance(e.get("crc32c"), str)
                  and isinstance(e.get("frames"), list) and all(_is_int(s) and s > 0 for s in e["frames"]))
            if not ok:
                break
        if not ok:
            raise ArchiveError(f"{path}: expected {{'data.npy'|'col_ptr.npy': {{'nbytes', 'crc32c', 'frames'}}}}; "
                               "the chunk's frame index is damaged")
        return doc


_open_storages: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker) inherits futures its own pool will never run, and locks
    that a thread of the parent may have held at the fork: each open storage starts afresh."""
    for storage in list(_open_storages.values()):
        storage._lock, storage._ahead = threading.RLock(), {}
        storage.cache._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _map_file(path: Path, index: Path):
    """The file's bytes, mapped read-only (a read copied them: measured 20 ms of a 140 ms batch)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if not size:
                return b""
            blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise ArchiveNotFoundError(f"{path} is missing; {index} lists it") from None
    # Start reading the whole file now, in the background: every file of a batch's chunks is mapped
    # before any frame is decoded, so the disk works on all of them while the first ones decode
    # (mapped pages otherwise come in one fault at a time, with little read-ahead).
    with contextlib.suppress(OSError, AttributeError):
        blob.madvise(mmap.MADV_WILLNEED)
    return blob


def _crc(arr: np.ndarray) -> str:
    """CRC-32C of an array's bytes, as the manifest writes checksums (8 hex digits)."""
    return f"{google_crc32c.value(_readonly_bytes(arr)):08x}"


def _readonly_bytes(arr: np.ndarray) -> np.ndarray:
    """The array's bytes as a read-only view: the CRC extension takes those without a copy."""
    view = np.ascontiguousarray(arr).view(np.uint8)
    view.setflags(write=False)
    return view


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _decode_frame(job) -> None:
    pipe, frame, out, path, j = job
    try:
        pipe.decode_into(frame, out)
    except Exception as e:  # a codec's error on damaged bytes (RuntimeError, ValueError, ...)
        raise ArchiveError(f"{path}: frame {j} does not decode ({type(e).__name__}: {e}); the chunk is damaged") from e


def compressed_storage(path: Path, info: ChunkedInfo, row_ptrs: list, offsets: np.ndarray, dtypes: dict) -> CompressedStorage:
    """The storage of a compressed archive whose chunks' row pointers were opened and checked."""
    cpath = path / COMPRESSION_FILE
    doc = read_json(cpath)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        raise ArchiveError(f"{cpath}: expected format {_FORMAT!r} version {_VERSION}")
    fb, arrays = doc.get("frame_bytes"), doc.get("arrays")
    if not _is_int(fb) or fb < 8 or fb % 8 or not isinstance(arrays, dict):
        raise ArchiveError(f"{cpath}: frame_bytes must be a positive multiple of 8 and arrays a mapping, got "
                           f"{fb!r} and {type(arrays).__name__}")
    pipes = {}
    for member in _MEMBERS:
        if member.value not in arrays:
            raise ArchiveError(f"{cpath} names no codec for {member.value}")
        pipes[member.value] = Pipeline.from_config(arrays[member.value], f"{cpath} ({member.value})")
    n = info.num_chunks
    storage = CompressedStorage(path, info, [], row_ptrs, [], offsets, dtypes=dict(dtypes), pipelines=pipes,
                                frame_bytes=fb)
    storage.data, storage.col_ptr = _Decoded(storage, 0), _Decoded(storage, 1)
    root, names = str(path), [frames_file(m) for m in _MEMBERS]
    for k in range(n):  # a missing file is found at open, as a chunked archive's is (strings: ~10^5 chunks)
        d = os.path.join(root, CHUNK_DIR_FORMAT.format(k))
        for name in names:
            if not os.path.isfile(os.path.join(d, name)):
                raise ArchiveNotFoundError(f"{Path(d) / name} is missing; {path / 'header.sch'} declares chunk {k}")
    return storage


def compress_archive(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    codec: str = DEFAULT_CODEC,
    chunk_size: int = DEFAULT_COMPRESSED_CHUNK,
    level: int | None = None,
    frame_bytes: int = DEFAULT_FRAME_BYTES,
    delete_original: bool = False,
) -> SCDLHeader:
    """Write the archive at ``input_path`` (flat, chunked or compressed) as a compressed archive at
    ``output_path`` (``None``: in place), atomically; returns the new header.

    ``codec`` is one of :data:`CODECS` (``level``: zstd -5..22, default 1; zlib 0..9, default 6);
    columns are delta-coded and byte-shuffled, values byte-shuffled (see :mod:`._codecs`).
    """
    chunk_size = check_chunk_size(chunk_size)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if isinstance(frame_bytes, bool) or int(frame_bytes) < 8 or int(frame_bytes) % 8:
        raise ValueError(f"frame_bytes must be a positive multiple of 8, got {frame_bytes}")

    def write(arrays, tmp: Path) -> SCDLHeader:
        pipes = {m.value: default_pipeline(codec, arrays.dtypes[m.value], m is FileNames.COLPTR, level) for m in _MEMBERS}
        doc = {"format": _FORMAT, "version": _VERSION, "frame_bytes": int(frame_bytes),
               "arrays": {name: p.config() for name, p in pipes.items()}}
        _write_json(tmp / COMPRESSION_FILE, doc)
        index: dict = {}

        def write_member(d: Path, member: FileNames, source, a: int, b: int) -> None:
            arr = np.ascontiguousarray(source[a:b], dtype=np.dtype(arrays.dtypes[member.value]).newbyteorder("<"))
            per = int(frame_bytes) // arr.itemsize
            frames = _run([(pipes[member.value], arr[s : s + per]) for s in range(0, len(arr), per)], _encode_frame)
            with open(d / frames_file(member), "wb") as f:
                for fr in frames:
                    f.write(fr)
                f.flush()
                os.fsync(f.fileno())
            entry = index.setdefault(d, {})
            entry[member.value] = {"nbytes": arr.nbytes, "crc32c": _crc(arr),
                                   "frames": [len(fr) for fr in frames]}
            if len(entry) == len(_MEMBERS):
                _write_json(d / FRAMES_INDEX, index.pop(d))

        return _write_chunks(arrays, tmp, chunk_size, write_member, Backend.COMPRESSED_CHUNKED_V0)

    header = rewrite_rows(input_path, output_path, write, delete_original, omit={COMPRESSION_FILE})
    log.info("%s: %d rows compressed (%s) in %d chunks of %d", output_path or input_path,
             header.chunked_info.total_rows, codec, header.chunked_info.num_chunks, chunk_size)
    return header


def _encode_frame(job) -> bytes:
    pipe, a = job
    return pipe.encode(a)


def _write_json(path: Path, doc) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
