"""Every real h5ad converts, and the archive equals the source exactly: rows, columns, tables."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellMemMapDataset, convert_h5ad
from tests.conftest import real_h5ads


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notices about old layouts
        return ad.read_h5ad(path)


def _cases():
    for p in real_h5ads():
        a = _read(p)
        yield pytest.param(p, True, id=f"{p.stem}-X")
        if a.raw is not None:
            yield pytest.param(p, False, id=f"{p.stem}-raw")


def _as_csr(m) -> sp.csr_matrix:
    if sp.issparse(m):
        return m.tocsr() if m.format != "csr" else m
    return sp.csr_matrix(np.asarray(m))  # dense: zeros dropped, as the converter does


def _feature_dict(index, block: int) -> dict:
    return index._feature_arr[block]


@pytest.mark.parametrize("path,use_x", list(_cases()))
def test_real_file_roundtrip(tmp_path, path, use_x):
    a = _read(path)
    src = _as_csr(a.X if use_x else a.raw.X)
    # Keep the source dtype where the format has it, so the comparison is exact.
    dtype = "float64" if src.dtype == np.float64 else "float32"
    out = convert_h5ad(path, tmp_path / "arch", use_X_not_raw=use_x, data_dtype=dtype)
    ds = SingleCellMemMapDataset(out)
    # Rows are stored by increasing column (stable: repeated columns keep their order).
    order = np.lexsort((src.indices, np.repeat(np.arange(src.shape[0]), np.diff(src.indptr))))
    src = sp.csr_matrix((src.data[order], src.indices[order], src.indptr), shape=src.shape)

    assert ds.number_of_rows() == src.shape[0] == len(ds)
    assert ds.number_of_variables() == [src.shape[1]]
    assert ds.number_nonzero_values() == src.nnz
    # The whole CSR, byte for byte: row pointers, columns, values.
    np.testing.assert_array_equal(np.asarray(ds.row_index, dtype=np.int64), src.indptr)
    np.testing.assert_array_equal(np.asarray(ds.col_index, dtype=np.int64), src.indices)
    np.testing.assert_array_equal(np.asarray(ds.data), src.data.astype(dtype))
    # And through the row API, every row.
    for i in range(src.shape[0]):
        (values, cols), _, _ = ds.get_row(i)
        s, e = src.indptr[i], src.indptr[i + 1]
        np.testing.assert_array_equal(cols, src.indices[s:e])
        np.testing.assert_array_equal(values, src.data[s:e].astype(dtype))

    var = a.var if use_x else a.raw.var
    obs_block = _feature_dict(ds.obs_features(), 0) if len(ds.obs_features()) else {}
    var_block = _feature_dict(ds.var_features(), 0)
    _assert_table_equal(obs_block, a.obs, "obs_feature_id")
    _assert_table_equal(var_block, var, "var_feature_id")
    np.testing.assert_array_equal(ds.obs_names(), a.obs_names.astype(str))
    np.testing.assert_array_equal(ds.var_names(), var.index.astype(str))


def _assert_table_equal(block: dict, df: pd.DataFrame, index_name: str) -> None:
    if df.columns.size == 0:
        assert list(block) == [index_name]
        np.testing.assert_array_equal(block[index_name].astype(str), df.index.astype(str))
        return
    assert list(block) == [str(c) for c in df.columns]
    for col in df.columns:
        expected = np.asarray(df[col].values)
        got = block[str(col)]
        assert len(got) == len(expected), col
        if expected.dtype.kind in "fc":
            np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), equal_nan=True, err_msg=col)
        else:
            assert [None if pd.isna(x) else str(x) for x in got] == [None if pd.isna(x) else str(x) for x in expected], col
