"""10x Genomics inputs: Cell Ranger HDF5 (v3, 1.2/2) and Matrix Market directories, read exactly."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from scdl_gpu.convert._copy import ColumnMap, ValueCast, copy_matrix
from scdl_gpu.convert._tenx import MtxReader, MtxSource, TenxH5Reader, TenxH5Source, is_tenx_h5, mtx_matrix_file
from scdl_gpu.errors import ConversionError
from tests.conftest import BUNDLED
from tests.convert.sources import unsorted_row_count

V3_H5 = BUNDLED / "10x_v3_chr21_filtered_feature_bc_matrix.h5"
V2_H5 = BUNDLED / "10x_v2_hg19_chr21_filtered_gene_bc_matrices.h5"
MTX_DIR = BUNDLED / "10x_v3_chr21_mtx"


# -- helpers -------------------------------------------------------------------------------------


def _h5_reference(path: Path, group: str) -> sp.csr_matrix:
    """CSR of cells x genes built straight from the datasets (10x stores genes x cells column-major)."""
    with h5py.File(path, "r") as f:
        g = f[group]
        n_genes, n_cells = g["shape"][()]
        return sp.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]), shape=(n_cells, n_genes))


def _read_blocks(reader, max_values: int, max_rows: int = 1 << 62) -> tuple[sp.csr_matrix, int]:
    """Every row block joined (copied: the reader reuses its buffers), and the number of blocks."""
    indptr, indices, data = [np.zeros(1, np.int64)], [], []
    n_blocks = 0
    for ip, ind, d in reader.blocks(max_values, max_rows):
        assert int(ip[0]) == int(indptr[-1][-1])  # absolute and contiguous
        indptr.append(np.asarray(ip[1:], np.int64))
        indices.append(ind.copy())
        data.append(d.copy())
        n_blocks += 1
    m = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)), shape=reader.shape)
    return m, n_blocks


def _scatter(reader, max_values: int) -> tuple[sp.csr_matrix, int]:
    """Pass 1 + pass 2 of a scatter reader into CSR, keeping file order within a row; and the chunk count."""
    counts = reader.row_counts(max_values)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cols = np.full(indptr[-1], -1, np.int64)
    vals = np.zeros(indptr[-1], reader.dtype)
    cursor = indptr[:-1].copy()
    n_chunks = 0
    for rows, c, v in reader.entries(max_values):
        assert rows.dtype == np.int64 and c.dtype == np.int64 and len(rows) <= max_values
        for r, cc, vv in zip(rows.tolist(), c.tolist(), v.tolist()):
            cols[cursor[r]], vals[cursor[r]] = cc, vv
            cursor[r] += 1
        n_chunks += 1
    assert np.array_equal(cursor, indptr[1:])
    return sp.csr_matrix((vals, cols, indptr), shape=reader.shape), n_chunks


def _same_rows(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    """Identical shape, row pointers, and column/value sequences (order within rows included).

    (Not through scipy arithmetic or ``astype``: those may sort the indices in place.)
    """
    assert a.shape == b.shape
    assert np.array_equal(a.indptr, b.indptr)
    assert np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.data, b.data)


class _MemorySink:
    """The sink surface copy_matrix writes to, kept in memory."""

    col_dtype, data_dtype = "uint32", "float32"

    def __init__(self) -> None:
        self.blocks: list = []
        self.allocated = None
        self.scattered_sorted = None

    def record_scattered_order(self, rows_sorted: bool) -> None:
        self.scattered_sorted = rows_sorted

    def append_rows(self, indptr, indices, data) -> None:
        self.blocks.append((np.asarray(indptr, np.int64).copy(), indices.copy(), data.copy()))

    def allocate_rows(self, counts):
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.allocated = (indptr, np.zeros(indptr[-1], self.data_dtype), np.zeros(indptr[-1], self.col_dtype))
        return self.allocated

    def csr(self, shape) -> sp.csr_matrix:
        if self.allocated is not None:
            indptr, data, cols = self.allocated
            return sp.csr_matrix((data, cols, indptr), shape=shape)
        indptr = np.concatenate([self.blocks[0][0][:1]] + [b[0][1:] for b in self.blocks])
        return sp.csr_matrix(
            (np.concatenate([b[2] for b in self.blocks]), np.concatenate([b[1] for b in self.blocks]), indptr - indptr[0]),
            shape=shape,
        )


def _write_mtx(
    directory: Path,
    entries: str,
    size: str = "3 2 3",
    banner: str = "%%MatrixMarket matrix coordinate integer general",
    genes: str = "g1\tA\ng2\tB\ng3\tC\n",
    barcodes: str = "c1\nc2\n",
    compress: bool = False,
) -> Path:
    """A v2-style directory (``genes.tsv``, plain files unless ``compress``)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"matrix.mtx": f"{banner}\n% a comment\n{size}\n{entries}", "genes.tsv": genes, "barcodes.tsv": barcodes}
    for name, text in files.items():
        if compress:
            with gzip.open(directory / f"{name}.gz", "wt") as f:
                f.write(text)
        else:
            (directory / name).write_text(text)
    return directory


# -- Cell Ranger 3 HDF5 --------------------------------------------------------------------------


@pytest.mark.parametrize(("max_values", "max_rows"), [(1 << 24, 1 << 62), (1000, 1 << 62), (7, 1 << 62), (1 << 24, 3)])
def test_v3_h5_blocks_equal_the_datasets(max_values, max_rows):
    ref = _h5_reference(V3_H5, "matrix")
    with TenxH5Source(V3_H5) as src:
        assert src.kind == "10x-h5-v3"
        assert src.shape == (1107, 507) and src.matrix.nnz == 23_866
        assert src.matrix.dtype == np.int32
        got, n_blocks = _read_blocks(src.matrix, max_values, max_rows)
    _same_rows(got, ref)
    assert n_blocks >= min(1107, max(-(-23_866 // max_values), -(-1107 // max_rows)))  # rows are never split
    # the real file: unsorted genes within cells, counts per cell 9 to 280, 306 genes never seen
    assert not ref.has_sorted_indices and (np.diff(ref.indptr) > 0).all()
    assert (ref.sum(axis=1).min(), ref.sum(axis=1).max()) == (9, 280)
    assert np.count_nonzero(np.bincount(ref.indices, minlength=507) == 0) == 306


def test_v3_h5_tables():
    with h5py.File(V3_H5, "r") as f:
        barcodes = f["matrix/barcodes"][()].astype(str)
        ids = f["matrix/features/id"][()].astype(str)
        names = f["matrix/features/name"][()].astype(str)
    with TenxH5Source(V3_H5) as src:
        obs, var = src.obs(), src.var()
    assert list(obs.index) == list(barcodes) and obs.shape == (1107, 0)
    assert obs.index[0] == "AAACCCAAGGAGAGTA-1" and all(isinstance(b, str) for b in obs.index)
    assert list(var.columns) == ["gene_ids", "gene_symbols", "feature_types", "genome"]
    assert list(var.index) == list(ids) == list(var["gene_ids"])
    assert list(var["gene_symbols"]) == list(names)
    assert var.index[0] == "ENSG00000279493" and var["gene_symbols"].iloc[0] == "CH507-9B2.2"
    assert set(var["feature_types"]) == {"Gene Expression"} and set(var["genome"]) == {"GRCh38_chr21"}
    assert all(isinstance(x, str) for col in var.columns for x in var[col])


def test_v3_h5_genome_argument():
    with TenxH5Source(V3_H5, genome="GRCh38_chr21") as src:  # the only genome: accepted
        assert src.shape == (1107, 507)
    with pytest.raises(ConversionError, match=r"genome='hg19'.*GRCh38_chr21"):
        TenxH5Source(V3_H5, genome="hg19")


def _sorted(m: sp.csr_matrix) -> sp.csr_matrix:
    out = m.copy()
    out.sort_indices()  # no repeated columns in the 10x files: any sort is the stable one
    return out


def test_copy_matrix_consumes_the_h5_reader():
    ref = _h5_reference(V3_H5, "matrix")
    sink = _MemorySink()
    with TenxH5Source(V3_H5) as src:
        n_unsorted = copy_matrix(src.matrix, sink, ValueCast("float32"), max_values=500, sort_rows=False)
    _same_rows(sink.csr(ref.shape), ref)  # values compare equal across dtypes
    assert n_unsorted == unsorted_row_count(ref) > 1000
    sink = _MemorySink()
    with TenxH5Source(V3_H5) as src:  # by default every row comes out sorted
        assert copy_matrix(src.matrix, sink, ValueCast("float32"), max_values=500) == n_unsorted
    _same_rows(sink.csr(ref.shape), _sorted(ref))


# -- Cell Ranger 1.2/2 HDF5 ----------------------------------------------------------------------


def test_v2_h5():
    with TenxH5Source(V2_H5) as src:
        assert src.kind == "10x-h5-v2"
        assert src.shape == (12, 343) and src.matrix.nnz == 12
        assert src.matrix.where.endswith(":hg19_chr21")
        got, _ = _read_blocks(src.matrix, 5)
        obs, var = src.obs(), src.var()
    _same_rows(got, _h5_reference(V2_H5, "hg19_chr21"))
    assert (got.data == 1).all() and got.nnz == 12
    assert obs.index[0] == "AACACGTGTACGCTGC-1" and len(obs) == 12
    assert list(var.columns) == ["gene_ids", "gene_symbols"] and len(var) == 343
    assert var.index[:3].tolist() == ["DSCAM", "MIR99AHG", "APP"]  # this file's "genes" hold symbols
    with TenxH5Source(V2_H5, genome="hg19_chr21") as src:
        assert src.shape == (12, 343)
    with pytest.raises(ConversionError, match=r"no genome 'mm10'.*hg19_chr21"):
        TenxH5Source(V2_H5, genome="mm10")


def _write_v2_genome(f: h5py.File, name: str, n_genes: int, n_cells: int, seed: int) -> sp.csr_matrix:
    m = sp.random(n_cells, n_genes, density=0.3, format="csr", random_state=seed, dtype=np.float64)
    m.data = np.ceil(m.data * 10)
    g = f.create_group(name)
    g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices.astype(np.int64), m.indptr.astype(np.int64)
    g["shape"] = np.array([n_genes, n_cells], np.int32)
    g["barcodes"] = np.array([f"{name}-cell{i}".encode() for i in range(n_cells)])
    g["genes"] = np.array([f"{name}-gene{i}".encode() for i in range(n_genes)])
    g["gene_names"] = np.array([f"G{i}".encode() for i in range(n_genes)])
    return m


def test_v2_h5_two_genomes(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        _write_v2_genome(f, "hg19", 6, 4, 0)
        mm10 = _write_v2_genome(f, "mm10", 5, 4, 1)
    with h5py.File(path, "r") as f:
        assert is_tenx_h5(f)
    with pytest.raises(ConversionError, match=r"hg19, mm10.*genome="):
        TenxH5Source(path)
    with TenxH5Source(path, genome="mm10") as src:
        assert src.shape == (4, 5)
        got, _ = _read_blocks(src.matrix, 3)
        assert src.obs().index[0] == "mm10-cell0"
        assert src.var().index.tolist() == [f"mm10-gene{i}" for i in range(5)]
        assert src.var()["gene_symbols"].tolist() == [f"G{i}" for i in range(5)]
    _same_rows(got, mm10)


def test_h5_tables_must_be_strings(tmp_path):
    path = tmp_path / "ints.h5"
    with h5py.File(path, "w") as f:
        _write_v2_genome(f, "hg19", 6, 4, 0)
        del f["hg19/barcodes"]
        f["hg19/barcodes"] = np.arange(4)
    with TenxH5Source(path) as src, pytest.raises(ConversionError, match=r"ints\.h5:hg19: 'barcodes' is not a string"):
        src.obs()


def test_h5_detection_and_bad_files(tmp_path):
    for p in (V3_H5, V2_H5):
        with h5py.File(p, "r") as f:
            assert is_tenx_h5(f)
    with h5py.File(BUNDLED / "pbmc_small_csc.h5ad", "r") as f:
        assert not is_tenx_h5(f)
    with pytest.raises(ConversionError, match=r"pbmc_small_csc\.h5ad is not a 10x Genomics HDF5 matrix"):
        TenxH5Source(BUNDLED / "pbmc_small_csc.h5ad")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ConversionError, match=r"junk\.h5 is not a readable HDF5 file"):
        TenxH5Source(junk)


def test_h5_truncated_and_inconsistent(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"] = np.ones(3, np.int32), np.zeros(3, np.int64)
        g["indptr"] = np.array([0, 2, 5], np.int64)  # says 5 entries, 3 stored
        g["shape"] = np.array([4, 2], np.int32)
        g["barcodes"] = np.array([b"a", b"b"])
    with pytest.raises(ConversionError, match=r"bad\.h5:matrix: indptr ends at 5 .*truncated"):
        TenxH5Source(path)
    with h5py.File(path, "a") as f:
        f["matrix/shape"][...] = np.array([4, 3], np.int32)  # 3 cells need 4 indptr entries
    with pytest.raises(ConversionError, match=r"indptr has 3 entries"):
        TenxH5Source(path)
    with h5py.File(path, "a") as f:
        del f["matrix/shape"]
    with h5py.File(path, "r") as f, pytest.raises(ConversionError, match=r"no 2-element 'shape' dataset"):
        TenxH5Reader(f["matrix"], "bad")


# -- Matrix Market: the real directory -----------------------------------------------------------


@pytest.mark.parametrize("max_values", [1 << 24, 1000, 7])
def test_mtx_equals_the_h5(max_values):
    ref = _h5_reference(V3_H5, "matrix")
    with MtxSource(MTX_DIR) as src:
        assert src.kind == "10x-mtx" and src.shape == (1107, 507)
        assert src.matrix.nnz == 23_866 and src.matrix.dtype == np.int64
        got, n_chunks = _scatter(src.matrix, max_values)
    _same_rows(got, ref)  # same data and the same entry order within each cell
    assert n_chunks == -(-23_866 // max_values)


def test_mtx_against_scipy_mmread():
    ref = scipy.io.mmread(MTX_DIR / "matrix.mtx.gz").T.tocsr()
    got, _ = _scatter(MtxReader(MTX_DIR / "matrix.mtx.gz"), 5000)
    assert (got != ref).nnz == 0 and got.shape == ref.shape


def test_mtx_row_counts_keep():
    ref = _h5_reference(V3_H5, "matrix")
    keep = np.zeros(507, bool)
    keep[::3] = True
    keep[ref.indices[:50]] = True
    expected = np.bincount(np.repeat(np.arange(1107), np.diff(ref.indptr))[keep[ref.indices]], minlength=1107)
    reader = MtxReader(MTX_DIR / "matrix.mtx.gz")
    for max_values in (1 << 24, 1000):
        counts = reader.row_counts(max_values, keep)
        assert counts.dtype == np.int64 and np.array_equal(counts, expected)
        assert 0 < counts.sum() < ref.nnz
    assert np.array_equal(reader.row_counts(1000), np.diff(ref.indptr))


def test_mtx_tables_match_the_h5():
    with MtxSource(MTX_DIR) as m, TenxH5Source(V3_H5) as h:
        mobs, mvar, hobs, hvar = m.obs(), m.var(), h.obs(), h.var()
    assert list(mobs.index) == list(hobs.index) and mobs.shape == (1107, 0)
    assert list(mvar.columns) == ["gene_ids", "gene_symbols", "feature_types"]
    assert mvar.equals(hvar[mvar.columns])


def test_copy_matrix_scatters_the_mtx_reader():
    ref = _h5_reference(V3_H5, "matrix")
    sink = _MemorySink()
    with MtxSource(MTX_DIR) as src:
        copy_matrix(src.matrix, sink, ValueCast("float32"), max_values=999, sort_rows=False)
    _same_rows(sink.csr(ref.shape), ref)  # values compare equal across dtypes
    assert sink.scattered_sorted is False  # checked on the filled rows, not assumed
    sink = _MemorySink()
    with MtxSource(MTX_DIR) as src:
        assert copy_matrix(src.matrix, sink, ValueCast("float32"), max_values=999) == unsorted_row_count(ref)
    _same_rows(sink.csr(ref.shape), _sorted(ref))
    assert sink.scattered_sorted is True
    # dropping genes: the first pass counts only kept genes, the second drops the rest
    new_of_old = np.where(np.arange(507) % 2 == 0, np.arange(507) // 2, -1)
    sink = _MemorySink()
    with MtxSource(MTX_DIR) as src:
        copy_matrix(src.matrix, sink, ValueCast("float32"), 999, columns=ColumnMap(new_of_old, 254))
    kept = ref[:, ::2]
    got = sink.csr((1107, 254))
    assert np.array_equal(got.indptr, kept.indptr) and (got != kept).nnz == 0


def test_mtx_matrix_file(tmp_path):
    assert mtx_matrix_file(MTX_DIR) == MTX_DIR / "matrix.mtx.gz"
    assert mtx_matrix_file(tmp_path) is None
    (tmp_path / "matrix.mtx").write_text("")
    assert mtx_matrix_file(tmp_path) == tmp_path / "matrix.mtx"


# -- Matrix Market: synthetic edge cases ---------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_mtx_v2_layout(tmp_path, compress):
    d = _write_mtx(tmp_path / "v2", "1 1 5\n3 2 7\n2 1 9\n", compress=compress)
    with MtxSource(d) as src:
        got, _ = _scatter(src.matrix, 2)
        obs, var = src.obs(), src.var()
    assert got.shape == (2, 3)
    assert got.indptr.tolist() == [0, 2, 3]
    assert got.indices.tolist() == [0, 1, 2] and got.data.tolist() == [5, 9, 7]  # file order within a cell
    assert obs.index.tolist() == ["c1", "c2"]
    assert list(var.columns) == ["gene_ids", "gene_symbols"]
    assert var.index.tolist() == ["g1", "g2", "g3"] and var["gene_symbols"].tolist() == ["A", "B", "C"]


def test_mtx_real_values(tmp_path):
    d = _write_mtx(
        tmp_path / "r", "1 1 0.1\n2 2 1e-3\n3 1 -2.5\n", banner="%%MatrixMarket matrix coordinate real general"
    )
    reader = MtxSource(d).matrix
    assert reader.dtype == np.float64
    got, _ = _scatter(reader, 10)
    assert got.data.tolist() == [0.1, -2.5, 0.001]  # parsed exactly (correctly rounded)
    assert got.indices.tolist() == [0, 2, 1]


def test_mtx_unsorted_entries(tmp_path):
    rng = np.random.default_rng(3)
    dense = rng.integers(0, 3, size=(40, 25)) * (rng.random((40, 25)) < 0.4)  # cells x genes
    cells, genes = np.nonzero(dense)
    perm = rng.permutation(len(cells))
    lines = "".join(f"{g + 1} {c + 1} {dense[c, g]}\n" for c, g in zip(cells[perm], genes[perm]))
    d = _write_mtx(
        tmp_path / "u",
        lines,
        size=f"25 40 {len(cells)}",
        genes="".join(f"g{i}\tG{i}\n" for i in range(25)),
        barcodes="".join(f"c{i}\n" for i in range(40)),
    )
    got, n_chunks = _scatter(MtxSource(d).matrix, 16)
    assert n_chunks > 3
    assert np.array_equal(got.toarray(), dense)
    # within each cell, the genes come in file order
    order = np.argsort(cells[perm], kind="stable")
    assert np.array_equal(got.indices, genes[perm][order])


def test_mtx_empty(tmp_path):
    d = _write_mtx(tmp_path / "e", "", size="3 2 0")
    with MtxSource(d) as src:
        counts = src.matrix.row_counts(10)
        got, n_chunks = _scatter(src.matrix, 10)
    assert counts.tolist() == [0, 0] and got.nnz == 0 and got.shape == (2, 3)
    assert n_chunks <= 1


@pytest.mark.parametrize("compress", [False, True])
def test_mtx_irregular_whitespace(tmp_path, compress):
    # tabs, runs of spaces, leading and trailing blanks, CRLF: legal Matrix Market, parsed by the fallback
    d = _write_mtx(tmp_path / "w", "1\t1\t5\r\n 3  2 7 \n2 1   9\n", compress=compress)
    got, _ = _scatter(MtxSource(d).matrix, 2)
    assert got.indices.tolist() == [0, 1, 2] and got.data.tolist() == [5, 9, 7]


def test_mtx_irregular_after_the_first_block(tmp_path):
    # Regular for more than pyarrow's first block, then a double space: chunks were already handed
    # out, so entries() alone cannot start over, while pass 1 does (with the tolerant parser).
    n = 20_000
    lines = "".join(f"{g} 1 1\n" for g in range(1, n + 1)) + "1  2 4\n"
    d = _write_mtx(tmp_path / "w", lines, size=f"{n} 2 {n + 1}")
    with pytest.raises(ConversionError, match=r"cannot parse the entries.*Expected 3 columns"):
        list(MtxReader(d / "matrix.mtx").entries(100))
    reader = MtxReader(d / "matrix.mtx")
    assert reader.row_counts(100).tolist() == [n, 1]
    got, _ = _scatter(reader, 100)
    assert got.indptr.tolist() == [0, n, n + 1]
    assert got.indices[-1] == 0 and got.data[-1] == 4 and np.array_equal(got.indices[:n], np.arange(n))


@pytest.mark.parametrize(
    ("entries", "size", "message"),
    [
        ("1 1 5\n2 2 1\n", "3 2 3", r"declares 3 entries but the file holds 2 \(truncated"),
        ("1 1 5\n2 2 1\n3 1 1\n1 2 1\n", "3 2 3", r"more entries than the 3 the size line declares \(line 7 and on\)"),
        ("1 1 5\n4 2 1\n", "3 2 2", r"line 5: gene index 4 is outside 1\.\.3"),
        ("1 1 5\n1 3 1\n", "3 2 2", r"line 5: cell index 3 is outside 1\.\.2"),
        ("0 1 5\n", "3 2 1", r"line 4: gene index 0 is outside 1\.\.3"),
        ("1 1 2.5\n", "3 2 1", r"cannot parse the entries from line 4 on \(expected 'gene cell value'"),
        ("1 1\n", "3 2 1", r"cannot parse the entries"),
        ("1 1 1 1\n", "3 2 1", r"cannot parse the entries"),
        ("1 1 1\n", "3 2", r"line 3 should be the size line"),
    ],
)
def test_mtx_bad_entries(tmp_path, entries, size, message):
    d = _write_mtx(tmp_path / "bad", entries, size=size)
    with pytest.raises(ConversionError, match=message) as e:
        src = MtxSource(d)
        src.matrix.row_counts(10)
        _scatter(src.matrix, 10)
    assert "matrix.mtx" in str(e.value)


def test_mtx_bad_entry_seen_by_entries_alone(tmp_path):
    d = _write_mtx(tmp_path / "bad", "1 1 5\n4 2 1\n", size="3 2 2")
    with pytest.raises(ConversionError, match=r"gene index 4"):
        list(MtxReader(d / "matrix.mtx").entries(10))


@pytest.mark.parametrize(
    ("banner", "message"),
    [
        ("%%MatrixMarket matrix coordinate pattern general", r"values of type 'pattern' are not supported"),
        ("%%MatrixMarket matrix coordinate complex general", r"values of type 'complex' are not supported"),
        ("%%MatrixMarket matrix array integer general", r"only sparse 'matrix coordinate' files"),
        ("%%MatrixMarket matrix coordinate integer symmetric", r"'symmetric' matrices are not supported"),
        ("%%MatrixMarket matrix coordinate integer skew-symmetric", r"'skew-symmetric' matrices are not supported"),
        ("% not a banner", r"not a Matrix Market file"),
    ],
)
def test_mtx_unsupported_banner(tmp_path, banner, message):
    d = _write_mtx(tmp_path / "b", "1 1 1\n", size="3 2 1", banner=banner)
    with pytest.raises(ConversionError, match=message):
        MtxSource(d)


def test_mtx_banner_is_case_insensitive(tmp_path):
    d = _write_mtx(tmp_path / "c", "1 1 1\n", size="3 2 1", banner="%%MatrixMarket MATRIX Coordinate Integer GENERAL")
    assert MtxSource(d).matrix.nnz == 1


def test_mtx_missing_files(tmp_path):
    d = _write_mtx(tmp_path / "m", "1 1 1\n", size="3 2 1")
    (d / "barcodes.tsv").unlink()
    with pytest.raises(ConversionError, match=r"missing barcodes\.tsv"):
        MtxSource(d)
    (d / "genes.tsv").unlink()
    with pytest.raises(ConversionError, match=r"missing features\.tsv or genes\.tsv, barcodes\.tsv"):
        MtxSource(d)
    (d / "matrix.mtx").unlink()
    with pytest.raises(ConversionError, match=r"missing matrix\.mtx, features"):
        MtxSource(d)
    with pytest.raises(ConversionError, match=r"is not a directory"):
        MtxSource(tmp_path / "nope")


def test_mtx_table_lengths_are_checked(tmp_path):
    d = _write_mtx(tmp_path / "t", "1 1 1\n", size="3 2 1", barcodes="c1\nc2\nc3\n", genes="g1\tA\ng2\tB\n")
    with MtxSource(d) as src:
        with pytest.raises(ConversionError, match=r"matrix is 2 x 3 but barcodes\.tsv has 3 rows"):
            src.obs()
        with pytest.raises(ConversionError, match=r"matrix is 2 x 3 but genes\.tsv has 2 rows"):
            src.var()


def test_mtx_truncated_gzip(tmp_path):
    d = tmp_path / "z"
    shutil.copytree(MTX_DIR, d)
    raw = (d / "matrix.mtx.gz").read_bytes()
    (d / "matrix.mtx.gz").write_bytes(raw[: len(raw) // 2])
    with MtxSource(d) as src, pytest.raises(ConversionError, match=r"matrix\.mtx\.gz.*truncated"):
        src.matrix.row_counts(1000)
