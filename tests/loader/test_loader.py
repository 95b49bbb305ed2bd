"""SingleCellLoader: coverage, determinism, sharding, resume, contents, obs, neighbors, prefetch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scdl_gpu import SingleCellLoader, convert_h5ad
from scdl_gpu.loader._order import epoch_order, shard
from tests.conftest import BUNDLED, make_adata, random_csr

ORDERS = ["sequential", "random", "block"]
REAL = BUNDLED / "cxg_small_perturbations.h5ad"  # 500 x 2000, every row's columns unsorted


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    # keep the input's unsorted rows: the loader must hand torch sorted CSR from them
    out = convert_h5ad(REAL, tmp_path_factory.mktemp("real") / "a", use_X_not_raw=True, keep_column_order=True)
    import anndata as ad

    return out, sp.csr_matrix(ad.read_h5ad(REAL).X)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """103 cells (a prime: nothing divides evenly), obs columns, and a neighbor graph."""
    n = 103
    m = random_csr(n, 40, density=0.2, seed=1, empty_rows=(0, 50), shuffle_cols=True)
    dense = np.roll(np.eye(n, dtype=np.float32), 1, axis=1)
    dense[7, :] = 0  # a cell without neighbors
    g = sp.csr_matrix(dense)
    a = make_adata(m, obsp={"next_cell_ids": g})
    d = tmp_path_factory.mktemp("small")
    a.write_h5ad(d / "s.h5ad")
    out = convert_h5ad(d / "s.h5ad", d / "a", use_X_not_raw=True, load_neighbors=True)
    return out, m, a.obs


def _rows(loader) -> list[np.ndarray]:
    return [b["rows"].numpy() for b in loader]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("batch_size", [1, 10, 64, 200])
def test_every_row_once_per_epoch(small, order, batch_size):
    path, m, _ = small
    loader = SingleCellLoader(path, batch_size=batch_size, shuffle=order, block_size=8, fetch_factor=3, device="cpu")
    batches = _rows(loader)
    assert len(batches) == len(loader) == -(-103 // batch_size)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    loader = SingleCellLoader(path, batch_size=batch_size, shuffle=order, drop_last=True, block_size=8, device="cpu")
    rows = np.concatenate(_rows(loader)) if len(loader) else np.zeros(0)
    assert len(rows) == (103 // batch_size) * batch_size and len(set(rows.tolist())) == len(rows)


@pytest.mark.parametrize("order", ORDERS)
def test_orders_are_pure_functions_of_seed_and_epoch(small, order):
    path, _, _ = small
    make = lambda seed=0: SingleCellLoader(path, batch_size=16, shuffle=order, seed=seed, block_size=8, device="cpu")  # noqa: E731
    a, b = make(), make()
    e0 = _rows(a)
    assert [x.tolist() for x in e0] == [x.tolist() for x in _rows(b)]
    e1 = _rows(a)  # the next epoch, automatically
    b.set_epoch(1)
    assert [x.tolist() for x in e1] == [x.tolist() for x in _rows(b)]
    if order == "sequential":
        assert np.array_equal(np.concatenate(e0), np.arange(103))
    else:
        assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))
        assert not np.array_equal(np.concatenate(e0), np.concatenate(_rows(make(seed=1))))


def test_block_order_keeps_blocks_contiguous():
    order = epoch_order(1000, "block", seed=3, epoch=0, block_size=50)
    assert sorted(order.tolist()) == list(range(1000))
    blocks = order.reshape(20, 50)
    assert (np.diff(blocks, axis=1) == 1).all() and (blocks[:, 0] % 50 == 0).all()
    assert not np.array_equal(blocks[:, 0], np.arange(0, 1000, 50))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_are_disjoint_complete_and_equal(small, order, world, drop_last):
    path, _, _ = small
    per_rank = [
        _rows(SingleCellLoader(path, batch_size=10, shuffle=order, rank=r, world_size=world, drop_last=drop_last,
                               block_size=8, device="cpu"))
        for r in range(world)
    ]
    assert len({len(b) for b in per_rank}) == 1  # the same number of batches on every rank
    flat = [np.concatenate(b) if b else np.zeros(0, np.int64) for b in per_rank]
    assert len({len(f) for f in flat}) == 1
    allrows = np.concatenate(flat)
    if drop_last:
        assert len(set(allrows.tolist())) == len(allrows)  # disjoint, nothing repeated
    else:
        assert set(allrows.tolist()) == set(range(103))  # every row; padding repeats a few
        assert len(allrows) - 103 < world


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stop_after", [0, 1, 4, 5])
@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_mid_epoch_continues_exactly(small, order, stop_after, prefetch):
    path, _, _ = small
    kw = dict(batch_size=9, shuffle=order, block_size=8, fetch_factor=3, seed=5, device="cpu", prefetch=prefetch,
              rank=1, world_size=2)
    full = SingleCellLoader(path, **kw)
    full.set_epoch(2)
    want = _rows(full)
    first = SingleCellLoader(path, **kw)
    first.set_epoch(2)
    it = iter(first)
    got = [next(it)["rows"].numpy() for _ in range(stop_after)]
    state = first.state_dict()
    assert state["batches_done"] == stop_after and state["epoch"] == 2
    del it
    second = SingleCellLoader(path, **kw)
    second.load_state_dict(state)
    got += _rows(second)
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
    assert second.state_dict()["epoch"] == 3  # finished: the next iteration is the next epoch
    with pytest.raises(ValueError, match="batch_size"):
        SingleCellLoader(path, **{**kw, "batch_size": 10}).load_state_dict(state)


@pytest.mark.parametrize("order,fetch_factor", [("sequential", 1), ("random", 1), ("block", 1), ("block", 3)])
def test_batches_are_valid_sorted_csr_equal_to_scipy(real, order, fetch_factor):
    path, m = real
    loader = SingleCellLoader(path, batch_size=64, shuffle=order, block_size=16, fetch_factor=fetch_factor, device="cpu", seed=1)
    seen = 0
    for b in loader:
        x, rows = b["X"], b["rows"].numpy()
        assert x.layout == torch.sparse_csr and x.shape == (len(rows), 2000) and x.dtype == torch.float32
        torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), x.values(), x.shape, check_invariants=True)
        want = m[rows]
        want.sort_indices()
        np.testing.assert_array_equal(x.crow_indices().numpy(), want.indptr)
        np.testing.assert_array_equal(x.col_indices().numpy(), want.indices)
        np.testing.assert_array_equal(x.values().numpy(), want.data)
        seen += len(rows)
    assert seen == 500


@pytest.mark.parametrize("order,fetch_factor", [("random", 1), ("block", 3)])
def test_dense_output_and_options(real, order, fetch_factor):
    from scdl_gpu.backend import BatchOptions

    path, m = real
    loader = SingleCellLoader(path, batch_size=50, shuffle=order, output="dense", device="cpu", block_size=10,
                              fetch_factor=fetch_factor, options=BatchOptions(target_sum=1e4, log1p=True))
    n = 0
    for b in loader:
        x = m[b["rows"].numpy()].toarray().astype(np.float64)
        want = np.log1p(x * (1e4 / x.sum(axis=1, keepdims=True)))
        assert b["X"].layout == torch.strided and b["X"].shape == (len(x), 2000)
        np.testing.assert_allclose(b["X"].numpy(), want, rtol=2e-6)
        n += len(x)
    assert n == 500


def test_obs_columns_are_encoded_once(small):
    path, _, obs = small
    loader = SingleCellLoader(path, batch_size=20, shuffle="random", obs_columns=["cell_type", "n_genes", "score"], device="cpu")
    cats = loader.categories["cell_type"]
    assert cats == sorted(set(obs["cell_type"].astype(str)))
    for b in loader:
        rows = b["rows"].numpy()
        codes = b["obs"]["cell_type"]
        assert codes.dtype == torch.int64
        assert [cats[c] for c in codes.tolist()] == obs["cell_type"].astype(str).to_numpy()[rows].tolist()
        np.testing.assert_array_equal(b["obs"]["n_genes"].numpy(), obs["n_genes"].to_numpy()[rows])
        np.testing.assert_array_equal(b["obs"]["score"].numpy(), obs["score"].to_numpy()[rows])
    with pytest.raises(KeyError, match="nope"):
        SingleCellLoader(path, obs_columns=["nope"], device="cpu")


def test_neighbors_are_sampled_deterministically(small):
    path, m, _ = small
    make = lambda: SingleCellLoader(path, batch_size=25, shuffle="random", neighbors=True, seed=2, device="cpu")  # noqa: E731
    a, b = list(make()), list(make())
    for x, y in zip(a, b):
        rows, nrows = x["rows"].numpy(), x["neighbor_rows"].numpy()
        np.testing.assert_array_equal(nrows, y["neighbor_rows"].numpy())
        want = np.where(rows == 7, 7, (rows + 1) % 103)  # the graph: i -> i + 1; cell 7 has none
        np.testing.assert_array_equal(nrows, want)
        assert x["neighbor_X"].shape == (len(rows), 40)
    no_graph = convert_h5ad(REAL, path.parent / "nog", use_X_not_raw=True)
    with pytest.raises(ValueError, match="no neighbor arrays"):
        SingleCellLoader(no_graph, neighbors=True, device="cpu")


def test_prefetch_errors_reach_the_caller_and_early_exit_stops(small):
    path, _, _ = small

    def boom(batch):
        if batch["rows"][0] >= 0 and boom.calls == 2:
            raise RuntimeError("transform failed")
        boom.calls += 1
        return batch

    boom.calls = 0
    loader = SingleCellLoader(path, batch_size=10, shuffle="sequential", transform=boom, prefetch=2, device="cpu")
    with pytest.raises(RuntimeError, match="transform failed"):
        list(loader)
    loader = SingleCellLoader(path, batch_size=10, prefetch=2, device="cpu")
    for i, _ in enumerate(loader):
        if i == 1:
            break
    import threading

    assert not any(t.name == "scdl-prefetch" and t.is_alive() for t in threading.enumerate())


def test_bad_arguments(small):
    path, _, _ = small
    for kw, match in [(dict(shuffle="fancy"), "shuffle"), (dict(output="coo"), "output"), (dict(batch_size=0), "batch_size"),
                      (dict(rank=2, world_size=2), "rank"), (dict(prefetch=-1), "prefetch")]:
        with pytest.raises(ValueError, match=match):
            SingleCellLoader(path, device="cpu", **kw)


def test_accepts_a_dataset_and_shards_like_distributed_sampler(small):
    from scdl_gpu import SingleCellMemMapDataset

    path, _, _ = small
    loader = SingleCellLoader(SingleCellMemMapDataset(path), batch_size=103, shuffle="sequential", device="cpu")
    assert np.array_equal(next(iter(loader))["rows"].numpy(), np.arange(103))
    s = shard(np.arange(10), rank=1, world_size=4, batch_size=2, drop_last=False)
    assert s.rows.tolist() == [3, 4, 5] and s.n_batches == 2


def test_torch_dataloader_path_still_works_with_workers(real):
    from torch.utils.data import DataLoader

    from scdl_gpu import SingleCellMemMapDataset, collate_sparse_matrix_batch

    path, m = real
    ds = SingleCellMemMapDataset(path)
    loader = DataLoader(ds, batch_size=50, shuffle=False, collate_fn=collate_sparse_matrix_batch, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = torch.cat([b.to_dense() for b in loader]).numpy()
    np.testing.assert_array_equal(dense, m.toarray())


def test_torch_sort_path_matches_scipy_path(real):
    """The device-agnostic sort (used on the GPU and for float16) orders columns like scipy."""
    from scdl_gpu.backend import BatchOptions, get_backend
    from scdl_gpu.loader._csr import sort_rows

    path, m = real
    rows = np.random.default_rng(0).integers(0, 500, 40)
    b16 = sort_rows(get_backend(path, device="cpu", options=BatchOptions(value_dtype="float16")).batch(rows))
    b32 = sort_rows(get_backend(path, device="cpu").batch(rows))
    assert torch.equal(b16.col, b32.col) and torch.equal(b16.values.float(), b32.values)
    torch.sparse_csr_tensor(b16.crow, b16.col, b16.values, b16.shape, check_invariants=True)


def test_sorted_archives_skip_the_per_batch_check(tmp_path, monkeypatch):
    from scdl_gpu.loader import _loader

    path = convert_h5ad(BUNDLED / "cxg_example_valid.h5ad", tmp_path / "s", use_X_not_raw=True)  # sorted rows
    monkeypatch.setattr(_loader, "sort_rows", lambda b: pytest.fail("sorted archive checked again"))
    for b in SingleCellLoader(path, batch_size=64, shuffle="random", device="cpu"):
        x = b["X"]
        torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), x.values(), x.shape, check_invariants=True)


def test_obs_columns_are_the_union_over_inputs(tmp_path):
    """Inputs without a column read as missing: NaN (ints become float64), code -1 for strings."""
    from scdl_gpu import convert_many
    from scdl_gpu.loader._obs import MISSING_CODE

    a = make_adata(random_csr(30, 12, density=0.3, seed=2), seed=1)
    b = make_adata(random_csr(20, 12, density=0.3, seed=3), seed=2)
    b.obs = b.obs.drop(columns=["cell_type", "n_genes"])
    a.write_h5ad(tmp_path / "a.h5ad")
    b.write_h5ad(tmp_path / "b.h5ad")
    out = convert_many([tmp_path / "a.h5ad", tmp_path / "b.h5ad"], tmp_path / "ab", use_X_not_raw=True).archive
    loader = SingleCellLoader(out, batch_size=50, shuffle="sequential", obs_columns=["cell_type", "n_genes", "score", "donor"], device="cpu")
    (batch,) = list(loader)
    obs = batch["obs"]
    cats = loader.categories["cell_type"]
    assert cats == sorted(set(a.obs["cell_type"].astype(str)))  # the missing marker is not a category
    codes = obs["cell_type"].numpy()
    assert [cats[c] for c in codes[:30]] == a.obs["cell_type"].astype(str).tolist()
    assert (codes[30:] == MISSING_CODE).all()
    n_genes = obs["n_genes"].numpy()
    assert n_genes.dtype == np.float64
    np.testing.assert_array_equal(n_genes[:30], a.obs["n_genes"].to_numpy().astype(np.float64))
    assert np.isnan(n_genes[30:]).all()
    np.testing.assert_array_equal(obs["score"].numpy(), np.concatenate([a.obs["score"], b.obs["score"]]))
    assert [loader.categories["donor"][c] for c in obs["donor"].tolist()] == a.obs["donor"].tolist() + b.obs["donor"].tolist()
    with pytest.raises(KeyError, match=r"'nope' is in none of the 2 obs blocks.*'cell_type'.*'score'"):
        SingleCellLoader(out, obs_columns=["nope"], device="cpu")
