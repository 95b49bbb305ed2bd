"""The checksum manifest: its format, verify_manifest's report, and every writer path recording one."""

from __future__ import annotations

import json
import os
import shutil

import google_crc32c
import numpy as np
import pytest

from scdl_gpu import SingleCellMemMapDataset
from scdl_gpu.archive import ArchiveWriter, concat_archives
from scdl_gpu.archive import _checksums
from scdl_gpu.archive._cast import cast_archive_data
from scdl_gpu.archive._checksums import MANIFEST_FILE, file_checksum, has_manifest, verify_manifest, write_manifest
from scdl_gpu.archive._validate import validate_archive
from scdl_gpu.collection import SingleCellCollection
from scdl_gpu.convert import convert_h5ad, convert_many
from tests.conftest import make_adata, random_csr

def _manifest(path):
    return json.loads((path / MANIFEST_FILE).read_text())


def _assert_verified(path):
    """A manifest listing exactly the archive's files, all matching, and a valid archive."""
    assert has_manifest(path)
    listed = set(_manifest(path)["files"])
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    assert listed == on_disk
    assert verify_manifest(path) == []
    assert validate_archive(path) == []


@pytest.fixture(scope="module")
def h5ads(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    paths = []
    for k in range(2):
        p = root / f"in{k}.h5ad"
        make_adata(random_csr(30 + k, 50, seed=k), seed=k).write_h5ad(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def converted(h5ads, tmp_path_factory):
    return convert_h5ad(h5ads[0], tmp_path_factory.mktemp("conv") / "a", use_X_not_raw=True)


@pytest.fixture
def archive(converted, tmp_path):
    return shutil.copytree(converted, tmp_path / "a")


# -- format ------------------------------------------------------------------------------------------
def test_manifest_format(converted):
    m = _manifest(converted)
    assert (m["format"], m["version"], m["algorithm"]) == ("scdl_gpu-checksums", 1, "crc32c")
    for rel in ("data.npy", "col_ptr.npy", "row_ptr.npy", "header.sch", "metadata.json", "version.json",
                "scdl_gpu.json", "var_features/dataframe_0.parquet", "var_features/names_0.arrow",
                "obs_features/labels.json", "obs_features/cumulative_sum_index.npy"):
        data = (converted / rel).read_bytes()
        assert m["files"][rel] == {"size": len(data), "checksum": f"{google_crc32c.value(data):08x}"}, rel
    assert MANIFEST_FILE not in m["files"]


def test_streamed_checksum_equals_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_checksums, "_BLOCK", 7)  # many blocks, the last one short
    data = np.random.default_rng(0).bytes(1000)
    (tmp_path / "f").write_bytes(data)
    assert file_checksum(tmp_path / "f") == (1000, f"{google_crc32c.value(data):08x}")
    (tmp_path / "e").write_bytes(b"")
    assert file_checksum(tmp_path / "e") == (0, "00000000")


def test_write_replaces_atomically_and_leaves_no_temp(archive):
    (archive / "extra.txt").write_text("new")
    before = (archive / MANIFEST_FILE).read_text()
    assert write_manifest(archive) == archive / MANIFEST_FILE
    assert (archive / MANIFEST_FILE).read_text() != before and "extra.txt" in _manifest(archive)["files"]
    assert not [p for p in archive.iterdir() if p.name.endswith(".tmp")]
    assert verify_manifest(archive) == []


def test_write_refuses_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        write_manifest(tmp_path / "nothing")
    assert not has_manifest(tmp_path / "nothing")


# -- verify_manifest ---------------------------------------------------------------------------------
def _one(problems, *fragments):
    hits = [p for p in problems if all(f in p for f in fragments)]
    assert len(hits) == 1 and len(problems) == 1, problems
    return hits[0]


def test_flipped_byte_changes_checksum(archive):
    f = archive / "data.npy"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))
    _one(verify_manifest(archive), str(f), "does not match its recorded crc32c checksum")
    assert verify_manifest(archive, contents=False) == []  # same size


def test_missing_resized_and_unlisted_files(archive):
    (archive / "var_features" / "names_0.arrow").unlink()
    with open(archive / "col_ptr.npy", "ab") as f:
        f.write(b"\0\0")
    (archive / "obs_features" / "stray.parquet").write_bytes(b"x")
    problems = verify_manifest(archive, contents=False)
    assert len(problems) == 3, problems
    assert any("names_0.arrow is missing" in p for p in problems)
    assert any("col_ptr.npy is" in p and "bytes but was" in p for p in problems)
    assert any("stray.parquet is not listed" in p for p in problems)


def test_temporary_files_are_not_compared(archive):
    # In-flight names of our writers: validate reports them as leftovers instead.
    (archive / "data.npy.partial").write_bytes(b"x")
    (archive / "var_features" / ".labels.json.123.tmp").write_bytes(b"x")
    (archive / ".nfs000000012345").write_bytes(b"x")
    assert verify_manifest(archive) == []


@pytest.mark.parametrize("damage", ["flip-hex", "not-json", "other-version", "no-files"])
def test_damaged_manifest_is_blamed_not_the_files(archive, damage):
    path = archive / MANIFEST_FILE
    m = _manifest(archive)
    if damage == "flip-hex":  # still valid JSON, but its own checksum catches it
        c = m["files"]["data.npy"]["checksum"]
        m["files"]["data.npy"]["checksum"] = ("0" if c[0] != "0" else "1") + c[1:]
        path.write_text(json.dumps(m))
    elif damage == "not-json":
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "other-version":
        m["version"] = 2
        path.write_text(json.dumps(m))
    else:
        del m["files"]
        path.write_text(json.dumps(m))
    line = _one(verify_manifest(archive), str(path))
    assert "data.npy" not in line.replace(MANIFEST_FILE, "")


def test_no_manifest(archive):
    (archive / MANIFEST_FILE).unlink()
    assert not has_manifest(archive)
    _one(verify_manifest(archive), "has no checksum manifest")


def test_symlink_loop_is_walked_once(archive):
    os.symlink("..", archive / "var_features" / "loop")
    write_manifest(archive)
    assert not any("loop" in rel for rel in _manifest(archive)["files"])
    assert verify_manifest(archive) == []


# -- every writer records a manifest -----------------------------------------------------------------------
def test_convert_h5ad(converted):
    _assert_verified(converted)


def test_convert_many_and_overwrite(h5ads, tmp_path):
    out = convert_many(h5ads, tmp_path / "m", use_X_not_raw=True).archive
    _assert_verified(out)
    out = convert_many(h5ads[:1], out, use_X_not_raw=True, overwrite=True).archive
    _assert_verified(out)
    assert SingleCellMemMapDataset(out).number_of_rows() == 30


def test_archive_writer_with_neighbors(tmp_path):
    with ArchiveWriter(tmp_path / "w", n_vars=5) as w:
        w.append_rows(np.array([0, 2, 3]), np.array([0, 4, 1], dtype=w.col_dtype), np.ones(3, np.float32))
        w.append_neighbor_rows(np.array([0, 1, 1]), np.array([1]), np.array([0.5]))
        w.add_var_block(2, {"gene": np.array(list("abcde"), dtype=object)}, None)
        w.commit()
    assert "neighbor_indptr.npy" in _manifest(tmp_path / "w")["files"]
    _assert_verified(tmp_path / "w")


def test_concat_into_new_and_in_place(converted, h5ads, tmp_path):
    b = convert_h5ad(h5ads[1], tmp_path / "b", use_X_not_raw=True)
    _assert_verified(concat_archives([converted, b], tmp_path / "c"))
    a = SingleCellMemMapDataset(shutil.copytree(converted, tmp_path / "a"))
    a.concat(SingleCellMemMapDataset(b))  # in place: replaces a
    assert a.number_of_rows() == 61
    _assert_verified(tmp_path / "a")


def test_collection_flatten(h5ads, tmp_path):
    d = tmp_path / "h5ads"
    d.mkdir()
    for p in h5ads:
        shutil.copy(p, d)
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad_multi(d, max_workers=1, use_X_not_raw=True)
    coll.flatten(tmp_path / "flat")
    _assert_verified(tmp_path / "flat")


def test_dataset_from_h5ad(h5ads, tmp_path):
    SingleCellMemMapDataset(tmp_path / "d", h5ad_path=h5ads[0], use_X_not_raw=True)
    _assert_verified(tmp_path / "d")


def test_cast_records_a_new_manifest(archive):
    cast_archive_data(archive, "uint16")
    _assert_verified(archive)


def test_dataset_save_records_a_manifest(tmp_path):
    ds = SingleCellMemMapDataset(tmp_path / "e", num_rows=2, num_elements=10)
    ds.data[:] = np.arange(10)
    ds.col_index[:] = np.arange(10)
    ds.row_index[:] = [0, 4, 10]
    ds.save()
    _assert_verified(tmp_path / "e")


# -- upstream ----------------------------------------------------------------------------------------
def test_bionemo_opens_an_archive_with_manifest_and_page_checksums(converted, tmp_path):
    """bionemo-scdl 0.1.3 ignores the manifest and reads parquet written with page checksums."""
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset as Theirs

    ours = SingleCellMemMapDataset(converted)
    # Upstream maps archives read-write: hand it a copy.
    theirs = Theirs(str(shutil.copytree(converted, tmp_path / "for_bionemo")))
    assert theirs.number_of_rows() == ours.number_of_rows() and theirs.number_of_variables() == ours.number_of_variables()
    for name in ("data", "row_index", "col_index"):
        np.testing.assert_array_equal(np.asarray(getattr(theirs, name)), np.asarray(getattr(ours, name)))
    (tvar, _), (ovar, _) = theirs.var_features().lookup(0), ours.var_features().lookup(0)
    assert [list(t) for t in tvar] == [list(o) for o in ovar]
    tobs, oobs = theirs.obs_features()[0:5][0], ours.obs_features()[0:5][0]
    assert [{k: list(v) for k, v in d.items()} for d in tobs] == [{k: list(v) for k, v in d.items()} for d in oobs]
