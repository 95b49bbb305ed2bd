"""The CPU read path over compressed archives beyond what the chunked tests share with it: block
order's default of whole chunks, the parallel gather over decoded chunks with its bounds checks,
decoding several chunks at once, and a forked loader worker."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellLoader
from scdl_gpu.archive._codecs import Pipeline
from scdl_gpu.archive._compressed import _crc, compress_archive
from scdl_gpu.archive._constants import FileNames
from scdl_gpu.backend import get_backend
from scdl_gpu.backend._gather import PARALLEL_MIN_VALUES
from scdl_gpu.errors import ArchiveError
from tests.backend.archives import random_matrix, write_archive

N = 61


@pytest.fixture
def pair(tmp_path):
    flat = write_archive(tmp_path / "flat", random_matrix(N, 3000, "uint16", seed=5, density=0.3))
    packed = tmp_path / "packed"
    compress_archive(flat, packed, chunk_size=4, frame_bytes=1024)
    return flat, packed


def test_block_order_reads_whole_chunks_by_default(pair):
    flat, packed = pair
    loader = SingleCellLoader(packed, batch_size=8, shuffle="block", device="cpu", seed=1)
    assert loader.block_size == 4  # the chunk size
    assert SingleCellLoader(flat, batch_size=8, shuffle="block", device="cpu").block_size == 1  # batch // 64
    for batch in loader:
        rows = batch["rows"].numpy()
        chunks, counts = np.unique(rows // 4, return_counts=True)
        # every chunk a batch touches is read whole (but the last, partial one and the epoch's tail)
        assert np.all((counts == 4) | (chunks == N // 4)) or len(rows) < 8
    flat_loader = SingleCellLoader(flat, batch_size=8, shuffle="block", device="cpu", seed=1, block_size=4)
    loader.set_epoch(0)
    for a, b in zip(flat_loader, loader, strict=True):
        assert torch.equal(a["rows"], b["rows"]) and torch.equal(a["X"].to_dense(), b["X"].to_dense())


def test_the_parallel_gather_over_decoded_chunks_checks_columns(pair):
    flat, packed = pair
    f, z = get_backend(flat, device="cpu"), get_backend(packed, device="cpu")
    rows = np.random.default_rng(2).permutation(N)
    a, b = f.batch(rows), z.batch(rows)
    assert a.values.numel() >= PARALLEL_MIN_VALUES and len(z.chunks.cache) == -(-N // 4)
    for name in ("crow", "col", "values"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    # a column beyond the genes, stored with a valid frame and checksum: the gather's check finds it
    d = packed / "chunk_00010"
    cols = z.chunks.decoded(10)[1].copy()
    cols[3] = 5000
    pipe = z.chunks.pipelines["col_ptr.npy"]
    per = 1024 // cols.itemsize
    frames = [pipe.encode(cols[s : s + per]) for s in range(0, len(cols), per)]
    (d / "col_ptr.frames").write_bytes(b"".join(frames))
    index = json.loads((d / "frames.json").read_text())
    index["col_ptr.npy"].update(crc32c=_crc(cols), frames=[len(fr) for fr in frames])
    (d / "frames.json").write_text(json.dumps(index))
    with pytest.raises(ArchiveError, match=r"chunk_00010/col_ptr.frames: row 4[0-3] holds column 5000"):
        get_backend(packed, device="cpu").batch(rows)
    assert isinstance(pipe, Pipeline)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_decodes_with_its_own_threads(pair):
    """DataLoader workers fork: the decode pool of the parent has no threads in the child."""
    flat, packed = pair
    z = get_backend(packed, device="cpu")
    z.batch(np.arange(N))  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        try:
            child = get_backend(packed, device="cpu", cache_bytes=0)  # numpy only here: OpenMP (torch's
            ok = np.array_equal(child.batch(np.arange(N)).values.numpy(),  # ops) hangs in a forked child
                                get_backend(flat, device="cpu").batch(np.arange(N)).values.numpy())
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_worker_forked_while_chunks_decode_ahead_reads_the_parents_backend(pair):
    """The parent's decode-ahead table and its locks (held by a thread of the parent at the fork)
    start afresh in the child, which reads through the backend it inherited."""
    import threading
    import time

    flat, packed = pair
    z = get_backend(packed, device="cpu")
    z.will_need(np.arange(N))  # futures of the parent's pool, maybe still running
    held, release = threading.Event(), threading.Event()

    def hold():
        with z.chunks._lock, z.chunks.cache._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        ok = False
        try:
            ok = np.array_equal(z.batch(np.arange(N)).values.numpy(),
                                get_backend(flat, device="cpu").batch(np.arange(N)).values.numpy())
        finally:
            os._exit(0 if ok else 1)
    release.set()
    t.join()
    for _ in range(600):  # a child stuck on an inherited lock would hang: give it 30 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the parent's locks")
    assert os.waitstatus_to_exitcode(status) == 0


def test_will_need_decodes_uncached_chunks_ahead_once(pair, monkeypatch):
    from scdl_gpu.archive._compressed import CompressedStorage

    flat, packed = pair
    z = get_backend(packed, device="cpu")
    size = z.chunks.chunk_size
    z.batch(np.arange(size))  # chunk 0 decoded: in the cache
    decoded = []
    real = CompressedStorage._decode_array
    monkeypatch.setattr(CompressedStorage, "_decode_array",
                        lambda self, k, member: decoded.append((k, member.value)) or real(self, k, member))
    z.will_need(np.array([0, size, size + 1, 3 * size, -1, N, 10**9]))  # rows outside the archive: ignored
    assert z.chunks.cache.hits == 0  # a peek: neither counted nor refreshed
    rows = np.array([size + 2, 3 * size, 1])
    np.testing.assert_array_equal(z.batch(rows).values.numpy(), get_backend(flat, device="cpu").batch(rows).values.numpy())
    z.will_need(np.array([size, 3 * size]))  # decoded already: nothing more to do
    z.batch(np.array([size, 3 * size + 1]))
    assert sorted(decoded) == [(k, m) for k in (1, 3) for m in ("col_ptr.npy", "data.npy")]  # each array once
    assert not z.chunks._ahead  # nothing left under way
    flat_backend = get_backend(flat, device="cpu")
    flat_backend.will_need(np.arange(5))  # a flat archive: nothing to do


def test_will_need_stays_within_the_cache(pair):
    _, packed = pair
    z = get_backend(packed, device="cpu", cache_bytes=0)
    z.will_need(np.arange(N))
    assert not z.chunks._ahead  # nothing may be kept: nothing is decoded ahead
    one = z.chunks.chunk_nbytes(0)
    z.chunks.cache.limit = 2 * one
    z.will_need(np.arange(N))
    assert len(z.chunks._ahead) + len(z.chunks.cache) <= 2


def test_a_damaged_chunk_decoded_ahead_raises_when_it_is_needed(pair):
    _, packed = pair
    z = get_backend(packed, device="cpu")
    size = z.chunks.chunk_size
    path = z.chunks.file(1, FileNames.DATA)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    z.will_need(np.arange(size, 2 * size))  # decoding ahead fails quietly on the pool
    z.batch(np.arange(size))  # chunk 0 is sound
    with pytest.raises(ArchiveError, match="chunk_00001"):
        z.batch(np.arange(size, size + 2))


def test_the_loader_hints_each_next_batch(pair, monkeypatch):
    _, packed = pair
    loader = SingleCellLoader(packed, batch_size=8, shuffle="block", device="cpu", seed=1)
    hinted = []
    monkeypatch.setattr(type(loader.backend), "will_need", lambda self, rows: hinted.append(np.array(rows)))
    batches = [b["rows"].numpy() for b in loader]
    assert len(hinted) == len(batches)  # each batch before it is read: the first one too
    for h, b in zip(hinted, batches):
        np.testing.assert_array_equal(h, b)
