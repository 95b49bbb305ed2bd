"""Keeping ``.obsm`` arrays at conversion: every dtype round trips against anndata's obsm, sparse
ones densified by row blocks, inputs without a key aligned with NaN rows, bad requests refused."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellMemMapDataset, convert_h5ad
from scdl_gpu.archive import validate_archive
from scdl_gpu.convert import convert_many
from scdl_gpu.errors import ConversionError
from tests.conftest import BUNDLED, SHARED_REAL, write_obsm_h5ad

REAL = SHARED_REAL if SHARED_REAL.is_dir() else BUNDLED
_h5ad = functools.partial(write_obsm_h5ad, n_genes=10)


DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_keeps_dtype(tmp_path, dtype):
    rng = np.random.default_rng(3)
    values = (rng.normal(size=(37, 6)) * 40).astype(dtype)
    src = _h5ad(tmp_path / "in.h5ad", 37, {"X_emb": values})
    # 20 values per block: 3 rows at a time, 13 blocks
    out = convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["X_emb"], max_block_values=20)
    got = SingleCellMemMapDataset(out).obsm("X_emb")
    want = ad.read_h5ad(src).obsm["X_emb"]
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert validate_archive(out) == []


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_sparse_obsm_stored_dense_by_row_blocks(tmp_path, fmt):
    m = sp.random(41, 9, density=0.25, format="csr", random_state=np.random.default_rng(4), dtype=np.float32)
    m.indices = m.indices.copy()
    src = _h5ad(tmp_path / "in.h5ad", 41, {"X_sparse": m if fmt == "csr" else m.toarray()})
    out = convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["X_sparse"], max_block_values=18)
    got = SingleCellMemMapDataset(out).obsm("X_sparse")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, m.toarray())


def test_csc_and_dataframe_refused(tmp_path):
    m = sp.random(12, 4, density=0.5, format="csc", random_state=np.random.default_rng(5))
    df = pd.DataFrame({"a": np.arange(12), "b": np.ones(12)}, index=[f"cell{i}" for i in range(12)])
    src = _h5ad(tmp_path / "in.h5ad", 12, {"X_csc": m, "frame": df})
    with pytest.raises(ConversionError, match=r"obsm/X_csc is a CSC sparse matrix"):
        convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["X_csc"])
    with pytest.raises(ConversionError, match=r"obsm/frame is a DataFrame"):
        convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["frame"])
    assert not (tmp_path / "o.scdl").exists()


def test_missing_key_names_input_and_its_keys(tmp_path):
    src = _h5ad(tmp_path / "in.h5ad", 8, {"X_umap": np.zeros((8, 2)), "X_pca": np.zeros((8, 3))})
    with pytest.raises(ConversionError, match=r"in\.h5ad has no obsm key 'spatial'; its obsm keys: \['X_pca', 'X_umap'\]"):
        convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["spatial"])
    with pytest.raises(ValueError, match="cannot be stored"):
        convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["X/umap"])
    with pytest.raises(ValueError, match="more than once"):
        convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["X_umap", "X_umap"])
    assert not (tmp_path / "o.scdl").exists()


def test_real_files_including_pre_07_layout(tmp_path):
    for name in ("cxg_example_valid.h5ad", "pbmc68k_reduced_legacy.h5ad", "scvi_pbmc10k_protein_dense.h5ad"):
        src = REAL / name
        if not src.is_file():
            continue
        with h5py.File(src, "r") as f:
            legacy = isinstance(f["obsm"], h5py.Dataset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata's notices on old layouts
            want = ad.read_h5ad(src).obsm
            out = convert_h5ad(src, tmp_path / name, use_X_not_raw=True, obsm_keys=list(want.keys()))
        ds = SingleCellMemMapDataset(out)
        assert ds.obsm_keys() == sorted(want.keys()), (name, legacy)
        for key in want.keys():
            got = ds.obsm(key)
            assert got.dtype == want[key].dtype, (name, key)
            np.testing.assert_array_equal(got, want[key], err_msg=f"{name} {key}")


def test_many_inputs_aligned_in_row_order(tmp_path):
    rng = np.random.default_rng(6)
    umap = [rng.normal(size=(n, 2)).astype(np.float32) for n in (11, 5, 9)]
    counts = [rng.integers(0, 50, size=(n, 3)) for n in (11, 5, 9)]
    d = tmp_path / "in"
    d.mkdir()
    _h5ad(d / "a.h5ad", 11, {"X_umap": umap[0], "counts": counts[0]}, seed=1)
    _h5ad(d / "b.h5ad", 5, {"counts": counts[1]}, seed=2)  # lacks X_umap
    _h5ad(d / "c.h5ad", 9, {"X_umap": umap[2], "counts": counts[2]}, seed=3)
    with pytest.warns(UserWarning, match=r"obsm key 'X_umap' not found in \[.*b\.h5ad'\]; their rows hold NaN"):
        report = convert_many([d / "a.h5ad", d / "b.h5ad", d / "c.h5ad"], tmp_path / "o.scdl", workers=2,
                              use_X_not_raw=True, obsm_keys=["X_umap", "counts"], max_block_values=7)
    ds = SingleCellMemMapDataset(report.archive)
    got = ds.obsm("X_umap")
    assert got.dtype == np.float32 and got.shape == (25, 2)
    np.testing.assert_array_equal(got[:11], umap[0])
    assert np.isnan(got[11:16]).all()
    np.testing.assert_array_equal(got[16:], umap[2])
    assert ds.obsm("counts").dtype == np.int64  # every input has it: ints stay ints
    np.testing.assert_array_equal(ds.obsm("counts"), np.concatenate(counts))
    assert validate_archive(report.archive) == []


def test_many_inputs_int_key_missing_somewhere_becomes_float64(tmp_path):
    a = _h5ad(tmp_path / "a.h5ad", 6, {"counts": np.arange(12).reshape(6, 2)})
    b = _h5ad(tmp_path / "b.h5ad", 4, {}, seed=1)
    with pytest.warns(UserWarning, match="their rows hold NaN"):
        report = convert_many([a, b], tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["counts"])
    got = SingleCellMemMapDataset(report.archive).obsm("counts")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got[:6], np.arange(12).reshape(6, 2))
    assert np.isnan(got[6:]).all()


def test_many_inputs_errors_name_inputs(tmp_path):
    a = _h5ad(tmp_path / "a.h5ad", 6, {"X_pca": np.zeros((6, 3))})
    b = _h5ad(tmp_path / "b.h5ad", 4, {"X_pca": np.zeros((4, 5)), "X_umap": np.zeros((4, 2))}, seed=1)
    with pytest.raises(ConversionError, match=r"different widths across inputs: .*a\.h5ad \(3\), .*b\.h5ad \(5\)"):
        convert_many([a, b], tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["X_pca"])
    with pytest.raises(ConversionError, match=r"'spatial' is in none of the inputs.*a\.h5ad: \['X_pca'\].*b\.h5ad: \['X_pca', 'X_umap'\]"):
        convert_many([a, b], tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["spatial"])
    assert not (tmp_path / "o.scdl").exists()


def test_many_inputs_with_processes(tmp_path):
    rng = np.random.default_rng(8)
    parts = [rng.normal(size=(n, 4)) for n in (13, 8)]
    paths = [_h5ad(tmp_path / f"p{k}.h5ad", len(v), {"X_pca": v}, seed=k) for k, v in enumerate(parts)]
    report = convert_many(paths, tmp_path / "o.scdl", workers=2, use_processes=True, use_X_not_raw=True, obsm_keys=["X_pca"])
    np.testing.assert_array_equal(SingleCellMemMapDataset(report.archive).obsm("X_pca"), np.concatenate(parts))


def test_cli_obsm_key_repeatable(tmp_path):
    rng = np.random.default_rng(9)
    umap, pca = rng.normal(size=(10, 2)), rng.normal(size=(10, 4)).astype(np.float32)
    src = _h5ad(tmp_path / "in.h5ad", 10, {"X_umap": umap, "X_pca": pca})
    out = tmp_path / "o.scdl"
    proc = subprocess.run(
        [sys.executable, "-m", "scdl_gpu.cli", "convert", str(src), "-o", str(out), "--use-X-not-raw", "-q",
         "--obsm-key", "X_umap", "--obsm-key", "X_pca", "--report", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    ds = SingleCellMemMapDataset(out)
    np.testing.assert_array_equal(ds.obsm("X_umap"), umap)
    np.testing.assert_array_equal(ds.obsm("X_pca"), pca)
    assert json.loads((tmp_path / "r.json").read_text())["n_rows"] == 10
    bad = subprocess.run(
        [sys.executable, "-m", "scdl_gpu.cli", "convert", str(src), "-o", str(tmp_path / "x.scdl"), "-q", "--use-X-not-raw",
         "--obsm-key", "spatial"],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode != 0 and "no obsm key 'spatial'" in bad.stderr and "X_umap" in bad.stderr


def test_chunked_compressed_obsm_read_in_whole_chunks(tmp_path, monkeypatch):
    values = np.random.default_rng(10).normal(size=(100, 4))
    src = _h5ad(tmp_path / "in.h5ad", 100, {})
    with h5py.File(src, "r+") as f:
        ds = f["obsm"].create_dataset("X_c", data=values, chunks=(8, 4), compression="gzip")
        ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
    from scdl_gpu.convert import _obsm

    starts = []
    rows = _obsm._DenseObsm.rows
    monkeypatch.setattr(_obsm._DenseObsm, "rows", lambda self, a, b: (starts.append((a, b)), rows(self, a, b))[1])
    out = convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["X_c"], max_block_values=4 * 20)
    assert all(a % 8 == 0 for a, _ in starts) and len(starts) == 7  # 16 rows (2 chunks) a block
    np.testing.assert_array_equal(SingleCellMemMapDataset(out).obsm("X_c"), values)


def test_string_obsm_refused(tmp_path):
    src = _h5ad(tmp_path / "in.h5ad", 6, {})
    with h5py.File(src, "r+") as f:
        ds = f["obsm"].create_dataset("labels", data=np.array([[b"a", b"b"]] * 6))
        ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
    with pytest.raises(ConversionError, match=r"obsm/labels: dtype \|S1 cannot be stored"):
        convert_h5ad(src, tmp_path / "o.scdl", use_X_not_raw=True, obsm_keys=["labels"])


def test_obsm_with_a_shuffled_row_order_is_refused(tmp_path):
    """obsm is written in input order by row ranges: a shuffled archive would pair rows with other
    rows' embeddings, so the combination is refused before anything is written."""
    with pytest.raises(ValueError, match="row_order='shuffle'"):
        convert_many([BUNDLED / "cxg_example_valid.h5ad"], tmp_path / "s.scdl", use_X_not_raw=True,
                     obsm_keys=["X_umap"], row_order="shuffle", seed=1)
    assert not (tmp_path / "s.scdl").exists()
