"""Upstream's chunked layout (bionemo-framework PR #1424): bytes built from the spec, partition,
opening, damage, and the dataset API over chunks equal to the flat archive."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from scdl_gpu import SingleCellMemMapDataset, partition_scdl
from scdl_gpu.archive import ChunkedInfo, SCDLHeader, open_arrays, validation_report
from scdl_gpu.archive._chunked import ChunkedVector
from scdl_gpu.archive._constants import Backend
from scdl_gpu.errors import ArchiveError, ArchiveNotFoundError
from tests.backend.archives import random_matrix, write_archive

N_ROWS, N_COLS = 23, 15


@pytest.fixture
def flat(tmp_path):
    return write_archive(tmp_path / "flat", random_matrix(N_ROWS, N_COLS, "float32", seed=3, density=0.3))


@pytest.fixture
def chunked(flat, tmp_path):
    out = tmp_path / "chunked"
    partition_scdl(flat, out, chunk_size=5)
    return out


def _raw(path, dtype):
    return np.fromfile(path, dtype=np.dtype(dtype).newbyteorder("<"))


# ---------------------------------------------------------------- the bytes, from the spec


def test_partition_writes_the_specified_layout(flat, chunked):
    src = open_arrays(flat)
    rp = np.asarray(src.row_ptr, np.int64)
    dt = src.dtypes
    names = sorted(p.name for p in chunked.iterdir())
    assert [n for n in names if n.startswith("chunk_")] == [f"chunk_{k:05d}" for k in range(5)]
    for name in ("data.npy", "row_ptr.npy", "col_ptr.npy"):
        assert not (chunked / name).exists()  # the values live in the chunks only
    for k in range(5):
        lo, hi = 5 * k, min(5 * k + 5, N_ROWS)  # the last chunk holds the remainder: 3 rows
        d = chunked / f"chunk_{k:05d}"
        assert sorted(p.name for p in d.iterdir()) == ["col_ptr.npy", "data.npy", "row_ptr.npy"]
        np.testing.assert_array_equal(_raw(d / "row_ptr.npy", dt["row_ptr.npy"]), rp[lo : hi + 1] - rp[lo])
        a, b = rp[lo], rp[hi]
        np.testing.assert_array_equal(_raw(d / "data.npy", dt["data.npy"]), np.asarray(src.data)[a:b])
        np.testing.assert_array_equal(_raw(d / "col_ptr.npy", dt["col_ptr.npy"]), np.asarray(src.col_ptr)[a:b])
    # header: the flat header's bytes with backend 2, then flag 1 and >IIQ (global lengths kept)
    flat_header = (flat / "header.sch").read_bytes()
    expected = flat_header[:8] + struct.pack(">I", 2) + flat_header[12:] + b"\x01" + struct.pack(">IIQ", 5, 5, N_ROWS)
    assert (chunked / "header.sch").read_bytes() == expected
    h = SCDLHeader.load(chunked / "header.sch")
    assert h.backend is Backend.CHUNKED_MEMMAP_V0 and h.chunked_info == ChunkedInfo(5, 5, N_ROWS)
    for f in ("metadata.json", "version.json"):
        assert (chunked / f).read_bytes() == (flat / f).read_bytes()


def test_a_chunked_archive_built_by_hand_from_the_spec_opens(tmp_path):
    """No released writer makes this layout: the files below follow the spec byte by byte."""
    root = tmp_path / "hand"
    root.mkdir()
    rows = [[(0, 1.0), (2, 2.0)], [], [(1, 3.0)], [(0, 4.0), (1, 5.0), (2, 6.0)], []]  # 5 rows, chunks of 2
    for k in range(3):
        d = root / f"chunk_{k:05d}"
        d.mkdir()
        part = rows[2 * k : 2 * k + 2]
        (d / "row_ptr.npy").write_bytes(np.cumsum([0] + [len(r) for r in part]).astype("<u8").tobytes())
        (d / "col_ptr.npy").write_bytes(np.array([c for r in part for c, _ in r], "<u4").tobytes())
        (d / "data.npy").write_bytes(np.array([v for r in part for _, v in r], "<f4").tobytes())
    (root / "metadata.json").write_text(json.dumps({"num_rows": 5}))
    (root / "version.json").write_text('"0.1.3"')

    def arr(name, n, code):  # name, length u64, dtype u32, has_shape 0
        return struct.pack(">I", len(name)) + name + struct.pack(">QI", n, code) + b"\x00"

    header = (b"SCDL" + bytes([0, 1, 0, 1]) + struct.pack(">II", 2, 3)
              + arr(b"DATA", 6, 6) + arr(b"ROWPTR", 6, 4) + arr(b"COLPTR", 6, 3)
              + struct.pack(">I", 0) + b"\x01" + struct.pack(">IIQ", 2, 3, 5))
    (root / "header.sch").write_bytes(header)
    ds = SingleCellMemMapDataset(root)
    assert ds._is_chunked and len(ds) == 5 and ds.number_nonzero_values() == 6
    for i, r in enumerate(rows):
        (values, cols), _, _ = ds.get_row(i)
        assert cols.tolist() == [c for c, _ in r] and values.tolist() == [v for _, v in r]
    np.testing.assert_array_equal(ds.row_index, [0, 2, 2, 3, 6, 6])
    assert SCDLHeader.load(root / "header.sch").serialize() == header


# ---------------------------------------------------------------- reading: same rows as the flat archive


def test_dataset_api_equals_the_flat_archive(flat, chunked):
    f, c = SingleCellMemMapDataset(flat), SingleCellMemMapDataset(chunked)
    assert c._is_chunked and not f._is_chunked
    assert len(c) == len(f) == N_ROWS and c.shape() == f.shape()
    assert c.number_of_values() == f.number_of_values() and c.number_nonzero_values() == f.number_nonzero_values()
    assert c.sparsity() == f.sparsity()
    for i in list(range(N_ROWS)) + [-1, -N_ROWS]:
        (v1, c1), _, _ = f.get_row(i)
        (v2, c2), _, _ = c.get_row(i)
        np.testing.assert_array_equal(v1, v2)
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(f.get_row_padded(i)[0], c.get_row_padded(i)[0])
        assert torch.equal(f[i], c[i])
        for col in range(N_COLS):
            assert f.get_row_column(i, col) == c.get_row_column(i, col)
    with pytest.raises(IndexError):
        c.get_row(N_ROWS)
    np.testing.assert_array_equal(c.row_index, f.row_index)
    assert c.row_index.dtype == f.row_index.dtype


def test_chunked_vector_reads_like_the_flat_array(flat, chunked):
    flat_data = np.asarray(open_arrays(flat).data)
    v = open_arrays(chunked).data
    assert isinstance(v, ChunkedVector) and len(v) == v.size == len(flat_data) and v.dtype == flat_data.dtype
    n = len(flat_data)
    for lo in range(0, n, 3):
        for hi in (lo, lo + 1, lo + 7, n):
            np.testing.assert_array_equal(v[lo:hi], flat_data[lo:hi])
    assert v[-1] == flat_data[-1] and v[0] == flat_data[0] and v.max() == flat_data.max()
    np.testing.assert_array_equal(np.asarray(v), flat_data)
    with pytest.raises(IndexError):
        v[n]
    with pytest.raises(IndexError, match="step 1"):
        v[::2]


@pytest.mark.parametrize("chunk_size", [1, 7, 22, 23, 1000])
def test_every_chunk_size(flat, tmp_path, chunk_size):
    out = tmp_path / f"c{chunk_size}"
    h = partition_scdl(flat, out, chunk_size=chunk_size)
    assert h.chunked_info.num_chunks == -(-N_ROWS // chunk_size)
    f, c = open_arrays(flat), open_arrays(out)
    np.testing.assert_array_equal(c.row_ptr, f.row_ptr)
    np.testing.assert_array_equal(np.asarray(c.col_ptr), np.asarray(f.col_ptr))
    assert validation_report(out).problems == []


def test_empty_rows_make_empty_chunks(tmp_path):
    m = random_matrix(12, 6, "float32", seed=1, density=0.4)
    m.data[m.indptr[4] : m.indptr[8]] = 0  # rows 4..7: one whole chunk of 4 without values
    m.eliminate_zeros()
    flat = write_archive(tmp_path / "flat", m)
    out = tmp_path / "c"
    partition_scdl(flat, out, chunk_size=4)
    assert (out / "chunk_00001" / "data.npy").stat().st_size == 0
    c, f = SingleCellMemMapDataset(out), SingleCellMemMapDataset(flat)
    for i in range(12):
        np.testing.assert_array_equal(c.get_row_padded(i)[0], f.get_row_padded(i)[0])
    assert validation_report(out).problems == []


def test_zero_row_archive(tmp_path):
    import scipy.sparse as sp

    flat = write_archive(tmp_path / "flat", sp.csr_matrix((0, 4), dtype=np.float32))
    h = partition_scdl(flat, tmp_path / "c", chunk_size=3)
    assert h.chunked_info == ChunkedInfo(3, 0, 0)
    ds = SingleCellMemMapDataset(tmp_path / "c")
    assert len(ds) == 0 and ds._is_chunked


# ---------------------------------------------------------------- writing: to_chunked, errors, atomicity


def test_to_chunked_new_path_and_in_place(flat, tmp_path):
    ds = SingleCellMemMapDataset(flat)
    rows = [ds.get_row_padded(i)[0] for i in range(N_ROWS)]
    out = ds.to_chunked(str(tmp_path / "c"), chunk_size=6)
    assert out._is_chunked and out.header.chunked_info.chunk_size == 6 and not ds._is_chunked
    with pytest.raises(ValueError, match="already chunked"):
        out.to_chunked()
    same = ds.to_chunked(chunk_size=10)  # in place: the flat archive is replaced atomically
    assert same is ds and ds._is_chunked and not (flat / "data.npy").exists()
    assert [p.name for p in flat.parent.iterdir() if p.name.startswith(".flat.")] == []
    for i in range(N_ROWS):
        np.testing.assert_array_equal(ds.get_row_padded(i)[0], rows[i])


def test_delete_original_only_after_the_output_is_complete(flat, tmp_path, monkeypatch):
    from scdl_gpu.archive import _partition

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(_partition, "write_manifest", fail)
    with pytest.raises(OSError, match="disk full"):
        partition_scdl(flat, tmp_path / "c", chunk_size=5, delete_original=True)
    assert flat.is_dir() and not (tmp_path / "c").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.")] == []  # no partial left
    monkeypatch.undo()
    partition_scdl(flat, tmp_path / "c", chunk_size=5, delete_original=True)
    assert not flat.exists() and len(SingleCellMemMapDataset(tmp_path / "c")) == N_ROWS


def test_bad_requests(flat, chunked, tmp_path):
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size must be at least 1"):
            partition_scdl(flat, tmp_path / "x", chunk_size=bad)
    with pytest.raises(TypeError):
        partition_scdl(flat, tmp_path / "x", chunk_size=2.5)
    with pytest.raises(FileExistsError):
        partition_scdl(flat, chunked)
    with pytest.raises(FileExistsError):
        partition_scdl(flat, flat)
    with pytest.raises(ValueError, match="already chunked"):
        partition_scdl(chunked, tmp_path / "x")
    with pytest.raises(ArchiveNotFoundError):
        partition_scdl(tmp_path / "nothing", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    ds = SingleCellMemMapDataset(chunked)
    for call in (ds.save, lambda: ds.cast_data_to_dtype("float64")):
        with pytest.raises(ValueError, match="chunked archive"):
            call()


def test_concat_reads_chunks_into_a_flat_archive(flat, chunked, tmp_path):
    out = tmp_path / "cat"
    SingleCellMemMapDataset(chunked).concat(SingleCellMemMapDataset(flat), output_path=str(out))
    cat, f = SingleCellMemMapDataset(out), SingleCellMemMapDataset(flat)
    assert not cat._is_chunked and len(cat) == 2 * N_ROWS
    for i in range(N_ROWS):
        np.testing.assert_array_equal(cat.get_row_padded(i)[0], f.get_row_padded(i)[0])
        np.testing.assert_array_equal(cat.get_row_padded(N_ROWS + i)[0], f.get_row_padded(i)[0])


# ---------------------------------------------------------------- damage: ArchiveError naming the chunk file


def _damage_cases():
    def truncate(p):
        p.write_bytes(p.read_bytes()[:-4])

    def grow(p):
        p.write_bytes(p.read_bytes() + b"\0" * 4)

    def rp_not_zero(p):
        a = _raw(p, "uint8").copy()
        a[0] = 1
        p.write_bytes(a.tobytes())

    def rp_decreases(p):
        a = _raw(p, "uint8").copy()
        a[2] = 0
        a[1] = 9
        p.write_bytes(a.tobytes())

    return [
        pytest.param("chunk_00002/data.npy", truncate, "chunk_00002/data.npy holds", id="data-truncated"),
        pytest.param("chunk_00002/col_ptr.npy", grow, "chunk_00002/col_ptr.npy holds", id="cols-extra"),
        pytest.param("chunk_00001/row_ptr.npy", lambda p: p.write_bytes(p.read_bytes()[:-1]),
                     "chunk_00001/row_ptr.npy holds", id="rowptr-short"),
        pytest.param("chunk_00003/row_ptr.npy", rp_not_zero, "chunk_00003/row_ptr.npy starts at 1", id="rowptr-start"),
        pytest.param("chunk_00002/row_ptr.npy", rp_decreases, "chunk_00002/row_ptr.npy decreases", id="rowptr-order"),
        pytest.param("chunk_00004", shutil.rmtree, "chunk_00004 is missing", id="chunk-missing"),
        pytest.param("chunk_00005", lambda p: p.mkdir(), "chunk_00005 is not one of the 5 chunks", id="chunk-extra"),
    ]


@pytest.mark.parametrize(("target", "damage", "message"), _damage_cases())
def test_damaged_chunks_name_the_file(chunked, target, damage, message):
    damage(chunked / target)
    with pytest.raises(ArchiveError, match=message):
        SingleCellMemMapDataset(chunked)
    problems = validation_report(chunked).problems
    assert any(message.split(" ")[0] in p for p in problems), problems


def test_header_lengths_must_match_the_chunks(chunked):
    h = SCDLHeader.load(chunked / "header.sch")
    h.get_array("DATA").length += 1
    h.save(chunked / "header.sch")
    with pytest.raises(ArchiveError, match="says DATA has .* its chunks hold"):
        open_arrays(chunked)


def test_a_column_past_the_genes_in_a_chunk_is_named_without_crashing(chunked):
    """In a subprocess: a wild read in the compiled gather would kill the interpreter."""
    cols = chunked / "chunk_00002" / "col_ptr.npy"
    a = _raw(cols, "uint8").copy()
    a[0] = 200
    cols.write_bytes(a.tobytes())
    code = f"""
import numpy as np
from scdl_gpu.backend import get_backend
from scdl_gpu.errors import ArchiveError
b = get_backend({str(chunked)!r}, device="cpu")
try:
    b.batch(np.arange(23))
except ArchiveError as e:
    print("ERR", e)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "chunk_00002/col_ptr.npy" in r.stdout and "column 200" in r.stdout
    assert any("chunk_00002/col_ptr.npy" in p for p in validation_report(chunked).problems)


def test_value_files_are_the_chunks_files_in_row_order(flat, chunked):
    from scdl_gpu.archive._chunked import value_files

    assert value_files(flat) == [flat / "data.npy", flat / "col_ptr.npy"]
    files = value_files(chunked)
    assert files == [chunked / f"chunk_{k:05d}" / n for k in range(5) for n in ("data.npy", "col_ptr.npy")]
    assert sum(f.stat().st_size for f in files) == sum(f.stat().st_size for f in value_files(flat))


# ---------------------------------------------------------------- the kernel's limit on memory maps

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_map_limit_is_read_from_the_kernel():
    from scdl_gpu.archive import _memmap

    limit, used = _memmap._max_map_count(), _memmap._maps_in_use()
    assert limit > 0 and 0 < used < limit


def test_more_chunks_than_the_map_limit_allows_say_so(chunked, monkeypatch):
    """An archive of ~10^5 small chunks needs twice as many maps; past vm.max_map_count mmap failed
    part-way with a bare ENOMEM, which read as a damaged file. Now the open says what and why."""
    import errno

    from scdl_gpu.archive import _memmap

    monkeypatch.setattr(_memmap, "MAP_CHECK_FROM", 1)
    monkeypatch.setattr(_memmap, "_maps_in_use", lambda: 60_000)
    monkeypatch.setattr(_memmap, "_max_map_count", lambda: 60_000 + _memmap.MAP_RESERVE + 9)  # room for 4.5 chunks
    with pytest.raises(OSError) as info:
        open_arrays(chunked)  # 5 chunks: 10 maps
    e = info.value
    assert e.errno == errno.ENOMEM and not isinstance(e, ArchiveError)
    assert str(chunked) in str(e) and "5 chunks" in str(e) and "vm.max_map_count" in str(e) and "10 memory maps" in str(e)
    monkeypatch.setattr(_memmap, "_max_map_count", lambda: 60_000 + _memmap.MAP_RESERVE + 10)  # just enough
    assert open_arrays(chunked).chunks.num_chunks == 5
    monkeypatch.setattr(_memmap, "_max_map_count", lambda: None)  # no /proc: nothing to check
    monkeypatch.setattr(_memmap, "_maps_in_use", lambda: pytest.fail("counted maps without a limit"))
    assert open_arrays(chunked).chunks.num_chunks == 5


@pytest.mark.parametrize("err, raised", [("ENOMEM", OSError), ("EIO", ArchiveError)])
def test_running_out_of_memory_is_not_called_damage(chunked, monkeypatch, err, raised):
    import errno

    from scdl_gpu.archive import _memmap

    def fail(*args, **kwargs):
        raise OSError(getattr(errno, err), os.strerror(getattr(errno, err)))

    monkeypatch.setattr(_memmap.np, "memmap", fail)
    with pytest.raises(raised) as info:
        open_arrays(chunked)
    assert ("damaged" in str(info.value)) == (raised is ArchiveError)
    if raised is OSError:
        assert not isinstance(info.value, ArchiveError)
