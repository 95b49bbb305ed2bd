"""Atlases at a URL (the moto S3 server, and file://): the same batches, obs and member weights
as the local atlas, members located safely against the atlas URL, damage named by URL."""

from __future__ import annotations

import contextlib
import json
import shutil
import traceback

import numpy as np
import pytest

from scdl_gpu import SingleCellLoader
from scdl_gpu.atlas import MANIFEST, RemoteAtlas, create_atlas, is_remote_atlas
from scdl_gpu.backend import get_backend
from scdl_gpu.cli import main
from scdl_gpu.errors import ArchiveError, ArchiveNotFoundError
from tests.atlas.members import make_members
from tests.s3 import s3  # noqa: F401  (the fixture)

SECRET = "wJalrXUtnFEMI-K7MDENG"
OBS = ["cell_type", "score", "donor"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """An atlas directory holding its three members (different gene sets) under members/."""
    tmp = tmp_path_factory.mktemp("ratlas")
    root = tmp / "atlas"
    (root / "members").mkdir(parents=True)
    (tmp / "src").mkdir()
    for path, _ in make_members(tmp / "src"):
        shutil.copytree(path, root / "members" / path.name)
    create_atlas(root, sorted((root / "members").iterdir()))
    return root


@pytest.fixture(scope="module")
def url(s3, local):
    return s3.upload(local, "atlas")


def _copy(s3, url: str) -> str:
    """A fresh upload of the atlas at ``url`` (to damage without touching the shared one)."""
    bucket = url[len("s3://"):].split("/")[0]
    new = f"{bucket}/copy-{len(s3.fs.ls(bucket))}"
    s3.fs.copy(url[len("s3://"):], new, recursive=True)
    return f"s3://{new}"


def _pairs(a: SingleCellLoader, b: SingleCellLoader):
    batches = list(zip(a, b, strict=True))
    assert batches
    return batches


def _same_batch(x: dict, y: dict) -> None:
    assert np.array_equal(x["rows"].numpy(), y["rows"].numpy())
    for part in ("crow_indices", "col_indices", "values"):
        assert np.array_equal(getattr(x["X"], part)().numpy(), getattr(y["X"], part)().numpy())
    for col in OBS:
        np.testing.assert_array_equal(x["obs"][col].numpy(), y["obs"][col].numpy())


@pytest.mark.parametrize("order", ["random", "block"])
def test_every_batch_and_obs_equal_the_local_atlas(s3, local, url, order):
    kw = dict(device="cpu", batch_size=16, shuffle=order, block_size=4, obs_columns=OBS, seed=3)
    with pytest.warns(UserWarning, match="reads one range per row") if order == "random" else contextlib.nullcontext():
        remote = SingleCellLoader(url, storage_options=s3.storage_options, **kw)
    here = SingleCellLoader(local, **kw)
    assert remote.path == url and remote.n_rows == here.n_rows == 70 and remote.n_genes == here.n_genes
    assert remote.categories == here.categories
    for x, y in _pairs(remote, here):
        _same_batch(x, y)
    mirrors = [remote.backend.remote.local] + [m.local for m in remote.backend.remote.members]
    assert all(p.exists() for p in mirrors)
    remote.close()
    here.close()
    assert not any(p.exists() for p in mirrors)  # every mirror removed on close


def test_group_weights_draw_by_member(s3, local, url):
    kw = dict(device="cpu", batch_size=10, group_weights={"m0": 0.0, "m1": 1.0, "m2": 3.0},
              epoch_length=200, seed=5)
    with pytest.warns(UserWarning, match="reads one range per row"):
        remote = SingleCellLoader(url, storage_options=s3.storage_options, **kw)
    here = SingleCellLoader(local, **kw)
    assert remote.backend.groups[0] == here.backend.groups[0] == ["m0", "m1", "m2"]
    rows = []
    for x, y in _pairs(remote, here):
        assert np.array_equal(x["rows"].numpy(), y["rows"].numpy())
        assert np.array_equal(x["X"].values().numpy(), y["X"].values().numpy())
        rows.append(x["rows"].numpy())
    rows = np.concatenate(rows)
    assert rows.min() >= 30  # m0 (rows 0..29) has weight 0
    n1, n2 = ((rows >= 30) & (rows < 47)).sum(), (rows >= 47).sum()
    assert n2 > n1 > 0  # weights 1 : 3 by member
    remote.close()
    here.close()


def test_backend_by_url_matches_the_local_backend(s3, local, url):
    rows = np.random.default_rng(0).integers(0, 70, 40)
    with get_backend(url, device="cpu", storage_options=s3.storage_options) as b, get_backend(local, device="cpu") as h:
        assert is_remote_atlas(url, s3.storage_options) and not is_remote_atlas(f"{url}/members/m0.scdl", s3.storage_options)
        x, y = b.batch(rows).to_sparse_csr(), h.batch(rows).to_sparse_csr()
        assert np.array_equal(x.to_dense().numpy(), y.to_dense().numpy())
        assert b.path == url and b.groups[0] == h.groups[0] and np.array_equal(b.groups[1], h.groups[1])


def test_the_cache_budget_is_split_across_members_by_size(s3, url):
    with RemoteAtlas(url, s3.storage_options, cache_bytes=1 << 20) as r:
        shares = [m.cache.cache_bytes for m in r.members]
        assert 0 < sum(shares) <= 1 << 20
        values = [m.n_values for m in r.atlas.members]  # all three store float32 values, int32 columns
        assert np.argmax(shares) == np.argmax(values) and np.argmin(shares) == np.argmin(values)


def test_a_missing_member_or_damaged_map_names_the_url(s3, url):
    gone = _copy(s3, url)
    s3.fs.rm(f"{gone[len('s3://'):]}/members/m1.scdl", recursive=True)
    with pytest.raises(ArchiveNotFoundError, match=rf"No SCDL archive at {gone}/members/m1\.scdl"):
        SingleCellLoader(gone, storage_options=s3.storage_options, device="cpu")

    damaged = _copy(s3, url)
    key = damaged[len("s3://"):]
    cmap = json.loads(s3.fs.cat(f"{key}/{MANIFEST}"))["members"][2]["column_map"]
    raw = bytearray(s3.fs.cat(f"{key}/{cmap}"))
    raw[-1] ^= 1
    s3.fs.pipe(f"{key}/{cmap}", bytes(raw))
    with pytest.raises(ArchiveError, match="does not match its checksum") as e:
        get_backend(damaged, device="cpu", storage_options=s3.storage_options)
    assert f"{damaged}/{cmap}" in str(e.value) and "scdl-remote" not in str(e.value)

    s3.fs.rm(f"{key}/{cmap}")
    with pytest.raises(ArchiveNotFoundError, match=rf"{damaged}/{cmap}: the column map of atlas member 'm2' is missing"):
        get_backend(damaged, device="cpu", storage_options=s3.storage_options)

    for nowhere in (f"{url}-nothing-here", "s3://no-such-bucket-x/atlas"):
        assert not is_remote_atlas(nowhere, s3.storage_options)
        with pytest.raises(ArchiveNotFoundError, match=f"No atlas at {nowhere} \\(it holds no atlas.json\\)"):
            RemoteAtlas(nowhere, s3.storage_options)
    s3.fs.pipe(f"{key}/{MANIFEST}", b"{not json")
    with pytest.raises(ArchiveError, match=rf"{damaged}/{MANIFEST}: not a readable atlas manifest"):
        RemoteAtlas(damaged, s3.storage_options)


def _edit_manifest(root, member: int, path: str) -> None:
    doc = json.loads((root / MANIFEST).read_text())
    doc["members"][member]["path"] = path
    (root / MANIFEST).write_text(json.dumps(doc))


def test_member_paths_resolve_inside_the_atlas_or_by_url(local, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(local, root)
    with RemoteAtlas(f"file://{root}") as r:  # no server: file://
        assert r.member_urls == [f"file://{root}/members/m{k}.scdl" for k in range(3)]
    _edit_manifest(root, 1, "../elsewhere/m1.scdl")
    with pytest.raises(ArchiveError, match=r"member 'm1' is '\.\./elsewhere/m1\.scdl', which leads out of the atlas"):
        RemoteAtlas(f"file://{root}")
    _edit_manifest(root, 1, "members/../../m1.scdl")
    with pytest.raises(ArchiveError, match="leads out of the atlas"):
        RemoteAtlas(f"file://{root}")
    _edit_manifest(root, 1, str(root / "members" / "m1.scdl"))
    with pytest.raises(ArchiveError, match=rf"member 'm1' is the local path '{root}/members/m1\.scdl'"):
        RemoteAtlas(f"file://{root}")
    moved = tmp_path / "moved.scdl"
    shutil.move(root / "members" / "m1.scdl", moved)
    _edit_manifest(root, 1, f"file://{moved}")  # an absolute URL: read as given
    with RemoteAtlas(f"file://{root}") as r:
        assert r.member_urls[1] == f"file://{moved}"
    here = SingleCellLoader(local, device="cpu", batch_size=16, shuffle="block", obs_columns=OBS)
    there = SingleCellLoader(f"file://{root}", device="cpu", batch_size=16, shuffle="block", obs_columns=OBS)
    for x, y in _pairs(there, here):
        _same_batch(x, y)
    there.close()
    here.close()


def test_credentials_never_reach_errors(s3, local, tmp_path):
    root = tmp_path / "atlas"
    shutil.copytree(local, root)
    _edit_manifest(root, 0, f"s3://AKIDEXAMPLE:{SECRET}@no-such-bucket-x/m0.scdl?X-Amz-Signature={SECRET}")
    url = s3.upload(root, "atlas")
    options = {**s3.storage_options, "secret": SECRET, "key": "AKIDEXAMPLE"}
    with pytest.raises(ArchiveError) as e:
        SingleCellLoader(url, storage_options=options, device="cpu")
    text = "".join(traceback.format_exception(e.value))
    assert SECRET not in text and "AKIDEXAMPLE" not in text and "no-such-bucket-x" in text


def test_info_of_an_atlas_url(local, capsys):
    assert main(["info", f"file://{local}"]) == 0
    out = capsys.readouterr().out
    assert f"atlas:    file://{local}" in out and "rows:     70 in 3 members" in out
    assert main(["atlas", "info", f"file://{local}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == f"file://{local}"
