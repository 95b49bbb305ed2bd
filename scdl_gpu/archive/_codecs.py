"""The codecs of compressed archives: one pipeline per array (filters, then a compressor), applied to
frames of a fixed uncompressed size, every frame independent of the others.

Each piece is a numcodecs codec (zarr's codec library), recorded as its ``get_config()`` dict, and
only these ids are ever built from an archive's metadata: ``zstd``, ``lz4``, ``zlib`` (compressors)
and ``delta``, ``shuffle`` (filters). The compressors were chosen because nvCOMP decodes their
frames on a GPU as well:

- ``zstd``: standard zstd frames (nvCOMP's Zstd takes them as they are).
- ``lz4``: numcodecs writes a 4-byte little-endian uncompressed size, then one LZ4 block (nvCOMP's
  LZ4 decodes the block from offset 4).
- ``zlib``: a zlib stream, i.e. a 2-byte header, raw deflate, a 4-byte Adler-32 (nvCOMP's Deflate
  decodes the raw deflate from offset 2 to 4 bytes before the end).

Filters: columns are delta-coded (sorted indices inside a row turn into small gaps; the one
difference at each row start wraps around in the unsigned dtype and is undone exactly) and then
byte-shuffled (the gaps' high bytes are almost all zero); values are byte-shuffled. Both are a
prefix sum and a transpose to undo on a GPU. Measured on 4,096 Tahoe-like rows (uint16 counts and
columns, 62,710 genes), zstd level 1, 256 KiB frames: values 4.7x plain, 6.0x shuffled; columns
1.0x plain, 1.6x shuffled, 1.8x delta, 2.3x delta + shuffle (``benchmarks/bench_compress.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .._hints import COMPRESS
from ..errors import ArchiveError

try:  # an optional dependency (the ``compress`` extra); anndata usually brings it through zarr
    from numcodecs import LZ4, Delta, Shuffle, Zlib, Zstd
    from numcodecs.abc import Codec
except ImportError as e:  # pragma: no cover - numcodecs is in the test extra
    raise ImportError(f"compressed archives need numcodecs: {COMPRESS}") from e

__all__ = ["CODECS", "DEFAULT_CODEC", "DEFAULT_FRAME_BYTES", "Pipeline", "default_pipeline"]

CODECS = ("zstd", "lz4", "zlib")
DEFAULT_CODEC = "zstd"
#: Uncompressed bytes per frame. 64 KiB-16 MiB frames compressed the same (within 2%); 256 KiB
#: decoded fastest on the CPU (it stays in cache) and gives nvCOMP many frames per batch.
DEFAULT_FRAME_BYTES = 256 << 10
_LEVELS = {"zstd": 1, "zlib": 6}  # zstd 1 and 3 compressed the same on Tahoe-like rows; 1 writes faster
_BUILD = {"zstd": Zstd, "lz4": LZ4, "zlib": Zlib, "delta": Delta, "shuffle": Shuffle}
_COMPRESSORS = {"zstd", "lz4", "zlib"}


@dataclass(frozen=True)
class Pipeline:
    """``filters`` applied in order, then ``compressor``; decoding runs them backwards."""

    filters: tuple[Codec, ...]
    compressor: Codec

    def encode(self, a: np.ndarray) -> bytes:
        buf = np.ascontiguousarray(a)
        for f in self.filters:
            buf = f.encode(buf)
        return bytes(self.compressor.encode(buf))

    def decode_into(self, frame, out: np.ndarray) -> None:
        """Decode one frame into ``out`` (contiguous, exactly the frame's uncompressed size).

        The filters this package writes (delta of ``out``'s dtype, then a shuffle of its item size)
        are undone by two compiled passes that release the GIL, 3-5x faster than numcodecs' own
        (unshuffle measured 0.6 GB/s there); any other recorded pipeline decodes through numcodecs."""
        raw = out.view(np.uint8)
        if not self.filters:
            self.compressor.decode(frame, out=raw)
            return
        buf = self.compressor.decode(frame)
        if len(memoryview(buf).cast("B")) != raw.size:
            raise ValueError(f"the frame decodes to {len(memoryview(buf).cast('B'))} bytes, expected {raw.size}")
        fast = self.fast_filters(out.dtype)
        if fast is not None:
            delta, shuffle = fast
            src = np.frombuffer(buf, np.uint8)
            if shuffle:
                _unshuffle(src, raw, out.dtype.itemsize)
            else:
                raw[:] = src
            if delta:
                _prefix_sum(out)
            return
        for f in self.filters[:0:-1]:
            buf = f.decode(buf)
        self.filters[0].decode(buf, out=out)

    def fast_filters(self, dtype: np.dtype) -> tuple[bool, bool] | None:
        """``(delta, shuffle)`` when the filters are a delta in ``dtype`` and/or a shuffle of its size, in
        that order; None otherwise."""
        ids = [f.codec_id for f in self.filters]
        if ids not in (["delta"], ["shuffle"], ["delta", "shuffle"]) or dtype.kind != "u" and "delta" in ids:
            return None
        for f in self.filters:
            if f.codec_id == "delta" and (np.dtype(f.dtype) != dtype or np.dtype(f.astype) != dtype):
                return None
            if f.codec_id == "shuffle" and f.elementsize != dtype.itemsize:
                return None
        return "delta" in ids, "shuffle" in ids

    @property
    def codec(self) -> str:
        return self.compressor.codec_id

    def config(self) -> dict:
        return {"filters": [f.get_config() for f in self.filters], "compressor": self.compressor.get_config()}

    @classmethod
    def from_config(cls, cfg, where: str) -> "Pipeline":
        """Rebuild a recorded pipeline; anything but the known codecs is an ``ArchiveError``."""
        try:
            filters = tuple(_build(c, where, compressor=False) for c in cfg["filters"])
            return cls(filters, _build(cfg["compressor"], where, compressor=True))
        except (KeyError, TypeError) as e:
            raise ArchiveError(f"{where}: malformed codec description {cfg!r} ({e})") from None


def _unshuffle(src: np.ndarray, dst: np.ndarray, itemsize: int) -> None:
    """numcodecs' Shuffle decode: byte ``j`` of item ``i`` is at ``src[j * n + i]``. Items of 2, 4 and 8
    bytes are rebuilt whole from their byte planes (little-endian, as the format stores them), which
    vectorises: a 256 KiB frame of 2-byte items (in cache) went from 2.7 to ~60 GB/s against the
    byte-by-byte loop, the fallback."""
    n = dst.size // itemsize
    if itemsize in _WHOLE and dst.size == n * itemsize and dst.ctypes.data % itemsize == 0:
        _WHOLE[itemsize](src, dst.view(f"<u{itemsize}"), n)
    else:
        _unshuffle_bytes(src, dst, itemsize)


@numba.njit(nogil=True, cache=True)
def _unshuffle_bytes(src, dst, itemsize):  # pragma: no cover - compiled
    n = dst.size // itemsize
    for j in range(itemsize):
        base = j * n
        for i in range(n):
            dst[i * itemsize + j] = src[base + i]


@numba.njit(nogil=True, cache=True)
def _unshuffle2(src, dst, n):  # pragma: no cover - compiled
    for i in range(n):
        dst[i] = np.uint16(src[i]) | (np.uint16(src[n + i]) << np.uint16(8))


@numba.njit(nogil=True, cache=True)
def _unshuffle4(src, dst, n):  # pragma: no cover - compiled
    for i in range(n):
        dst[i] = (np.uint32(src[i]) | (np.uint32(src[n + i]) << np.uint32(8))
                  | (np.uint32(src[2 * n + i]) << np.uint32(16)) | (np.uint32(src[3 * n + i]) << np.uint32(24)))


@numba.njit(nogil=True, cache=True)
def _unshuffle8(src, dst, n):  # pragma: no cover - compiled
    for i in range(n):
        x = np.uint64(0)
        for j in range(8):  # unrolled by LLVM
            x |= np.uint64(src[j * n + i]) << np.uint64(8 * j)
        dst[i] = x


_WHOLE = {2: _unshuffle2, 4: _unshuffle4, 8: _unshuffle8}


@numba.njit(nogil=True, cache=True)
def _prefix_sum(a):  # pragma: no cover - compiled
    """numcodecs' Delta decode in place: a running sum that wraps around in ``a``'s unsigned dtype."""
    for i in range(1, a.size):
        a[i] = a[i] + a[i - 1]


def _build(cfg: dict, where: str, compressor: bool) -> Codec:
    cid = cfg.get("id") if isinstance(cfg, dict) else None
    if cid not in _BUILD or (cid in _COMPRESSORS) != compressor:
        kind = "compressor" if compressor else "filter"
        known = sorted(_COMPRESSORS) if compressor else sorted(set(_BUILD) - _COMPRESSORS)
        raise ArchiveError(f"{where}: unknown {kind} {cid!r}; this reader knows {known}")
    try:
        return _BUILD[cid].from_config({k: v for k, v in cfg.items() if k != "id"})
    except (TypeError, ValueError) as e:
        raise ArchiveError(f"{where}: bad {cid} settings {cfg!r} ({e})") from None


def default_pipeline(codec: str, dtype, columns: bool, level: int | None = None) -> Pipeline:
    """The pipeline for one array: ``columns`` delta-codes first; both byte-shuffle multi-byte dtypes."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    dtype = np.dtype(dtype)
    filters = []
    if columns:
        filters.append(Delta(dtype=dtype.str))
    if dtype.itemsize > 1:
        filters.append(Shuffle(elementsize=dtype.itemsize))
    if codec == "lz4":
        if level is not None:
            raise ValueError("lz4 takes no level")
        return Pipeline(tuple(filters), LZ4())
    level = _LEVELS[codec] if level is None else int(level)
    limits = {"zstd": (-5, 22), "zlib": (0, 9)}[codec]
    if not limits[0] <= level <= limits[1]:
        raise ValueError(f"{codec} level must be in [{limits[0]}, {limits[1]}], got {level}")
    return Pipeline(tuple(filters), Zstd(level=level) if codec == "zstd" else Zlib(level=level))
