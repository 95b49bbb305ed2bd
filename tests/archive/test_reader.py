"""Opening archives: truncated, inconsistent or corrupted files give one clear error each."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from scdl_gpu import ArchiveError, ArchiveNotFoundError, SingleCellMemMapDataset, convert_h5ad
from scdl_gpu.archive import open_arrays
from tests.conftest import make_adata, random_csr


@pytest.fixture
def archive(tmp_path, write_h5ad):
    m = random_csr(40, 300, density=0.1, empty_rows=(39,))
    return convert_h5ad(write_h5ad(make_adata(m)), tmp_path / "arch", use_X_not_raw=True)


def _truncate(path, n_bytes):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - n_bytes])


@pytest.mark.parametrize(
    "name,cut,match",
    [
        pytest.param("data.npy", 4, r"data.npy holds \d+ float32 values but row_ptr.npy ends at", id="data-one-value"),
        pytest.param("data.npy", 3, r"data.npy is \d+ bytes, not a multiple of the 4-byte float32", id="data-mid-item"),
        pytest.param("col_ptr.npy", 2, r"col_ptr.npy holds \d+ uint16 values", id="col"),
        pytest.param("row_ptr.npy", 2, r"feature index .* does not correspond|row_ptr", id="rowptr-one-entry"),
        pytest.param("row_ptr.npy", 1, r"row_ptr.npy is \d+ bytes, not a multiple", id="rowptr-mid-item"),
    ],
)
def test_truncated_array_files(archive, name, cut, match):
    _truncate(archive / name, cut)
    with pytest.raises(ArchiveError, match=match):
        SingleCellMemMapDataset(archive)


def test_extra_bytes_are_inconsistent_too(archive):
    with open(archive / "data.npy", "ab") as f:
        f.write(np.zeros(3, np.float32).tobytes())
    with pytest.raises(ArchiveError, match="extra data"):
        open_arrays(archive)


@pytest.mark.parametrize("name", ["data.npy", "col_ptr.npy", "row_ptr.npy"])
def test_missing_array_file(archive, name):
    (archive / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"The mmap file at .*{name} is missing"):
        SingleCellMemMapDataset(archive)


def test_missing_metadata_and_missing_archive(archive, tmp_path):
    with pytest.raises(ArchiveNotFoundError, match="No SCDL archive"):
        open_arrays(tmp_path / "nothing")
    (archive / "metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match="the metadata file .* does not exist"):
        SingleCellMemMapDataset(archive)


def test_unparseable_metadata(archive):
    (archive / "metadata.json").write_text("{not json")
    with pytest.raises(ArchiveError, match="metadata.json is not valid JSON"):
        open_arrays(archive)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda b: b"XXXX" + b[4:], id="magic"),
        pytest.param(lambda b: b[:7] + b"\x02" + b[8:], id="endianness"),
        pytest.param(lambda b: b[:40], id="truncated"),
        pytest.param(lambda b: b + b"\x01\x00\x00", id="truncated-chunked-trailer"),
    ],
)
def test_corrupted_header(archive, mutate):
    h = archive / "header.sch"
    h.write_bytes(mutate(h.read_bytes()))
    with pytest.raises(ArchiveError, match="header.sch is corrupted"):
        SingleCellMemMapDataset(archive)


def test_unknown_header_trailer_warns_once_and_opens(archive):
    h = archive / "header.sch"
    h.write_bytes(h.read_bytes() + b"junk")
    with pytest.warns(UserWarning, match=r"header.sch: ignoring 4 trailing byte\(s\)") as caught:
        ds = SingleCellMemMapDataset(archive)
        SingleCellMemMapDataset(archive)  # the same archive again: no second warning
    assert sum("trailing byte" in str(w.message) for w in caught) == 1
    assert len(ds) == open_arrays(archive).n_rows > 0


def test_header_with_wrong_dtype_is_caught_by_sizes(archive):
    from scdl_gpu.archive import ArrayDType, SCDLHeader

    h = SCDLHeader.load(str(archive / "header.sch"))
    h.get_array("DATA").dtype = ArrayDType.FLOAT64_ARRAY
    h.save(str(archive / "header.sch"))
    with pytest.raises(ArchiveError, match="data.npy"):
        SingleCellMemMapDataset(archive)


def test_stale_header_lengths_warn_but_read(archive):
    from scdl_gpu.archive import SCDLHeader

    h = SCDLHeader.load(str(archive / "header.sch"))
    h.get_array("DATA").length += 5
    h.save(str(archive / "header.sch"))
    with pytest.warns(UserWarning, match="Stale header"):
        ds = SingleCellMemMapDataset(archive)
    assert ds.number_of_rows() == 40


def test_feature_index_row_mismatch(archive):
    csum = archive / "var_features" / "cumulative_sum_index.npy"
    np.save(csum, np.array([-1, 41], dtype=np.int64))
    with pytest.raises(ArchiveError, match=r"feature index .* \(41\) does not correspond .* \(40\)"):
        SingleCellMemMapDataset(archive)


def test_headerless_legacy_archive_uses_default_dtypes(archive, tmp_path):
    """Before the header existed: float32 data, uint32 columns, uint64 row pointers, features/."""
    ds = SingleCellMemMapDataset(archive)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    np.asarray(ds.data, np.float32).tofile(legacy / "data.npy")
    np.asarray(ds.col_index, np.uint32).tofile(legacy / "col_ptr.npy")
    np.asarray(ds.row_index, np.uint64).tofile(legacy / "row_ptr.npy")
    (legacy / "metadata.json").write_text(json.dumps({"num_rows": 40}))
    shutil.copytree(archive / "var_features", legacy / "features")
    old = SingleCellMemMapDataset(legacy)
    assert old.header is None
    assert old.dtypes["col_ptr.npy"] == "uint32" and old.dtypes["row_ptr.npy"] == "uint64"
    assert old.number_of_variables() == [300]
    for i in range(40):
        np.testing.assert_array_equal(old.get_row(i)[0][1], ds.get_row(i)[0][1])
    assert len(old.obs_features()) == 0


def test_opens_read_only(archive):
    ds = SingleCellMemMapDataset(archive)
    with pytest.raises(ValueError, match="read-only"):
        ds.data[0] = 1
    archive.chmod(0o555)
    try:
        assert SingleCellMemMapDataset(archive).number_of_rows() == 40
    finally:
        archive.chmod(0o755)


def test_neighbor_files_checked(tmp_path, write_h5ad):
    import scipy.sparse as sp

    g = sp.random(20, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
    out = convert_h5ad(write_h5ad(make_adata(random_csr(20, 5), obsp={"next_cell_ids": g})), tmp_path / "a",
                       use_X_not_raw=True, load_neighbors=True)
    _truncate(out / "neighbor_indices.npy", 4)
    with pytest.raises(ArchiveError, match="neighbor_indices.npy holds"):
        SingleCellMemMapDataset(out, load_neighbors=True)
    assert SingleCellMemMapDataset(out).number_of_rows() == 20  # neighbors not requested: not read


# -- the writer's note on sorted rows -------------------------------------------------------------
def test_rows_are_sorted_check():
    from scdl_gpu.archive._rowfiles import rows_are_sorted

    ip = np.array([0, 3, 3, 5, 6])
    assert rows_are_sorted(ip, np.array([1, 4, 9, 0, 2, 7]))  # each row increasing; empty row 1
    assert not rows_are_sorted(ip, np.array([1, 9, 4, 0, 2, 7]))
    assert not rows_are_sorted(ip, np.array([1, 4, 4, 0, 2, 7]))  # a repeated column is not "sorted"
    assert rows_are_sorted(ip + 10, np.array([5, 6, 7, 1, 2, 0]))  # indptr may start anywhere
    assert rows_are_sorted(np.array([0, 1]), np.array([3]))


def test_sorted_rows_note_follows_the_arrays(tmp_path):
    import json

    from scdl_gpu.archive import concat_archives
    from scdl_gpu.archive._cast import cast_archive_data
    from scdl_gpu.archive._reader import rows_sorted
    from scdl_gpu.convert import convert_h5ad
    from tests.conftest import BUNDLED

    sorted_a = convert_h5ad(BUNDLED / "cxg_example_valid.h5ad", tmp_path / "s", use_X_not_raw=True)
    unsorted = convert_h5ad(BUNDLED / "cxg_small_perturbations.h5ad", tmp_path / "u", use_X_not_raw=True,
                            keep_column_order=True)
    assert rows_sorted(sorted_a, 320, 20991) and not rows_sorted(unsorted, 500, 268478)
    assert not rows_sorted(sorted_a, 321, 20991)  # arrays changed by someone else: the note is ignored
    assert rows_sorted(concat_archives([sorted_a, sorted_a], tmp_path / "ss"), 640, 2 * 20991)
    assert not rows_sorted(concat_archives([sorted_a, unsorted], tmp_path / "su"), 820, 20991 + 268478)
    cast_archive_data(sorted_a, "uint16")  # values only: the note still holds
    assert rows_sorted(sorted_a, 320, 20991)
    assert json.loads((sorted_a / "scdl_gpu.json").read_text()) == {"n_rows": 320, "nnz": 20991, "rows_sorted": True}


# -- everything open reads raises ArchiveError naming the file ----------------------------------------
def test_metadata_must_be_a_json_object(archive):
    (archive / "metadata.json").write_text("[40]")
    with pytest.raises(ArchiveError, match=r"metadata.json: expected a JSON object, got list"):
        open_arrays(archive)


def test_metadata_that_is_not_utf8(archive):
    (archive / "metadata.json").write_bytes(b'{"num_rows": 40, "x": "\xff"}')
    with pytest.raises(ArchiveError, match="metadata.json is not valid JSON"):
        open_arrays(archive)


def test_var_index_with_blocks_must_cover_every_row(archive):
    """A var block covering no rows would leave every row without a gene count (an IndexError later)."""
    np.save(archive / "var_features" / "cumulative_sum_index.npy", np.array([-1, 0], dtype=np.int64))
    with pytest.raises(ArchiveError, match=r"feature index .*var_features \(0\) does not correspond .* \(40\)"):
        SingleCellMemMapDataset(archive)


def test_damaged_feature_index_fails_at_first_use_with_archive_error(archive):
    f = archive / "obs_features" / "dataframe_0.parquet"
    f.write_bytes(f.read_bytes()[:-9])  # the footer's length and magic
    ds = SingleCellMemMapDataset(archive)  # the obs index is read on first use
    with pytest.raises(ArchiveError, match=r"Cannot read feature block .*obs_features/dataframe_0.parquet"):
        ds.obs_features()


def test_unreadable_layout_note_means_unknown(archive):
    from scdl_gpu.archive._reader import rows_sorted

    n = open_arrays(archive).nnz
    assert rows_sorted(archive, 40, n) is True
    for text in ("[true]", '{"rows_sorted": "yes", "n_rows": 40, "nnz": %d}' % n, "\x00\xff"):
        (archive / "scdl_gpu.json").write_text(text, encoding="latin-1")
        assert rows_sorted(archive, 40, n) is False


def _neighbor_archive(path):
    from scdl_gpu.archive import ArchiveWriter

    with ArchiveWriter(path, n_vars=5) as w:
        w.append_rows(np.array([0, 1, 2, 2, 3]), np.array([0, 1, 4], np.uint8), np.ones(3, np.float32))
        w.add_var_block(4, {"gene": np.array(list("abcde"))}, None)
        w.append_neighbor_rows(np.array([0, 2, 3, 3, 4]), np.array([1, 2, 0, 3]), np.ones(4))
        return w.commit()


def test_decreasing_neighbor_pointers_are_refused_at_open(tmp_path):
    path = _neighbor_archive(tmp_path / "nb")
    assert open_arrays(path, load_neighbors=True).neighbors is not None
    ptr = np.fromfile(path / "neighbor_indptr.npy", np.uint64)
    ptr[2] = 1  # cell 1 would span [2, 1)
    ptr.tofile(path / "neighbor_indptr.npy")
    with pytest.raises(ArchiveError, match=r"neighbor_indptr.npy must start at 0 and never decrease"):
        open_arrays(path, load_neighbors=True)


def test_neighbor_graph_with_a_file_gone_is_damage(tmp_path):
    path = _neighbor_archive(tmp_path / "nb")
    (path / "neighbor_values.npy").unlink()
    with pytest.raises(ArchiveNotFoundError, match=r"neighbor_values.npy is missing"):
        SingleCellMemMapDataset(path, load_neighbors=True)
    assert SingleCellMemMapDataset(path).number_of_rows() == 4  # not asked for: not read
