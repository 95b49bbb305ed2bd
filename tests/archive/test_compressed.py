"""Compressed chunked archives: round trips of every codec and dtype, the layout and its metadata,
damage named by chunk file, the decoded-chunk cache's bound, validate, and upstream's refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scdl_gpu import SingleCellMemMapDataset, partition_scdl
from scdl_gpu.archive import open_arrays, validation_report
from scdl_gpu.archive._codecs import CODECS, Pipeline, default_pipeline
from scdl_gpu.archive._compressed import ChunkCache, compress_archive
from scdl_gpu.archive._constants import Backend
from scdl_gpu.archive._summary import compression_summary
from scdl_gpu.backend import get_backend
from scdl_gpu.errors import ArchiveError, ArchiveNotFoundError
from tests.backend.archives import DATA_DTYPES, random_matrix, write_archive

N_ROWS, N_COLS = 23, 15  # chunks of 5: the last holds 3 rows


@pytest.fixture
def flat(tmp_path):
    return write_archive(tmp_path / "flat", random_matrix(N_ROWS, N_COLS, "float32", seed=3, density=0.3))


@pytest.fixture
def packed(flat, tmp_path):
    out = tmp_path / "packed"
    compress_archive(flat, out, chunk_size=5, frame_bytes=16)  # several frames per chunk array
    return out


def _same_arrays(a_path, b_path):
    a, b = open_arrays(a_path), open_arrays(b_path)
    assert a.dtypes == b.dtypes and a.n_rows == b.n_rows
    np.testing.assert_array_equal(np.asarray(a.row_ptr), b.row_ptr)
    for x, y in ((a.data, b.data), (a.col_ptr, b.col_ptr)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()  # bit-identical (NaN payloads too)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DATA_DTYPES)
def test_every_codec_and_value_dtype_round_trips(tmp_path, codec, dtype):
    m = random_matrix(N_ROWS, N_COLS, "float32" if dtype == "float16" else dtype, seed=7, density=0.4)
    flat = write_archive(tmp_path / "flat", m, data_dtype=dtype)
    compress_archive(flat, tmp_path / "z", codec=codec, chunk_size=5, frame_bytes=24)
    _same_arrays(flat, tmp_path / "z")
    cfg = json.loads((tmp_path / "z" / "scdl_gpu_compression.json").read_text())
    assert cfg["arrays"]["data.npy"]["compressor"]["id"] == codec
    assert [f["id"] for f in cfg["arrays"]["col_ptr.npy"]["filters"]] == ["delta"]  # uint8 columns: no shuffle


@pytest.mark.parametrize("n_cols", [300, 70_000], ids=["uint16-columns", "uint32-columns"])
def test_wider_column_dtypes_are_delta_coded_and_shuffled(tmp_path, n_cols):
    flat = write_archive(tmp_path / "flat", random_matrix(40, n_cols, "uint16", seed=1, density=0.002 if n_cols > 1000 else 0.2))
    compress_archive(flat, tmp_path / "z", chunk_size=9, frame_bytes=64)
    _same_arrays(flat, tmp_path / "z")
    a = open_arrays(tmp_path / "z")
    assert a.chunks.pipelines["col_ptr.npy"].config()["filters"][1] == {"id": "shuffle", "elementsize": a.col_ptr.itemsize}


def test_pipelines_round_trip_every_dtype_and_refuse_unknown_codecs():
    rng = np.random.default_rng(0)
    for dt in DATA_DTYPES:
        a = np.sort(rng.integers(0, 200, 1000)).astype(dt)
        for codec in CODECS:
            p = Pipeline.from_config(default_pipeline(codec, dt, columns=dt.startswith("u")).config(), "x")
            out = np.empty_like(a)
            p.decode_into(p.encode(a), out)
            assert out.tobytes() == a.tobytes()
    with pytest.raises(ArchiveError, match="unknown compressor 'blosc'"):
        Pipeline.from_config({"filters": [], "compressor": {"id": "blosc"}}, "x")
    with pytest.raises(ArchiveError, match="unknown filter 'zstd'"):
        Pipeline.from_config({"filters": [{"id": "zstd"}], "compressor": {"id": "zstd"}}, "x")
    with pytest.raises(ValueError, match="zstd level"):
        default_pipeline("zstd", "uint16", False, level=40)


@pytest.mark.parametrize("itemsize", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 4099])
def test_the_compiled_unshuffle_equals_numcodecs(itemsize, n):
    from numcodecs import Shuffle

    from scdl_gpu.archive._codecs import _unshuffle

    raw = np.random.default_rng(n).integers(0, 256, n * itemsize).astype(np.uint8)
    shuffled = np.frombuffer(Shuffle(elementsize=itemsize).encode(raw), np.uint8)
    out = np.empty(n * itemsize + 1, np.uint8)
    for dst in (out[:-1], out[1:]):  # aligned (whole items rebuilt at once) and not (byte by byte)
        dst[:] = 0
        _unshuffle(shuffled, dst, itemsize)
        assert dst.tobytes() == raw.tobytes()


def test_the_layout_and_its_metadata(flat, packed):
    info = open_arrays(packed).header.chunked_info
    assert open_arrays(packed).header.backend is Backend.COMPRESSED_CHUNKED_V0
    assert (info.chunk_size, info.num_chunks, info.total_rows, info.rows_of(4)) == (5, 5, N_ROWS, 3)
    for name in ("data.npy", "row_ptr.npy", "col_ptr.npy"):
        assert not (packed / name).exists()
    for k in range(5):
        d = packed / f"chunk_{k:05d}"
        assert sorted(p.name for p in d.iterdir()) == ["col_ptr.frames", "data.frames", "frames.json", "row_ptr.npy"]
        index = json.loads((d / "frames.json").read_text())
        for member, suffix in (("data.npy", "data.frames"), ("col_ptr.npy", "col_ptr.frames")):
            assert sum(index[member]["frames"]) == (d / suffix).stat().st_size
            assert len(index[member]["crc32c"]) == 8
    c = compression_summary(packed)
    assert c["raw_bytes"] == open_arrays(flat).nnz * 5 and c["arrays"]["data"]["codec"] == "shuffle+zstd-1"
    assert c["arrays"]["col_ptr"]["codec"] == "delta+zstd-1" and c["stored_bytes"] > 0
    assert compression_summary(flat) is None


def test_empty_chunks_and_an_empty_archive(tmp_path):
    m = random_matrix(20, 10, "float32", seed=2, density=0.4).tolil()
    m[5:10] = 0  # chunk 1 holds only empty rows
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    flat = write_archive(tmp_path / "flat", m)
    compress_archive(flat, tmp_path / "z", chunk_size=5)
    _same_arrays(flat, tmp_path / "z")
    assert open_arrays(tmp_path / "z").chunks.decoded(1)[0].size == 0
    empty = write_archive(tmp_path / "empty", sp.csr_matrix((4, 6), dtype=np.float32))
    compress_archive(empty, tmp_path / "ez", chunk_size=3)
    _same_arrays(empty, tmp_path / "ez")
    assert validation_report(tmp_path / "ez").ok


def test_recompressing_chunked_and_compressed_inputs_and_in_place(flat, packed, tmp_path):
    partition_scdl(flat, tmp_path / "chunked", chunk_size=4)
    compress_archive(tmp_path / "chunked", tmp_path / "from-chunked", codec="lz4", chunk_size=6)
    compress_archive(packed, tmp_path / "again", codec="zlib", chunk_size=7)  # reads across its chunks
    for out in ("from-chunked", "again"):
        _same_arrays(flat, tmp_path / out)
    compress_archive(packed, None, chunk_size=2)  # in place
    assert open_arrays(packed).chunks.chunk_size == 2
    _same_arrays(flat, packed)
    with pytest.raises(FileExistsError):
        compress_archive(flat, packed)
    with pytest.raises(ValueError, match="codec must be one of"):
        compress_archive(flat, tmp_path / "x", codec="snappy")
    with pytest.raises(ValueError, match="frame_bytes"):
        compress_archive(flat, tmp_path / "x", frame_bytes=12)
    assert not (tmp_path / "x").exists()


def test_dataset_reads_rows_equal_to_the_flat_archive(flat, packed):
    f, z = SingleCellMemMapDataset(flat), SingleCellMemMapDataset(packed)
    assert z._is_chunked and len(z) == len(f) and z.number_nonzero_values() == f.number_nonzero_values()
    for i in range(N_ROWS):
        assert torch.equal(f[i], z[i])
        for a, b in zip(f.get_row(i)[0], z.get_row(i)[0]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(f.get_row_padded(i)[0], z.get_row_padded(i)[0])
    with pytest.raises(ValueError, match="already chunked"):
        z.to_chunked(None)


# ---------------------------------------------------------------- damage


def _flip(path, at):
    b = bytearray(path.read_bytes())
    b[at % len(b)] ^= 0x5A
    path.write_bytes(bytes(b))


def _edit_index(member, key, change):
    def edit(d):
        doc = json.loads((d / "frames.json").read_text())
        doc[member][key] = change(doc[member][key])
        (d / "frames.json").write_text(json.dumps(doc))
    return edit


DAMAGE = {
    "truncated frames": (lambda d: (d / "data.frames").write_bytes((d / "data.frames").read_bytes()[:-3]), "data.frames"),
    "flipped byte": (lambda d: _flip(d / "col_ptr.frames", 7), "col_ptr.frames"),
    "flipped byte late": (lambda d: _flip(d / "data.frames", -2), "data.frames"),
    "wrong decoded size": (_edit_index("data.npy", "nbytes", lambda n: n + 4), "frames.json"),
    "wrong frame sizes": (_edit_index("col_ptr.npy", "frames", lambda f: [f[0] + 1] + f[1:-1] + [f[-1] - 1]), "col_ptr.frames"),
    "wrong checksum": (_edit_index("data.npy", "crc32c", lambda c: "0" * 8), "data.frames"),
    "index not JSON": (lambda d: (d / "frames.json").write_text("{"), "frames.json"),
    "frames missing": (lambda d: (d / "col_ptr.frames").unlink(), "col_ptr.frames"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_chunk_raises_archive_error_naming_it(packed, damage):
    hurt, name = DAMAGE[damage]
    hurt(packed / "chunk_00002")
    rows = np.arange(10, 15)  # chunk 2
    with pytest.raises(ArchiveError, match=rf"chunk_00002/{name}"):
        get_backend(packed, device="cpu").batch(rows)  # opening may already refuse (a missing file)
    with pytest.raises(ArchiveError, match=rf"chunk_00002/{name}"):
        SingleCellMemMapDataset(packed)[12]
    if damage != "frames missing":  # (a missing file is refused at open)
        get_backend(packed, device="cpu").batch(np.arange(0, 10))  # the other chunks still read
    report = validation_report(packed)
    assert not report.ok and any("chunk_00002" in p for p in report.problems)


def test_a_damaged_codec_description_is_refused_at_open(packed):
    cfg = packed / "scdl_gpu_compression.json"
    doc = json.loads(cfg.read_text())
    doc["arrays"]["data.npy"]["compressor"] = {"id": "pickle"}
    cfg.write_text(json.dumps(doc))
    with pytest.raises(ArchiveError, match="unknown compressor 'pickle'"):
        open_arrays(packed)
    cfg.unlink()
    with pytest.raises(ArchiveNotFoundError, match="scdl_gpu_compression.json"):
        open_arrays(packed)


def test_validate_reads_every_chunk(packed):
    assert validation_report(packed).ok
    cols = packed / "chunk_00004" / "col_ptr.frames"
    _flip(cols, 3)
    problems = validation_report(packed).problems
    assert any("chunk_00004/col_ptr.frames" in p for p in problems)


# ---------------------------------------------------------------- the cache


def test_the_cache_keeps_its_bound_and_drops_the_oldest():
    c = ChunkCache(limit=100)
    for k in range(5):
        c.put(k, (k,), 40)
        assert c.nbytes <= 100
    assert len(c) == 2 and c.get(0) is None and c.get(4) == (4,)
    c.get(3)
    c.put(5, (5,), 40)  # 3 was read after 4: 4 goes
    assert c.get(3) == (3,) and c.get(4) is None
    c.put(6, (6,), 101)  # larger than the bound: handed back, never kept
    assert c.get(6) is None and c.nbytes <= 100
    c.limit = 40
    assert c.nbytes <= 40 and len(c) == 1
    with pytest.raises(ValueError):
        c.limit = -1


@pytest.mark.parametrize("cache_bytes", [0, 150, 10_000])
def test_the_backend_holds_the_cache_bound(flat, packed, cache_bytes):
    f, z = get_backend(flat, device="cpu"), get_backend(packed, device="cpu", cache_bytes=cache_bytes)
    rows = np.random.default_rng(0).permutation(N_ROWS)
    for _ in range(3):  # decoded in groups of chunks that fit the bound; the same batch every time
        a, b = f.batch(rows), z.batch(rows)
        for name in ("crow", "col", "values"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert z.chunks.cache.nbytes <= cache_bytes
    if cache_bytes == 10_000:  # all five chunks fit: the later batches decode nothing
        assert len(z.chunks.cache) == 5 and z.chunks.cache.hits >= 10


def test_decoded_memory_is_reused_only_after_every_reader_let_go(packed):
    z = get_backend(packed, device="cpu", cache_bytes=150)  # ~1 chunk: every new chunk evicts one
    storage = z.chunks
    held = storage.decoded(0)[0][1:]  # a caller keeps part of chunk 0's values
    expect = held.copy()
    rows = np.arange(N_ROWS)
    for _ in range(3):
        z.batch(rows)  # decodes (and evicts) every chunk, into reused blocks where it can
    assert storage.spare.reused > 0
    np.testing.assert_array_equal(held, expect)  # chunk 0's block was never written again


# ---------------------------------------------------------------- upstream


def test_upstream_wheel_refuses_a_compressed_archive(packed):
    """bionemo-scdl 0.1.3 cannot parse backend 1001: it warns, then finds no data.npy."""
    pytest.importorskip("bionemo.scdl")  # the wheel is the test extra's reference implementation
    code = (
        "import warnings, sys\n"
        "from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as D\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    try:\n"
        "        D(sys.argv[1])\n"
        "    except FileNotFoundError as e:\n"
        "        print('refused:', e)\n"
        "    print(*(str(x.message) for x in w), sep='\\n')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(packed)], capture_output=True, text=True, timeout=120)
    assert "refused:" in out.stdout and "data.npy is missing" in out.stdout, out.stdout + out.stderr
    assert "Invalid backend value: 1001" in out.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_opening_maps_no_file_per_chunk(flat, tmp_path):
    """An archive of 10^8 rows has ~10^5 chunks, more maps than a process may hold by default
    (vm.max_map_count 65,530): chunk row pointers are read, and frames are mapped only to decode."""
    out = tmp_path / "many"
    compress_archive(flat, out, chunk_size=1)
    a = open_arrays(out)
    assert a.chunks.num_chunks == N_ROWS
    with open("/proc/self/maps") as f:
        maps = [line for line in f if str(out) in line]
    assert maps == []
    assert not a.chunks.row_ptr[0].flags.writeable
