"""Conversion of synthetic inputs: every layout, dtype and edge case against scipy."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellMemMapDataset, convert_h5ad
from tests.conftest import make_adata, random_csr


def _archive_csr(ds) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.asarray(ds.data), np.asarray(ds.col_index), np.asarray(ds.row_index, dtype=np.int64)),
        shape=(ds.number_of_rows(), ds.number_of_variables()[0]),
    )


def _assert_same_rows(ds, m: sp.csr_matrix, dtype=np.float32) -> None:
    """The archive holds ``m`` with every row by increasing column (conversion's default)."""
    got = _archive_csr(ds)
    m = m.copy()
    m.sort_indices()  # no repeated columns here, so any sort is the stable one
    np.testing.assert_array_equal(got.indptr, m.indptr)
    np.testing.assert_array_equal(got.indices, m.indices)
    np.testing.assert_array_equal(got.data, m.data.astype(dtype))


@pytest.mark.parametrize("shuffle_cols", [False, True], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("max_block_values", [7, 1 << 24], ids=["tiny-blocks", "one-block"])
def test_csr_with_empty_rows(tmp_path, write_h5ad, shuffle_cols, max_block_values):
    m = random_csr(60, 300, density=0.05, empty_rows=(0, 5, 17, 59), shuffle_cols=shuffle_cols)
    path = write_h5ad(make_adata(m))
    ds = SingleCellMemMapDataset(convert_h5ad(path, tmp_path / "a", use_X_not_raw=True, max_block_values=max_block_values))
    _assert_same_rows(ds, m)
    for r in (0, 5, 17, 59):
        assert ds[r].shape == (2, 0)
    assert ds.dtypes["col_ptr.npy"] == "uint16" and ds.dtypes["row_ptr.npy"] == "uint16"


def test_paginated_rows_cap_gives_identical_archive(tmp_path, write_h5ad):
    m = random_csr(50, 40, density=0.3)
    path = write_h5ad(make_adata(m))
    a = convert_h5ad(path, tmp_path / "a", use_X_not_raw=True)
    b = convert_h5ad(path, tmp_path / "b", use_X_not_raw=True, paginated_load_cutoff=0, load_block_row_size=3)
    for name in ("data.npy", "row_ptr.npy", "col_ptr.npy", "header.sch", "metadata.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("shuffle_cols", [False, True], ids=["sorted", "unsorted"])
def test_csc_is_transposed_not_misread(tmp_path, write_h5ad, shuffle_cols):
    m = random_csr(45, 30, density=0.2, empty_rows=(3, 44), shuffle_cols=shuffle_cols)
    path = write_h5ad(make_adata(sp.csc_matrix(m)))
    ds = SingleCellMemMapDataset(convert_h5ad(path, tmp_path / "a", use_X_not_raw=True, max_block_values=11))
    expected = m.tocsc().tocsr()  # CSC -> CSR yields sorted columns per row
    expected.sort_indices()
    _assert_same_rows(ds, expected)


def test_dense_drops_zeros(tmp_path, write_h5ad):
    m = random_csr(33, 25, density=0.2, empty_rows=(1,))
    dense = m.toarray()
    path = write_h5ad(make_adata(dense))
    ds = SingleCellMemMapDataset(convert_h5ad(path, tmp_path / "a", use_X_not_raw=True, max_block_values=50))
    _assert_same_rows(ds, sp.csr_matrix(dense))


@pytest.mark.parametrize(
    "src_dtype,data_dtype",
    [
        pytest.param(np.float32, "uint8", id="f32-u8"),
        pytest.param(np.int64, "uint16", id="i64-u16"),
        pytest.param(np.int32, "uint32", id="i32-u32"),
        pytest.param(np.uint64, "uint64", id="u64-u64"),
        pytest.param(np.float32, "float16", id="f32-f16"),
        pytest.param(np.float64, "float64", id="f64-f64"),
        pytest.param(np.int32, "float32", id="i32-f32"),
    ],
)
def test_every_stored_dtype(tmp_path, write_h5ad, src_dtype, data_dtype):
    m = random_csr(20, 70, density=0.2, dtype=src_dtype)
    path = write_h5ad(make_adata(m))
    ds = SingleCellMemMapDataset(convert_h5ad(path, tmp_path / "a", use_X_not_raw=True, data_dtype=data_dtype))
    assert ds.dtypes["data.npy"] == data_dtype
    assert ds.data.dtype == np.dtype(data_dtype)
    _assert_same_rows(ds, m, dtype=data_dtype)


def test_raw_is_default_and_uses_raw_var(tmp_path, write_h5ad):
    x = random_csr(10, 8, seed=1)
    raw = random_csr(10, 12, seed=2)
    a = make_adata(x)
    a.raw = ad.AnnData(X=raw, obs=a.obs, var=make_adata(raw).var)
    path = write_h5ad(a)
    ds = SingleCellMemMapDataset(tmp_path / "a", h5ad_path=path)
    _assert_same_rows(ds, raw)
    assert ds.number_of_variables() == [12]
    assert len(ds.var_names()) == 12


def test_largest_column_index_and_int64_input_indices(tmp_path, write_h5ad):
    g = 70_000  # needs uint32 column indices
    m = sp.csr_matrix((np.array([1.0, 2.0, 3.0], np.float32), np.array([g - 1, 0, g - 1]), np.array([0, 1, 1, 3])), shape=(3, g))
    path = write_h5ad(make_adata(m))
    ds = SingleCellMemMapDataset(convert_h5ad(path, tmp_path / "a", use_X_not_raw=True))
    assert ds.dtypes["col_ptr.npy"] == "uint32"
    _assert_same_rows(ds, m)
    assert ds.get_row_column(2, g - 1) == 3.0


def test_zero_stored_values_reopens(tmp_path, write_h5ad):
    m = sp.csr_matrix((5, 4), dtype=np.float32)
    path = write_h5ad(make_adata(m))
    ds = SingleCellMemMapDataset(convert_h5ad(path, tmp_path / "a", use_X_not_raw=True))
    assert ds.number_of_rows() == 5 and ds.number_nonzero_values() == 0
    assert ds[4].shape == (2, 0)


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_neighbors_from_obsp(tmp_path, write_h5ad, fmt):
    n = 30
    graph = random_csr(n, n, density=0.1, seed=3, integer=False, empty_rows=(2,))
    stored = {"csr": graph, "csc": sp.csc_matrix(graph), "dense": graph.toarray()}[fmt]
    path = write_h5ad(make_adata(random_csr(n, 10), obsp={"next_cell_ids": stored}))
    ds = SingleCellMemMapDataset(tmp_path / "a", h5ad_path=path, use_X_not_raw=True, load_neighbors=True)
    for i in range(n):
        s, e = graph.indptr[i], graph.indptr[i + 1]
        np.testing.assert_array_equal(ds.get_neighbor_indices_for_cell(i), graph.indices[s:e])
        np.testing.assert_array_equal(ds.get_neighbor_weights_for_cell(i), graph.data[s:e].astype(np.float32))
    assert ds.get_neighbor_stats()["total_connections"] == graph.nnz
    assert ds.sample_neighbor_index(2) == 2  # no neighbors: the cell itself


def test_missing_neighbor_key_warns_when_allowed(tmp_path, write_h5ad):
    path = write_h5ad(make_adata(random_csr(5, 5)))
    with pytest.raises(ValueError, match=r"not found in .*\(obsp keys: none\)"):
        convert_h5ad(path, tmp_path / "a", use_X_not_raw=True, load_neighbors=True)
    with pytest.warns(UserWarning, match="not found"):
        out = convert_h5ad(path, tmp_path / "a", use_X_not_raw=True, load_neighbors=True, allow_missing_neighbors=True)
    assert not (out / "neighbor_indptr.npy").exists()


def test_metadata_version_and_obs_tables(tmp_path, write_h5ad):
    import json

    a = make_adata(random_csr(12, 6))
    path = write_h5ad(a)
    out = convert_h5ad(path, tmp_path / "a", use_X_not_raw=True)
    assert json.loads((out / "metadata.json").read_text()) == {"num_rows": 12}
    assert json.loads((out / "version.json").read_text()) == "0.1.3"
    ds = SingleCellMemMapDataset(out)
    values, label = ds.obs_features()[3]
    assert values[0] == a.obs["cell_type"].iloc[3] and values[1] == "d3"
    assert label == str(path)
    np.testing.assert_array_equal(ds.obs_names(2, 5), ["cell2", "cell3", "cell4"])
    np.testing.assert_array_equal(ds.var_names(), a.var_names)
