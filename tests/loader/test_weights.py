"""Weighted sampling: class and group frequencies against their targets, determinism, equal
batches per rank, resume, and the errors for weights that cannot apply."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scdl_gpu import SingleCellLoader, convert_h5ad, convert_many
from scdl_gpu.loader._weights import build_weighting
from tests.conftest import make_adata, random_csr

SIZES = {"a": 60, "b": 30, "c": 90}
DRAWS = 30_000  # shares within 0.015 of their targets: over 6 standard deviations at this count


def _plate(n: int, seed: int, cell_types: list[str] | None, drop: list[str]):
    a = make_adata(random_csr(n, 16, density=0.25, seed=seed), seed=seed)
    if cell_types is not None:  # skewed classes: balancing has something to undo
        a.obs["cell_type"] = pd.Categorical(np.resize(cell_types, n))
    a.obs["lane"] = np.arange(n) % 2
    a.obs = a.obs.drop(columns=drop)
    return a


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    """Three inputs with different obs columns (so the archive keeps one obs block per input):
    a is mostly T, b has no cell_type (all missing), c mostly B; lane is 0/1 except in c."""
    d = tmp_path_factory.mktemp("plates")
    spec = {"a": (["T"] * 8 + ["B", "NK"], ["flag"]), "b": (None, ["cell_type"]), "c": (["B"] * 5 + ["T"], ["score", "lane"])}
    for seed, (name, (types, drop)) in enumerate(spec.items()):
        _plate(SIZES[name], seed, types, drop).write_h5ad(d / f"{name}.h5ad")
    out = convert_many([d / f"{k}.h5ad" for k in SIZES], d / "abc", use_X_not_raw=True).archive
    return out, d


def _epoch(loader, epoch: int = 0) -> np.ndarray:
    loader.set_epoch(epoch)
    return np.concatenate([b["rows"].cpu().numpy() for b in loader])


def _shares(labels: np.ndarray) -> dict:
    keys, counts = np.unique(labels, return_counts=True)
    return {k: c / len(labels) for k, c in zip(keys.tolist(), counts.tolist())}


def _group_of(rows: np.ndarray) -> np.ndarray:
    ends = np.cumsum(list(SIZES.values()))
    return np.array(list(SIZES))[np.searchsorted(ends, rows, side="right")]


def _labels(loader, rows: np.ndarray) -> np.ndarray:
    codes = loader.obs.values["cell_type"][rows]
    return np.array([loader.categories["cell_type"][c] if c >= 0 else "missing" for c in codes])


def test_balance_draws_every_class_equally_missing_is_a_class(plates):
    path, _ = plates
    loader = SingleCellLoader(path, batch_size=500, balance="cell_type", epoch_length=DRAWS, obs_columns=["cell_type"], device="cpu")
    assert loader.order == "random" and len(loader) == DRAWS // 500
    rows = _epoch(loader)
    assert len(rows) == DRAWS
    shares = _shares(_labels(loader, rows))
    assert set(shares) == {"T", "B", "NK", "missing"}
    for share in shares.values():
        assert share == pytest.approx(0.25, abs=0.015)
    # uniform inside a class: NK's few rows are all drawn, about equally often
    nk = np.flatnonzero(_labels(loader, np.arange(loader.n_rows)) == "NK")
    counts = np.bincount(rows, minlength=loader.n_rows)[nk]
    assert (counts > 0).all() and counts.min() > 0.7 * counts.mean()


def test_explicit_class_weights_and_labels_left_out(plates):
    path, _ = plates
    loader = SingleCellLoader(path, batch_size=1000, balance="cell_type", class_weights={"T": 3, "B": 1.0},
                              epoch_length=DRAWS, obs_columns=["cell_type"], device="cpu")
    shares = _shares(_labels(loader, _epoch(loader)))
    assert set(shares) == {"T", "B"}  # NK and the missing class are left out: never drawn
    assert shares["T"] == pytest.approx(0.75, abs=0.015)
    loader = SingleCellLoader(path, batch_size=1000, balance="cell_type", class_weights={None: 1, "NK": 1},
                              epoch_length=DRAWS, obs_columns=["cell_type"], device="cpu")
    assert _shares(_labels(loader, _epoch(loader)))["missing"] == pytest.approx(0.5, abs=0.015)


def test_numeric_column_with_missing_values(plates):
    path, _ = plates  # lane: 0/1 in a and b, NaN in c
    loader = SingleCellLoader(path, batch_size=1000, balance="lane", class_weights={0: 1, 1: 1, None: 2},
                              epoch_length=DRAWS, device="cpu")
    groups = _shares(_group_of(_epoch(loader)))
    assert groups["c"] == pytest.approx(0.5, abs=0.015)  # c's rows are the missing class


def test_group_weights_by_input(plates):
    path, _ = plates
    loader = SingleCellLoader(path, batch_size=1000, group_weights={"a.h5ad": 1, "b": 2, "c": 1}, epoch_length=DRAWS, device="cpu")
    shares = _shares(_group_of(_epoch(loader)))
    assert shares == pytest.approx({"a": 0.25, "b": 0.5, "c": 0.25}, abs=0.015)
    only_b = _epoch(SingleCellLoader(path, batch_size=50, group_weights={"b": 1}, device="cpu"))
    assert len(only_b) == loader.n_rows and set(_group_of(only_b)) == {"b"}  # default length: the row count


def test_group_and_class_weights_together(plates):
    path, _ = plates
    loader = SingleCellLoader(path, batch_size=1000, group_weights={"a": 2, "b": 1, "c": 1}, balance="cell_type",
                              epoch_length=2 * DRAWS, obs_columns=["cell_type"], device="cpu")
    rows = _epoch(loader)
    groups, labels = _group_of(rows), _labels(loader, rows)
    assert _shares(groups) == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25}, abs=0.015)
    assert _shares(labels[groups == "a"]) == pytest.approx({"T": 1 / 3, "B": 1 / 3, "NK": 1 / 3}, abs=0.02)
    assert _shares(labels[groups == "c"]) == pytest.approx({"T": 0.5, "B": 0.5}, abs=0.02)
    assert set(labels[groups == "b"]) == {"missing"}


def test_groups_of_a_shuffled_archive_come_from_its_source_column(plates):
    path, d = plates
    same = [d / f"s{k}.h5ad" for k in range(2)]
    for k, p in enumerate(same):
        make_adata(random_csr(40 * (k + 1), 16, density=0.25, seed=k), seed=k).write_h5ad(p)
    out = convert_many(same, d / "shuffled", use_X_not_raw=True, row_order="shuffle", seed=3).archive
    loader = SingleCellLoader(out, batch_size=1000, group_weights={"s0": 1, "s1": 1}, epoch_length=DRAWS,
                              obs_columns=["source_file"], device="cpu")
    source = loader.obs.values["source_file"][_epoch(loader)]
    names = [str(p) for p in loader.categories["source_file"]]
    assert {names[k].rsplit("/", 1)[-1]: v for k, v in _shares(source).items()} == pytest.approx(
        {"s0.h5ad": 0.5, "s1.h5ad": 0.5}, abs=0.015)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_deterministic_and_equal_batches_per_rank(plates, world, drop_last):
    path, _ = plates
    kw = dict(batch_size=16, balance="cell_type", group_weights={"a": 1, "c": 1}, epoch_length=1001,
              drop_last=drop_last, device="cpu")
    ranks = [SingleCellLoader(path, rank=r, world_size=world, **kw) for r in range(world)]
    per_rank = [[b["rows"].numpy() for b in (lo.set_epoch(1), lo)[1]] for lo in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    for batches in per_rank:
        assert all(len(b) == 16 for b in batches[: -1 if not drop_last else None])
    again = [_epoch(SingleCellLoader(path, rank=r, world_size=world, **kw), 1) for r in range(world)]
    for batches, rows in zip(per_rank, again):
        np.testing.assert_array_equal(np.concatenate(batches), rows)  # a pure function of (seed, epoch, rank)
    whole = _epoch(SingleCellLoader(path, **kw), 1)  # one global draw, dealt to ranks in contiguous parts
    dealt = np.concatenate([np.concatenate(b) for b in per_rank])
    n = min(len(dealt), len(whole))
    np.testing.assert_array_equal(dealt[:n], whole[:n])
    assert not np.array_equal(_epoch(ranks[0], 2), _epoch(ranks[0], 1))
    other_seed = SingleCellLoader(path, rank=0, world_size=world, seed=9, **kw)
    assert not np.array_equal(_epoch(other_seed, 1), _epoch(ranks[0], 1))


@pytest.mark.parametrize("stop_after", [0, 2, 4])
def test_resume_mid_epoch_equals_the_uninterrupted_run(plates, stop_after):
    path, _ = plates
    kw = dict(batch_size=20, balance="cell_type", class_weights={"T": 1, "B": 2}, epoch_length=200,
              rank=1, world_size=2, seed=5, device="cpu")
    full = SingleCellLoader(path, **kw)
    full.set_epoch(4)
    expected = [b["rows"].numpy() for b in full]
    first = SingleCellLoader(path, **kw)
    first.set_epoch(4)
    it = iter(first)
    seen = [next(it)["rows"].numpy() for _ in range(stop_after)]
    state = first.state_dict()
    resumed = SingleCellLoader(path, **kw)
    resumed.load_state_dict(state)
    seen += [b["rows"].numpy() for b in resumed]
    assert len(seen) == len(expected) == 5
    for a, b in zip(seen, expected):
        np.testing.assert_array_equal(a, b)
    assert resumed.epoch == 5
    for other in (dict(kw, class_weights={"T": 1, "B": 3}), dict(kw, epoch_length=100), {**kw, "balance": None, "class_weights": None, "epoch_length": None,
                                                                                                   "shuffle": "random"}):
        with pytest.raises(ValueError, match="state_dict was taken with weighting="):
            SingleCellLoader(path, **other).load_state_dict(state)


def test_neighbors_keep_working_with_weights(tmp_path):
    import scipy.sparse as sp

    n = 40
    g = sp.csr_matrix(np.roll(np.eye(n, dtype=np.float32), 1, axis=1))
    make_adata(random_csr(n, 12, seed=2), obsp={"next_cell_ids": g}).write_h5ad(tmp_path / "n.h5ad")
    path = convert_h5ad(tmp_path / "n.h5ad", tmp_path / "n", use_X_not_raw=True, load_neighbors=True)
    loader = SingleCellLoader(path, batch_size=8, balance="cell_type", neighbors=True, device="cpu")
    for b in loader:
        np.testing.assert_array_equal(b["neighbor_rows"].numpy(), (b["rows"].numpy() + 1) % n)


def test_bad_weights_are_refused(plates):
    path, _ = plates
    cases = [
        (dict(balance="cell_type", class_weights={"X": 1}), r"class_weights: 'X' is not a label of obs column 'cell_type'.*'B'"),
        (dict(balance="cell_type", class_weights={"T": -1}), r"class_weights\['T'\] must be a finite number >= 0"),
        (dict(balance="cell_type", class_weights={"T": float("nan")}), "finite number"),
        (dict(balance="cell_type", class_weights={"T": 0}), "every weight is 0"),
        (dict(balance="cell_type", class_weights={}), "non-empty dict"),
        (dict(class_weights={"T": 1}), "class_weights needs balance=COLUMN"),
        (dict(group_weights={"z": 1}), r"group_weights: 'z' is not a group; there are 3: '.*a.h5ad'"),
        (dict(group_weights={"b": 1}, balance="cell_type", class_weights={"T": 1}), r"group '.*b.h5ad' has a positive weight but no rows of a class"),
        (dict(epoch_length=10), "epoch_length applies to weighted sampling"),
        (dict(balance="cell_type", epoch_length=0), "epoch_length must be a positive integer"),
        (dict(balance="cell_type", shuffle="block"), "weighted sampling draws rows in random order"),
        (dict(balance=3), "balance must be the name of an obs column"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            SingleCellLoader(path, device="cpu", **kwargs)
    with pytest.raises(KeyError, match="'nope' is in none"):
        SingleCellLoader(path, balance="nope", device="cpu")


def test_rows_by_cell_use_int32_and_draws_stay_in_their_cells():
    rng = np.random.default_rng(0)
    n = 200_000
    classes = (["x", "y", None], rng.choice(3, size=n, p=[0.9, 0.099, 0.001]))
    groups = (["g0", "g1"], (np.arange(n) >= n // 4).astype(np.int32))
    w = build_weighting(n, groups, {"g0": 1, "g1": 1}, classes, None)
    assert w.rows_by_cell.dtype == np.int32 and w.p.shape == (6,)
    np.testing.assert_allclose(w.p, np.full(6, 1 / 6))
    rows = w.draw(60_000, np.random.default_rng(1))
    cell = groups[1][rows] * 3 + classes[1][rows]
    assert np.abs(np.bincount(cell, minlength=6) / len(rows) - 1 / 6).max() < 0.01


def test_an_atlas_backend_s_groups_are_its_members(plates, monkeypatch):
    """An atlas backend exposes ``groups`` = (member names, row offsets): those are the groups."""
    from scdl_gpu.backend._cpu import CPUBackend

    path, _ = plates
    monkeypatch.setattr(CPUBackend, "groups", (["m0", "m1"], np.array([0, 100, 180])), raising=False)
    loader = SingleCellLoader(path, batch_size=1000, group_weights={"m0": 1, "m1": 3}, epoch_length=DRAWS, device="cpu")
    assert np.mean(_epoch(loader) >= 100) == pytest.approx(0.75, abs=0.015)
    monkeypatch.setattr(CPUBackend, "groups", (["m0", "m1"], np.array([0, 100, 150])), raising=False)
    with pytest.raises(ValueError, match="do not cover its 180 rows"):
        SingleCellLoader(path, group_weights={"m0": 1}, device="cpu")


@pytest.mark.gpu
def test_on_a_gpu_weights_stream_and_refuse_a_resident_share(plates):
    path, _ = plates
    loader = SingleCellLoader(path, batch_size=64, balance="cell_type", device="cuda")
    assert loader.residency == "stream" and loader.partition == "global"
    rows = _epoch(loader)
    assert len(rows) == loader.n_rows
    for residency in ("device", "pinned"):
        with pytest.raises(ValueError, match="weighted sampling reads rows outside a rank's resident share"):
            SingleCellLoader(path, balance="cell_type", device="cuda", residency=residency)
