"""Compressed chunks decoded on the GPU by nvCOMP, for a :class:`._gpu.GPUBackend` streaming a compressed archive.

Per group of chunks a batch needs (the group fits the device cache, as on the host):

1. The chunks' frame files are mapped and every size checked (``CompressedStorage.frame_layout``). Each
   frame's numcodecs framing is checked and stripped on the host: lz4's 4-byte uncompressed size must be
   the frame's; zlib's 2-byte header must be plain deflate without a preset dictionary, and the raw deflate
   between it and the 4-byte Adler-32 is decoded (the CRC-32C below covers what Adler-32 would); zstd
   frames go as they are. The payloads are copied into pinned staging at 16-byte aligned offsets (nvCOMP's
   input alignment) and uploaded in one copy.
2. One nvCOMP batched decode per codec (``BitstreamKind.RAW``) of all those frames into one scratch buffer,
   each frame's decoded size checked.
3. ``kernels/decode.cu`` undoes the filters into one device array per chunk and member (unshuffle, then the
   columns' per-frame delta) and sums their CRC-32C in 4 KiB blocks, which the host chains and compares
   with the chunk's ``frames.json``.
4. The decoded chunks go into a bounded device cache (:class:`~scdl_gpu.archive._compressed.ChunkCache`).

Any failure (nvCOMP raising, a wrong size or CRC) is re-checked by decoding the group on the host: a
damaged chunk then raises the host's ``ArchiveError`` naming its file and frame; a group the host decodes
fine means the device decode is wrong, a ``RuntimeError`` that says so. Never garbage.

Frames are read through the page cache into pinned staging, not with kvikio: their framing is checked on
the host anyway, and a batch's frames are a few MiB.
"""

from __future__ import annotations

import importlib
import threading
import time

import numpy as np

from .._hints import NVCOMP
from ..archive._compressed import ChunkCache, CompressedStorage
from ..archive._constants import FileNames
from ..errors import ArchiveError
from ._crc32c import crc32c_hex

__all__ = ["NVCOMP_ALGORITHMS", "DeviceDecoder", "load_nvcomp", "unsupported"]

#: our codec id -> nvCOMP's algorithm for its raw stream
NVCOMP_ALGORITHMS = {"zstd": "Zstd", "lz4": "LZ4", "zlib": "Deflate"}
MEMBERS = (FileNames.DATA, FileNames.COLPTR)
ALIGN = 16  # nvCOMP's strictest decompression alignment (inputs and outputs)


def load_nvcomp():
    """``nvidia.nvcomp``, or ``ImportError`` saying what to install."""
    try:
        return importlib.import_module("nvidia.nvcomp")
    except Exception as e:  # a missing package, or a library that fails to load
        raise ImportError(f"nvCOMP is not importable ({type(e).__name__}: {e}): {NVCOMP}") from e


def _filters(pipeline, dtype: np.dtype) -> tuple[bool, bool] | None:
    """``(delta, shuffle)`` this decoder undoes for ``pipeline`` over ``dtype``; None when it cannot."""
    if not pipeline.filters:
        return False, False
    return pipeline.fast_filters(dtype)  # the forms the host decodes with its compiled passes


def unsupported(storage: CompressedStorage) -> str | None:
    """Why ``storage``'s chunks cannot be decoded on the GPU; None when they can."""
    for member in MEMBERS:
        pipe = storage.pipelines[member.value]
        if pipe.codec not in NVCOMP_ALGORITHMS:
            return f"{member.value} is compressed with {pipe.codec!r}, which nvCOMP does not decode here"
        if _filters(pipe, np.dtype(storage.dtypes[member.value])) is None:
            return (f"{member.value}'s filters {[f.codec_id for f in pipe.filters]} are not a delta and/or shuffle "
                    "of its own dtype")
    return None


def _payload(codec: str, frame: memoryview, nbytes: int, path, j: int) -> memoryview:
    """The raw stream nvCOMP decodes, out of one frame as numcodecs wrote it (``nbytes``: its decoded size)."""
    if codec == "lz4":
        said = int.from_bytes(frame[:4], "little") if len(frame) >= 4 else None
        if said != nbytes:
            raise ArchiveError(f"{path}: frame {j}'s lz4 header says {said} bytes decoded, the frame index "
                               f"{nbytes}; the chunk is damaged")
        return frame[4:]
    if codec == "zlib":
        cmf, flg = (frame[0], frame[1]) if len(frame) >= 6 else (0, 0)
        if cmf & 0x0F != 8 or cmf >> 4 > 7 or (cmf << 8 | flg) % 31 or flg & 0x20:
            raise ArchiveError(f"{path}: frame {j} is not a zlib stream of plain deflate (header "
                               f"{bytes(frame[:2]).hex()}, {len(frame)} bytes); the chunk is damaged")
        return frame[2:-4]
    return frame


def _aligned(sizes: np.ndarray) -> tuple[np.ndarray, int]:
    """Offsets of buffers of ``sizes`` bytes laid out back to back at ALIGN-byte boundaries, and the total."""
    padded = -(-sizes // ALIGN) * ALIGN
    ends = np.cumsum(padded)
    return ends - padded, int(ends[-1]) if len(ends) else 0


class DeviceDecoder:
    """Decodes ``storage``'s chunks on the device of ``ctx`` (a :class:`._device.DeviceContext`) with
    ``kernels`` (a :class:`._cuda.DecodeKernels`), keeping at most ``cache_bytes`` of decoded chunks.

    Decoded arrays are unsigned of the stored item size (``view`` them as the archive's dtypes).
    ``frames``/``compressed_bytes``/``decoded_bytes``/``seconds`` add up what was decoded (for benchmarks).
    """

    def __init__(self, storage: CompressedStorage, ctx, kernels, nvcomp, cache_bytes: int) -> None:
        self.storage, self.ctx, self.kernels, self.nvcomp = storage, ctx, kernels, nvcomp
        self.cache = ChunkCache(cache_bytes)
        self.filters = {m: _filters(storage.pipelines[m.value], np.dtype(storage.dtypes[m.value])) for m in MEMBERS}
        self._codecs: dict = {}  # (thread, codec) -> nvcomp.Codec: a Codec must not serve two threads
        self.frames = self.compressed_bytes = self.decoded_bytes = 0
        self.seconds = 0.0

    def chunks(self, group) -> dict[int, tuple]:
        """``{chunk: (values, columns)}`` for ``group`` (chunk ids), from the cache or decoded now together."""
        out, missing = {}, []
        for k in map(int, group):
            hit = self.cache.get(k)
            if hit is None:
                missing.append(k)
            else:
                out[k] = hit
        if missing:
            t0 = time.perf_counter()
            # the backend's device and stream, whoever calls: an upload queued on another stream
            # races the decode on this one (nvCOMP then reads a half-copied frame: an illegal address)
            with self.ctx.activate():
                decoded = self._decode(missing)
            self.seconds += time.perf_counter() - t0
            for k in missing:
                out[k] = decoded[k]
                self.cache.put(k, decoded[k], self.storage.chunk_nbytes(k))
        return out

    # -- one group ------------------------------------------------------------------------------------
    def _decode(self, chunks: list[int]) -> dict[int, tuple]:
        cp = self.ctx.cp
        layouts = [(k, m, self.storage.frame_layout(k, m)) for k in chunks for m in MEMBERS]
        # every frame: (array, index in array, codec, payload, decoded bytes)
        frames = []
        for a, (_, _, lay) in enumerate(layouts):
            view, at, item = memoryview(lay.blob), 0, lay.dtype.itemsize
            for j, size in enumerate(lay.sizes):
                nbytes = min(lay.per_frame, lay.n - j * lay.per_frame) * item
                frames.append((a, j, lay.pipeline.codec, _payload(lay.pipeline.codec, view[at : at + size], nbytes,
                                                                    lay.path, j), nbytes))
                at += size
        outs = [cp.empty(lay.n, f"u{lay.dtype.itemsize}") for _, _, lay in layouts]
        if frames:
            in_len = np.array([len(f[3]) for f in frames], np.int64)
            out_len = np.array([f[4] for f in frames], np.int64)
            in_off, in_total = _aligned(in_len)
            out_off, out_total = _aligned(out_len)
            staged = self._upload(frames, in_off, in_total)
            scratch = cp.empty(out_total, np.uint8)
            failures = []
            codecs = np.array([f[2] for f in frames])
            for codec in sorted(set(codecs.tolist())):
                idx = np.flatnonzero(codecs == codec)
                failures += self._nvcomp(codec, staged, scratch, in_off[idx], in_len[idx], out_off[idx], out_len[idx],
                                         [frames[i] for i in idx], layouts)
            if failures:
                self._explain(chunks, failures)
            self._unfilter(frames, out_off, scratch, outs, layouts)
            self.frames += len(frames)
            self.compressed_bytes += int(in_len.sum())
            self.decoded_bytes += int(out_len.sum())
        crcs = self.kernels.crc32c(outs)  # synchronize! (the registers come back to be chained)
        wrong = [f"{lay.path.parent.name}/{m.value} CRC-32C {crc32c_hex(c)}, frames.json {lay.crc32c}"
                 for (_, m, lay), c in zip(layouts, crcs) if crc32c_hex(c) != lay.crc32c]
        if wrong:
            self._explain(chunks, wrong)
        out = {}
        for (k, _, _), arr in zip(layouts, outs):
            out.setdefault(k, []).append(arr)
        return {k: tuple(v) for k, v in out.items()}

    def _upload(self, frames, offsets: np.ndarray, total: int):
        """The frames' payloads at ``offsets`` of one device buffer, through pinned staging (one copy)."""
        ctx = self.ctx
        host = ctx.staging("decode_in", total, np.uint8)
        for (_, _, _, payload, _), o in zip(frames, offsets.tolist()):
            host[o : o + len(payload)] = np.frombuffer(payload, np.uint8)
        dev = ctx.cp.empty(total, np.uint8)
        dev.set(host)
        ctx.staged("decode_in")
        return dev

    def _codec(self, codec: str):
        key = (threading.get_ident(), codec)
        c = self._codecs.get(key)
        if c is None:
            nv = self.nvcomp
            c = self._codecs[key] = nv.Codec(algorithm=NVCOMP_ALGORITHMS[codec], bitstream_kind=nv.BitstreamKind.RAW,
                                             device_id=self.ctx.index, cuda_stream=self.ctx.torch_stream.cuda_stream)
        return c

    def _nvcomp(self, codec, staged, scratch, in_off, in_len, out_off, out_len, frames, layouts) -> list[str]:
        """One batched decode of ``frames`` (one codec); what went wrong, as lines (empty: nothing)."""
        nv, stream = self.nvcomp, self.ctx.torch_stream.cuda_stream
        try:
            srcs = nv.as_arrays(staged, in_off.tolist(), in_len.tolist(), stream)
            dsts = nv.as_arrays(scratch, out_off.tolist(), out_len.tolist(), stream)
            got = list(self._codec(codec).decode(srcs, out=dsts).buffer_sizes)  # synchronize! (waits for the decode)
        except Exception as e:  # nvCOMP's error on a stream it cannot decode (RuntimeError, ValueError)
            return [f"nvCOMP's {NVCOMP_ALGORITHMS[codec]} decode of {len(frames)} frames raised {type(e).__name__}: {e}"]
        return [f"{layouts[a][2].path}: frame {j} decoded to {g} bytes, expected {n}"
                for (a, j, _, _, _), g, n in zip(frames, got, out_len.tolist()) if g != n]

    def _unfilter(self, frames, out_off, scratch, outs, layouts) -> None:
        """Unshuffle (or copy) every frame from ``scratch`` into its array, then the columns' delta per frame."""
        shuffled: dict = {}  # item dtype -> (scratch offsets, destination views)
        deltas: dict = {}
        for (a, j, _, _, nbytes), off in zip(frames, out_off.tolist()):
            _, member, lay = layouts[a]
            delta, shuffle = self.filters[member]
            start = j * lay.per_frame
            view = outs[a][start : start + nbytes // lay.dtype.itemsize]
            dst = view if shuffle else view.view(np.uint8)  # no shuffle: the bytes as they are
            offs, views = shuffled.setdefault(dst.dtype.str, ([], []))
            offs.append(off)
            views.append(dst)
            if delta:
                deltas.setdefault(view.dtype.str, []).append(view)
        for offs, views in shuffled.values():
            self.kernels.unshuffle(scratch, np.array(offs, np.int64), views)
        for views in deltas.values():
            self.kernels.delta(views)

    def _explain(self, chunks: list[int], what: list[str]):
        """Decode ``chunks`` on the host: its ``ArchiveError`` names a damaged chunk; else the GPU was wrong."""
        self.storage.decode_many(chunks)
        raise RuntimeError(f"{self.storage.path}: chunks {chunks} decode on the host but not on the GPU "
                           f"({'; '.join(what[:3])}); read this archive with decode='host'")

    def close(self) -> None:
        self._codecs.clear()  # before the CUDA context goes
        self.cache = ChunkCache(0)
