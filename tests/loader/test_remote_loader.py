"""SingleCellLoader and get_backend over an archive on a local S3 server: every order's epoch equals
the local loader's, obs/obsm/neighbors come along, random order warns, info reads a URL."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellLoader, convert_h5ad
from scdl_gpu.archive import RemoteArchive
from scdl_gpu.backend import BatchOptions, get_backend
from scdl_gpu.cli import main
from tests.conftest import BUNDLED, make_adata, random_csr
from tests.s3 import s3  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """211 cells with obs columns, an obsm array and a neighbor graph."""
    n = 211
    m = random_csr(n, 60, density=0.2, seed=7, empty_rows=(0, 100), shuffle_cols=True)
    g = sp.csr_matrix(np.roll(np.eye(n, dtype=np.float32), 3, axis=1))
    a = make_adata(m, obsp={"next_cell_ids": g}, obsm={"X_pca": np.random.default_rng(1).random((n, 5), np.float32)})
    d = tmp_path_factory.mktemp("remote_loader")
    a.write_h5ad(d / "s.h5ad")
    return convert_h5ad(d / "s.h5ad", d / "a.scdl", use_X_not_raw=True, load_neighbors=True, obsm_keys=["X_pca"])


@pytest.fixture(scope="module")
def url(s3, archive):
    return s3.upload(archive)


def _same(a: dict, b: dict) -> None:
    assert a["rows"].equal(b["rows"])
    xa, xb = a["X"], b["X"]
    for part in ("crow_indices", "col_indices", "values"):
        assert getattr(xa, part)().equal(getattr(xb, part)())
    assert a["obs"].keys() == b["obs"].keys() and all(a["obs"][k].equal(b["obs"][k]) for k in a["obs"])
    assert a.keys() == b.keys()
    if "obsm" in a:
        assert all(a["obsm"][k].equal(b["obsm"][k]) for k in b["obsm"])
    if "neighbor_rows" in a:
        assert a["neighbor_rows"].equal(b["neighbor_rows"])
        assert a["neighbor_X"].to_dense().equal(b["neighbor_X"].to_dense())


@pytest.mark.parametrize("order, fetch_factor", [("block", 1), ("block", 3), ("sequential", 1), ("random", 1)])
def test_an_epoch_equals_the_local_loaders(s3, archive, url, order, fetch_factor):
    kw = dict(batch_size=32, shuffle=order, block_size=4, fetch_factor=fetch_factor, seed=3,
              obs_columns=["cell_type"], obsm_keys=["X_pca"], neighbors=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remote = SingleCellLoader(url, storage_options=s3.storage_options, device="cpu", **kw)
    costly = [w for w in caught if "reads one range per row" in str(w.message)]
    assert len(costly) == (order == "random") and all(w.filename == __file__ for w in costly)
    local = SingleCellLoader(archive, device="cpu", **kw)
    assert str(remote.path) == url and len(remote) == len(local)
    assert remote.categories == local.categories
    for epoch in (0, 1):
        remote.set_epoch(epoch)
        local.set_epoch(epoch)
        n = 0
        for a, b in zip(remote, local, strict=True):
            _same(a, b)
            n += 1
        assert n == len(local)
    remote.close()


def test_get_backend_reads_batches_with_transforms(s3, archive, url):
    opts = BatchOptions(target_sum=1e4, log1p=True, dense=True)
    remote = get_backend(url, device="cpu", options=opts, storage_options=s3.storage_options)
    local = get_backend(archive, device="cpu", options=opts)
    rows = np.random.default_rng(0).integers(0, 211, 97)
    assert remote.width == local.width == 60 and remote.archive_sorted == local.archive_sorted
    assert remote.batch(rows).dense.equal(local.batch(rows).dense)
    mirror = remote.files
    remote.close()
    assert not mirror.exists()
    with pytest.raises(IndexError):  # the plan's checks run as on a local archive
        local.batch([211])


def test_an_open_remote_archive_is_shared_not_closed(s3, url):
    with RemoteArchive(url, s3.storage_options, cache_bytes=1 << 20) as r:
        loader = SingleCellLoader(r, batch_size=50, device="cpu")
        assert sum(len(b["rows"]) for b in loader) == 211
        loader.close()
        assert r.read_spans([0], [1])[0].shape == (1,)  # still open


def test_errors_about_per_cell_data_name_the_url(s3, url):
    with pytest.raises(KeyError, match=rf"obs column 'nope' is in none of the 1 obs blocks of {url}"):
        SingleCellLoader(url, device="cpu", obs_columns=["nope"], storage_options=s3.storage_options)
    with pytest.raises(KeyError, match=rf"{url} has no obsm array 'X_none'") as e:
        SingleCellLoader(url, device="cpu", obsm_keys=["X_none"], storage_options=s3.storage_options)
    assert "scdl-remote-" not in str(e.value)


def test_storage_options_are_for_urls():
    with pytest.raises(ValueError, match="storage_options are for archives at a URL"):
        get_backend(BUNDLED, device="cpu", storage_options={"anon": True})


def test_cli_info_reads_a_remote_archive(s3, archive, url, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)  # what a user sets for a non-AWS endpoint
    assert main(["info", url]) == 0
    text = capsys.readouterr().out
    assert url in text and "211" in text and "data.npy" in text
    assert main(["info", url + "-missing"]) == 1
    assert "No SCDL archive at" in capsys.readouterr().err
