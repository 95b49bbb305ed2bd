"""Conversion stores every row by increasing column (unless asked to keep input order)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scdl_gpu import SingleCellMemMapDataset
from scdl_gpu.cli import main
from scdl_gpu.cli.upstream import main as upstream_main
from scdl_gpu.convert import _rows, convert_h5ad, convert_many
from scdl_gpu.convert._rows import order_rows, stable_row_order
from tests.conftest import BUNDLED, make_adata, random_csr
from tests.convert.sources import reference, unsorted_row_count

PERTURB = BUNDLED / "cxg_small_perturbations.h5ad"  # 500 x 2000, every row's columns unsorted


def _arrays(archive: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ds = SingleCellMemMapDataset(archive)
    return np.asarray(ds.row_index, np.int64), np.asarray(ds.col_index, np.int64), np.asarray(ds.data)


def _rows_sorted_note(archive: Path) -> bool:
    return json.loads((archive / "scdl_gpu.json").read_text())["rows_sorted"]


def _assert_sorted_rows_equal(archive: Path, m: sp.csr_matrix, columns: np.ndarray | None = None) -> None:
    """Every archive row strictly increasing, holding the source row's values per column.

    ``columns`` maps source columns onto archive columns (-1: dropped), as a gene vocabulary does.
    """
    ptr, cols, vals = _arrays(archive)
    assert len(ptr) == m.shape[0] + 1
    for i in range(m.shape[0]):
        c, v = cols[ptr[i] : ptr[i + 1]], vals[ptr[i] : ptr[i + 1]]
        assert np.all(np.diff(c) > 0), f"row {i} not strictly increasing"
        s, e = m.indptr[i], m.indptr[i + 1]
        src_cols = m.indices[s:e] if columns is None else columns[m.indices[s:e]]
        want = {int(k): float(x) for k, x in zip(src_cols, m.data[s:e]) if k >= 0}
        assert dict(zip(c.tolist(), v.astype(np.float64).tolist())) == want, f"row {i}"


def _shuffled_h5ad(path: Path, n: int = 60, g: int = 300, seed: int = 5) -> tuple[Path, sp.csr_matrix]:
    m = random_csr(n, g, density=0.2, seed=seed, empty_rows=(4,), shuffle_cols=True)
    for r in (7, 11):  # reversed rows, as some writers store them
        s, e = m.indptr[r], m.indptr[r + 1]
        o = np.argsort(m.indices[s:e])[::-1]
        m.indices[s:e], m.data[s:e] = m.indices[s:e][o], m.data[s:e][o]
    m.indices[m.indptr[9] : m.indptr[10]].sort()  # one row already sorted
    make_adata(m).write_h5ad(path)
    return path, m


# -- the sort itself ----------------------------------------------------------------------------
def test_stable_row_order_matches_a_stable_sort_per_row():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 400, 50)
    ptr = np.r_[0, np.cumsum(counts)]
    cols = rng.integers(0, 30, ptr[-1])  # long rows over few columns: many repeated columns
    order = stable_row_order(ptr, cols)
    want = np.concatenate([ptr[i] + np.argsort(cols[ptr[i] : ptr[i + 1]], kind="stable") for i in range(50)])
    np.testing.assert_array_equal(order, want)
    # columns too wide for the packed 63-bit key: numpy's stable argsort, same answer
    wide = cols.astype(np.int64) << 40
    np.testing.assert_array_equal(stable_row_order(ptr, wide), want)


def test_order_rows_sorts_only_unsorted_pieces_in_place(monkeypatch):
    monkeypatch.setattr(_rows, "SORT_CHUNK", 3)  # pieces of rows 0-1, 2, 3 and 4
    pieces = []
    monkeypatch.setattr(_rows, "stable_row_order", lambda p, c: pieces.append(len(p) - 1) or stable_row_order(p, c))
    ptr = np.array([10, 13, 13, 16, 20, 22])  # a block may start anywhere
    cols = np.array([1, 4, 9, 7, 2, 5, 0, 3, 3, 8, 6, 2], np.int32)
    vals = np.arange(12, dtype=np.float32)
    assert order_rows(ptr, cols, vals, sort=True) == 3  # rows 2, 3 (repeats 3) and 4; row 1 is empty
    assert pieces == [1, 1, 1]  # the piece of rows 0-1 (sorted, empty) is left alone
    np.testing.assert_array_equal(cols, [1, 4, 9, 2, 5, 7, 0, 3, 3, 8, 2, 6])
    np.testing.assert_array_equal(vals, [0, 1, 2, 4, 5, 3, 6, 7, 8, 9, 11, 10])  # the two 3s keep their order
    before = cols.copy()
    assert order_rows(ptr, cols, vals, sort=False) == 1  # the repeated column: never strictly increasing
    np.testing.assert_array_equal(cols, before)


# -- files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_block_values", [1 << 24, 97])
def test_unsorted_synthetic_input_comes_out_sorted(tmp_path, max_block_values):
    src, m = _shuffled_h5ad(tmp_path / "shuffled.h5ad")
    assert unsorted_row_count(m) > 50
    report = convert_many(src, tmp_path / "a", use_X_not_raw=True, max_block_values=max_block_values)
    _assert_sorted_rows_equal(report.archive, m)
    assert _rows_sorted_note(report.archive) is True and report.rows_sorted
    (inp,) = report.inputs
    assert inp.rows_unsorted == unsorted_row_count(m) and inp.rows_sorted
    assert report.inputs_sorted == 1 and not report.keep_column_order
    assert f"{unsorted_row_count(m)} rows with unsorted columns in 1 of 1 input(s), sorted" in report.row_order()
    # convert_h5ad sorts when asked, to the same bytes
    out = convert_h5ad(src, tmp_path / "b", use_X_not_raw=True, keep_column_order=False, max_block_values=max_block_values)
    for f in ("col_ptr.npy", "data.npy", "row_ptr.npy"):
        assert (out / f).read_bytes() == (report.archive / f).read_bytes()
    assert _rows_sorted_note(out) is True


def test_real_unsorted_file_comes_out_sorted(tmp_path):
    m, _ = reference(PERTURB, True)
    assert unsorted_row_count(m) == m.shape[0] == 500
    report = convert_many(PERTURB, tmp_path / "a", use_X_not_raw=True, max_block_values=10_000)
    _assert_sorted_rows_equal(report.archive, m)
    assert _rows_sorted_note(report.archive) is True
    assert report.inputs[0].rows_unsorted == 500 and report.nnz == m.nnz


@pytest.mark.parametrize("how", ["convert_many", "convert_h5ad", "dataset", "upstream-cli"])
def test_keep_column_order_stores_input_order(tmp_path, how):
    """Byte parity with upstream's conversion: col_ptr.npy and data.npy are the input's arrays."""
    m, _ = reference(PERTURB, True)
    out = tmp_path / "a"
    if how == "convert_many":
        report = convert_many(PERTURB, out, use_X_not_raw=True, keep_column_order=True)
        assert report.inputs[0].rows_unsorted == 500 and report.inputs_sorted == 0 and not report.rows_sorted
        assert "500 rows with unsorted columns in 1 of 1 input(s), kept as given" in report.row_order()
    elif how == "convert_h5ad":
        convert_h5ad(PERTURB, out, use_X_not_raw=True, keep_column_order=True)
    elif how == "dataset":  # upstream's API converts as upstream does
        SingleCellMemMapDataset(str(out), h5ad_path=str(PERTURB), use_X_not_raw=True)
    else:
        (d := tmp_path / "in").mkdir()
        shutil.copy(PERTURB, d)
        assert upstream_main(["--data-path", str(d), "--save-path", str(out), "--use-X-not-raw"]) == 0
    assert (out / "col_ptr.npy").read_bytes() == m.indices.astype(np.uint16).tobytes()
    assert (out / "data.npy").read_bytes() == m.data.astype(np.float32).tobytes()
    assert _rows_sorted_note(out) is False


def _gene_order_inputs(tmp_path: Path, fmt: str) -> tuple[list[Path], list[sp.csr_matrix], list[list[str]]]:
    """Two inputs whose shared genes come in different orders (the second partly reversed)."""
    ids = [f"ENSG{i:05d}" for i in range(80)]
    gene_sets = [ids[:60], ids[70:80] + ids[59:19:-1]]  # 40 genes in common, reversed
    paths, mats = [], []
    for k, genes in enumerate(gene_sets):
        m = random_csr(30 + k, len(genes), density=0.3, seed=10 + k, empty_rows=(2,))
        a = make_adata(m, seed=k)
        a.var.index = genes
        if fmt == "csc":  # a column-major input: scattered, then sorted in place
            a.X = sp.csc_matrix(a.X)
        a.write_h5ad(p := tmp_path / f"in{k}.h5ad")
        paths.append(p)
        mats.append(m)
    return paths, mats, gene_sets


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_gene_aligned_conversion_gives_sorted_rows(tmp_path, fmt):
    paths, mats, gene_sets = _gene_order_inputs(tmp_path, fmt)
    report = convert_many(paths, tmp_path / "a", use_X_not_raw=True, gene_vocab="union", max_block_values=200)
    vocab = pd.Index(pd.unique(np.concatenate(gene_sets)))
    assert report.vocabulary_size == len(vocab) == 70 and report.rows_sorted
    assert _rows_sorted_note(report.archive) is True
    assert report.inputs[0].rows_unsorted == 0  # the first input defines the order: nothing moved
    assert report.inputs[1].rows_unsorted > 20 and report.inputs_sorted == 1
    ptr, cols, vals = _arrays(report.archive)
    offset = 0
    for m, genes in zip(mats, gene_sets):
        n = m.shape[0]
        lo, hi = ptr[offset], ptr[offset + n]
        part = sp.csr_matrix((vals[lo:hi], cols[lo:hi], ptr[offset : offset + n + 1] - lo), shape=(n, 70))
        for i in range(n):
            c = part.indices[part.indptr[i] : part.indptr[i + 1]]
            assert np.all(np.diff(c) > 0)
        np.testing.assert_array_equal(part.toarray(), _aligned_dense(m, genes, vocab))
        offset += n
    # the same inputs, order kept: the remapped rows stay unsorted and the archive says so
    kept = convert_many(paths, tmp_path / "k", use_X_not_raw=True, gene_vocab="union", keep_column_order=True)
    assert not kept.rows_sorted and _rows_sorted_note(kept.archive) is False
    assert kept.inputs[1].rows_unsorted == report.inputs[1].rows_unsorted


def _aligned_dense(m: sp.csr_matrix, genes: list[str], vocab: pd.Index) -> np.ndarray:
    out = np.zeros((m.shape[0], len(vocab)), np.float32)
    out[:, vocab.get_indexer(genes)] = m.toarray()
    return out


def test_repeated_columns_keep_input_order(tmp_path):
    """Duplicates are legal but rare: the sort is stable, nothing is summed, rows_sorted stays false."""
    indptr = np.array([0, 4, 6, 9])
    indices = np.array([5, 2, 5, 0, 3, 1, 4, 4, 4])
    data = np.arange(1, 10, dtype=np.float32)
    ad.AnnData(X=sp.csr_matrix((data, indices, indptr), shape=(3, 8))).write_h5ad(src := tmp_path / "dup.h5ad")
    report = convert_many(src, tmp_path / "a", use_X_not_raw=True)
    ptr, cols, vals = _arrays(report.archive)
    np.testing.assert_array_equal(ptr, indptr)
    np.testing.assert_array_equal(cols, [0, 2, 5, 5, 1, 3, 4, 4, 4])
    np.testing.assert_array_equal(vals, [4, 2, 1, 3, 6, 5, 7, 8, 9])  # equal columns: input order
    assert report.inputs[0].rows_unsorted == 3  # rows 0 and 2 repeat a column, row 1 is out of order
    assert not report.rows_sorted and _rows_sorted_note(report.archive) is False
    assert "repeat a column" in report.row_order()


# -- command line -------------------------------------------------------------------------------
def test_cli_sorts_by_default_and_keeps_order_when_asked(tmp_path, capsys):
    m, _ = reference(PERTURB, True)
    out, kept, rep = tmp_path / "sorted", tmp_path / "kept", tmp_path / "report.json"
    assert main(["convert", str(PERTURB), "-o", str(out), "--use-X-not-raw", "--report", str(rep)]) == 0
    assert "rows: 500 rows with unsorted columns in 1 of 1 input(s), sorted" in capsys.readouterr().err
    _assert_sorted_rows_equal(out, m)
    r = json.loads(rep.read_text())
    assert r["rows_sorted"] is True and r["inputs_sorted"] == 1 and r["keep_column_order"] is False
    assert r["inputs"][0]["rows_unsorted"] == 500 and r["inputs"][0]["rows_sorted"] is True
    assert main(["convert", str(PERTURB), "-o", str(kept), "--use-X-not-raw", "--keep-column-order"]) == 0
    assert "500 rows with unsorted columns in 1 of 1 input(s), kept as given" in capsys.readouterr().err
    assert (kept / "col_ptr.npy").read_bytes() == m.indices.astype(np.uint16).tobytes()
    assert _rows_sorted_note(kept) is False
