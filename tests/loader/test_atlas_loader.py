"""SingleCellLoader over an atlas: global rows in every order, obs aligned across members, resume
across members, ranks, and block order that never lets a block straddle two members."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu import AtlasDataset, SingleCellLoader, collate_sparse_matrix_batch, convert_h5ad
from scdl_gpu.atlas import create_atlas
from scdl_gpu.loader._obs import MISSING_CODE
from scdl_gpu.loader._order import epoch_order
from tests.atlas.members import ALL_GENES, expected_rows, make_member
from tests.conftest import BUNDLED

ORDERS = ["sequential", "random", "block"]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """Four members: different and permuted gene sets, empty rows, unsorted columns, a chunked one,
    and obs columns some members lack."""
    tmp = tmp_path_factory.mktemp("atlas")
    rng = np.random.default_rng(11)
    mem = [
        make_member(tmp, 0, 31, ALL_GENES[:25], (2,)),
        make_member(tmp, 1, 17, list(rng.permutation(ALL_GENES[10:35])), (0, 5), obs_drop=("score",)),
        make_member(tmp, 2, 23, ALL_GENES[5:15] + ALL_GENES[30:40], shuffle_cols=True, obs_drop=("cell_type",),
                    data_dtype="uint16"),
        make_member(tmp, 3, 29, list(rng.permutation(ALL_GENES)), chunk_size=6, data_dtype="float16"),
    ]
    at = create_atlas(tmp / "atlas", [p for p, _ in mem])
    return at, mem, expected_rows(mem, list(at.genes))


def _loader(at, **kw):
    return SingleCellLoader(at.root, device="cpu", **{"batch_size": 16, **kw})


@pytest.mark.parametrize("order,fetch_factor", [("sequential", 1), ("random", 1), ("block", 1), ("block", 3)])
@pytest.mark.parametrize("output", ["csr", "dense"])
def test_every_batch_equals_the_mapped_source_rows(atlas, order, fetch_factor, output):
    at, _, expected = atlas
    loader = _loader(at, shuffle=order, block_size=4, fetch_factor=fetch_factor, output=output)
    assert loader.n_genes == at.n_genes and loader.n_rows == at.n_rows == 100 and len(loader) == 7
    seen = []
    for b in loader:
        rows = b["rows"].numpy()
        x = b["X"] if output == "dense" else b["X"].to_dense()
        assert np.array_equal(x.numpy(), expected[rows].astype(np.float32))
        seen.append(rows)
    assert sorted(np.concatenate(seen).tolist()) == list(range(at.n_rows))


def test_block_order_keeps_blocks_inside_members(atlas):
    at, _, _ = atlas
    offsets = at.offsets
    loader = _loader(at, shuffle="block", block_size=8)
    order = np.concatenate([b["rows"].numpy() for b in loader])
    member = np.searchsorted(offsets, order, side="right") - 1
    # cut the order where it stops being one contiguous run: no run spans two members
    runs = np.split(np.arange(len(order)), np.flatnonzero(np.diff(order) != 1) + 1)
    assert all(len(set(member[r])) == 1 for r in runs)
    # blocks are cut from each member's first row (member 1 starts at 31, not a multiple of 8)
    for r in runs:
        s, k = int(order[r[0]]), int(member[r[0]])
        assert (s - int(offsets[k])) % 8 == 0


def test_epoch_order_segments():
    for n, bs in [(100, 7), (64, 8), (5, 10), (0, 3)]:
        assert np.array_equal(epoch_order(n, "block", 3, 1, bs), epoch_order(n, "block", 3, 1, bs, segments=[0, n]))
    seg = np.array([0, 10, 10, 25, 30])
    order = epoch_order(30, "block", 0, 0, 4, segments=seg)
    assert sorted(order.tolist()) == list(range(30))
    starts = order[np.r_[0, np.flatnonzero(np.diff(order) != 1) + 1]]
    assert set(starts.tolist()) <= {0, 4, 8, 10, 14, 18, 22, 25, 29}  # blocks cut from each segment's start
    for o in ("sequential", "random"):  # the other orders ignore segments
        assert np.array_equal(epoch_order(30, o, 0, 0, 4, segments=seg), epoch_order(30, o, 0, 0, 4))
    with pytest.raises(ValueError, match="segments"):
        epoch_order(30, "block", 0, 0, 4, segments=[0, 20])


def test_obs_aligned_across_members(atlas):
    at, mem, _ = atlas
    loader = _loader(at, shuffle="random", obs_columns=["cell_type", "score", "donor", "n_genes"])
    cats = loader.categories["cell_type"]
    assert cats == ["B", "NK", "T"] and loader.categories["donor"] == ["d0", "d1", "d2", "d3"]
    want_type = np.concatenate([np.full(a.n_obs, None, object) if "cell_type" not in a.obs else
                                a.obs["cell_type"].astype(str).to_numpy() for _, a in mem])
    want_score = np.concatenate([np.full(a.n_obs, np.nan) if "score" not in a.obs else a.obs["score"].to_numpy()
                                 for _, a in mem])
    want_n = np.concatenate([a.obs["n_genes"].to_numpy() for _, a in mem])
    for b in loader:
        rows = b["rows"].numpy()
        codes = b["obs"]["cell_type"].numpy()
        assert np.array_equal(codes == MISSING_CODE, want_type[rows] == None)  # noqa: E711 (object compare)
        assert all(cats[c] == w for c, w in zip(codes, want_type[rows]) if c != MISSING_CODE)
        np.testing.assert_array_equal(b["obs"]["score"].numpy(), want_score[rows])
        assert np.array_equal(b["obs"]["n_genes"].numpy(), want_n[rows])


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_across_members(atlas, order, stop_after):
    at, _, _ = atlas
    kw = dict(batch_size=9, shuffle=order, block_size=4, seed=5, rank=1, world_size=2)
    full = _loader(at, **kw)
    full.set_epoch(1)
    want = [b["rows"].numpy().tolist() for b in full]
    first = _loader(at, **kw)
    first.set_epoch(1)
    it = iter(first)
    got = [next(it)["rows"].numpy().tolist() for _ in range(stop_after)]
    state = first.state_dict()
    del it
    second = _loader(at, **kw)
    second.load_state_dict(state)
    got += [b["rows"].numpy().tolist() for b in second]
    assert got == want
    members_seen = {int(np.searchsorted(at.offsets, r, side="right") - 1) for b in want for r in b}
    assert len(members_seen) > 1  # the epoch crosses members


def test_ranks_disjoint_and_complete(atlas):
    at, _, _ = atlas
    per_rank = [np.concatenate([b["rows"].numpy() for b in _loader(at, shuffle="block", block_size=4, rank=r,
                                                                    world_size=3, drop_last=True)]) for r in range(3)]
    flat = np.concatenate(per_rank)
    assert len({len(p) for p in per_rank}) == 1 and len(set(flat.tolist())) == len(flat)


def test_refusals(atlas):
    at, _, _ = atlas
    with pytest.raises(ValueError, match="neighbors=True and obsm_keys"):
        _loader(at, neighbors=True)
    with pytest.raises(ValueError, match="neighbors=True and obsm_keys"):
        _loader(at, obsm_keys=["X_pca"])
    with pytest.raises(ValueError, match="residency"):
        _loader(at, residency="device")


def test_dataset_rows_and_collate(atlas):
    at, mem, expected = atlas
    ds = AtlasDataset(at.root)
    assert len(ds) == at.n_rows and ds.number_of_variables() == [at.n_genes]
    assert list(ds.var_names()) == list(at.genes)
    for i in range(len(ds)):
        dense, _, _ = ds.get_row_padded(i)
        assert np.array_equal(dense, expected[i])
        (values, cols), _, _ = ds.get_row(i)
        assert cols.dtype == np.uint32 and np.all(np.diff(cols.astype(np.int64)) > 0)
    assert ds.get_row(-1)[0][0].dtype == np.float16  # the last member's stored dtype
    (_, _), var, obs = ds.get_row(40, return_var_features=True, return_obs_features=True, obs_feature_names=["donor"])
    assert list(var[0]) == list(at.genes) and obs == [mem[1][1].obs["donor"].iloc[40 - 31]]
    batch = collate_sparse_matrix_batch([ds[i] for i in range(30, 40)])
    assert batch.shape == (10, at.n_genes) and np.array_equal(batch.to_dense().numpy(), expected[30:40])
    with pytest.raises(IndexError):
        ds.get_row(at.n_rows)


def test_atlas_of_the_bundled_real_files(tmp_path):
    """Real files with different gene sets (two CELLxGENE panels, one by gene symbol)."""
    import anndata as ad

    names = ["cxg_example_valid", "cxg_small_perturbations", "pbmc_small_csc"]
    paths, sources = [], []
    for name in names:
        dt = "float64" if name.startswith("pbmc") else None  # its normalised values: float64 members mix with float32
        paths.append(convert_h5ad(BUNDLED / f"{name}.h5ad", tmp_path / f"{name}.scdl", use_X_not_raw=True, data_dtype=dt))
        a = ad.read_h5ad(BUNDLED / f"{name}.h5ad")
        sources.append((paths[-1], ad.AnnData(X=sp.csr_matrix(a.X), var=a.var)))
    at = create_atlas(tmp_path / "atlas", paths)
    assert at.n_rows == 900
    expected = expected_rows(sources, list(at.genes)).astype(np.float32)
    for order in ORDERS:
        for b in SingleCellLoader(at.root, batch_size=128, shuffle=order, device="cpu"):
            rows = b["rows"].numpy()
            assert np.array_equal(b["X"].to_dense().numpy(), expected[rows])
