"""Input policy: non-finite values, float-typed indices and undecodable strings are refused with
errors that name the input (and the row, key or column); NaN/inf are stored only when asked."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu import ConversionError, convert_h5ad, convert_many
from scdl_gpu.archive._reader import open_arrays
from scdl_gpu.cli import main as cli
from tests.conftest import make_adata, random_csr


def _with_value(write_h5ad, value, row: int, layout: str = "csr", name: str = "in.h5ad"):
    m = random_csr(40, 12, density=0.4, seed=1).tolil()
    m[row, 5] = value
    m = m.tocsr()
    x = {"csr": m, "csc": sp.csc_matrix(m), "dense": m.toarray()}[layout]
    return write_h5ad(make_adata(x), name=name)


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") or p.name == "out")


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_values_are_an_error_naming_input_and_row(tmp_path, write_h5ad, layout, value):
    path = _with_value(write_h5ad, value, 17, layout)
    with pytest.raises(ConversionError, match=rf"{path}:X: row 17 holds {value}, a non-finite value.*allow_nonfinite"):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, max_block_values=30)
    assert _leftovers(tmp_path) == []


def test_allow_nonfinite_stores_them(tmp_path, write_h5ad):
    path = _with_value(write_h5ad, np.nan, 17)
    out = convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, allow_nonfinite=True)
    a = open_arrays(out)
    lo, hi = int(a.row_ptr[17]), int(a.row_ptr[18])
    cols, vals = np.asarray(a.col_ptr[lo:hi]), np.asarray(a.data[lo:hi])
    assert np.isnan(vals[cols == 5]).all() and np.isfinite(a.data[: lo]).all()


def test_integer_archives_never_take_them(tmp_path, write_h5ad):
    path = _with_value(write_h5ad, np.inf, 3)
    with pytest.raises(ConversionError, match=r"row 3 holds inf.*data_dtype uint32 cannot store it"):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, data_dtype="uint32", allow_nonfinite=True)


def test_convert_many_names_the_input_and_row(tmp_path, write_h5ad):
    good = write_h5ad(make_adata(random_csr(30, 12)), name="a.h5ad")
    bad = _with_value(write_h5ad, np.nan, 25, name="b.h5ad")
    with pytest.raises(ConversionError, match=rf"{bad}:X: row 25 holds nan"):
        convert_many([good, bad], tmp_path / "out", use_X_not_raw=True, workers=2)
    assert _leftovers(tmp_path) == []
    report = convert_many([good, bad], tmp_path / "out", use_X_not_raw=True, data_dtype="auto", allow_nonfinite=True)
    assert report.data_dtype == "float32" and np.isnan(open_arrays(tmp_path / "out").data).sum() == 1


def test_cli_flag(tmp_path, write_h5ad, capsys):
    path = _with_value(write_h5ad, np.nan, 9)
    assert cli(["convert", str(path), "-o", str(tmp_path / "out"), "--use-X-not-raw", "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:X: row 9 holds nan" in err and "pass --allow-nonfinite to store them" in err  # the flag, not the keyword
    assert cli(["convert", str(path), "-o", str(tmp_path / "out"), "--use-X-not-raw", "-q", "--allow-nonfinite"]) == 0


@pytest.mark.parametrize("key", ["indices", "indptr"])
def test_float_typed_indices_are_refused(tmp_path, write_h5ad, key):
    path = write_h5ad(make_adata(random_csr(20, 9, density=0.5)))
    with h5py.File(path, "a") as f:
        values = f[f"X/{key}"][()]
        del f[f"X/{key}"]
        f[f"X/{key}"] = values.astype(np.float64) + (0.5 if key == "indices" else 0.0)  # truncation would hide this
    with pytest.raises(ConversionError, match=rf"{path}:X/{key}: the sparse matrix stores its {key} as float64"):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True)
    assert _leftovers(tmp_path) == []


def _poison_strings(f: h5py.File, key: str) -> None:
    """Rewrite a string dataset with one value that is not UTF-8, keeping its anndata attributes."""
    ds = f[key]
    attrs = dict(ds.attrs)
    values = [v if isinstance(v, bytes) else str(v).encode() for v in ds[()]]
    values[1] = b"\xff\xfe-not-utf8"
    del f[key]
    new = f.create_dataset(key, data=np.array(values, dtype=object), dtype=h5py.string_dtype("utf-8"))
    new.attrs.update(attrs)


@pytest.mark.parametrize(
    "key,column",
    [("obs/donor/categories", "donor"), ("obs/_index", "_index (the index)"), ("var/feature_name", "feature_name")],
)
def test_undecodable_strings_name_their_column(tmp_path, write_h5ad, key, column):
    a = make_adata(random_csr(12, 6))
    a.var["feature_name"] = a.var["feature_name"].astype(str)
    path = write_h5ad(a)
    with h5py.File(path, "a") as f:
        if key not in f:  # anndata may store the column as a categorical
            key = f"{key}/categories"
        _poison_strings(f, key)
    table = key.split("/")[0]
    with pytest.raises(ConversionError, match=rf"{path}: {table} column '{re.escape(column)}' holds text that is not valid UTF-8"):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True)
    assert _leftovers(tmp_path) == []
