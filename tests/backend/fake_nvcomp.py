"""A stand-in for ``nvidia.nvcomp`` on a machine without a GPU: the part of its API the device decoder
uses (``Codec(algorithm=..., bitstream_kind=RAW).decode(batch, out=batch)``, ``as_arrays(buffer, offsets,
sizes, stream)``, ``buffer_sizes``), decoding raw Zstd, LZ4 and Deflate streams with numcodecs and zlib on
the CPU into the fake GPU's arrays. Like nvCOMP, an output buffer too small is a ``ValueError`` and a stream
that does not decode an error; every call is logged in ``calls`` as ``(algorithm, frames)``.
"""

from __future__ import annotations

import sys
import types
import zlib

import numpy as np
from numcodecs import LZ4, Zstd


def _zstd(data: bytes, capacity: int) -> bytes:
    return bytes(Zstd().decode(data))


def _lz4(data: bytes, capacity: int) -> bytes:
    # numcodecs frames a raw block with its 4-byte decoded size; nvCOMP is told the capacity instead
    return bytes(LZ4().decode(capacity.to_bytes(4, "little") + data))


def _deflate(data: bytes, capacity: int) -> bytes:
    d = zlib.decompressobj(-15)
    out = d.decompress(data)
    if not d.eof:
        raise RuntimeError("truncated deflate stream")
    return out


DECODERS = {"Zstd": _zstd, "LZ4": _lz4, "Deflate": _deflate}


class Batch:
    def __init__(self, views, sizes):
        self.views, self.buffer_sizes = views, list(sizes)

    def __len__(self):
        return len(self.views)


def install(monkeypatch):
    """Put the fake module in place of ``nvidia.nvcomp``; returns it (``calls`` logs the decodes)."""
    nv = types.ModuleType("nvidia.nvcomp")
    nv.__version__ = "fake"
    nv.calls = []
    nv.BitstreamKind = types.SimpleNamespace(RAW="RAW", NVCOMP_NATIVE="NATIVE")

    def as_arrays(buffer, offsets, sizes, cuda_stream=0):
        flat = np.asarray(buffer).view(np.uint8)
        return Batch([flat[o : o + n] for o, n in zip(offsets, sizes)], sizes)

    class Codec:
        def __init__(self, algorithm, bitstream_kind, device_id=0, cuda_stream=0):
            assert bitstream_kind == "RAW" and algorithm in DECODERS
            self.algorithm = algorithm

        def decode(self, srcs, out):
            nv.calls.append((self.algorithm, len(srcs)))
            sizes = []
            for src, dst in zip(srcs.views, out.views):
                raw = DECODERS[self.algorithm](src.tobytes(), len(dst))
                if len(raw) > len(dst):
                    raise ValueError(f"an output buffer of {len(dst)} bytes is too small for {len(raw)}")
                dst[: len(raw)] = np.frombuffer(raw, np.uint8)
                sizes.append(len(raw))
            return Batch(out.views, sizes)

    nv.as_arrays, nv.Codec = as_arrays, Codec
    parent = types.ModuleType("nvidia")
    parent.nvcomp = nv
    monkeypatch.setitem(sys.modules, "nvidia", parent)
    monkeypatch.setitem(sys.modules, "nvidia.nvcomp", nv)
    return nv
