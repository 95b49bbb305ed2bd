"""RemoteArchive against a local S3 server (moto on 127.0.0.1): open, read every row as the local
archive holds it, the range cache's bound, damaged and missing remote files, redacted credentials."""

from __future__ import annotations

import logging
import traceback

import numpy as np
import pytest

from scdl_gpu.archive import RemoteArchive, open_arrays, partition_scdl
from scdl_gpu.archive._remote import MERGE_GAP, RangeCache
from scdl_gpu.archive._summary import archive_summary
from scdl_gpu.archive._urls import is_url, redact
from scdl_gpu.errors import ArchiveError, ArchiveNotFoundError
from tests.backend.archives import random_matrix, write_archive
from tests.s3 import s3  # noqa: F401  (the fixture)

SECRET = "wJalrXUtnFEMI-K7MDENG"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    m = random_matrix(400, 300, "uint16", seed=3, density=0.1)
    return write_archive(tmp_path_factory.mktemp("remote") / "a.scdl", m), m


def _rows_of(m, rows):
    return (np.concatenate([m.data[m.indptr[r] : m.indptr[r + 1]] for r in rows]),
            np.concatenate([m.indices[m.indptr[r] : m.indptr[r + 1]] for r in rows]))


def _spans(row_ptr, rows):
    rows = np.asarray(rows)
    return row_ptr[rows].astype(np.int64), (row_ptr[rows + 1].astype(np.int64) - row_ptr[rows].astype(np.int64))


@pytest.mark.parametrize("block_bytes", [1 << 10, 1 << 22], ids=["small-blocks", "default-blocks"])
def test_every_row_reads_as_the_local_archive_holds_it(s3, local, block_bytes):
    path, m = local
    url = s3.upload(path)
    with RemoteArchive(url, s3.storage_options, block_bytes=block_bytes) as r:
        here = open_arrays(path)
        assert (r.n_rows, r.nnz, r.dtypes, r.width) == (here.n_rows, here.nnz, here.dtypes, 300)
        assert np.array_equal(r.row_ptr, here.row_ptr)
        rows = np.random.default_rng(0).permutation(r.n_rows)
        for batch in (rows, np.arange(r.n_rows), rows[:1], np.array([5, 5, 6, 7, 5])):  # repeats too
            data, cols = r.read_spans(*_spans(r.row_ptr, batch))
            want = _rows_of(m, batch)
            assert data.dtype == np.uint16 and np.array_equal(data, want[0]) and np.array_equal(cols, want[1])
        assert np.array_equal(r.data[10:5000], m.data[10:5000]) and r.col_ptr.max() == m.indices.max()


def test_a_chunked_archive_reads_through_its_chunks(s3, local, tmp_path):
    path, m = local
    partition_scdl(path, chunked := tmp_path / "c.scdl", chunk_size=64)
    with RemoteArchive(s3.upload(chunked), s3.storage_options, block_bytes=1 << 10) as r:
        assert r.n_rows == 400 and len(r._offsets) == 8  # 7 chunks
        rows = np.random.default_rng(1).permutation(400)
        data, cols = r.read_spans(*_spans(r.row_ptr, rows))
        assert np.array_equal(data, _rows_of(m, rows)[0]) and np.array_equal(cols, _rows_of(m, rows)[1])
        assert np.array_equal(r.data[0 : r.nnz], m.data)  # a slice across every chunk
        with pytest.raises(ValueError, match="crosses a chunk boundary"):
            r.read_spans([int(r._offsets[1]) - 1], [2])


def test_the_cache_stays_under_its_bound(s3, local):
    path, m = local
    block = 1 << 10
    with RemoteArchive(s3.upload(path), s3.storage_options, block_bytes=block, cache_bytes=5 * block) as r:
        cache = r.cache
        rng = np.random.default_rng(2)
        for _ in range(30):  # contiguous runs of rows: long spans, read through the blocks
            lo = int(rng.integers(0, r.n_rows - 40))
            batch = np.arange(lo, lo + 40)
            data, _ = r.read_spans(*_spans(r.row_ptr, batch))
            assert np.array_equal(data, _rows_of(m, batch)[0])
            held = sum(b.nbytes for b in cache._blocks.values())
            assert held == cache.held_bytes <= 5 * block
        assert cache.held_bytes > 0
    with RemoteArchive(s3.upload(path), s3.storage_options, block_bytes=block, cache_bytes=64 * block) as r:
        batch = np.arange(100, 140)
        first = r.read_spans(*_spans(r.row_ptr, batch))
        before = r.cache.requests
        again = r.read_spans(*_spans(r.row_ptr, batch))
        assert r.cache.requests == before  # served from the cached blocks
        assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_random_rows_are_read_exactly_not_by_block(s3, tmp_path):
    m = random_matrix(2000, 2000, "float32", seed=4, density=0.2)  # ~3.2 MB of values: rows far apart
    path = write_archive(tmp_path / "wide.scdl", m)
    with RemoteArchive(s3.upload(path), s3.storage_options, cache_bytes=1 << 20) as r:  # smaller than the files
        assert not r.cache.fits
        rows = np.arange(0, 2000, 250)  # 400 KB apart: no two merge
        starts, lengths = _spans(r.row_ptr, rows)
        data, cols = r.read_spans(starts, lengths)
        assert np.array_equal(data, _rows_of(m, rows)[0])
        need = int(lengths.sum()) * (4 + 2)
        assert r.cache.fetched_bytes == need and r.cache.requests == 2 * np.count_nonzero(lengths)  # not 4 MiB blocks
        assert 250 * 2000 * 0.2 * 4 > MERGE_GAP
        assert r.cache.held_bytes == 0


def test_an_archive_that_fits_the_cache_is_read_once(s3, tmp_path):
    m = random_matrix(2000, 2000, "float32", seed=4, density=0.2)
    path = write_archive(tmp_path / "wide.scdl", m)
    with RemoteArchive(s3.upload(path), s3.storage_options, block_bytes=1 << 20) as r:  # 256 MiB: it fits
        assert r.cache.fits
        rows = np.random.default_rng(6).permutation(r.n_rows)
        for batch in np.array_split(rows, 4):  # random rows: whole blocks, kept
            assert np.array_equal(r.read_spans(*_spans(r.row_ptr, batch))[0], _rows_of(m, batch)[0])
        requests, fetched = r.cache.requests, r.cache.fetched_bytes
        assert fetched == r.cache.held_bytes == r.nnz * (4 + 2)  # each byte once
        data, cols = r.read_spans(*_spans(r.row_ptr, rows))  # a second epoch reads nothing
        assert r.cache.requests == requests and np.array_equal(cols, _rows_of(m, rows)[1])


def test_file_urls_open_without_a_server(local):
    path, m = local
    with RemoteArchive(f"file://{path}") as r:
        data, _ = r.read_spans(*_spans(r.row_ptr, [3, 2, 1]))
        assert np.array_equal(data, _rows_of(m, [3, 2, 1])[0])
        mirror = r.local
        assert (mirror / "row_ptr.npy").stat().st_size == (path / "row_ptr.npy").stat().st_size
    assert not mirror.exists()  # removed on close


def test_info_of_a_remote_archive_lists_every_file(s3, local):
    path, _ = local
    url = s3.upload(path)
    s = archive_summary(url, s3.storage_options)
    here = archive_summary(path)
    assert s["path"] == url
    assert {k: v for k, v in s.items() if k != "path"} == {k: v for k, v in here.items() if k != "path"}


@pytest.mark.parametrize("victim, cut, expect", [
    ("data.npy", 4, r"/data\.npy holds \d+ uint16 values but row_ptr\.npy ends at \d+ \(truncated"),
    ("col_ptr.npy", 4, r"/col_ptr\.npy holds"),
    ("data.npy", 3, r"data\.npy is \d+ bytes, not a multiple of the 2-byte uint16 items"),
    ("header.sch", 3, r"/header\.sch"),
    ("row_ptr.npy", 4, r"/data\.npy holds \d+ uint16 values but row_ptr\.npy ends at"),
])
def test_a_damaged_remote_file_is_an_archive_error_naming_its_url(s3, local, victim, cut, expect):
    path, _ = local
    url = s3.upload(path)
    key = f"{url[len('s3://'):]}/{victim}"
    s3.fs.pipe(key, s3.fs.cat(key)[:-cut])  # truncated
    with pytest.raises(ArchiveError, match=expect) as e:
        RemoteArchive(url, s3.storage_options)
    assert url in str(e.value) and "scdl-remote-" not in str(e.value)


def test_a_file_truncated_after_open_fails_the_read_naming_its_url(s3, local):
    path, _ = local
    url = s3.upload(path)
    with RemoteArchive(url, s3.storage_options) as r:
        key = f"{url[len('s3://'):]}/data.npy"
        s3.fs.pipe(key, s3.fs.cat(key)[: r.nnz])  # half the values are gone
        with pytest.raises(ArchiveError, match=rf"{url}/data\.npy returned \d+ bytes at offset 0, expected"):
            r.read_spans([0], [r.nnz])


def test_missing_archives_say_so(s3, local):
    path, _ = local
    url = s3.upload(path)
    with pytest.raises(ArchiveNotFoundError, match=r"No SCDL archive at s3://.*/nothing-here"):
        RemoteArchive(url.rsplit("/", 1)[0] + "/nothing-here", s3.storage_options)
    with pytest.raises(ArchiveNotFoundError, match="No SCDL archive at s3://no-such-bucket-x/a"):
        RemoteArchive("s3://no-such-bucket-x/a", s3.storage_options)
    s3.fs.rm(f"{url[len('s3://'):]}/metadata.json")
    with pytest.raises(ArchiveNotFoundError, match="holds no metadata.json"):
        RemoteArchive(url, s3.storage_options)
    with pytest.raises(ValueError, match="not a URL"):
        RemoteArchive(str(path))


def test_credentials_never_reach_errors_or_logs(s3, local, caplog):
    path, _ = local
    url = s3.upload(path)
    caplog.set_level(logging.DEBUG, logger="scdl_gpu")
    bad = f"s3://AKIDEXAMPLE:{SECRET}@{url[len('s3://'):]}-missing?X-Amz-Signature={SECRET}&X-Amz-Credential=AKIDEXAMPLE"
    with pytest.raises(ArchiveError) as e:
        RemoteArchive(bad, s3.storage_options)
    text = "".join(traceback.format_exception(e.value))
    assert SECRET not in text and "AKIDEXAMPLE" not in text and "***" in str(e.value)
    signed = f"{url}?X-Amz-Signature={SECRET}"
    with RemoteArchive(url, s3.storage_options) as r:  # a good one logs its URL
        r.read_spans([0], [10])
    assert url in caplog.text
    assert SECRET not in caplog.text
    assert redact(signed) == f"{url}?***"


@pytest.mark.parametrize("text, want", [
    ("s3://key:secret@bucket/a.scdl", "s3://***@bucket/a.scdl"),
    ("https://host/a.scdl?X-Amz-Signature=abc&b=2#frag", "https://host/a.scdl?***"),
    ("Cannot read gs://b/a/data.npy: 403 for 'https://u:p@h/x?sig=1' (twice)", "Cannot read gs://b/a/data.npy: 403 for 'https://***@h/x?***' (twice)"),
    ("http://host:8080/a/b.scdl", "http://host:8080/a/b.scdl"),
    ("no url here: /data/a.scdl", "no url here: /data/a.scdl"),
])
def test_redact(text, want):
    assert redact(text) == want


def test_is_url():
    assert is_url("s3://b/a") and is_url("file:///tmp/a") and is_url("https://h/a")
    assert not is_url("/tmp/a") and not is_url("a/b") and not is_url(None)


def test_the_range_cache_checks_its_arguments():
    with pytest.raises(ValueError, match="block_bytes"):
        RangeCache(None, [], [], [], block_bytes=0)


def test_a_listing_that_leads_out_of_the_archive_is_refused(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/hostile-{tmp_path.name}.scdl"
    fs.pipe({f"{root}/metadata.json": b"{}", f"{root}/../escape.txt": b"x"})  # a key no mirror may write
    try:
        with pytest.raises(ArchiveError, match=r"lists .*escape\.txt.*, which is not a plain path inside the archive"):
            RemoteArchive(f"memory://{root}")
    finally:
        fs.store.clear()


def test_read_spans_checks_its_arguments(local):
    path, m = local
    with RemoteArchive(f"file://{path}") as r:
        for starts, lengths in (([-1], [2]), ([0], [-1]), ([r.nnz - 1], [2])):
            with pytest.raises(IndexError, match="spans outside the"):
                r.read_spans(starts, lengths)
        with pytest.raises(ValueError, match="1-D arrays of one length"):
            r.read_spans([0, 1], [1])
        data, cols = r.read_spans([r.nnz, 0], [0, 0])  # empty spans, even at the end
        assert data.shape == cols.shape == (0,)
    with pytest.raises(ValueError, match="is closed"):
        r.read_spans([0], [1])
