"""A read-only archive on object storage (``s3://``, ``gs://``, ``http(s)://``, any fsspec URL).

Opening lists the archive once and mirrors it into a private local directory: every small file
(header, metadata, version, feature indices, checksums, ``row_ptr.npy``) is fetched whole, and
each value or column file (``data.npy``, ``col_ptr.npy``, each chunk's too) becomes a sparse
placeholder of its listed size that holds no bytes. The mirror then opens through
:func:`~scdl_gpu.archive._reader.open_arrays` unchanged, so every check a local archive gets (the
header, dtypes, sizes against ``row_ptr``, the feature indices, chunks) runs on the remote one too,
and its errors name the URL. The placeholders are never read: values and columns come from
:meth:`RemoteArchive.read_spans`, by byte range, through :class:`RangeCache`.

Arrays the loader reads only on request (``obsm/``, the neighbor graph's indices and values) are
placeholders too (an obsm file with its real ``.npy`` header) until :meth:`RemoteArchive.fetch`
brings them whole.

Credentials come from fsspec's usual sources (for S3, boto's chain: environment, config files,
instance roles) or ``storage_options``; messages name URLs only through :func:`~._urls.redact`.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import ArchiveError, ArchiveNotFoundError
from ._constants import FileNames
from ._obsm import OBSM_DIR
from ._reader import load_feature_index, open_arrays
from ._urls import is_url, redact, scrubber

__all__ = ["DEFAULT_BLOCK_BYTES", "DEFAULT_CACHE_BYTES", "NEIGHBOR_FILES", "RangeCache", "RemoteArchive", "RemoteVector",
           "naming_urls"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 256 << 20
DEFAULT_BLOCK_BYTES = 4 << 20
#: ranges closer than this are read as one: a request costs more than reading 64 KiB more
MERGE_GAP = 64 << 10
_NPY_HEADER_BYTES = (1 << 16) + 16  # the longest .npy header (format 1.0) with its magic
_VALUE_FILE = re.compile(r"^(chunk_\d+/)?(data|col_ptr)\.npy$")
#: the neighbor graph's large arrays, which the loader asks for whole with ``neighbors=True``
NEIGHBOR_FILES = (FileNames.NEIGHBOR_INDICES.value, FileNames.NEIGHBOR_VALUES.value)
_ON_REQUEST = re.compile(rf"^({'|'.join(map(re.escape, NEIGHBOR_FILES))}|{OBSM_DIR}/[^/]+\.npy)$")


class RangeCache:
    """Byte ranges of a few remote files, read through one LRU cache of ``block_bytes`` blocks that
    holds at most ``cache_bytes`` (``held_bytes`` counts them).

    :meth:`read` merges the requested ranges (overlapping, adjacent or within ``MERGE_GAP``) and
    fetches everything missing in one concurrent ``cat_ranges`` call. When the files fit in the
    cache, everything is read as whole blocks and kept: the first epoch fills the cache and later
    ones read nothing. Otherwise a merged range that fills at least half of the blocks it touches
    (long spans: sequential order, large blocks) is read as whole blocks, which are cached, and a
    shorter one (a random row) is read exactly and not cached, so a 4 KiB row never costs a 4 MiB
    read: such reads never fetch more than twice what they need.
    """

    def __init__(self, fs, paths: list[str], sizes: list[int], names: list[str], block_bytes: int = DEFAULT_BLOCK_BYTES,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, scrub=redact) -> None:
        if block_bytes < 1 or cache_bytes < 0:
            raise ValueError(f"block_bytes must be >= 1 and cache_bytes >= 0, got {block_bytes} and {cache_bytes}")
        self.fs, self.paths, self.sizes, self.names = fs, list(paths), [int(s) for s in sizes], list(names)
        self.block_bytes, self.cache_bytes = int(block_bytes), int(cache_bytes)
        self._scrub = scrub  # what takes secrets out of a library's error text
        # One number line for all files: file k at base[k], block-aligned and more than MERGE_GAP
        # after the previous file, so merged ranges and blocks never straddle two files.
        base, pos = [], 0
        for size in self.sizes:
            base.append(pos)
            pos = -(-(pos + size + MERGE_GAP + 1) // self.block_bytes) * self.block_bytes
        self.base = np.array(base, np.int64)
        self.fits = sum(self.sizes) <= self.cache_bytes  #: every file fits: read and keep whole blocks
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self.held_bytes = 0
        self.requests = 0  #: range requests issued
        self.fetched_bytes = 0  #: bytes those requests returned
        self._lock = threading.Lock()
        self._local: dict[int, np.ndarray] = {}  # the blocks of the read in progress

    def read(self, jobs) -> None:
        """Fill each job ``(file_ids, starts, lengths, out, out_pos)``: ``lengths[i]`` bytes of file
        ``file_ids[i]`` from ``starts[i]`` into the uint8 array ``out`` at ``out_pos[i]``."""
        outs = [job[3] for job in jobs]
        cols = [[np.asarray(a, np.int64) for a in (f, s, n, p)] + [np.full(len(f), j, np.int64)]
                for j, (f, s, n, _, p) in enumerate(jobs)]
        if not cols:
            return
        f, s, n, p, job = (np.concatenate(x) for x in zip(*cols))
        keep = n > 0
        f, s, n, p, job = f[keep], s[keep], n[keep], p[keep], job[keep]
        if not len(f):
            return
        vs = self.base[f] + s
        # runs: entries that continue the previous one in the file and in the same output
        new = np.ones(len(vs), bool)
        new[1:] = (job[1:] != job[:-1]) | (vs[1:] != vs[:-1] + n[:-1]) | (p[1:] != p[:-1] + n[:-1])
        heads = np.flatnonzero(new)
        last = np.append(heads[1:], len(vs)) - 1
        run_s, run_e, run_p, run_job = vs[heads], vs[last] + n[last], p[heads], job[heads]
        with self._lock:
            ivs, run_iv = _merge(run_s, run_e)
            sources = self._fetch(ivs)
            for r in range(len(run_s)):
                a, e = int(run_s[r]), int(run_e[r])
                o = int(run_p[r])
                self._copy(sources, int(run_iv[r]), ivs, a, e, outs[int(run_job[r])][o : o + e - a])
            self._local = {}

    def _fetch(self, ivs: np.ndarray) -> list:
        """For each merged range, its source: ``bytes`` read exactly, or ``None`` (read from blocks,
        all of which are then in ``self._local``)."""
        B = self.block_bytes
        sources: list = [None] * len(ivs)
        wanted: dict[int, None] = {}
        exact = []
        for i, (a, e) in enumerate(ivs.tolist()):
            blocks = range(a // B, (e - 1) // B + 1)
            if self.fits or 2 * (e - a) >= len(blocks) * B or all(b in self._blocks for b in blocks):
                wanted.update(dict.fromkeys(blocks))
            else:
                exact.append(i)
        missing = [b for b in wanted if b not in self._blocks]
        ranges = [(b * B, min((b + 1) * B, self._file_end(b * B))) for b in missing]
        ranges += [tuple(ivs[i].tolist()) for i in exact]
        got = self._cat(ranges)
        for i, buf in zip(exact, got[len(missing):]):
            sources[i] = np.frombuffer(buf, np.uint8)
        self._local = {b: self._blocks[b] for b in wanted if b in self._blocks}
        for b in self._local:
            self._blocks.move_to_end(b)
        for b, buf in zip(missing, got):
            block = np.frombuffer(buf, np.uint8)
            self._local[b] = block
            self._keep(b, block)
        return sources

    def _copy(self, sources, iv: int, ivs: np.ndarray, a: int, e: int, dst: np.ndarray) -> None:
        src = sources[iv]
        if src is not None:
            lo = int(ivs[iv, 0])
            dst[:] = src[a - lo : e - lo]
            return
        B = self.block_bytes
        while a < e:
            b, off = divmod(a, B)
            take = min(e - a, B - off)
            dst[: take] = self._local[b][off : off + take]
            dst, a = dst[take:], a + take

    def _keep(self, b: int, block: np.ndarray) -> None:
        if block.nbytes > self.cache_bytes:
            return
        while self.held_bytes + block.nbytes > self.cache_bytes:
            _, old = self._blocks.popitem(last=False)
            self.held_bytes -= old.nbytes
        self._blocks[b] = block
        self.held_bytes += block.nbytes

    def _file_of(self, v: int) -> int:
        return int(np.searchsorted(self.base, v, side="right")) - 1

    def _file_end(self, v: int) -> int:
        k = self._file_of(v)
        return int(self.base[k]) + self.sizes[k]

    def _cat(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each virtual range, in one concurrent call; a short or failed read raises
        ``ArchiveError`` naming the file (a truncated or replaced object)."""
        if not ranges:
            return []
        files = [self._file_of(a) for a, _ in ranges]
        starts = [a - int(self.base[k]) for (a, _), k in zip(ranges, files)]
        ends = [e - int(self.base[k]) for (_, e), k in zip(ranges, files)]
        try:
            got = self.fs.cat_ranges([self.paths[k] for k in files], starts, ends, on_error="return")
        except Exception as e:  # a failure of the whole call (network, credentials)
            raise ArchiveError(f"Cannot read {self.names[files[0]]}: {type(e).__name__}: {self._scrub(e)}") from None
        self.requests += len(ranges)
        for k, a, b, buf in zip(files, starts, ends, got):
            if isinstance(buf, BaseException):
                kind = ArchiveNotFoundError if isinstance(buf, FileNotFoundError) else ArchiveError
                raise kind(f"Cannot read bytes [{a}, {b}) of {self.names[k]}: {type(buf).__name__}: {self._scrub(buf)}") from None
            if len(buf) != b - a:
                raise ArchiveError(
                    f"{self.names[k]} returned {len(buf)} bytes at offset {a}, expected {b - a}: the object is shorter "
                    f"than the {self.sizes[k]} bytes listed when the archive was opened (truncated or replaced)")
            self.fetched_bytes += len(buf)
        return got


def _merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(intervals (m, 2), interval of each range)``: the ranges merged where they overlap or lie
    within ``MERGE_GAP`` of each other."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(len(s), bool)
    new[1:] = s[1:] > reach[:-1] + MERGE_GAP
    ids = np.cumsum(new) - 1
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], len(s)) - 1
    of_range = np.empty(len(s), np.int64)
    of_range[order] = ids
    return np.stack([s[heads], reach[tails]], axis=1), of_range


class RemoteArchive:
    """An SCDL archive at a URL, open read-only: what a batch reader needs, with values and columns
    read by byte ranges.

    Attributes: ``url``/``path`` (the URL, credentials redacted), ``local`` (the private mirror of
    its small files: feature indices, ``scdl_gpu.json``; removed on :meth:`close`), ``row_ptr``,
    ``dtypes``, ``n_rows``, ``nnz``, ``width`` (genes), ``header``, ``metadata``, ``data`` and
    ``col_ptr`` (:class:`RemoteVector`), ``cache`` (the :class:`RangeCache`).

    Parameters
    ----------
    url
        ``s3://bucket/prefix/archive``, ``gs://...``, ``https://...`` (a server that lists the
        directory), ``file:///...``: any fsspec URL of the archive directory.
    storage_options
        Passed to fsspec (``endpoint_url``, ``anon``, ``client_kwargs``, ...).
    cache_dir
        Where the mirror's temporary directory is made (default: the system's temporary directory).
    cache_bytes, block_bytes
        The range cache's bound and block size.

    Raises
    ------
    ArchiveNotFoundError
        Nothing at ``url``, or not an archive.
    ArchiveError
        A file is damaged or disagrees with the others (the message names its URL).
    ImportError
        fsspec, or the protocol's filesystem (``s3fs``, ``gcsfs``, ``aiohttp``), is not installed.
    """

    def __init__(self, url: str, storage_options: dict | None = None, *, cache_dir: str | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        if not is_url(url):
            raise ValueError(f"{redact(url)!r} is not a URL (scheme://...); open a local archive by its path")
        self.url = redact(url.rstrip("/"))
        self._scrub = scrubber(url)
        self.fs, root = _filesystem(url, storage_options or {}, self.url, self._scrub)
        self._root = root.rstrip("/")
        listing = self._list()
        self.local = Path(tempfile.mkdtemp(prefix="scdl-remote-", dir=cache_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.local), True)
        try:
            self._on_request = self._mirror(listing)
            with self.naming_url():
                arrays = open_arrays(self.local)
        except BaseException:
            self.close()
            raise
        self.header, self.metadata, self.dtypes = arrays.header, arrays.metadata, arrays.dtypes
        self.warnings = [self._outward(w) for w in arrays.warnings]
        self.n_rows, self.nnz = arrays.n_rows, len(arrays.data)
        self.row_ptr = np.asarray(arrays.row_ptr).view(np.ndarray)  # the mirror's map (or the chunks' sum)
        if arrays.chunks is None:
            dirs, self._offsets = [""], np.array([0, self.nnz], np.int64)
        else:
            dirs = [f"{arrays.chunks.dir(k).name}/" for k in range(arrays.chunks.num_chunks)]
            self._offsets = np.asarray(arrays.chunks.value_offsets, np.int64)
        del arrays  # the placeholders' maps: nothing may read them
        rels = [d + m.value for m in (FileNames.DATA, FileNames.COLPTR) for d in dirs]
        self.cache = RangeCache(self.fs, [f"{self._root}/{r}" for r in rels], [listing[r] for r in rels],
                                [f"{self.url}/{r}" for r in rels], block_bytes, cache_bytes, self._scrub)
        self.data = RemoteVector(self, 0, self.dtypes[FileNames.DATA.value])
        self.col_ptr = RemoteVector(self, 1, self.dtypes[FileNames.COLPTR.value])
        log.info("opened %s: %d rows, %d values; small files mirrored in %s", self.url, self.n_rows, self.nnz, self.local)

    path = property(lambda self: self.url)

    @cached_property
    def width(self) -> int:
        """Genes per row: the widest var block; without a var index, the largest column + 1 (a scan)."""
        dims = load_feature_index(self.local, FileNames.VAR_FEATURES).column_dims()
        if len(dims):
            return int(max(dims))
        return int(self.col_ptr.max()) + 1 if self.nnz else 0

    def read_spans(self, starts, lengths) -> tuple[np.ndarray, np.ndarray]:
        """``(data, cols)``: the values and columns of the spans ``[starts[i], starts[i] + lengths[i])``
        (in value numbers, as ``row_ptr`` gives them), concatenated in request order, in the
        archive's dtypes. A span of a chunked archive lies inside one chunk, as every row does.
        Spans outside the archive's values raise ``IndexError``."""
        return tuple(self._read((0, 1), starts, lengths))

    def _read(self, which: tuple[int, ...], starts, lengths) -> list[np.ndarray]:
        starts, lengths = (np.ascontiguousarray(a, np.int64) for a in (starts, lengths))
        if starts.ndim != 1 or starts.shape != lengths.shape:
            raise ValueError(f"starts and lengths must be 1-D arrays of one length, got {starts.shape} and {lengths.shape}")
        if self.cache is None:
            raise ValueError(f"{self.url} is closed")
        if len(starts) and ((lengths < 0).any() or (starts < 0).any() or (starts + lengths > self.nnz).any()):
            raise IndexError(f"spans outside the {self.nnz} values of {self.url}")
        out_pos = np.zeros(len(starts), np.int64)
        np.cumsum(lengths[:-1], out=out_pos[1:])
        piece = np.minimum(np.searchsorted(self._offsets, starts, side="right") - 1, len(self._offsets) - 2)
        if ((starts + lengths > self._offsets[piece + 1]) & (lengths > 0)).any():
            raise ValueError(f"a span crosses a chunk boundary of {self.url}")
        local = starts - self._offsets[piece]
        n_pieces = len(self._offsets) - 1
        outs, jobs = [], []
        for j in which:
            vec = (self.data, self.col_ptr)[j]
            out = np.empty(int(lengths.sum()), vec.dtype)
            size = vec.dtype.itemsize
            jobs.append((piece + j * n_pieces, local * size, lengths * size, out.view(np.uint8), out_pos * size))
            outs.append(out)
        self.cache.read(jobs)
        return outs

    def fetch(self, names) -> Path:
        """Bring the files ``names`` (paths inside the archive; obsm arrays, neighbor arrays) into the
        mirror whole, so readers of local archives can open them; returns the mirror's path."""
        todo = [n for n in names if n in self._on_request]
        if todo:
            self._get(todo, {n: self._on_request[n] for n in todo})
            for n in todo:
                del self._on_request[n]
        return self.local

    def close(self) -> None:
        """Remove the mirror; the archive cannot be read afterwards."""
        self.cache = None
        self._cleanup()

    def __enter__(self) -> "RemoteArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteArchive({self.url!r}, rows={getattr(self, 'n_rows', '?')})"

    # -- opening ------------------------------------------------------------------------------------
    def _list(self) -> dict[str, int]:
        """Every file of the archive: path inside it -> size in bytes."""
        try:
            self.fs.invalidate_cache(self._root)  # a listing cached by an earlier open may be stale
            found = self.fs.find(self._root, detail=True)
        except FileNotFoundError:
            found = {}
        except Exception as e:
            raise ArchiveError(f"Cannot list {self.url}: {type(e).__name__}: {self._scrub(e)}") from None
        files = {}
        for name, info in found.items():
            name = str(name)
            if name.rstrip("/") == self._root or info.get("type") == "directory" or name.endswith("/"):
                continue  # the URL names a file, or a store's zero-byte "folder/" marker
            rel = name[len(self._root) + 1 :] if name.startswith(self._root + "/") else ""
            parts = PurePosixPath(rel).parts
            if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
                raise ArchiveError(f"{self.url} lists {self._scrub(name)!r}, which is not a plain path inside the archive")
            files[rel] = int(info["size"])
        if FileNames.METADATA.value not in files:
            raise ArchiveNotFoundError(f"No SCDL archive at {self.url} (it holds no {FileNames.METADATA.value})")
        return files

    def _mirror(self, listing: dict[str, int]) -> dict[str, int]:
        """Fetch the small files, lay out placeholders for the rest; returns the on-request ones."""
        holes, whole = {}, {}
        for rel, size in listing.items():
            (self.local / rel).parent.mkdir(parents=True, exist_ok=True)
            if _VALUE_FILE.match(rel) or _ON_REQUEST.match(rel):
                with open(self.local / rel, "wb") as f:
                    f.truncate(size)  # sparse: a size and no bytes
                holes[rel] = size
            else:
                whole[rel] = size
        self._get(list(whole), whole)
        heads = [r for r in holes if r.startswith(OBSM_DIR + "/")]  # their outline is in the header
        cache = RangeCache(self.fs, [f"{self._root}/{r}" for r in heads], [holes[r] for r in heads],
                           [f"{self.url}/{r}" for r in heads], scrub=self._scrub)
        got = cache._cat([(int(cache.base[k]), int(cache.base[k]) + min(holes[r], _NPY_HEADER_BYTES))
                          for k, r in enumerate(heads)])
        for r, buf in zip(heads, got):
            with open(self.local / r, "r+b") as f:
                f.write(buf)
        log.debug("%s: %d small files fetched (%d bytes)", self.url, len(whole), sum(whole.values()))
        return {r: s for r, s in holes.items() if _ON_REQUEST.match(r)}

    def _get(self, rels: list[str], sizes: dict[str, int]) -> None:
        """Download ``rels`` whole into the mirror and check each against its listed size."""
        if not rels:
            return
        try:
            self.fs.get([f"{self._root}/{r}" for r in rels], [str(self.local / r) for r in rels])
        except FileNotFoundError as e:
            raise ArchiveNotFoundError(f"A file of {self.url} vanished while it was read: {self._scrub(e)}") from None
        except Exception as e:
            raise ArchiveError(f"Cannot fetch the files of {self.url}: {type(e).__name__}: {self._scrub(e)}") from None
        for r in rels:
            have = (self.local / r).stat().st_size
            if have != sizes[r]:
                raise ArchiveError(f"{self.url}/{r} returned {have} bytes, expected the {sizes[r]} it was listed with "
                                   "(truncated or replaced while read)")

    def _outward(self, text: str) -> str:
        return outward(text, {self.local: self.url})

    def naming_url(self):
        """Run readers of the mirror (``local``) inside: their errors and warnings name the URL."""
        return naming_urls({self.local: self.url})


def outward(text, mirrors: dict) -> str:
    """``text`` with each mirror directory (local ``Path`` -> its redacted URL) replaced by its URL."""
    text = str(text)
    for local, url in mirrors.items():
        text = text.replace(str(local), url)
    return text


@contextmanager
def naming_urls(mirrors: dict):
    """Run readers of local mirrors (``{local dir: redacted URL}``) inside: their errors and warnings
    name the URLs instead (a mirror is a private temporary directory no user knows)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (ArchiveError, KeyError, ValueError) as e:
            if not any(str(local) in str(e) for local in mirrors):
                raise
            raise type(e)(*(outward(a, mirrors) if isinstance(a, str) else a for a in e.args)) from None
    for w in caught:
        warnings.warn(outward(w.message, mirrors), w.category, stacklevel=4)


class RemoteVector:
    """The value or column array of a :class:`RemoteArchive`, as readers of a flat array see it:
    ``len``/``size``/``dtype``/``nbytes``, slices with step 1 (read by range) and ``max()`` (a scan)."""

    ndim = 1

    def __init__(self, archive: RemoteArchive, which: int, dtype) -> None:
        self._archive, self._which, self.dtype = archive, which, np.dtype(dtype)

    size = property(lambda self: self._archive.nnz)
    shape = property(lambda self: (self.size,))
    itemsize = property(lambda self: self.dtype.itemsize)
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a remote array takes slices only (read rows through read_spans)")
        lo, hi, step = key.indices(self.size)
        if step != 1:
            raise IndexError("a remote array takes slices with step 1 only")
        if hi <= lo:
            return np.empty(0, self.dtype)
        offsets = self._archive._offsets
        cuts = np.concatenate([[lo], offsets[(offsets > lo) & (offsets < hi)], [hi]])  # one span per chunk
        return self._archive._read((self._which,), cuts[:-1], np.diff(cuts))[0]

    def max(self, step: int = 1 << 24):
        if not self.size:
            raise ValueError("max() of an empty array")
        return max(self[a : a + step].max() for a in range(0, self.size, step))


def _filesystem(url: str, storage_options: dict, shown: str, scrub):
    """``(filesystem, path inside it)`` for ``url``; a missing protocol package says what to install."""
    try:
        import fsspec
    except ImportError:
        raise ImportError(f"reading {shown} needs fsspec: pip install 'scdl-gpu[remote]'") from None
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as e:
        raise ImportError(f"reading {shown} needs the filesystem package of its protocol ({scrub(e)}); "
                          "for s3:// pip install 'scdl-gpu[remote]'") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"Cannot open {shown}: {scrub(e)}") from None
