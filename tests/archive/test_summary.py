"""archive_summary / format_summary: numbers agree with the dataset and with the files on disk."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from scdl_gpu import ArchiveNotFoundError
from scdl_gpu.archive import VariableFeatureIndex, archive_summary, format_summary, open_arrays
from scdl_gpu.archive._constants import FileNames
from scdl_gpu.archive._reader import load_feature_index
from scdl_gpu.archive._summary import human_bytes
from scdl_gpu.convert import convert_h5ad
from scdl_gpu.dataset import SingleCellMemMapDataset
from tests.conftest import BUNDLED, make_adata, random_csr

BUNDLED_FILES = sorted(BUNDLED.glob("*.h5ad"))


@pytest.fixture(scope="module")
def real_archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    # pbmc_small_csc holds float64 values; keep them exact so conversion does not warn.
    return {
        p.stem: convert_h5ad(p, root / p.stem, use_X_not_raw=True, data_dtype="float64" if "pbmc" in p.name else None)
        for p in BUNDLED_FILES
    }


def _files_on_disk(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = os.stat(full).st_size
    return out


@pytest.mark.parametrize("name", [p.stem for p in BUNDLED_FILES])
def test_summary_matches_dataset_and_disk(real_archives, name):
    path = real_archives[name]
    s = archive_summary(path)
    ds = SingleCellMemMapDataset(str(path))
    assert s["path"] == str(path)
    assert s["n_rows"] == ds.number_of_rows()
    assert s["nnz"] == ds.number_nonzero_values()
    assert s["n_genes"] == ds.number_of_variables()
    assert s["density"] == pytest.approx(1 - ds.sparsity())
    assert s["density"] == pytest.approx(s["nnz"] / (s["n_rows"] * s["n_genes"][0]))
    assert s["dtypes"] == {k: ds.dtypes[f] for k, f in (("data", "data.npy"), ("row_ptr", "row_ptr.npy"), ("col_ptr", "col_ptr.npy"))}
    assert s["files"] == _files_on_disk(path)
    assert s["total_bytes"] == sum(_files_on_disk(path).values())
    assert s["files"]["data.npy"] == os.stat(path / "data.npy").st_size
    assert s["var_blocks"] == 1 and s["obs_blocks"] == 1
    assert s["var_columns"] == pq.read_schema(path / "var_features" / "dataframe_0.parquet").names
    assert s["obs_columns"] == pq.read_schema(path / "obs_features" / "dataframe_0.parquet").names
    assert s["neighbors"] is False and s["neighbor_nnz"] is None
    assert s["header"] is True
    assert s["version"] == "0.1.3"

    text = format_summary(s)
    lines = text.splitlines()
    assert f"rows:      {s['n_rows']:,}" in lines
    assert f"genes:     {s['n_genes'][0]:,}" in lines
    assert any(line.startswith("values:") and f"{s['nnz']:,} stored" in line for line in lines)
    assert f"dtypes:    data {s['dtypes']['data']}, row_ptr {s['dtypes']['row_ptr']}, col_ptr {s['dtypes']['col_ptr']}" in lines
    assert "neighbors: no" in lines and "header:    yes" in lines and "version:   0.1.3" in lines
    assert any(line.startswith("size:") and human_bytes(s["total_bytes"]) in line and f"in {len(s['files'])} files" in line for line in lines)
    data_line = next(line for line in lines if line.strip().startswith("data.npy"))
    assert data_line.split()[1:] == human_bytes(s["files"]["data.npy"]).split()
    assert any(line.strip().startswith("var_features/") and "(7 files)" in line for line in lines)
    # Keys are aligned: every "key: value" line has its value in the same column.
    keyed = [line for line in lines if not line.startswith(" ")]
    assert len({len(line) - len(line.split(":", 1)[1].lstrip()) for line in keyed}) == 1


def test_summary_with_neighbors(tmp_path, write_h5ad):
    n = 25
    graph = sp.random(n, n, density=0.2, format="csr", random_state=np.random.default_rng(3), dtype=np.float32)
    out = convert_h5ad(
        write_h5ad(make_adata(random_csr(n, 9), obsp={"knn": graph})), tmp_path / "a",
        use_X_not_raw=True, load_neighbors=True, neighbor_key="knn",
    )
    s = archive_summary(out)
    assert s["neighbors"] is True and s["neighbor_nnz"] == graph.nnz
    assert f"neighbors: yes, {graph.nnz:,} edges" in format_summary(s).splitlines()
    assert {"neighbor_indptr.npy", "neighbor_indices.npy", "neighbor_values.npy"} <= set(s["files"])


def test_summary_of_two_var_blocks(tmp_path, write_h5ad):
    """density over a ragged matrix: stored values / sum of rows x genes over the var blocks."""
    dense = random_csr(30, 50, density=0.2).toarray()
    dense[10:, 10:] = 0  # rows 10-29 belong to a 10-gene block
    m = sp.csr_matrix(dense)
    out = convert_h5ad(write_h5ad(make_adata(m)), tmp_path / "a", use_X_not_raw=True)
    var = load_feature_index(out, FileNames.VAR_FEATURES)
    feats = dict(var._feature_arr[0])
    two = VariableFeatureIndex()
    two.append_features(10, feats, "a")
    two.append_features(20, {k: v[:10] for k, v in feats.items()}, "b")
    shutil.rmtree(out / "var_features")
    two.save(out / "var_features")
    s = archive_summary(out)
    ds = SingleCellMemMapDataset(str(out))
    assert s["n_genes"] == [50, 10] == ds.number_of_variables()
    assert s["var_blocks"] == 2
    assert s["density"] == pytest.approx(s["nnz"] / (10 * 50 + 20 * 10))
    assert s["density"] == pytest.approx(1 - ds.sparsity())
    assert "genes:     50, 10 (2 blocks)" in format_summary(s).splitlines()


def test_summary_of_headerless_archive_without_indices(tmp_path, write_h5ad):
    out = convert_h5ad(write_h5ad(make_adata(random_csr(12, 7))), tmp_path / "a", use_X_not_raw=True)
    arrays = open_arrays(out)
    (out / "header.sch").unlink()
    np.asarray(arrays.col_ptr, np.uint32).tofile(out / "col_ptr.npy")
    np.asarray(arrays.row_ptr, np.uint64).tofile(out / "row_ptr.npy")
    shutil.rmtree(out / "var_features")
    shutil.rmtree(out / "obs_features")
    (out / "version.json").unlink()
    s = archive_summary(out)
    assert s["header"] is False and s["version"] is None
    assert s["dtypes"] == {"data": "float32", "row_ptr": "uint64", "col_ptr": "uint32"}
    assert s["n_genes"] == [] and s["density"] is None
    assert s["var_blocks"] == s["obs_blocks"] == 0 and s["var_columns"] == s["obs_columns"] == []
    lines = format_summary(s).splitlines()
    for expected in ("genes:     unknown (no var index)", "var:       none", "obs:       none", "version:   unknown"):
        assert expected in lines
    assert any(line.startswith("header:") and "no" in line for line in lines)


def test_summary_of_missing_archive(tmp_path):
    with pytest.raises(ArchiveNotFoundError):
        archive_summary(tmp_path / "nothing")


@pytest.mark.parametrize(
    "n,text",
    [(0, "0 B"), (417, "417 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (int(1.2 * 2**20), "1.2 MiB"), (5 * 2**30, "5.0 GiB"), (3 * 2**40, "3.0 TiB")],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text
