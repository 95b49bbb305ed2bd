"""Bad inputs: one clear exception each, and nothing half-written left behind."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from scdl_gpu import ConversionError, SingleCellMemMapDataset, convert_h5ad
from scdl_gpu.convert._h5ad import H5adSource
from tests.conftest import make_adata, random_csr


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") or p.name == "out")


@pytest.fixture
def small_h5ad(write_h5ad):
    return write_h5ad(make_adata(random_csr(10, 8)))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not find h5ad path"):
        convert_h5ad(tmp_path / "nope.h5ad", tmp_path / "out")
    assert _leftovers(tmp_path) == []


def test_not_an_hdf5_file(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(ConversionError, match="not a readable HDF5"):
        convert_h5ad(bad, tmp_path / "out")
    assert _leftovers(tmp_path) == []


def test_no_raw(tmp_path, small_h5ad):
    with pytest.raises(ValueError, match="does not have raw count data"):
        SingleCellMemMapDataset(tmp_path / "out", h5ad_path=small_h5ad)
    assert _leftovers(tmp_path) == []


def test_missing_neighbor_key_is_an_error_unless_allowed(tmp_path, write_h5ad):
    import scipy.sparse as sp

    g = sp.csr_matrix(np.eye(6, dtype=np.float32))
    path = write_h5ad(make_adata(random_csr(6, 4), obsp={"connectivities": g, "distances": g}))
    with H5adSource(path, use_X_not_raw=True) as source:
        assert source.neighbor_keys() == ["connectivities", "distances"]
    assert not source._file.id.valid  # closed on exit
    match = r"'connectivitiez' not found in \S+ \(obsp keys: connectivities, distances\); pass allow_missing_neighbors=True"
    with pytest.raises(ConversionError, match=match):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, load_neighbors=True, neighbor_key="connectivitiez")
    assert _leftovers(tmp_path) == []
    with pytest.warns(UserWarning, match="'connectivitiez' not found"):
        out = convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, load_neighbors=True, neighbor_key="connectivitiez",
                           allow_missing_neighbors=True)
    assert not (out / "neighbor_indices.npy").exists()
    # upstream's API keeps upstream's behaviour (its own tests rely on it): warn, load no neighbors
    with pytest.warns(UserWarning) as caught:
        ds = SingleCellMemMapDataset(tmp_path / "ds", h5ad_path=path, use_X_not_raw=True, load_neighbors=True,
                                     neighbor_key="connectivitiez")
    assert any("'connectivitiez' not found" in str(w.message) for w in caught)
    assert ds.get_neighbor_stats() == {"has_neighbors": False}


def test_no_x(tmp_path, write_h5ad):
    a = make_adata(random_csr(4, 3))
    a.X = None
    path = write_h5ad(a)
    with h5py.File(path, "a") as f:  # anndata may still write an X placeholder; make sure it is gone
        if "X" in f:
            del f["X"]
    with pytest.raises(ValueError, match="does not have count data"):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True)


@pytest.mark.parametrize("dtype", ["int32", "float8", "complex64", "bogus"])
def test_wrong_dtype_name(tmp_path, small_h5ad, dtype):
    with pytest.raises(ValueError, match=r"Invalid data_dtype .* Must be one of: uint8, uint16"):
        SingleCellMemMapDataset(tmp_path / "out", h5ad_path=small_h5ad, use_X_not_raw=True, data_dtype=dtype)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "value,dtype",
    [
        pytest.param(-1.0, "uint32", id="negative-uint32"),
        pytest.param(-3.0, "uint8", id="negative-uint8"),
        pytest.param(300.0, "uint8", id="overflow-uint8"),
        pytest.param(np.nan, "uint16", id="nan-uint16"),
    ],
)
def test_values_an_unsigned_dtype_cannot_hold(tmp_path, write_h5ad, value, dtype):
    m = random_csr(30, 8)
    m.data[-1] = value
    path = write_h5ad(make_adata(m))
    with pytest.raises(ValueError, match=f"{dtype}"):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, data_dtype=dtype, max_block_values=10)
    assert _leftovers(tmp_path) == []


def test_fractional_values_into_integers_warn_like_upstream(tmp_path, write_h5ad):
    m = random_csr(5, 8)
    m.data[0] = 2.5
    path = write_h5ad(make_adata(m))
    with pytest.warns(UserWarning, match="Downcasted data values for 'data.npy' are not close"):
        ds = SingleCellMemMapDataset(convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, data_dtype="uint8"))
    assert ds.data[0] == 2


def test_existing_output_is_refused(tmp_path, small_h5ad):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        convert_h5ad(small_h5ad, tmp_path / "out", use_X_not_raw=True)
    with pytest.raises(FileExistsError, match="not an SCDL archive"):
        convert_h5ad(small_h5ad, tmp_path / "out", use_X_not_raw=True, overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="both an existing SCMMAP and an h5ad"):
        SingleCellMemMapDataset(tmp_path / "out", h5ad_path=small_h5ad)


def test_overwrite_replaces_only_when_complete(tmp_path, small_h5ad, write_h5ad):
    first = convert_h5ad(small_h5ad, tmp_path / "out", use_X_not_raw=True)
    m = random_csr(30, 8)
    m.data[-1] = -1
    bad = write_h5ad(make_adata(m), name="bad.h5ad")
    with pytest.raises(ValueError):
        convert_h5ad(bad, first, use_X_not_raw=True, data_dtype="uint8", overwrite=True)
    assert SingleCellMemMapDataset(first).number_of_rows() == 10  # the old archive is intact
    assert _leftovers(tmp_path) == ["out"]


def test_interrupted_conversion_leaves_no_archive(tmp_path, write_h5ad, monkeypatch):
    path = write_h5ad(make_adata(random_csr(40, 8, density=0.5)))
    from scdl_gpu.archive import _rowfiles

    calls = {"n": 0}
    real = _rowfiles.RowFiles.append_rows  # conversion writes rows through the writer's RowFiles

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(_rowfiles.RowFiles, "append_rows", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert_h5ad(path, tmp_path / "out", use_X_not_raw=True, max_block_values=20)
    assert _leftovers(tmp_path) == []


def test_corrupt_sparse_input(tmp_path, small_h5ad):
    with h5py.File(small_h5ad, "a") as f:
        idx = f["X/indices"]
        idx[0] = 99  # beyond the 8 columns
    with pytest.raises(ConversionError, match=r"column indices range .* outside \[0, 8\)"):
        convert_h5ad(small_h5ad, tmp_path / "out", use_X_not_raw=True)
    assert _leftovers(tmp_path) == []


def test_unknown_encoding(tmp_path, small_h5ad):
    with h5py.File(small_h5ad, "a") as f:
        f["X"].attrs["encoding-type"] = "awkward-array"
    with pytest.raises(ConversionError, match="unsupported matrix encoding 'awkward-array'"):
        convert_h5ad(small_h5ad, tmp_path / "out", use_X_not_raw=True)


def test_input_is_never_modified(tmp_path, small_h5ad):
    before = (small_h5ad.read_bytes(), small_h5ad.stat().st_mtime_ns)
    convert_h5ad(small_h5ad, tmp_path / "out", use_X_not_raw=True)
    assert (small_h5ad.read_bytes(), small_h5ad.stat().st_mtime_ns) == before
