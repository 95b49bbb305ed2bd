"""SingleCellCollection: upstream's API, with its multi-file bugs fixed (spec sections 6 and 12)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellCollection, SingleCellMemMapDataset
from scdl_gpu.archive import validate_archive
from tests.conftest import BUNDLED, make_adata, random_csr
from tests.convert.sources import reference, row_dict


def _h5ad(d: Path, name: str, n_rows: int, genes: list[str], seed: int, dtype=np.float32, obsp=None) -> Path:
    a = make_adata(random_csr(n_rows, len(genes), density=0.3, seed=seed, dtype=dtype), obsp=obsp, seed=seed)
    a.var.index = genes
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.h5ad"
    a.write_h5ad(p)
    return p


def _rows_equal(ds, inputs):
    row = 0
    for p in inputs:
        m, _ = reference(p, True)
        for i in range(m.shape[0]):
            (vals, cols), _, _ = ds.get_row(row + i)
            s, e = m.indptr[i], m.indptr[i + 1]
            assert row_dict(vals, cols) == row_dict(m.data[s:e], m.indices[s:e]), (p, i)
        row += m.shape[0]
    assert row == len(ds)


@pytest.fixture
def eleven_files(tmp_path) -> tuple[Path, list[Path]]:
    """Eleven files with different gene sets (upstream's stale-parquet case needs >= 10 blocks);
    two share a stem in different folders."""
    d = tmp_path / "in"
    paths = [_h5ad(d, f"f{k:02d}", 5 + k, [f"g{j}" for j in range(10 + k)], k) for k in range(10)]
    paths.append(_h5ad(d / "sub", "f03", 4, [f"g{j}" for j in range(21)], 99))
    return d, sorted(paths)


def test_load_multi_and_flatten(tmp_path, eleven_files):
    d, paths = eleven_files
    coll = SingleCellCollection(tmp_path / "coll")
    assert json.loads((tmp_path / "coll" / "version.json").read_text()) == coll.version()
    assert coll.number_of_rows() == 0 and coll.number_of_variables() == [0] and coll.number_nonzero_values() == 0
    coll.load_h5ad_multi(d, max_workers=3, use_X_not_raw=True)
    assert len(coll.fname_to_mmap) == 11  # the two f03 files did not collide
    assert sorted(p.name for p in coll.fname_to_mmap) == sorted([f"f{k:02d}" for k in range(10)] + ["f03_2"])
    n = sum(reference(p, True)[0].shape[0] for p in paths)
    nnz = sum(reference(p, True)[0].nnz for p in paths)
    assert coll.number_of_rows() == n
    assert coll.number_nonzero_values() == nnz
    assert coll.shape() == (n, coll.number_of_variables())
    assert sorted(coll.number_of_variables()) == sorted(reference(p, True)[0].shape[1] for p in paths)
    assert 0 < coll.sparsity() < 1

    coll.flatten(tmp_path / "flat")
    ds = SingleCellMemMapDataset(tmp_path / "flat")
    assert validate_archive(tmp_path / "flat") == []
    assert json.loads((tmp_path / "flat" / "metadata.json").read_text()) == {"num_rows": n}
    # Eleven var blocks and exactly eleven parquet files: no stale blocks from a narrower numbering.
    assert len(list((tmp_path / "flat" / "var_features").glob("dataframe_*.parquet"))) == 11
    member_order = [p for p in paths]  # members are added in sorted input order
    _rows_equal(ds, member_order)
    row = 0
    for p in member_order:
        m, genes = reference(p, True)
        assert ds.number_of_variables()[0] > 0
        np.testing.assert_array_equal(ds.var_names(row), genes)
        (vals, cols), _, _ = ds.get_row(row)
        assert len(ds.get_row_padded(row)[0]) == m.shape[1]  # padded to its own file's width
        row += m.shape[0]
    # The collection is untouched by a non-destructive flatten.
    assert all(p.is_dir() for p in coll.fname_to_mmap)


def test_flatten_destroy_on_copy_and_single_member(tmp_path):
    d = tmp_path / "in"
    p = _h5ad(d, "only", 7, ["a", "b", "c"], 0)
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad(p, use_X_not_raw=True, data_dtype="uint8")
    coll.flatten(tmp_path / "flat", destroy_on_copy=True)
    assert not (tmp_path / "coll").exists()
    ds = SingleCellMemMapDataset(tmp_path / "flat")
    assert ds.dtypes["data.npy"] == "uint8"
    _rows_equal(ds, [p])


def test_flatten_refuses_an_existing_output(tmp_path):
    p = _h5ad(tmp_path / "in", "a", 3, ["a"], 0)
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad(p, use_X_not_raw=True)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        coll.flatten(tmp_path / "taken")
    assert list((tmp_path / "taken").iterdir()) == []  # nothing nested inside
    with pytest.raises(ValueError, match="empty"):
        SingleCellCollection(tmp_path / "empty").flatten(tmp_path / "x")


def test_flatten_mixed_families_names_the_members(tmp_path):
    d = tmp_path / "in"
    ints = _h5ad(d, "ints", 3, ["a", "b"], 0)
    floats = _h5ad(d, "floats", 3, ["a", "b"], 1)
    coll = SingleCellCollection(str(tmp_path / "coll"))  # a str path: upstream's AttributeError case
    coll.load_h5ad(ints, use_X_not_raw=True, data_dtype="uint16")
    coll.load_h5ad(floats, use_X_not_raw=True, data_dtype="float32")
    with pytest.raises(ValueError, match=r"mix of int and float.*ints.*uint16.*floats.*float32"):
        coll.flatten(tmp_path / "flat")
    assert not (tmp_path / "flat").exists()


def test_flatten_widens_within_a_family(tmp_path):
    d = tmp_path / "in"
    a, b = _h5ad(d, "a", 4, ["x", "y"], 0), _h5ad(d, "b", 4, ["x", "y"], 1)
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad(a, use_X_not_raw=True, data_dtype="uint8")
    coll.load_h5ad(b, use_X_not_raw=True, data_dtype="uint32")
    coll.flatten(tmp_path / "flat")
    ds = SingleCellMemMapDataset(tmp_path / "flat")
    assert ds.dtypes["data.npy"] == "uint32"
    assert ds.number_of_variables() == [2]  # identical gene tables merge into one block
    _rows_equal(ds, [a, b])


def test_flatten_keeps_neighbors_with_offsets(tmp_path):
    d = tmp_path / "in"
    g = sp.csr_matrix(np.roll(np.eye(4, dtype=np.float32), 1, axis=1))
    paths = [_h5ad(d, f"n{k}", 4, ["a", "b", "c"], k, obsp={"next_cell_ids": g}) for k in range(2)]
    coll = SingleCellCollection(tmp_path / "coll")
    for p in paths:
        # the collection's members get neighbors through the dataset's own conversion
        SingleCellMemMapDataset(tmp_path / "m" / p.stem, h5ad_path=p, use_X_not_raw=True, load_neighbors=True)
        coll.fname_to_mmap[tmp_path / "m" / p.stem] = SingleCellMemMapDataset(tmp_path / "m" / p.stem)
    coll.flatten(tmp_path / "flat")
    ds = SingleCellMemMapDataset(tmp_path / "flat", load_neighbors=True)
    assert [int(ds.get_neighbor_indices_for_cell(i)[0]) for i in range(8)] == [1, 2, 3, 0, 5, 6, 7, 4]


def test_zero_value_members_flatten_and_reopen(tmp_path):
    d = tmp_path / "in"
    empty = make_adata(sp.csr_matrix((3, 4), dtype=np.float32))
    d.mkdir()
    empty.write_h5ad(d / "empty.h5ad")
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad_multi(d, use_X_not_raw=True)
    coll.flatten(tmp_path / "flat")
    ds = SingleCellMemMapDataset(tmp_path / "flat")
    assert len(ds) == 3 and ds.number_nonzero_values() == 0


def test_load_multi_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    coll = SingleCellCollection(tmp_path / "coll")
    with pytest.raises(FileNotFoundError, match="There a no h5ad files in"):
        coll.load_h5ad_multi(tmp_path / "empty")
    d = tmp_path / "in"
    _h5ad(d, "good", 3, ["a"], 0)
    (d / "bad.h5ad").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=r"Error in processing file .*bad\.h5ad"):
        coll.load_h5ad_multi(d, use_X_not_raw=True)
    assert coll.fname_to_mmap == {}
    assert sorted(p.name for p in (tmp_path / "coll").iterdir()) == ["version.json"]  # no half-loaded members


def test_load_multi_with_processes(tmp_path):
    d = tmp_path / "in"
    paths = [_h5ad(d, f"p{k}", 3 + k, ["a", "b", "c"], k) for k in range(3)]
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad_multi(d, max_workers=2, use_processes=True, use_X_not_raw=True, data_dtype="uint8")
    coll.flatten(tmp_path / "flat", destroy_on_copy=True)
    ds = SingleCellMemMapDataset(tmp_path / "flat")
    assert ds.dtypes["data.npy"] == "uint8"
    _rows_equal(ds, paths)


def test_real_files_flatten(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("cxg_example_valid.h5ad", "cxg_small_perturbations.h5ad"):
        shutil.copy(BUNDLED / name, d / name)
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad_multi(d, use_X_not_raw=True)
    coll.flatten(tmp_path / "flat")
    ds = SingleCellMemMapDataset(tmp_path / "flat")
    _rows_equal(ds, sorted(d.glob("*.h5ad")))


@pytest.mark.parametrize("name", ["..h5ad", "...h5ad", ".h5ad", ".hidden.h5ad"])
def test_member_names_never_leave_the_collection(tmp_path, name):
    """``..h5ad`` has the stem ``.``, which named the collection itself (and, suffixed, a sibling of it)."""
    d = tmp_path / "in"
    src = _h5ad(d, "x", 4, ["a", "b"], 0).rename(d / name)
    coll_dir = tmp_path / "coll"
    coll = SingleCellCollection(coll_dir)
    coll.load_h5ad(src, use_X_not_raw=True)
    coll.load_h5ad(src, use_X_not_raw=True)  # the same stem again: a suffixed name, still inside
    members = list(coll.fname_to_mmap)
    assert len(set(members)) == 2
    for m in members:
        assert m.parent == coll_dir and not m.name.startswith(".") and (m / "metadata.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coll", "in"]  # nothing written beside it
    coll.flatten(tmp_path / "flat")
    _rows_equal(SingleCellMemMapDataset(tmp_path / "flat"), [src, src])


def test_member_names_from_a_directory_of_odd_names(tmp_path):
    d = tmp_path / "in"
    paths = [_h5ad(d, f"f{k}", 3, ["a"], k).rename(d / n) for k, n in enumerate(["..h5ad", "...h5ad", "ok.h5ad"])]
    coll = SingleCellCollection(tmp_path / "coll")
    coll.load_h5ad_multi(d, use_X_not_raw=True)
    assert sorted(m.name for m in coll.fname_to_mmap) == ["_", "__", "ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coll", "in"]
    coll.flatten(tmp_path / "flat")
    _rows_equal(SingleCellMemMapDataset(tmp_path / "flat"), sorted(paths))
