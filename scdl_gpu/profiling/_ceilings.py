"""What the hardware allows: the bandwidths that bound a loader on this machine.

- ``page_cache_read``: sequential ``read`` of the archive's value and column files while they are
  in the page cache (the bound for a warm archive on the CPU).
- ``cold_read``: the same after asking the kernel to drop those files' cached pages
  (``posix_fadvise(DONTNEED)``, which only touches our own files and is honoured for clean pages);
  the bound for an archive larger than memory. Reading re-caches the files.
- ``h2d``: pinned host memory to device memory (``cudaMemcpy``), the bound for anything that
  crosses PCIe; only on ``cuda``.
- ``hbm_copy``: device memory to device memory (``cudaMemcpy``), the bound for an archive held in
  device memory; only on ``cuda``.
- ``memcpy``: host memory to host memory, for reference.

Which ceiling bounds a run depends on where the archive lives (the loader's ``residency``): see
:func:`bound`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

CHUNK = 16 << 20


def _read_file(path: Path, buf: bytearray, limit: int) -> int:
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as f:
        while done < limit:
            n = f.readinto(view[: min(len(buf), limit - done)])
            if not n:
                break
            done += n
    return done


def read_bandwidth(paths: list[Path], cold: bool = False, max_bytes: int = 4 << 30, repeats: int = 1) -> dict:
    """Bytes/s of a sequential pass over ``paths`` (at most ``max_bytes`` in all); the best of
    ``repeats`` passes (a ceiling is what the machine can do; a shared VM's slow moments are not)."""
    if repeats > 1:
        return max((read_bandwidth(paths, cold, max_bytes) for _ in range(repeats)), key=lambda r: r["bytes_per_s"] or 0)
    dropped = False
    if cold:
        if not hasattr(os, "posix_fadvise"):
            return dict(bytes_per_s=None, bytes=0, seconds=0.0, note="posix_fadvise is not available here")
        dropped = drop_cached(paths) > 0
    buf = bytearray(CHUNK)
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        total += _read_file(p, buf, max_bytes - total)
        if total >= max_bytes:
            break
    dt = time.perf_counter() - t0
    out = dict(bytes_per_s=total / dt if dt > 0 else None, bytes=total, seconds=dt)
    if cold:
        out["note"] = "cached pages dropped with posix_fadvise(DONTNEED) first" if dropped else "could not drop cached pages"
    return out


def drop_cached(paths) -> int:
    """Ask the kernel to drop ``paths``' pages from the page cache (``posix_fadvise(DONTNEED)``; pages
    a process still maps stay). Returns how many files were advised (0 where the call is missing)."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    n = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n


def memcpy_bandwidth(nbytes: int = 256 << 20, repeats: int = 3) -> dict:
    """Host to host copy bytes/s (best of ``repeats``, both buffers touched beforehand)."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return dict(bytes_per_s=nbytes / best, bytes=nbytes, seconds=best)


def h2d_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> dict:
    """Pinned host to device copy bytes/s (best of ``repeats``, timed with CUDA events)."""
    import cupy as cp
    import cupyx

    host = cupyx.empty_pinned(nbytes, np.uint8)
    host[:] = 1
    dev = cp.empty(nbytes, cp.uint8)
    stream = cp.cuda.get_current_stream()
    times = []
    for _ in range(repeats + 1):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        dev.set(host, stream=stream)
        stop.record(stream)
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    best = min(times[1:])  # the first copy pays for setting up the mapping
    return dict(bytes_per_s=nbytes / (best / 1e3), bytes=nbytes, seconds=best / 1e3)


def hbm_copy_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> dict:
    """Device to device copy bytes/s (best of ``repeats``, timed with CUDA events). Bytes copied per
    second: each is read once and written once, so the memory traffic is twice this figure, as it is
    for a loader gathering rows out of a device-resident archive."""
    import cupy as cp

    src, dst = cp.empty(nbytes, cp.uint8), cp.empty(nbytes, cp.uint8)
    src.fill(1)
    stream = cp.cuda.get_current_stream()
    times = []
    for _ in range(repeats + 1):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        cp.copyto(dst, src)  # contiguous, one dtype: CuPy issues a cudaMemcpyAsync, not a kernel
        stop.record(stream)
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    best = min(times[1:])  # the first copy may wait for the allocations to settle
    return dict(bytes_per_s=nbytes / (best / 1e3), bytes=nbytes, seconds=best / 1e3)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_ceilings(archive: Path, device: str, cold: bool = True, max_bytes: int = 4 << 30) -> dict:
    """Every ceiling that applies to ``device`` for this archive (bytes/s; see the module notes)."""
    from ..archive._chunked import value_files
    from ..atlas import archives_of

    files = [f for a in archives_of(archive) for f in value_files(a)]  # an atlas: every member's
    read_bandwidth(files, max_bytes=max_bytes)  # bring them into the page cache first
    out = dict(page_cache_read=read_bandwidth(files, max_bytes=max_bytes, repeats=3), memcpy=memcpy_bandwidth())
    if cold:
        out["cold_read"] = read_bandwidth(files, cold=True, max_bytes=max_bytes)
    if device == "cuda":
        out["h2d"] = h2d_bandwidth()
        out["hbm_copy"] = hbm_copy_bandwidth()
    return out


#: The ceilings a warm-cache loader can be bounded by on the GPU, per residency of the archive:
#: in device memory it is copied out of HBM; in pinned host memory it crosses PCIe once; streamed,
#: it is read from the page cache and then crosses PCIe.
CUDA_BOUNDS = {"device": ("hbm_copy",), "pinned": ("h2d",), "stream": ("page_cache_read", "h2d")}


def bound(ceilings: dict, device: str, residency: str = "stream") -> tuple[str, float | None]:
    """The ceiling that bounds a warm-cache loader on ``device`` with the archive at ``residency``
    (``"auto"``, not knowing where the loader put it, counts as ``"stream"``): its name and bytes/s.
    On the CPU every residency reads the page cache."""
    names = CUDA_BOUNDS.get(residency, CUDA_BOUNDS["stream"]) if device == "cuda" else ("page_cache_read",)
    rates = [(n, ceilings[n]["bytes_per_s"]) for n in names if ceilings.get(n, {}).get("bytes_per_s")]
    return min(rates, key=lambda r: r[1]) if rates else ("none", None)
