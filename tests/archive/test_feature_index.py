"""Tests for scdl_gpu.archive._feature_index (API parity with bionemo-scdl, names, persistence)."""

from __future__ import annotations

import contextlib

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bionemo.scdl.index.row_feature_index import ObservedFeatureIndex as UpObs
from bionemo.scdl.index.row_feature_index import VariableFeatureIndex as UpVar

from scdl_gpu.archive._feature_index import (
    ObservedFeatureIndex,
    RowFeatureIndex,
    VariableFeatureIndex,
    are_dicts_equal,
)
from scdl_gpu.errors import ArchiveError, ArchiveNotFoundError


def var_block(n_vars: int, tag: str = "g") -> dict[str, np.ndarray]:
    return {
        "feature_id": np.array([f"{tag}{i}" for i in range(n_vars)]),
        "length": np.arange(n_vars, dtype=np.int64) * 10,
    }


def obs_block(n: int, offset: int = 0) -> dict[str, np.ndarray]:
    return {
        "cell_type": np.array([f"t{(i + offset) % 3}" for i in range(n)], dtype=object),
        "n_genes": np.arange(offset, offset + n, dtype=np.int64),
        "score": np.linspace(0, 1, n) + offset,
        "flag": (np.arange(n) % 2).astype(bool),
    }


def gene_names(n: int, tag: str = "ENSG") -> np.ndarray:
    return np.array([f"{tag}{i:05d}" for i in range(n)])


def assert_same_values(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y)), (x, y)


def make_var(n_blocks: int, with_names: bool = True) -> VariableFeatureIndex:
    idx = VariableFeatureIndex()
    for b in range(n_blocks):  # distinct gene sets so nothing merges
        names = gene_names(b + 2, f"G{b}_") if with_names else None
        idx.append_features(b + 1, var_block(b + 2, f"b{b}_"), f"file_{b}.h5ad", names=names)
    return idx


def make_obs(n_blocks: int, with_names: bool = True) -> ObservedFeatureIndex:
    idx = ObservedFeatureIndex()
    for b in range(n_blocks):  # alternate schemas so nothing merges
        feats = {f"col{b}": np.arange(b + 1, dtype=np.int64)}
        names = np.array([f"cell{b}_{i}" for i in range(b + 1)]) if with_names else None
        idx.append_features(feats, f"file_{b}.h5ad", names=names)
    return idx


# --------------------------------------------------------------------------- basics
@pytest.mark.parametrize(
    "d1, d2, expected",
    [
        pytest.param({"a": np.arange(3)}, {"a": np.arange(3)}, True, id="equal"),
        pytest.param({}, {}, True, id="empty"),
        pytest.param({"a": np.arange(3)}, {"b": np.arange(3)}, False, id="different-keys"),
        pytest.param({"a": np.arange(3)}, {"a": np.arange(1, 4)}, False, id="different-values"),
        pytest.param({"a": np.arange(3)}, {"a": np.arange(4)}, False, id="different-lengths"),
        pytest.param({"a": np.arange(2), "b": np.zeros(2)}, {"a": np.arange(2)}, False, id="extra-key"),
    ],
)
def test_are_dicts_equal(d1, d2, expected):
    assert are_dicts_equal(d1, d2) is expected


@pytest.mark.parametrize("cls", [pytest.param(VariableFeatureIndex, id="var"), pytest.param(ObservedFeatureIndex, id="obs")])
def test_empty_index(cls):
    idx = cls()
    assert isinstance(idx, RowFeatureIndex)
    assert len(idx) == 0
    assert idx.number_of_rows() == 0
    assert idx.number_of_values() == [0]
    assert idx.column_dims() == []
    assert idx.version() == "0.1.3"
    with pytest.raises(IndexError, match="There are no features to lookup"):
        idx.lookup(0)


def test_abstract_base_cannot_be_instantiated():
    with pytest.raises(TypeError):
        RowFeatureIndex()


# ------------------------------------------------------------------ variable index
def test_var_identical_blocks_merge_and_extend_span():
    idx = VariableFeatureIndex()
    idx.append_features(5, var_block(4), "a.h5ad")
    idx.append_features(3, var_block(4), "b.h5ad")
    assert len(idx) == 1
    assert idx._cumulative_sum_index.tolist() == [-1, 8]
    assert idx.number_of_rows() == 8
    assert idx.lookup(7)[1] == "a.h5ad"  # merged block keeps the first label
    assert idx.column_dims() == [4]
    assert idx.number_of_values() == [32]


def test_var_different_blocks_and_lookup():
    idx = VariableFeatureIndex()
    idx.append_features(5, var_block(4, "x"), "a.h5ad")
    idx.append_features(3, var_block(6, "y"), Path("b.h5ad"))
    assert len(idx) == 2
    assert idx._cumulative_sum_index.tolist() == [-1, 5, 8]
    assert idx._cumulative_sum_index.dtype == np.int64
    vals, label = idx.lookup(4)
    assert label == "a.h5ad"
    assert_same_values(vals, list(var_block(4, "x").values()))
    vals, label = idx.lookup(5)
    assert label == "b.h5ad" and isinstance(label, str)  # Path labels are stored as str
    assert_same_values(vals, list(var_block(6, "y").values()))
    vals, _ = idx.lookup(6, select_features=["length", "feature_id"])
    assert_same_values(vals, [var_block(6, "y")["length"], var_block(6, "y")["feature_id"]])
    assert idx.number_vars_at_row(0) == 4 and idx.number_vars_at_row(7) == 6
    assert idx.column_dims() == [4, 6]
    assert idx.number_of_values() == [20, 18]


@pytest.mark.parametrize(
    "row, exc, match",
    [
        pytest.param(-1, IndexError, "Row index -1 is not valid. It must be non-negative.", id="negative"),
        pytest.param(8, IndexError, r"Row index 8 is larger than number of rows in FeatureIndex \(8\)", id="too-large"),
    ],
)
def test_var_lookup_errors(row, exc, match):
    idx = VariableFeatureIndex()
    idx.append_features(8, var_block(2), None)
    with pytest.raises(exc, match=match):
        idx.lookup(row)


def test_var_select_missing_feature():
    idx = VariableFeatureIndex()
    idx.append_features(2, var_block(2), None)
    with pytest.raises(ValueError, match="Provided feature column nope in select_features not present in dataset."):
        idx.lookup(0, select_features=["nope"])


def test_var_zero_row_blocks_are_skipped_by_lookup():
    idx = VariableFeatureIndex()
    idx.append_features(3, var_block(2, "a"), "a")
    idx.append_features(0, var_block(5, "b"), "b")
    idx.append_features(2, var_block(7, "c"), "c")
    assert idx._cumulative_sum_index.tolist() == [-1, 3, 3, 5]
    assert [idx.lookup(r)[1] for r in range(5)] == ["a", "a", "a", "c", "c"]
    assert idx.number_of_values() == [6, 0, 14]


def test_var_empty_features_block():
    idx = VariableFeatureIndex()
    idx.append_features(4, {}, "x")
    assert idx.column_dims() == [0] and idx.lookup(3) == ([], "x")


@pytest.mark.parametrize(
    "n_obs, features, names, exc, match",
    [
        pytest.param(1, [1, 2], None, TypeError, "VariableFeatureIndex.append_features expects a dict of arrays", id="not-dict"),
        pytest.param(1, {"a": [1, 2], "b": [1]}, None, ValueError, "All feature arrays must have the same length", id="ragged"),
        pytest.param(1, {1: [1, 2]}, None, TypeError, "Feature names must be str", id="non-str-key"),
        pytest.param(1, {"a": np.zeros((2, 2))}, None, ValueError, "must be a 1-D array", id="2d"),
        pytest.param(1.5, {"a": [1]}, None, TypeError, "n_obs must be an int", id="float-n_obs"),
        pytest.param(-1, {"a": [1]}, None, ValueError, "n_obs must be non-negative", id="negative-n_obs"),
        pytest.param(1, {"a": [1, 2]}, ["x"], ValueError, "names has 1 entries but the block has 2 variables", id="names-length"),
        pytest.param(1, {"a": [1, 2]}, [["x", "y"]], ValueError, "names must be 1-D", id="names-2d"),
    ],
)
def test_var_append_validation(n_obs, features, names, exc, match):
    idx = VariableFeatureIndex()
    with pytest.raises(exc, match=match):
        idx.append_features(n_obs, features, None, names=names)
    assert len(idx) == 0 and idx.number_of_rows() == 0


@pytest.mark.parametrize(
    "names1, names2, n_blocks, merged_names",
    [
        pytest.param(gene_names(3), gene_names(3), 1, gene_names(3), id="equal-names-merge"),
        pytest.param(gene_names(3), gene_names(3, "X"), 2, None, id="different-names-split"),
        pytest.param(gene_names(3), None, 1, None, id="new-lacks-names"),
        pytest.param(None, gene_names(3), 1, None, id="old-lacks-names"),
        pytest.param(None, None, 1, None, id="no-names"),
    ],
)
def test_var_merge_with_names(names1, names2, n_blocks, merged_names):
    idx = VariableFeatureIndex()
    idx.append_features(2, var_block(3), "a", names=names1)
    idx.append_features(4, var_block(3), "b", names=names2)
    assert len(idx) == n_blocks
    assert idx.number_of_rows() == 6
    if n_blocks == 1:
        got = idx.names(0)
        assert (got is None) if merged_names is None else np.array_equal(got, merged_names)
    else:
        assert np.array_equal(idx.names(0), names1) and np.array_equal(idx.names(1), names2)
        assert idx.lookup(2)[1] == "b"


def test_var_names_are_str_object_arrays():
    idx = VariableFeatureIndex()
    idx.append_features(1, var_block(3), None, names=[1, 2, 3])
    got = idx.names(0)
    assert got.dtype == object and got.tolist() == ["1", "2", "3"]
    assert idx.names(-1) is got
    with pytest.raises(IndexError):
        idx.names(1)


def test_var_names_keyword_only():
    idx = VariableFeatureIndex()
    with pytest.raises(TypeError):
        idx.append_features(1, var_block(2), None, gene_names(2))


def test_var_concat():
    a = VariableFeatureIndex()
    a.append_features(3, var_block(2, "a"), "a", names=gene_names(2, "A"))
    b = VariableFeatureIndex()
    b.append_features(2, var_block(2, "a"), "b1", names=gene_names(2, "A"))  # merges into a's last block
    b.append_features(4, var_block(5, "c"), "b2", names=gene_names(5, "C"))
    assert a.concat(b) is a
    assert len(a) == 2
    assert a._cumulative_sum_index.tolist() == [-1, 5, 9]
    assert [a.lookup(r)[1] for r in (0, 4, 5, 8)] == ["a", "a", "b2", "b2"]
    assert np.array_equal(a.names(1), gene_names(5, "C"))
    a.concat(a)  # self-concat: spans are snapshotted
    assert a.number_of_rows() == 18
    assert a._cumulative_sum_index.tolist() == [-1, 5, 9, 14, 18]
    with pytest.raises(TypeError, match="cannot concatenate ObservedFeatureIndex onto VariableFeatureIndex"):
        a.concat(ObservedFeatureIndex())


# ------------------------------------------------------------------ observed index
def test_obs_merge_same_keys_and_split_on_new_keys():
    idx = ObservedFeatureIndex()
    idx.append_features({"a": np.array([1, 2]), "b": np.array(["x", "y"])}, "f1", names=["c1", "c2"])
    idx.append_features({"a": np.array([0.5]), "b": np.array(["z"])}, "f2", names=["c3"])
    assert len(idx) == 1
    assert idx._cumulative_sum_index.tolist() == [-1, 3]
    assert idx._feature_arr[0]["a"].dtype == np.float64  # concatenate upcasts int+float
    assert idx.lookup(2) == ([0.5, "z"], "f1")  # merged block keeps the first label
    assert idx.names(0).tolist() == ["c1", "c2", "c3"]
    idx.append_features({"c": np.array([True, False])}, "f3")
    assert len(idx) == 2
    assert idx._cumulative_sum_index.tolist() == [-1, 3, 5]
    assert idx.column_dims() == [2, 1]
    assert idx.number_vars_at_row(4) == 1
    assert idx.number_of_values() == [6, 2]
    assert idx.names(1) is None
    idx.append_features({"c": np.array([True])}, "f4", names=["c6"])
    assert idx.names(1) is None  # merged with a block that has no names


def test_obs_empty_append_is_noop():
    idx = ObservedFeatureIndex()
    idx.append_features({}, "x")
    assert len(idx) == 0 and idx.number_of_rows() == 0


@pytest.mark.parametrize(
    "features, names, exc, match",
    [
        pytest.param(np.arange(3), None, TypeError, "ObservedFeatureIndex.append_features expects a dict of arrays", id="not-dict"),
        pytest.param({"a": [1, 2], "b": [1]}, None, ValueError, "All feature arrays must have the same length", id="ragged"),
        pytest.param({"a": [1, 2]}, ["x", "y", "z"], ValueError, "names has 3 entries but the block has 2 rows", id="names-length"),
    ],
)
def test_obs_append_validation(features, names, exc, match):
    idx = ObservedFeatureIndex()
    with pytest.raises(exc, match=match):
        idx.append_features(features, None, names=names)
    assert len(idx) == 0


@pytest.fixture
def obs3() -> ObservedFeatureIndex:
    idx = ObservedFeatureIndex()
    idx.append_features(obs_block(4), "A", names=[f"a{i}" for i in range(4)])
    idx.append_features({"x": np.arange(3, dtype=np.int64)}, "B", names=[f"b{i}" for i in range(3)])
    idx.append_features(obs_block(2, 10), "C")
    return idx


def test_obs_lookup_and_int_getitem(obs3):
    ref = obs_block(4)
    vals, label = obs3.lookup(1)
    assert label == "A"
    assert vals == [ref[k][1] for k in ref]
    assert obs3.lookup(5, select_features=["x"]) == ([1], "B")
    assert obs3[5] == obs3.lookup(5)
    assert obs3[np.int64(6)] == obs3.lookup(6)
    assert obs3[-1] == obs3.lookup(8)
    assert obs3[-9] == obs3.lookup(0)
    with pytest.raises(IndexError, match="is not valid. It must be non-negative"):
        obs3[-10]
    with pytest.raises(IndexError, match=r"larger than number of rows in FeatureIndex \(9\)"):
        obs3[9]
    with pytest.raises(ValueError, match="Provided feature column cell_type"):
        obs3.lookup(5, select_features=["cell_type"])


@pytest.mark.parametrize(
    "key, expected_rows, expected_labels",
    [
        pytest.param(slice(2, 6), [[2, 3], [0, 1]], ["A", "B"], id="across-two"),
        pytest.param(slice(None), [[0, 1, 2, 3], [0, 1, 2], [0, 1]], ["A", "B", "C"], id="all"),
        pytest.param(slice(1, 9, 3), [[1], [0], [0]], ["A", "B", "C"], id="step"),
        pytest.param(slice(-3, None), [[2], [0, 1]], ["B", "C"], id="negative-start"),
        pytest.param(slice(5, 1, -1), [[1, 0], [3, 2]], ["B", "A"], id="reverse"),
    ],
)
def test_obs_slice_getitem(obs3, key, expected_rows, expected_labels):
    blocks, labels = obs3[key]
    assert labels == expected_labels
    sources = {"A": obs_block(4), "B": {"x": np.arange(3, dtype=np.int64)}, "C": obs_block(2, 10)}
    for block, label, rel in zip(blocks, labels, expected_rows):
        src = sources[label]
        assert block.keys() == src.keys()
        for k in src:
            assert np.array_equal(block[k], np.asarray(src[k])[rel])


@pytest.mark.parametrize("key", [pytest.param(slice(5, 5), id="empty"), pytest.param(slice(20, 30), id="beyond")])
def test_obs_empty_slice(obs3, key):
    assert obs3[key] == ([], [])


@pytest.mark.parametrize("key", [pytest.param("a", id="str"), pytest.param(1.0, id="float"), pytest.param([1], id="list")])
def test_obs_bad_getitem_key(obs3, key):
    with pytest.raises(TypeError, match="Index must be int or slice"):
        obs3[key]


def test_obs_names_for_rows(obs3):
    assert obs3.names_for_rows(2, 6).tolist() == ["a2", "a3", "b0", "b1"]
    assert obs3.names_for_rows(0, 7).tolist() == [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(3)]
    assert obs3.names_for_rows(3, 3).size == 0
    with pytest.raises(ValueError, match="Row names are not stored for block 2"):
        obs3.names_for_rows(6, 8)
    with pytest.raises(IndexError, match=r"outside \[0, 9\)"):
        obs3.names_for_rows(5, 10)
    with pytest.raises(IndexError, match="outside"):
        obs3.names_for_rows(4, 3)


def test_obs_concat(obs3):
    other = ObservedFeatureIndex()
    other.append_features(obs_block(3, 5), "D", names=["d0", "d1", "d2"])  # same keys as C -> merges
    other.append_features({"y": np.array([1.5])}, "E", names=["e0"])
    assert obs3.concat(other) is obs3
    assert len(obs3) == 4
    assert obs3._cumulative_sum_index.tolist() == [-1, 4, 7, 12, 13]
    assert obs3[9][1] == "C"  # D merged into C and C's label wins
    assert obs3[12] == ([1.5], "E")
    assert obs3.names(2) is None  # C had no names
    assert obs3.names_for_rows(12, 13).tolist() == ["e0"]
    with pytest.raises(TypeError, match="cannot concatenate VariableFeatureIndex onto ObservedFeatureIndex"):
        obs3.concat(VariableFeatureIndex())


def test_obs_self_concat():
    idx = make_obs(2)
    idx.concat(idx)
    assert idx._cumulative_sum_index.tolist() == [-1, 1, 3, 4, 6]
    assert idx.names_for_rows(0, 6).tolist() == ["cell0_0", "cell1_0", "cell1_1", "cell0_0", "cell1_0", "cell1_1"]


# --------------------------------------------------------------------- persistence
def test_save_layout(tmp_path, obs3):
    d = tmp_path / "nested" / "obs_features"
    obs3.save(d)  # creates parents
    assert sorted(os.listdir(d)) == [
        "cumulative_sum_index.npy",
        "dataframe_0.parquet",
        "dataframe_1.parquet",
        "dataframe_2.parquet",
        "labels.json",
        "labels.npy",
        "names.json",
        "names_0.arrow",
        "names_1.arrow",
        "version.npy",
    ]
    # which blocks have names, with the cumulative_sum_index they belong to
    assert json.loads((d / "names.json").read_text()) == {"blocks": [0, 1], "cumulative_sum_index.npy": [-1, 4, 7, 9]}
    csum = np.load(d / "cumulative_sum_index.npy", allow_pickle=False)
    assert csum.dtype == np.int64 and csum.tolist() == [-1, 4, 7, 9]
    version = np.load(d / "version.npy", allow_pickle=False)
    assert version.shape == () and version.dtype.kind == "U" and version.item() == "0.1.3"
    assert json.loads((d / "labels.json").read_text()) == ["A", "B", "C"]
    labels = np.load(d / "labels.npy", allow_pickle=False)  # raises if pickled
    assert labels.dtype.kind == "U" and labels.tolist() == ["A", "B", "C"]
    schema = pq.read_schema(d / "dataframe_0.parquet")
    assert schema.names == ["cell_type", "n_genes", "score", "flag"]
    assert [str(t) for t in schema.types] == ["string", "int64", "double", "bool"]
    assert schema.metadata is None  # no pandas metadata
    with pa.memory_map(str(d / "names_1.arrow")) as src:
        t = pa.ipc.open_file(src).read_all()
    assert t.column_names == ["name"] and t.column("name").to_pylist() == ["b0", "b1", "b2"]


def test_save_none_and_empty_labels(tmp_path):
    idx = VariableFeatureIndex()
    idx.append_features(1, var_block(1, "a"), None)
    idx.append_features(1, var_block(2, "b"), "x")
    idx.save(tmp_path / "v")
    assert json.loads((tmp_path / "v" / "labels.json").read_text()) == [None, "x"]
    assert np.load(tmp_path / "v" / "labels.npy", allow_pickle=False).tolist() == ["", "x"]
    VariableFeatureIndex().save(tmp_path / "e")
    empty = np.load(tmp_path / "e" / "labels.npy", allow_pickle=False)
    assert empty.dtype == np.dtype("<U1") and empty.shape == (0,)
    assert json.loads((tmp_path / "e" / "labels.json").read_text()) == []
    assert sorted(os.listdir(tmp_path / "e")) == [
        "cumulative_sum_index.npy", "labels.json", "labels.npy", "names.json", "version.npy"]
    loaded = VariableFeatureIndex.load(tmp_path / "e")
    assert len(loaded) == 0 and loaded.number_of_rows() == 0


def test_parquet_matches_upstream(tmp_path):
    """Same table as upstream's file; the bytes differ only by our page checksums."""
    feats = {
        "s": np.array(["a", "b", None], dtype=object),
        "i": np.array([1, 2, 3]),
        "f": np.array([0.5, np.nan, 2.0]),
        "b": np.array([True, False, None], dtype=object),
    }
    ours, up = VariableFeatureIndex(), UpVar()
    ours.append_features(2, feats, "l")
    up.append_features(2, feats, "l")
    ours.save(tmp_path / "ours")
    up.save(str(tmp_path / "up"))
    name = "cumulative_sum_index.npy"
    assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "up" / name).read_bytes(), name
    t = pq.read_table(tmp_path / "ours" / "dataframe_0.parquet", page_checksum_verification=True)
    assert t.equals(pq.read_table(tmp_path / "up" / "dataframe_0.parquet"))
    plain = tmp_path / "plain.parquet"  # what upstream writes: the same bytes without checksums
    pq.write_table(t, plain)
    assert plain.read_bytes() == (tmp_path / "up" / "dataframe_0.parquet").read_bytes()
    assert [str(x) for x in t.schema.types] == ["string", "int64", "double", "bool"]
    assert t.column("f").null_count == 1  # from_pandas=True: NaN -> null


def test_mixed_object_column_stored_as_text(tmp_path):
    # Upstream's string fallback itself raises ArrowTypeError on numbers; we store str(value).
    mixed = np.array([1, "a", 2.5, None, np.nan], dtype=object)
    with pytest.raises(pa.ArrowTypeError):
        _up_save_one(tmp_path / "up", mixed)
    idx = VariableFeatureIndex()
    idx.append_features(1, {"m": mixed}, None)
    idx.save(tmp_path / "ours")
    col = pq.read_table(tmp_path / "ours" / "dataframe_0.parquet").column("m")
    assert str(col.type) == "string" and col.to_pylist() == ["1", "a", "2.5", None, None]
    assert VariableFeatureIndex.load(tmp_path / "ours").lookup(0)[0][0].tolist() == ["1", "a", "2.5", None, None]


def _up_save_one(path, values):
    up = UpVar()
    up.append_features(1, {"m": values})
    up.save(str(path))


def test_round_trip_types_labels_and_names(tmp_path, obs3):
    obs3.save(tmp_path / "o")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = ObservedFeatureIndex.load(tmp_path / "o")
    assert len(back) == 3 and back.number_of_rows() == 9
    assert back._cumulative_sum_index.tolist() == [-1, 4, 7, 9]
    assert back._labels == ["A", "B", "C"]
    assert back.version() == "0.1.3"
    assert back.column_dims() == obs3.column_dims()
    blk = back._feature_arr[0]
    assert blk["cell_type"].dtype == object and blk["n_genes"].dtype == np.int64
    assert blk["score"].dtype == np.float64 and blk["flag"].dtype == bool
    for row in range(9):
        assert back[row] == obs3[row]
    assert back.names_for_rows(0, 7).tolist() == obs3.names_for_rows(0, 7).tolist()
    assert back.names(2) is None

    var = make_var(3)
    var.append_features(2, var_block(4, "b2_"), None, names=gene_names(4, "G2_"))  # merges into block 2
    var.save(tmp_path / "v")
    vback = VariableFeatureIndex.load(tmp_path / "v")
    assert vback._labels == ["file_0.h5ad", "file_1.h5ad", "file_2.h5ad"]
    assert vback._cumulative_sum_index.tolist() == var._cumulative_sum_index.tolist()
    for row in range(var.number_of_rows()):
        assert_same_values(vback.lookup(row)[0], var.lookup(row)[0])
        assert vback.lookup(row)[1] == var.lookup(row)[1]
    assert [vback.names(b).tolist() for b in range(3)] == [var.names(b).tolist() for b in range(3)]


def test_round_trip_none_label_via_npy_only(tmp_path):
    idx = make_var(2)
    idx._labels[0] = None
    idx.save(tmp_path)
    (tmp_path / "labels.json").unlink()  # force the labels.npy path ("" -> None)
    with pytest.warns(FutureWarning, match="legacy labels.npy"):
        assert VariableFeatureIndex.load(tmp_path)._labels == [None, "file_1.h5ad"]


def test_labels_files_as_upstream_head(tmp_path):
    """HEAD: labels.json; else a legacy labels.npy with a FutureWarning; else FileNotFoundError.
    Our save writes both (the 0.1.3 wheel reads only labels.npy), so an index of ours that lost
    labels.json still loads its labels, from that copy; one with neither file raises."""
    make_var(2).save(tmp_path)
    (tmp_path / "labels.json").unlink()
    with pytest.warns(FutureWarning, match="Found legacy labels.npy"):
        assert VariableFeatureIndex.load(tmp_path)._labels == ["file_0.h5ad", "file_1.h5ad"]
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="No labels file found in .*Expected labels.json or labels.npy"):
        VariableFeatureIndex.load(tmp_path)


def test_labels_json_preferred_over_npy(tmp_path):
    make_var(2).save(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps(["j0", None]))
    assert VariableFeatureIndex.load(tmp_path)._labels == ["j0", None]
    (tmp_path / "labels.npy").unlink()  # HEAD-style dir: labels.json only
    assert VariableFeatureIndex.load(tmp_path)._labels == ["j0", None]


@pytest.mark.parametrize(
    "first, second",
    [pytest.param(3, 12, id="3-then-12"), pytest.param(12, 3, id="12-then-3"), pytest.param(5, 2, id="same-width")],
)
@pytest.mark.parametrize("kind", [pytest.param("var", id="var"), pytest.param("obs", id="obs")])
def test_resave_removes_stale_files(tmp_path, kind, first, second):
    make = make_var if kind == "var" else make_obs
    make(first).save(tmp_path)
    idx = make(second)
    idx.save(tmp_path)
    width = len(str(second))
    files = sorted(os.listdir(tmp_path))
    assert [f for f in files if f.startswith("dataframe_")] == [f"dataframe_{b:0{width}d}.parquet" for b in range(second)]
    assert [f for f in files if f.startswith("names_")] == [f"names_{b:0{width}d}.arrow" for b in range(second)]
    assert not [f for f in files if f.endswith(".tmp")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stale-file recovery needed
        back = type(idx).load(tmp_path)
    up = (UpVar if kind == "var" else UpObs).load(str(tmp_path))
    assert len(back) == len(up._feature_arr) == second
    for row in range(idx.number_of_rows()):
        assert_same_values(back.lookup(row)[0], idx.lookup(row)[0])
        assert_same_values(up.lookup(row)[0], idx.lookup(row)[0])
    assert [back.names(b).tolist() for b in range(second)] == [idx.names(b).tolist() for b in range(second)]


def test_resave_into_own_directory_keeps_names(tmp_path):
    make_obs(12).save(tmp_path)
    loaded = ObservedFeatureIndex.load(tmp_path)
    loaded.save(tmp_path)  # names sidecars are read before they are replaced
    again = ObservedFeatureIndex.load(tmp_path)
    assert again.names_for_rows(0, again.number_of_rows()).tolist() == make_obs(12).names_for_rows(0, 78).tolist()
    fewer = ObservedFeatureIndex.load(tmp_path)
    fewer._feature_arr, fewer._labels, fewer._names = fewer._feature_arr[:2], fewer._labels[:2], fewer._names[:2]
    fewer._num_entries_per_row = fewer._num_entries_per_row[:2]
    fewer._cumulative_sum_index = fewer._cumulative_sum_index[:3]
    fewer.save(tmp_path)
    assert ObservedFeatureIndex.load(tmp_path).names_for_rows(0, 3).tolist() == ["cell0_0", "cell1_0", "cell1_1"]


def test_peek_num_rows_reads_only_csum(tmp_path):
    idx = make_var(4)
    idx.save(tmp_path)
    for p in tmp_path.iterdir():
        if p.name != "cumulative_sum_index.npy":
            p.unlink()
    assert VariableFeatureIndex.peek_num_rows(tmp_path) == idx.number_of_rows() == 10
    assert ObservedFeatureIndex.peek_num_rows(str(tmp_path)) == 10
    VariableFeatureIndex().save(tmp_path / "empty")
    assert RowFeatureIndex.peek_num_rows(tmp_path / "empty") == 0
    with pytest.raises(ArchiveNotFoundError, match="cumulative_sum_index.npy"):
        RowFeatureIndex.peek_num_rows(tmp_path / "missing")


# ------------------------------------------------------------------ cross-compat
@pytest.mark.parametrize("kind", [pytest.param("var", id="var"), pytest.param("obs", id="obs")])
def test_upstream_reads_our_archives(tmp_path, kind):
    idx = make_var(3) if kind == "var" else make_obs(3)
    idx.save(tmp_path)
    up = (UpVar if kind == "var" else UpObs).load(str(tmp_path))
    assert len(up._feature_arr) == len(idx)
    assert up._cumulative_sum_index.tolist() == idx._cumulative_sum_index.tolist()
    assert list(up._labels) == idx._labels
    assert up.version() == "0.1.3"
    assert up.number_of_rows() == idx.number_of_rows()
    assert list(up.column_dims()) == idx.column_dims()
    for row in range(idx.number_of_rows()):
        up_vals, up_label = up.lookup(row)
        vals, label = idx.lookup(row)
        assert_same_values(up_vals, vals)
        assert up_label == label


def test_upstream_reads_our_none_labels_as_empty_string(tmp_path):
    idx = make_obs(2)
    idx._labels[1] = None
    idx.save(tmp_path)
    up = UpObs.load(str(tmp_path))
    assert list(up._labels) == ["file_0.h5ad", ""]


def test_upstream_slices_our_obs_archive(tmp_path, obs3):
    obs3.save(tmp_path)
    up = UpObs.load(str(tmp_path))
    up_blocks, up_labels = up[1:8:2]
    blocks, labels = obs3[1:8:2]
    assert list(up_labels) == labels == ["A", "B", "C"]
    for up_block, block in zip(up_blocks, blocks):
        assert are_dicts_equal(up_block, block)


@pytest.mark.parametrize(
    "labels, expected, warns",
    [
        pytest.param(["a.h5ad", "b.h5ad"], ["a.h5ad", "b.h5ad"], False, id="str-labels"),
        pytest.param([Path("/d/a.h5ad"), Path("b.h5ad")], [None, None], True, id="pickled-path-labels"),
        pytest.param([None, "b.h5ad"], [None, None], True, id="pickled-none-label"),
    ],
)
@pytest.mark.parametrize("kind", [pytest.param("var", id="var"), pytest.param("obs", id="obs")])
def test_we_read_upstream_archives(tmp_path, kind, labels, expected, warns):
    if kind == "var":
        up = UpVar()
        up.append_features(3, var_block(2, "a"), labels[0])
        up.append_features(4, var_block(5, "b"), labels[1])
    else:
        up = UpObs()
        up.append_features(obs_block(3), labels[0])
        up.append_features({"x": np.array([1.0, 2.0])}, labels[1])
    up.save(str(tmp_path))
    cls = VariableFeatureIndex if kind == "var" else ObservedFeatureIndex
    if warns:  # upstream HEAD's index API refuses pickled labels; opening an archive reads them as None
        with pytest.warns(FutureWarning), pytest.raises(ValueError, match="contains pickled objects"):
            cls.load(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = cls.load(tmp_path, pickled_labels_ok=True)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning) and w.category is not FutureWarning]
    assert [w.category for w in caught].count(FutureWarning) == 1  # the wheel's labels.npy is legacy
    if warns:
        assert len(msgs) == 1 and "labels.npy" in msgs[0] and "pickled" in msgs[0]
    else:
        assert msgs == []
        assert np.load(tmp_path / "labels.npy").dtype.kind == "U"
    assert ours._labels == expected
    assert ours._cumulative_sum_index.tolist() == up._cumulative_sum_index.tolist()
    assert ours.column_dims() == list(up.column_dims())
    for row in range(up.number_of_rows()):
        assert_same_values(ours.lookup(row)[0], up.lookup(row)[0])
    assert all(ours.names(b) is None for b in range(len(ours)))


def test_pickled_labels_never_unpickled(tmp_path, monkeypatch):
    up = UpVar()
    up.append_features(1, var_block(1), Path("x.h5ad"))
    up.save(str(tmp_path))
    import pickle

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="contains pickled objects"):
        VariableFeatureIndex.load(tmp_path)
    with pytest.warns(FutureWarning), pytest.warns(UserWarning, match="pickled"):
        assert VariableFeatureIndex.load(tmp_path, pickled_labels_ok=True)._labels == [None]


def test_we_read_upstream_empty_index(tmp_path):
    UpObs().save(str(tmp_path))
    assert np.load(tmp_path / "labels.npy").dtype == np.float64  # upstream saves [] as float64
    with pytest.warns(FutureWarning, match="legacy labels.npy"):
        ours = ObservedFeatureIndex.load(tmp_path)
    assert len(ours) == 0 and ours.number_of_rows() == 0 and ours.number_of_values() == [0]


@pytest.mark.parametrize("first, second", [pytest.param(3, 12, id="3-then-12"), pytest.param(12, 3, id="12-then-3")])
def test_we_recover_upstream_stale_width_files(tmp_path, first, second):
    def build(n):
        up = UpVar()
        for b in range(n):
            up.append_features(1, var_block(b + 1, f"s{n}_{b}_"), f"l{b}")
        return up

    build(first).save(str(tmp_path))
    up = build(second)
    up.save(str(tmp_path))
    assert len(UpVar.load(str(tmp_path))._feature_arr) == first + second  # upstream bug §12.4
    with pytest.warns(FutureWarning), pytest.warns(UserWarning, match="Ignoring stale feature blocks"):
        ours = VariableFeatureIndex.load(tmp_path)
    assert len(ours) == second
    for row in range(second):
        assert_same_values(ours.lookup(row)[0], up.lookup(row)[0])


# --------------------------------------------------------------------- load errors
def _corrupt(d: Path, how: str) -> None:
    if how == "no-labels":
        (d / "labels.json").unlink()
        (d / "labels.npy").unlink()
    elif how == "missing-parquet":
        (d / "dataframe_1.parquet").unlink()
    elif how == "extra-parquet":
        (d / "dataframe_2.parquet").write_bytes((d / "dataframe_0.parquet").read_bytes())
    elif how == "csum-start":
        np.save(d / "cumulative_sum_index.npy", np.array([0, 1, 3]))
    elif how == "csum-decreasing":
        np.save(d / "cumulative_sum_index.npy", np.array([-1, 3, 1]))
    elif how == "csum-float":
        np.save(d / "cumulative_sum_index.npy", np.array([-1.0, 1.0, 3.0]))
    elif how == "labels-count":
        (d / "labels.json").write_text(json.dumps(["only-one"]))
    elif how == "labels-json-type":
        (d / "labels.json").write_text(json.dumps({"a": 1}))
    elif how == "labels-npy-numeric":
        (d / "labels.json").unlink()
        np.save(d / "labels.npy", np.array([1, 2]))
    elif how == "names-length":
        (d / "names_0.arrow").write_bytes((d / "names_1.arrow").read_bytes())
    elif how == "names-orphan":
        (d / "names_7.arrow").write_bytes((d / "names_1.arrow").read_bytes())
    elif how == "names-garbage":
        (d / "names_0.arrow").write_bytes(b"not arrow")
    elif how == "obs-rows":
        np.save(d / "cumulative_sum_index.npy", np.array([-1, 2, 3]))
    elif how == "no-csum":
        (d / "cumulative_sum_index.npy").unlink()
    elif how == "no-version":
        (d / "version.npy").unlink()


@pytest.mark.parametrize(
    "how, exc, match",
    [
        pytest.param("no-labels", ArchiveNotFoundError, "No labels file found in .*Expected labels.json or labels.npy", id="no-labels"),
        pytest.param("missing-parquet", ArchiveError, "cumulative_sum_index.npy describes 2 blocks but .* holds 1", id="missing-parquet"),
        pytest.param("extra-parquet", ArchiveError, "describes 2 blocks but .* holds 3", id="extra-parquet"),
        pytest.param("csum-start", ArchiveError, "cumulative_sum_index.npy must start with -1", id="csum-start"),
        pytest.param("csum-decreasing", ArchiveError, "cumulative_sum_index.npy is not non-decreasing", id="csum-decreasing"),
        pytest.param("csum-float", ArchiveError, "integer array", id="csum-float"),
        pytest.param("labels-count", ArchiveError, "labels.json holds 1 labels for 2 blocks", id="labels-count"),
        pytest.param("labels-json-type", ArchiveError, "labels.json must hold a JSON list", id="labels-json-type"),
        pytest.param("labels-npy-numeric", ArchiveError, "labels.npy must hold a 1-D string array", id="labels-npy-numeric"),
        pytest.param("obs-rows", ArchiveError, "dataframe_0.parquet holds 1 rows but cumulative_sum_index.npy gives it 2", id="obs-rows"),
        pytest.param("no-csum", ArchiveNotFoundError, "cumulative_sum_index.npy does not exist", id="no-csum"),
        pytest.param("no-version", ArchiveNotFoundError, "version.npy does not exist", id="no-version"),
    ],
)
def test_load_errors(tmp_path, how, exc, match):
    make_obs(2).save(tmp_path)
    _corrupt(tmp_path, how)
    legacy = pytest.warns(FutureWarning) if how == "labels-npy-numeric" else contextlib.nullcontext()
    with legacy, pytest.raises(exc, match=match):
        ObservedFeatureIndex.load(tmp_path)


@pytest.mark.parametrize("how", ["names-length", "names-orphan"])
def test_stale_names_sidecars_are_dropped_with_a_warning(tmp_path, how):
    """A tool that re-saves the index without knowing our sidecars must not make it unreadable
    (an index saved before names.json existed: no record to hold the sidecars to)."""
    make_obs(2).save(tmp_path)
    (tmp_path / "names.json").unlink()
    _corrupt(tmp_path, how)
    with pytest.warns(UserWarning, match="Ignoring names sidecar"):
        idx = ObservedFeatureIndex.load(tmp_path)
    assert idx.number_of_rows() == make_obs(2).number_of_rows()
    assert all(idx.names(b) is None for b in range(len(idx)))


def test_var_names_sidecar_checked_against_n_vars(tmp_path):
    make_var(2).save(tmp_path)  # block 0 has 2 genes, block 1 has 3
    (tmp_path / "names.json").unlink()
    (tmp_path / "names_0.arrow").write_bytes((tmp_path / "names_1.arrow").read_bytes())
    with pytest.warns(UserWarning, match="expected 2 names, one per variable"):
        idx = VariableFeatureIndex.load(tmp_path)
    assert idx.names(0) is None and idx.names(1) is None


# ------------------------------------------------------------------- names record
@pytest.mark.parametrize("kind", ["var", "obs"])
def test_recorded_names_sidecar_missing_is_an_error(tmp_path, kind):
    """A deleted sidecar of a block the record lists: not silently "no names" (the rest reads)."""
    (make_var(2) if kind == "var" else make_obs(2)).save(tmp_path)
    (tmp_path / "names_1.arrow").unlink()
    idx = (VariableFeatureIndex if kind == "var" else ObservedFeatureIndex).load(tmp_path)
    assert idx.names(0) is not None and idx.lookup(1)[1] == "file_1.h5ad"
    with pytest.raises(ArchiveNotFoundError, match=r"names_1.arrow is missing: the index stored names for block 1"):
        idx.names(1)


def test_recorded_names_sidecar_of_wrong_length_is_an_error(tmp_path):
    make_var(2).save(tmp_path)  # block 0 has 2 genes, block 1 has 3
    (tmp_path / "names_0.arrow").write_bytes((tmp_path / "names_1.arrow").read_bytes())
    idx = VariableFeatureIndex.load(tmp_path)
    with pytest.raises(ArchiveError, match=r"names_0.arrow holds 3 names, expected 2"):
        idx.names(0)


def test_unlisted_sidecar_is_ignored_with_a_warning(tmp_path):
    make_obs(2).save(tmp_path)
    (tmp_path / "names_7.arrow").write_bytes((tmp_path / "names_1.arrow").read_bytes())
    with pytest.warns(UserWarning, match=r"Ignoring names sidecars \['names_7.arrow'\]"):
        idx = ObservedFeatureIndex.load(tmp_path)
    assert idx.names_for_rows(0, 3).tolist() == ["cell0_0", "cell1_0", "cell1_1"]


def test_record_of_blocks_without_names(tmp_path):
    make_obs(2, with_names=False).save(tmp_path)
    assert json.loads((tmp_path / "names.json").read_text())["blocks"] == []
    idx = ObservedFeatureIndex.load(tmp_path)
    assert idx.names(0) is None and idx.names(1) is None


def test_stale_record_is_ignored(tmp_path):
    """A tool that re-saves the index without knowing names.json rewrites cumulative_sum_index.npy
    and leaves the record behind: it no longer describes the blocks, so the sidecars found are
    checked against the blocks as before the record existed (a missing one means no names)."""
    make_var(2).save(tmp_path)
    np.save(tmp_path / "cumulative_sum_index.npy", np.array([-1, 2, 3], dtype=np.int64))  # was [-1, 1, 3]
    (tmp_path / "names_1.arrow").unlink()
    idx = VariableFeatureIndex.load(tmp_path)
    assert idx.names(0).tolist() == gene_names(2, "G0_").tolist() and idx.names(1) is None


def test_garbage_sidecar_fails_when_names_are_read(tmp_path):
    """Rows and features stay readable; the names of that block raise, naming the file."""
    make_obs(2).save(tmp_path)
    _corrupt(tmp_path, "names-garbage")
    idx = ObservedFeatureIndex.load(tmp_path)
    assert idx.lookup(0)[0] == [0]
    with pytest.raises(ArchiveError, match="Cannot read names sidecar .*names_0.arrow"):
        idx.names(0)


@pytest.mark.parametrize(
    "text", ['[0, 1]', '{"blocks": [5], "cumulative_sum_index.npy": [-1, 1, 3]}', '{"blocks": [0]}', "{not json"]
)
def test_damaged_record_is_an_error(tmp_path, text):
    make_obs(2).save(tmp_path)
    (tmp_path / "names.json").write_text(text)
    with pytest.raises(ArchiveError, match="names.json"):
        ObservedFeatureIndex.load(tmp_path)


# ------------------------------------------------------------ damaged files, only our errors
@pytest.mark.parametrize(
    "name, mutate, match",
    [
        # an unbalanced brace: numpy's header parser raises tokenize.TokenError
        pytest.param("cumulative_sum_index.npy", lambda b: b.replace(b"}", b" ", 1), "cumulative_sum_index.npy",
                     id="csum-header-tokenize"),
        pytest.param("version.npy", lambda b: b[:12] + b"\xff\xfe" + b[14:], "version.npy", id="version-header-bytes"),
        pytest.param("cumulative_sum_index.npy", lambda b: b + b"\0" * 8, r"cumulative_sum_index.npy: the .npy header declares",
                     id="csum-trailing-bytes"),
        pytest.param("cumulative_sum_index.npy", lambda b: b[:-3], r"cumulative_sum_index.npy: the .npy header declares",
                     id="csum-truncated"),
        pytest.param("labels.npy", lambda b: b"\x93NUMPY\x09\x00" + b[8:], "labels.npy", id="labels-npy-version"),
    ],
)
def test_damaged_npy_files_raise_archive_error(tmp_path, name, mutate, match):
    make_obs(2).save(tmp_path)
    if name == "labels.npy":
        (tmp_path / "labels.json").unlink()
    f = tmp_path / name
    f.write_bytes(mutate(f.read_bytes()))
    legacy = pytest.warns(FutureWarning) if name == "labels.npy" else contextlib.nullcontext()
    with legacy, pytest.raises(ArchiveError, match=match):
        ObservedFeatureIndex.load(tmp_path)


def test_absurd_npy_shape_is_refused_before_allocating(tmp_path):
    """A shape that would need terabytes: refused from the file size, nothing read."""
    import io

    make_obs(2).save(tmp_path)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    (tmp_path / "cumulative_sum_index.npy").write_bytes(buf.getvalue() + np.array([-1, 1, 3], "<i8").tobytes())
    with pytest.raises(ArchiveError, match=r"declares a \(1000000000000,\) int64 array .*expected the 24 bytes"):
        ObservedFeatureIndex.load(tmp_path)


def test_labels_json_not_utf8(tmp_path):
    make_obs(2).save(tmp_path)
    (tmp_path / "labels.json").write_bytes(b'["\xff\xfe", null]')
    with pytest.raises(ArchiveError, match="labels.json is not valid JSON"):
        ObservedFeatureIndex.load(tmp_path)


def test_sidecar_with_offsets_past_its_data_is_refused(tmp_path):
    """The IPC reader does not check string offsets; read unchecked they run past the buffer."""
    make_obs(2).save(tmp_path)
    f = tmp_path / "names_1.arrow"  # "cell1_0", "cell1_1": offsets 0, 7, 14
    data = f.read_bytes()
    offsets = np.array([0, 7, 14], "<i4").tobytes()
    assert data.count(offsets) == 1
    f.write_bytes(data.replace(offsets, np.array([0, 7, 30], "<i4").tobytes()))
    idx = ObservedFeatureIndex.load(tmp_path)  # the batch metadata is intact
    with pytest.raises(ArchiveError, match="Cannot read names sidecar .*names_1.arrow"):
        idx.names(1)


def test_parquet_page_checksums_are_verified(tmp_path):
    """A flipped byte in a checksummed data page is an error, not a silently different value."""
    make_obs(1).save(tmp_path)
    f = tmp_path / "dataframe_0.parquet"
    table = pq.read_table(f)
    table = table.append_column("tag", pa.array(["uniqueVALUEzz"], pa.string()))
    pq.write_table(table, f, write_page_checksum=True, use_dictionary=False, compression="none", write_statistics=False)
    data = f.read_bytes()
    assert data.count(b"uniqueVALUEzz") == 1
    f.write_bytes(data.replace(b"uniqueVALUEzz", b"uniqueVALUEzy"))
    with pytest.raises(ArchiveError, match="dataframe_0.parquet"):
        ObservedFeatureIndex.load(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(ArchiveNotFoundError, match="does not exist") as info:
        VariableFeatureIndex.load(tmp_path / "nope")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_load_ignores_nested_and_foreign_parquet(tmp_path):
    idx = make_var(2)
    idx.save(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "dataframe_5.parquet").write_bytes((tmp_path / "dataframe_0.parquet").read_bytes())
    (tmp_path / "other.parquet").write_bytes((tmp_path / "dataframe_0.parquet").read_bytes())
    back = VariableFeatureIndex.load(tmp_path)
    assert len(back) == 2
    assert_same_values(back.lookup(1)[0], idx.lookup(1)[0])
