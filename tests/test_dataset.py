"""SingleCellMemMapDataset: upstream's API and return types, minus upstream's bugs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scdl_gpu import ArchiveError, ArchiveNotFoundError, SingleCellMemMapDataset, collate_sparse_matrix_batch, convert_h5ad
from scdl_gpu.archive import SCDLHeader
from tests.conftest import make_adata, random_csr


@pytest.fixture
def matrix():
    return random_csr(50, 300, density=0.05, empty_rows=(5, 17), shuffle_cols=True, seed=4)


@pytest.fixture
def ds(tmp_path, write_h5ad, matrix):
    return SingleCellMemMapDataset(tmp_path / "a", h5ad_path=write_h5ad(make_adata(matrix)), use_X_not_raw=True)


def _row(m, i):
    s, e = m.indptr[i], m.indptr[i + 1]
    return m.data[s:e], m.indices[s:e]


def test_get_row_types_and_values(ds, matrix):
    (values, cols), var, obs = ds.get_row(3)
    assert isinstance(values, np.ndarray) and values.dtype == np.float32 and cols.dtype == np.uint16
    np.testing.assert_array_equal(values, _row(matrix, 3)[0])
    np.testing.assert_array_equal(cols, _row(matrix, 3)[1])
    assert var is None and obs is None
    _, var, obs = ds.get_row(3, return_var_features=True, return_obs_features=True, obs_feature_names=["donor"])
    assert len(var) == 2 and len(var[0]) == 300
    assert obs == ["d3"]
    with pytest.raises(ValueError, match="not present in dataset"):
        ds.get_row(0, return_obs_features=True, obs_feature_names=["nope"])


def test_python_index_semantics(ds, matrix):
    np.testing.assert_array_equal(ds.get_row(-1)[0][1], _row(matrix, 49)[1])
    np.testing.assert_array_equal(ds[-50][1].numpy(), _row(matrix, 0)[1])
    for bad in (50, -51, 10**12):
        with pytest.raises(IndexError, match="out of range"):
            ds.get_row(bad)
        with pytest.raises(IndexError):
            ds[bad]
    with pytest.raises(TypeError):
        ds.get_row(1.5)


def test_getitem_tensor_and_dtype_promotion(ds, matrix):
    t = ds[3]
    assert isinstance(t, torch.Tensor) and t.shape == (2, matrix.indptr[4] - matrix.indptr[3])
    assert t.dtype == torch.float32  # float32 values with uint16 columns
    assert ds[5].shape == (2, 0)
    assert ds[torch.tensor(3)].shape == t.shape


def test_get_row_padded_and_column_lookup_on_unsorted_rows(ds, matrix):
    dense_ref = matrix.toarray()
    for i in (0, 5, 20):
        dense, _, _ = ds.get_row_padded(i)
        assert dense.dtype == np.float64 and dense.shape == (300,)
        np.testing.assert_array_equal(dense, dense_ref[i])
    # Rows are unsorted: upstream's early-exit scan misses values; we find every one.
    for i in range(50):
        for c in _row(matrix, i)[1]:
            assert ds.get_row_column(i, int(c)) == dense_ref[i, c]
    absent = int(np.setdiff1d(np.arange(300), _row(matrix, 0)[1])[0])
    assert ds.get_row_column(0, absent) == 0.0
    assert ds.get_row_column(0, absent, impute_missing_zeros=False) is None


def test_sizes(ds, matrix):
    assert len(ds) == ds.number_of_rows() == 50
    assert ds.number_of_variables() == [300]
    assert ds.number_of_values() == 50 * 300
    assert ds.number_nonzero_values() == matrix.nnz
    assert ds.sparsity() == pytest.approx(1 - matrix.nnz / (50 * 300))
    assert ds.shape() == (50, [300])
    assert ds.version() == "0.1.3"


def test_collate_width_is_gene_count(ds, matrix):
    batch = collate_sparse_matrix_batch([ds[i] for i in (0, 5, 7)])
    assert batch.layout == torch.sparse_csr and batch.shape == (3, 300)
    np.testing.assert_array_equal(batch.to_dense().numpy(), matrix.toarray()[[0, 5, 7]])
    assert batch.crow_indices().dtype == torch.int64 and batch.col_indices().dtype == torch.int32
    explicit = collate_sparse_matrix_batch([ds[0]], num_cols=512)
    assert explicit.shape == (1, 512)
    plain = collate_sparse_matrix_batch([torch.tensor([[1.0, 2.0], [4.0, 9.0]])])
    assert plain.shape == (1, 10)  # no dataset: the batch's max column + 1, as upstream
    empty = collate_sparse_matrix_batch([ds[5], ds[17]])
    assert empty.shape == (2, 300) and empty.crow_indices().tolist() == [0, 0, 0]


def test_collate_of_count_archives_is_float32(tmp_path, write_h5ad, matrix):
    """A uint16 archive (the README's example) gave uint16 batches that to_dense() and @ rejected."""
    counts = matrix.copy()
    counts.data = np.round(counts.data * 10).astype(np.float32) + 1
    path = tmp_path / "counts"
    convert_h5ad(write_h5ad(make_adata(counts)), path, use_X_not_raw=True, data_dtype="uint16")
    batch = collate_sparse_matrix_batch([SingleCellMemMapDataset(path)[i] for i in (0, 5, 7)])
    assert batch.values().dtype == torch.float32
    np.testing.assert_array_equal(batch.to_dense().numpy(), counts.toarray()[[0, 5, 7]])
    np.testing.assert_allclose((batch @ torch.ones(300, 1)).numpy().ravel(), counts[[0, 5, 7]].sum(axis=1).A1)


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_dataloader(ds, matrix, workers):
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False, num_workers=workers,
                                         collate_fn=collate_sparse_matrix_batch)
    dense = torch.cat([b.to_dense() for b in loader]).numpy()
    np.testing.assert_array_equal(dense, matrix.toarray())


def test_cast_data_to_dtype_rewrites_header_and_remaps(ds, matrix):
    ds.cast_data_to_dtype("float64")
    assert ds.data.dtype == np.float64 and ds.dtypes["data.npy"] == "float64"
    header = SCDLHeader.load(ds.header_path)
    assert header.get_array("DATA").dtype.numpy_dtype_string == "float64"
    again = SingleCellMemMapDataset(ds.data_path)  # upstream reopens this as garbage (stale header)
    np.testing.assert_array_equal(np.asarray(again.data), matrix.data.astype(np.float64))
    ds.cast_data_to_dtype("uint8")
    assert SingleCellMemMapDataset(ds.data_path).get_row_padded(1)[0].tolist() == matrix.toarray()[1].tolist()
    with pytest.raises(ValueError, match="Invalid data_dtype"):
        ds.cast_data_to_dtype("int8")


def test_cast_refuses_values_the_dtype_cannot_hold(tmp_path, write_h5ad):
    m = random_csr(10, 10)
    m.data[0] = 1000
    ds = SingleCellMemMapDataset(convert_h5ad(write_h5ad(make_adata(m)), tmp_path / "a", use_X_not_raw=True))
    with pytest.raises(ValueError, match="uint8"):
        ds.cast_data_to_dtype("uint8")
    assert SingleCellMemMapDataset(ds.data_path).data.dtype == np.float32  # untouched
    assert not list(tmp_path.joinpath("a").glob("*.partial"))


def test_lossy_cast_data_to_dtype_needs_allow_lossy(tmp_path, write_h5ad):
    m = random_csr(10, 10, integer=False)
    ds = SingleCellMemMapDataset(convert_h5ad(write_h5ad(make_adata(m)), tmp_path / "a", use_X_not_raw=True))
    with pytest.raises(ValueError, match="pass allow_lossy=True"):
        ds.cast_data_to_dtype("uint16")
    assert ds.data.dtype == np.float32 and np.array_equal(ds.data, m.data)  # untouched, still readable
    with pytest.warns(UserWarning, match="Downcasted"):
        ds.cast_data_to_dtype("uint16", allow_lossy=True)
    assert ds.data.dtype == np.uint16


def _concat_inputs(tmp_path, write_h5ad, sizes, dtypes=None):
    out = []
    for k, (n, g) in enumerate(sizes):
        m = random_csr(n, g, density=0.1, seed=10 + k, empty_rows=(0,))
        p = write_h5ad(make_adata(m, seed=k), name=f"f{k}.h5ad")
        dt = dtypes[k] if dtypes else None
        out.append((m, SingleCellMemMapDataset(tmp_path / f"d{k}", h5ad_path=p, use_X_not_raw=True, data_dtype=dt)))
    return out


def test_concat_in_place_and_to_output(tmp_path, write_h5ad):
    parts = _concat_inputs(tmp_path, write_h5ad, [(30, 250), (20, 250), (15, 70)], dtypes=["uint8", "uint16", "uint8"])
    first = parts[0][1]
    first.concat([p[1] for p in parts[1:]])
    assert first.number_of_rows() == 65
    assert first.dtypes["data.npy"] == "uint16"
    assert first.number_of_variables() == [250, 70]  # identical gene tables merge into one block
    rows = np.concatenate([m.toarray()[:, :70] for m, _ in parts])
    for i in range(65):
        np.testing.assert_array_equal(first.get_row_padded(i)[0][:70], rows[i])
    reopened = SingleCellMemMapDataset(first.data_path)
    assert reopened.number_of_rows() == 65
    assert json.loads((reopened.data_path / "metadata.json").read_text()) == {"num_rows": 65}
    assert SCDLHeader.load(reopened.header_path).get_array("ROWPTR").length == 66


def test_concat_mixed_families_is_refused(tmp_path, write_h5ad):
    parts = _concat_inputs(tmp_path, write_h5ad, [(5, 10), (5, 10)], dtypes=["uint8", "float32"])
    with pytest.raises(ValueError, match="mix of int and float dtypes"):
        parts[0][1].concat(parts[1][1])
    assert parts[0][1].number_of_rows() == 5
    with pytest.raises(ValueError, match="Expecting either a"):
        parts[0][1].concat("not a dataset")


def test_concat_offsets_neighbors(tmp_path, write_h5ad):
    import scipy.sparse as sp

    ds = []
    for k in range(2):
        g = sp.random(10, 10, density=0.3, format="csr", random_state=k, dtype=np.float32)
        p = write_h5ad(make_adata(random_csr(10, 6, seed=k), obsp={"next_cell_ids": g}), name=f"n{k}.h5ad")
        ds.append((g, SingleCellMemMapDataset(tmp_path / f"n{k}", h5ad_path=p, use_X_not_raw=True, load_neighbors=True)))
    ds[0][1].concat(ds[1][1])
    both = SingleCellMemMapDataset(ds[0][1].data_path, load_neighbors=True)
    g1 = ds[1][0]
    for i in range(10):
        np.testing.assert_array_equal(both.get_neighbor_indices_for_cell(10 + i), g1.indices[g1.indptr[i]:g1.indptr[i + 1]] + 10)


def test_create_from_sizes_then_save(tmp_path):
    ds = SingleCellMemMapDataset(tmp_path / "e", num_rows=2, num_elements=10)
    ds.data[:] = np.arange(10)
    ds.col_index[:] = np.arange(10)
    ds.row_index[:] = [0, 4, 10]
    assert ds.save() is True
    again = SingleCellMemMapDataset(tmp_path / "e")
    assert again.number_of_rows() == 2  # upstream reports 0 here
    np.testing.assert_array_equal(again.get_row(1)[0][0], np.arange(4, 10))
    with pytest.raises(NotImplementedError):
        again.save(output_path="elsewhere")
    with pytest.raises(FileExistsError, match="Output directory already exists"):
        SingleCellMemMapDataset(tmp_path / "e", mode="w+")
    with pytest.raises(ValueError, match="An np.memmap path, an h5ad path"):
        SingleCellMemMapDataset(tmp_path / "none")


def test_neighbor_api(tmp_path, write_h5ad):
    import scipy.sparse as sp

    g = sp.csr_matrix((np.ones(3, np.float32), np.array([4, 7, 1]), np.array([0, 2, 2] + [3] * 8)), shape=(10, 10))
    p = write_h5ad(make_adata(random_csr(10, 6), obsp={"next_cell_ids": g}))
    ds = SingleCellMemMapDataset(tmp_path / "a", h5ad_path=p, use_X_not_raw=True, load_neighbors=True,
                                 neighbor_sampling_strategy="first")
    assert ds.sample_neighbor_index(0) == 4 and isinstance(ds.sample_neighbor_index(0), int)
    assert ds.sample_neighbor_index(1) == 1
    out = ds.get_row_with_neighbor(0)
    assert out["current_cell_index"] == 0 and out["next_cell_index"] == 4
    assert ds.get_row_padded_with_neighbor(2)["next_cell"].shape == (6,)
    with pytest.raises(IndexError, match="out of bounds"):
        ds.get_neighbor_indices_for_cell(10)
    rnd = SingleCellMemMapDataset(tmp_path / "a", load_neighbors=True)
    assert {rnd.sample_neighbor_index(0) for _ in range(50)} == {4, 7}
    with pytest.raises(ValueError, match="Unsupported neighbor_sampling_strategy"):
        SingleCellMemMapDataset(tmp_path / "a", load_neighbors=True, neighbor_sampling_strategy="weighted")
    plain = SingleCellMemMapDataset(tmp_path / "a")
    assert plain.sample_neighbor_index(3) == 3 and plain.get_neighbor_indices_for_cell(0).size == 0
    with pytest.raises(ValueError, match="Cannot include neighbor data"):
        plain.get_row_with_neighbor(0)


def test_neighbor_collate_width_is_gene_count(tmp_path, write_h5ad):
    import pickle

    from scdl_gpu import collate_neighbor_sparse_matrix_batch

    m = random_csr(12, 9, density=0.4, seed=4).tolil()
    m[:, 6:] = 0  # the last genes are never stored: upstream's width (max column + 1) would be 6
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    g = sp.csr_matrix(np.roll(np.eye(12, dtype=np.float32), 1, axis=1))
    p = write_h5ad(make_adata(m, obsp={"next_cell_ids": g}))
    ds = SingleCellMemMapDataset(tmp_path / "a", h5ad_path=p, use_X_not_raw=True, load_neighbors=True,
                                 neighbor_sampling_strategy="first")
    items = [ds.get_row_with_neighbor(i) for i in (0, 3, 5)]
    items[1] = pickle.loads(pickle.dumps(items[1]))  # as from a DataLoader worker
    values, cols = items[0]["current_cell"]  # still a (values, columns) pair
    assert items[0]["current_cell"] == (values, cols)
    out = collate_neighbor_sparse_matrix_batch(items)
    assert out["current_cells"].shape == out["next_cells"].shape == (3, 9)
    np.testing.assert_array_equal(out["current_cells"].to_dense().numpy(), m.toarray()[[0, 3, 5]])
    np.testing.assert_array_equal(out["next_cells"].to_dense().numpy(), m.toarray()[[1, 4, 6]])
    assert collate_neighbor_sparse_matrix_batch(items, num_cols=16)["next_cells"].shape == (3, 16)
    plain = [{**it, "current_cell": tuple(it["current_cell"]), "next_cell": tuple(it["next_cell"])} for it in items]
    assert collate_neighbor_sparse_matrix_batch(plain)["current_cells"].shape[1] <= 6  # upstream's width


def test_concat_to_output_path_keeps_inputs_unless_destroyed(tmp_path, write_h5ad):
    parts = _concat_inputs(tmp_path, write_h5ad, [(8, 12), (6, 12)])
    a, b = parts[0][1], parts[1][1]
    a.concat(b, output_path=str(tmp_path / "joined"))
    assert a.number_of_rows() == 14 and str(a.data_path).endswith("joined")
    assert SingleCellMemMapDataset(tmp_path / "d0").number_of_rows() == 8
    c = SingleCellMemMapDataset(tmp_path / "d0")
    c.concat(SingleCellMemMapDataset(tmp_path / "d1"), output_path=str(tmp_path / "moved"), destroy_on_copy=True)
    assert c.number_of_rows() == 14
    assert not (tmp_path / "d0").exists() and not (tmp_path / "d1").exists()


@pytest.mark.parametrize("axis", ["var", "obs"])
def test_deleted_names_sidecar_raises_instead_of_reading_as_none(ds, axis):
    """The index records that names were stored: a missing sidecar is damage, not "no names"."""
    path = ds.data_path
    (path / f"{axis}_features" / "names_0.arrow").unlink()
    fresh = SingleCellMemMapDataset(path)
    assert fresh.get_row(3)[0][0].size == ds.get_row(3)[0][0].size  # rows do not need names
    with pytest.raises(ArchiveNotFoundError, match=f"{axis}_features/names_0.arrow is missing"):
        fresh.var_names() if axis == "var" else fresh.obs_names()


def test_damaged_names_sidecar_raises_archive_error(ds):
    f = ds.data_path / "var_features" / "names_0.arrow"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="names_0.arrow"):
        SingleCellMemMapDataset(ds.data_path).var_names()


def test_gene_names_of_a_zero_row_archive(tmp_path, write_h5ad):
    m = sp.csr_matrix((0, 4), dtype=np.float32)
    a = make_adata(m)
    ds = SingleCellMemMapDataset(convert_h5ad(write_h5ad(a), tmp_path / "a", use_X_not_raw=True))
    assert ds.number_of_rows() == 0
    np.testing.assert_array_equal(ds.var_names(), a.var_names.astype(str))
    with pytest.raises(IndexError):
        ds.var_names(1)


# -- preallocation and upstream's load_h5ad family ------------------------------------------------
def test_unfilled_preallocation_reopens_empty_as_upstream(tmp_path):
    """Upstream HEAD: ``num_rows=2, num_elements=10`` saved unfilled reopens with 0 rows, and the
    reserved rows read as empty rows; the header keeps the capacity, so saving again is stable."""
    ds = SingleCellMemMapDataset(tmp_path / "e", num_rows=2, num_elements=10)
    assert len(ds) == ds.number_of_rows() == 0 and ds.number_nonzero_values() == 10
    assert ds.save() is True
    assert json.loads((tmp_path / "e" / "metadata.json").read_text()) == {"num_rows": 0}
    for _ in range(2):  # reopened, then reopened after a save of the reopened dataset
        again = SingleCellMemMapDataset(tmp_path / "e")
        assert again.number_of_rows() == len(again) == again.number_of_values() == 0
        assert again.number_of_variables() == [0] and again.sparsity() == 0.0
        assert again[1].shape == (2, 0) and again.get_row(0)[0][0].size == 0
        with pytest.raises(IndexError):
            again[2]
        again.save()
    header = SCDLHeader.load(str(tmp_path / "e" / "header.sch"))
    assert [header.get_array(n).length for n in ("DATA", "ROWPTR", "COLPTR")] == [10, 3, 10]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: (d / "data.npy").write_bytes((d / "data.npy").read_bytes() + bytes(4)), id="data-beyond-header"),
        pytest.param(lambda d: (d / "metadata.json").write_text('{"num_rows": 2}'), id="rows-counted"),
        pytest.param(lambda d: (d / "header.sch").unlink(), id="no-header"),
        pytest.param(lambda d: (d / "row_ptr.npy").write_bytes(np.array([0, 3, 0], np.uint64).tobytes()), id="row-ptr-not-zero"),
    ],
)
def test_only_an_exact_unfilled_preallocation_has_spare_capacity(tmp_path, damage):
    """Values beyond row_ptr's end are damage unless every sign of an unfilled preallocation holds."""
    SingleCellMemMapDataset(tmp_path / "e", num_rows=2, num_elements=10).save()
    damage(tmp_path / "e")
    with pytest.raises(ArchiveError, match="data.npy holds"):
        SingleCellMemMapDataset(tmp_path / "e")


@pytest.mark.parametrize("method", ["load_h5ad", "regular_load_h5ad", "paginated_load_h5ad"])
def test_load_h5ad_family_converts_into_a_preallocation(tmp_path, write_h5ad, method):
    m = random_csr(30, 40, density=0.2, shuffle_cols=True, seed=2)
    src = write_h5ad(make_adata(m))
    ds = SingleCellMemMapDataset(tmp_path / "p", num_rows=2, num_elements=10, use_X_not_raw=True, load_block_row_size=7)
    out = getattr(ds, method)(src)
    expected = SingleCellMemMapDataset(tmp_path / "ref", h5ad_path=src, use_X_not_raw=True)
    for d in (ds, SingleCellMemMapDataset(tmp_path / "p")):
        assert d.number_of_rows() == 30 and d.number_of_variables() == [40]
        for name in ("data", "row_index", "col_index"):  # input column order, as upstream
            np.testing.assert_array_equal(getattr(d, name), getattr(expected, name))
        assert d.var_features()._labels == [str(src)]
    if method == "load_h5ad":
        assert out is None
    else:  # upstream returns the file's var and obs tables and its row count
        var, obs, n = out
        assert n == 30 and list(var.index) == list(expected.var_names()) and list(obs.index) == list(expected.obs_names())


def test_load_h5ad_errors(tmp_path, write_h5ad):
    ds = SingleCellMemMapDataset(tmp_path / "p", num_rows=2, num_elements=10)
    with pytest.raises(FileNotFoundError, match=f"Error: could not find h5ad path {tmp_path}/a"):
        ds.load_h5ad(tmp_path / "a")
    src = write_h5ad(make_adata(random_csr(5, 6)))
    full = SingleCellMemMapDataset(tmp_path / "f", h5ad_path=src, use_X_not_raw=True)
    before = np.array(full.data)
    with pytest.raises(ValueError, match="already holds 5 rows; load_h5ad converts into an empty dataset only"):
        full.load_h5ad(src)
    np.testing.assert_array_equal(SingleCellMemMapDataset(tmp_path / "f").data, before)
    raw_missing = SingleCellMemMapDataset(tmp_path / "r", num_rows=1, num_elements=1)  # default: raw.X
    with pytest.raises(ValueError, match="raw"):
        raw_missing.paginated_load_h5ad(src)
    assert SingleCellMemMapDataset(tmp_path / "r").number_of_rows() == 0  # saved, not half-converted


def test_unfilled_preallocation_concatenates_as_empty(tmp_path, write_h5ad):
    src = SingleCellMemMapDataset(tmp_path / "s", h5ad_path=write_h5ad(make_adata(random_csr(6, 9))), use_X_not_raw=True)
    SingleCellMemMapDataset(tmp_path / "e", num_rows=2, num_elements=10).save()
    target = SingleCellMemMapDataset(tmp_path / "e")
    target.concat([src, SingleCellMemMapDataset(tmp_path / "e")], output_path=str(tmp_path / "out"))
    out = SingleCellMemMapDataset(tmp_path / "out")
    assert out.number_of_rows() == 6 and out.number_of_variables() == [9]
    for name in ("data", "row_index", "col_index"):
        np.testing.assert_array_equal(getattr(out, name), getattr(src, name))
