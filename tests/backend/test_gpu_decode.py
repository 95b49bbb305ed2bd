"""A compressed archive streamed by the GPU backend with its chunks decoded on the device
(:mod:`scdl_gpu.backend._gpu_decode`): on the fake GPU (``fake_gpu``) with a fake nvCOMP that decodes on
the CPU (``fake_nvcomp``), and, marked ``gpu``, with the real nvCOMP and kernels.

Batches equal the CPU backend's over the same archive (and so the flat archive's) for every codec and
stored dtype; a damaged frame or checksum is an ``ArchiveError`` naming the file; the device cache stays
within its bound; the choice of decoder falls back to the host with its reason.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from scdl_gpu.archive._compressed import compress_archive
from scdl_gpu.backend import BatchOptions, get_backend
from scdl_gpu.errors import ArchiveError
from tests.backend import fake_gpu, fake_nvcomp
from tests.backend.archives import DATA_DTYPES, random_matrix, write_archive

N, CHUNK = 37, 4


@pytest.fixture
def world(monkeypatch):
    return fake_gpu.install(monkeypatch)


@pytest.fixture
def nvcomp(world, monkeypatch):
    return fake_nvcomp.install(monkeypatch)


def _archives(tmp_path, dtype="uint16", codec="zstd", frame_bytes=64, n=N, cols=300):
    m = random_matrix(n, cols, dtype if dtype != "float16" else "float32", seed=7, density=0.2)
    if dtype == "float16":
        m.data = m.data.astype(np.float16).astype(np.float32)
    flat = write_archive(tmp_path / "flat", m, data_dtype=dtype)
    packed = tmp_path / f"packed-{codec}"
    compress_archive(flat, packed, codec=codec, chunk_size=CHUNK, frame_bytes=frame_bytes)  # most arrays: many frames
    return flat, packed


def _rows_sorted(batch):
    """(crow, col, values) with each row's entries ordered by column (the device route keeps rows as stored)."""
    crow, col, val = batch.crow.numpy(), batch.col.numpy().copy(), batch.values.numpy().copy()
    for r in range(len(crow) - 1):
        a, b = crow[r], crow[r + 1]
        order = np.argsort(col[a:b], kind="stable")
        col[a:b], val[a:b] = col[a:b][order], val[a:b][order]
    return crow, col, val


def _same(gpu_batch, cpu_batch):
    if cpu_batch.dense is not None:
        torch.testing.assert_close(gpu_batch.dense, cpu_batch.dense, rtol=0, atol=0)
        return
    for g, c in zip(_rows_sorted(gpu_batch), _rows_sorted(cpu_batch)):
        np.testing.assert_array_equal(g, c)
        assert g.dtype == c.dtype


ROWS = [np.arange(N), np.array([36, 0, 5, 5, 17]), np.array([], np.int64), np.array([0, N - 1])]


@pytest.mark.parametrize("codec", ["zstd", "lz4", "zlib"])
@pytest.mark.parametrize("dtype", DATA_DTYPES)
def test_device_decode_equals_the_cpu(nvcomp, tmp_path, codec, dtype):
    flat, packed = _archives(tmp_path, dtype, codec)
    gpu = get_backend(packed, device="cuda", residency="stream")
    assert gpu.decoder is not None
    cpu, flat_cpu = get_backend(packed, device="cpu"), get_backend(flat, device="cpu")
    for rows in ROWS:
        _same(gpu.batch(rows), cpu.batch(rows))
        _same(gpu.batch(rows), flat_cpu.batch(rows))
    dense = BatchOptions(dense=True)
    _same(get_backend(packed, device="cuda", residency="stream", options=dense).batch(ROWS[1]),
          get_backend(flat, device="cpu", options=dense).batch(ROWS[1]))
    # bit for bit the host's decoded chunks, and one nvCOMP call per group (one group here)
    for k in range(gpu.chunks.num_chunks):
        for got, want in zip(gpu.decoder.chunks([k])[k], cpu.chunks.decoded(k)):
            np.testing.assert_array_equal(np.asarray(got), want.view(got.dtype))
    assert nvcomp.calls[0] == ({"zstd": "Zstd", "lz4": "LZ4", "zlib": "Deflate"}[codec], gpu.decoder.frames)
    assert gpu.decoder.decoded_bytes == sum(gpu.chunks.chunk_nbytes(k) for k in range(gpu.chunks.num_chunks))
    gpu.close()


def test_frames_upload_on_the_backends_stream_whoever_calls(nvcomp, world, tmp_path):
    """The decoder called from outside the backend (as a benchmark does) still queues its upload on the
    stream the decode runs on: on another stream the copy races nvCOMP's reads."""
    _, packed = _archives(tmp_path, "uint16", "zstd")
    gpu = get_backend(packed, device="cuda", residency="stream")
    start = len(world.log)
    gpu.decoder.chunks([0, 1])
    copies = [e for e in world.log[start:] if e[0] == "h2d"]
    assert copies and {e[2] for e in copies} == {gpu.ctx.torch_stream.cuda_stream}
    assert world.current() == (0, 0)  # and the caller's stream is current again
    gpu.close()


def test_big_frames_and_a_single_chunk(nvcomp, tmp_path):
    """The default frame size (one frame per array, shorter than a frame) and a batch of one chunk."""
    flat, packed = _archives(tmp_path, "uint32", "lz4", frame_bytes=256 << 10)
    _same(get_backend(packed, device="cuda", residency="stream").batch([1, 2, 3]),
          get_backend(flat, device="cpu").batch([1, 2, 3]))


def test_the_device_cache_stays_bounded(nvcomp, tmp_path):
    flat, packed = _archives(tmp_path, "uint16", "zstd")
    cpu = get_backend(flat, device="cpu")
    probe = get_backend(packed, device="cuda", residency="stream")
    one = max(probe.chunks.chunk_nbytes(k) for k in range(probe.chunks.num_chunks))
    gpu = get_backend(packed, device="cuda", residency="stream", cache_bytes=2 * one)
    assert gpu.decoder.cache.limit == 2 * one
    rows = np.random.default_rng(1).permutation(N)  # every chunk: several groups
    _same(gpu.batch(rows), cpu.batch(rows))
    assert len(nvcomp.calls) > 1 and gpu.decoder.cache.nbytes <= 2 * one and 1 <= len(gpu.decoder.cache) <= 2
    calls = len(nvcomp.calls)
    gpu.batch(rows[:1])  # the last group's chunk is cached: no decode
    last_chunk = int(np.unique(rows // CHUNK)[-1])
    if rows[0] // CHUNK == last_chunk:
        assert len(nvcomp.calls) == calls


def test_the_loaders_hint_reads_files_ahead_and_decodes_nothing_on_the_host(nvcomp, tmp_path, monkeypatch):
    _, packed = _archives(tmp_path, "uint16", "zstd")
    gpu = get_backend(packed, device="cuda", residency="stream")
    read = []
    monkeypatch.setattr(type(gpu.chunks), "read_ahead", lambda self, chunks: read.extend(int(k) for k in chunks))
    gpu.batch(np.arange(CHUNK))  # chunk 0 in the device cache
    gpu.will_need(np.array([0, 1, CHUNK, 2 * CHUNK, -1, N]))
    assert read == [1, 2] and not gpu.chunks._ahead and len(gpu.chunks.cache) == 0
    gpu.close()


def _damage(path, at: int):
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0x5A
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("codec", ["zstd", "lz4", "zlib"])
def test_a_damaged_frame_names_its_file(nvcomp, tmp_path, codec):
    _, packed = _archives(tmp_path, "uint16", codec)
    frames = packed / "chunk_00002" / "data.frames"
    _damage(frames, len(frames.read_bytes()) // 2)
    gpu = get_backend(packed, device="cuda", residency="stream")
    with pytest.raises(ArchiveError, match=r"chunk_00002/data\.frames"):
        gpu.batch(np.arange(N))
    _same(gpu.batch([0, 1, 13]), get_backend(packed, device="cpu").batch([0, 1, 13]))  # other chunks still read


def test_a_wrong_checksum_names_the_file(nvcomp, tmp_path):
    _, packed = _archives(tmp_path, "uint16", "zstd")
    index_path = packed / "chunk_00001" / "frames.json"
    index = json.loads(index_path.read_text())
    index["col_ptr.npy"]["crc32c"] = "00000000"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ArchiveError, match=r"chunk_00001/col_ptr\.frames.*CRC-32C"):
        get_backend(packed, device="cuda", residency="stream").batch([5])


def test_framing_is_checked_before_any_decode(nvcomp, tmp_path):
    _, packed = _archives(tmp_path, "uint16", "lz4")
    frames = packed / "chunk_00000" / "col_ptr.frames"
    _damage(frames, 0)  # the first frame's lz4 size header
    with pytest.raises(ArchiveError, match=r"chunk_00000/col_ptr\.frames: frame 0's lz4 header says"):
        get_backend(packed, device="cuda", residency="stream").batch([1])
    assert nvcomp.calls == []


def test_a_wrong_device_decode_is_not_passed_off_as_data(nvcomp, tmp_path, monkeypatch):
    """Frames the host decodes fine but the device decodes wrong: a RuntimeError, never the wrong values."""
    _, packed = _archives(tmp_path, "uint16", "zstd")
    wrong = lambda data, capacity: bytes(len(fake_nvcomp._zstd(data, capacity)))  # noqa: E731 - zeros, right size
    monkeypatch.setitem(fake_nvcomp.DECODERS, "Zstd", wrong)
    with pytest.raises(RuntimeError, match=r"decode on the host but not on the GPU.*CRC-32C.*decode='host'"):
        get_backend(packed, device="cuda", residency="stream").batch([5])


def test_a_bad_column_in_a_valid_chunk_names_the_row(nvcomp, tmp_path):
    """A column beyond the genes stored with valid frames and checksum: the kernel flags it, the host
    gather names where."""
    _, packed = _archives(tmp_path, "uint16", "zstd", frame_bytes=1024)
    probe = get_backend(packed, device="cpu")
    cols = probe.chunks.decoded(3)[1].copy()
    cols[0] = 5000
    pipe = probe.chunks.pipelines["col_ptr.npy"]
    frames = [pipe.encode(cols[s : s + 512]) for s in range(0, len(cols), 512)]
    (packed / "chunk_00003" / "col_ptr.frames").write_bytes(b"".join(frames))
    index_path = packed / "chunk_00003" / "frames.json"
    index = json.loads(index_path.read_text())
    from scdl_gpu.archive._compressed import _crc

    index["col_ptr.npy"].update(crc32c=_crc(cols), frames=[len(f) for f in frames])
    index_path.write_text(json.dumps(index))
    with pytest.raises(ArchiveError, match=r"chunk_00003/col_ptr\.frames: row 1[2-5] holds column 5000"):
        get_backend(packed, device="cuda", residency="stream").batch(np.arange(12, 16))


def test_the_choice_and_its_reason_are_logged(world, tmp_path, caplog, monkeypatch):
    flat, packed = _archives(tmp_path, "uint16", "zstd")
    caplog.set_level(logging.INFO, logger="scdl_gpu.backend._gpu")
    assert get_backend(packed, device="cuda", residency="stream").decoder is None  # no nvCOMP (fake_gpu hides it)
    assert "decoded on the host (nvCOMP is not importable" in caplog.text
    with pytest.raises(RuntimeError, match="decode='device' is not possible.*nvCOMP is not importable"):
        get_backend(packed, device="cuda", residency="stream", decode="device")
    with pytest.raises(ValueError, match="decode must be one of"):
        get_backend(packed, device="cuda", residency="stream", decode="gpu")
    fake_nvcomp.install(monkeypatch)
    caplog.clear()
    assert get_backend(packed, device="cuda", residency="stream").decoder is not None
    assert "decoded on the GPU by nvCOMP fake (['zstd'])" in caplog.text
    assert get_backend(packed, device="cuda", residency="stream", decode="host").decoder is None
    assert get_backend(packed, device="cuda", residency="device").decoder is None  # decoded once when loaded
    assert get_backend(flat, device="cuda", residency="stream").decoder is None


# --------------------------------------------------------------------------------------------------
# On a GPU: the real nvCOMP, kernels and copies
# --------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("codec", ["zstd", "lz4", "zlib"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16", "float32", "uint64", "float64"])
def test_nvcomp_decode_on_the_gpu_equals_the_cpu(tmp_path, codec, dtype):
    pytest.importorskip("nvidia.nvcomp")
    flat, packed = _archives(tmp_path, dtype, codec, frame_bytes=1024, n=300, cols=2000)
    cpu = get_backend(packed, device="cpu")
    with get_backend(packed, device="cuda", residency="stream", decode="device") as gpu:
        for k in range(gpu.chunks.num_chunks):  # every decoded array bit for bit the host's
            for got, want in zip(gpu.decoder.chunks([k])[k], cpu.chunks.decoded(k)):
                np.testing.assert_array_equal(got.get(), want.view(got.dtype))
        for rows in (np.arange(300), np.random.default_rng(0).integers(0, 300, 64), np.array([], np.int64)):
            g, c = gpu.batch(rows), cpu.batch(rows)
            _same(type(g)(g.rows, g.shape, crow=g.crow.cpu(), col=g.col.cpu(), values=g.values.cpu()), c)


@pytest.mark.gpu
def test_a_damaged_frame_on_the_gpu_names_its_file(tmp_path):
    pytest.importorskip("nvidia.nvcomp")
    _, packed = _archives(tmp_path, "uint16", "zstd", frame_bytes=1024, n=300, cols=2000)
    frames = packed / "chunk_00010" / "data.frames"
    _damage(frames, len(frames.read_bytes()) // 2)
    with get_backend(packed, device="cuda", residency="stream", decode="device") as gpu:
        with pytest.raises(ArchiveError, match=r"chunk_00010/data\.frames"):
            gpu.batch(np.arange(300))
