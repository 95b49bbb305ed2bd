"""Seeded generator of a Tahoe-100M-like ``.h5ad`` written block by block with h5py.

The matrix is never held in memory: cells are generated in fixed tiles of ``TILE_ROWS`` rows
(each tile has its own random stream, so the output depends only on the parameters and the seed,
not on ``chunk_cells``) and appended to resizable HDF5 datasets in blocks of about
``chunk_cells`` rows. The file follows the anndata on-disk format (``anndata`` 0.1.0 root,
``csr_matrix`` 0.1.0 X, ``dataframe``/``categorical``/``string-array`` 0.2.0 obs/var).

Model (see ``_MatrixModel``):

* genes have a Zipf(1) detection weight over a seeded random gene order, so a few hundred genes
  are seen in most cells and many are almost never seen;
* nonzeros per cell ~ negative binomial (mean ``nnz_per_cell``, size 8), clipped to >= 1; genes
  of a cell are sampled with replacement from the weights and de-duplicated, with the number of
  draws calibrated so the expected number of *distinct* genes hits the per-cell target;
* counts ~ floor(Pareto(alpha=1.5)) clipped to ``MAX_COUNT``: ~65 % ones, ~16 % twos, a tail to
  the thousands; stored as integer-valued float32 (or ``dtype``);
* rows are grouped by plate, then by drug (like the real per-plate files); ``cell_line`` is
  random per cell. Column indices are sorted and unique within each row.

Usage::

    python benchmarks/make_synthetic.py out.h5ad --n-cells 200000 [--with-raw] [--compression gzip]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NamedTuple

import h5py
import numpy as np
from tqdm import tqdm

TILE_ROWS = 1000  #: rows per random-stream tile (reduced for very wide matrices)
MAX_COUNT = 10_000  #: counts are clipped here (keeps values exact in float32 and uint16)
COUNT_ALPHA = 1.5  #: Pareto tail exponent of the counts
NNZ_DISPERSION = 8.0  #: negative-binomial size parameter of the nonzeros per cell
_TABLE_BITS = 22  #: resolution of the gene-sampling lookup table
_DTYPES = ("float32", "float64", "int32", "int64")


def _attrs(obj, encoding_type: str, encoding_version: str = "0.2.0", extra: dict | None = None) -> None:
    obj.attrs["encoding-type"] = encoding_type
    obj.attrs["encoding-version"] = encoding_version
    for key, value in (extra or {}).items():
        obj.attrs[key] = value


def _string_array(group, name: str, values, n: int | None = None):
    """Create a ``string-array`` 0.2.0 dataset; filled now (values) or later (n rows)."""
    if values is not None:
        ds = group.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype())
    else:
        ds = group.create_dataset(name, shape=(n,), dtype=h5py.string_dtype(), chunks=(min(n, 65536),))
    _attrs(ds, "string-array")
    return ds


def _array(group, name: str, dtype, n: int):
    ds = group.create_dataset(name, shape=(n,), dtype=dtype, chunks=(min(n, 1 << 18),))
    _attrs(ds, "array")
    return ds


def _categorical(group, name: str, categories: list[str], n: int):
    """Create a ``categorical`` 0.2.0 group; returns its (unfilled) ``codes`` dataset."""
    g = group.create_group(name)
    _attrs(g, "categorical", extra={"ordered": np.bool_(False)})
    _string_array(g, "categories", categories)
    code_dtype = next(t for t in (np.int8, np.int16, np.int32) if len(categories) <= np.iinfo(t).max)
    return _array(g, "codes", code_dtype, n)


def _dataframe(parent, name: str, index_values, n: int, columns: list[str]):
    g = parent.create_group(name)
    _attrs(g, "dataframe", extra={"_index": "_index", "column-order": np.array(columns, dtype=object)})
    index = _string_array(g, "_index", index_values, n)
    return g, index


def _csr_group(parent, name: str, shape, dtype, compression, chunk_elems: int):
    g = parent.create_group(name)
    _attrs(g, "csr_matrix", "0.1.0", {"shape": np.array(shape, dtype=np.int64)})
    kw = dict(maxshape=(None,), chunks=(chunk_elems,), compression=compression)
    data = g.create_dataset("data", shape=(0,), dtype=dtype, **kw)
    indices = g.create_dataset("indices", shape=(0,), dtype=np.int32, **kw)
    indptr = g.create_dataset("indptr", shape=(shape[0] + 1,), dtype=np.int64,
                              chunks=(min(shape[0] + 1, 1 << 18),), compression=compression)
    return data, indices, indptr


def _barcodes(start: int, stop: int) -> np.ndarray:
    """Unique 16-mer barcodes from a bijective scramble of the row number (+ ``-1``)."""
    x = (np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B1) + np.uint64(0x7F4A7C15))
    x &= np.uint64(0xFFFFFFFF)
    digits = (x[:, None] >> (2 * np.arange(15, -1, -1, dtype=np.uint64))) & np.uint64(3)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[digits.astype(np.intp)]
    return np.char.add(letters.view("S16").ravel().astype("U16"), "-1").astype(object)


class _MatrixModel:
    """Gene weights, distinct-count calibration and a reusable row x gene scratch mask."""

    def __init__(self, n_genes: int, nnz_per_cell: float, seed: int):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
        weight = 1.0 / np.arange(1, n_genes + 1)
        p = np.empty(n_genes)
        p[rng.permutation(n_genes)] = weight / weight.sum()
        self.n_genes, self.nnz_per_cell = n_genes, float(nnz_per_cell)
        cdf = np.cumsum(p)
        cdf[-1] = 1.0
        grid = (np.arange(1 << _TABLE_BITS) + 0.5) / (1 << _TABLE_BITS)
        self.table = np.searchsorted(cdf, grid).astype(np.int32)  # uniform bin -> gene
        self.draws = np.unique(np.geomspace(1, 50 * n_genes, 400).astype(np.int64))
        log1mp = np.log1p(-np.minimum(p, 1 - 1e-12))
        self.distinct = np.array([-np.expm1(m * log1mp).sum() for m in self.draws])
        self.tile_rows = max(1, min(TILE_ROWS, (1 << 26) // n_genes))
        self.mask = np.zeros(self.tile_rows * n_genes, dtype=bool)

    def tile(self, seed: int, tile: int, rows: int, dtype):
        """Generate one tile: (row nnz, column indices, values, row sums, the tile's rng)."""
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, tile)))
        g = self.n_genes
        size = NNZ_DISPERSION
        target = rng.negative_binomial(size, size / (size + self.nnz_per_cell), rows)
        target = np.clip(target, 1, self.distinct[-1])
        draws = np.maximum(np.rint(np.interp(target, self.distinct, self.draws)), 1).astype(np.int64)
        flat = np.repeat(np.arange(rows, dtype=np.int64) * g, draws)
        flat += self.table[rng.integers(0, 1 << _TABLE_BITS, flat.size)]
        mask = self.mask[: rows * g]
        mask[flat] = True
        flat = np.flatnonzero(mask)  # sorted by (row, gene): unique, sorted columns
        mask[flat] = False
        row = flat // g
        cols = (flat - row * g).astype(np.int32)
        u = 1.0 - rng.random(flat.size)  # (0, 1]
        values = np.minimum(np.floor(u ** (-1.0 / COUNT_ALPHA)), MAX_COUNT).astype(dtype)
        total = np.bincount(row, weights=values, minlength=rows).astype(np.float32)
        return np.bincount(row, minlength=rows), cols, values, total, rng


class SyntheticTile(NamedTuple):
    start: int
    stop: int
    row_nnz: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    total_counts: np.ndarray
    codes: dict
    barcodes: np.ndarray


def synthetic_tables(n_genes: int, seed: int = 0, n_cell_lines: int = 50, n_drugs: int = 380,
                     n_plates: int = 14) -> dict:
    """Small tables of a synthetic file: ``var_index``, ``gene_symbol`` and obs ``categories``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    gene_ids = np.sort(rng.choice(10 * n_genes + 1000, n_genes, replace=False))
    letters = np.array(list("ABCDEFGHIKLMNOPRSTUVWYZ"))
    sym_len = rng.integers(3, 7, n_genes)
    sym_chars = letters[rng.integers(0, len(letters), (n_genes, 6))]
    digits = rng.integers(1, 10, n_genes)
    return dict(
        var_index=[f"ENSG{g:011d}" for g in gene_ids],
        gene_symbol=["".join(c[:k]) + str(d) for c, k, d in zip(sym_chars, sym_len, digits)],
        categories={
            "cell_line": [f"CVCL_{k:04d}" for k in range(n_cell_lines)],
            "drug": ["DMSO_TF"] + [f"drug_{k:03d}" for k in range(1, n_drugs)],
            "plate": [f"plate{k + 1}" for k in range(n_plates)],
            "sample": [f"smp_{p + 1}_{d:03d}" for p in range(n_plates) for d in range(n_drugs)],
        },
    )


def iter_synthetic_rows(n_cells: int, n_genes: int = 62_710, nnz_per_cell: float = 1450, seed: int = 0,
                        dtype: str = "float32", n_cell_lines: int = 50, n_drugs: int = 380,
                        n_plates: int = 14):
    """Yield the synthetic cells as :class:`SyntheticTile` s, exactly as :func:`make_synthetic_h5ad`
    writes them: rows ``[start, stop)``, their nonzero counts, concatenated column indices (int32)
    and values (``dtype``), row sums, obs category codes (``cell_line``, ``drug``, ``plate``,
    ``sample``) and the obs index (barcodes).
    """
    model = _MatrixModel(n_genes, nnz_per_cell, seed)
    perm_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    drug_perm = np.stack([perm_rng.permutation(n_drugs) for _ in range(n_plates)])
    plate_start = -(-np.arange(n_plates + 1, dtype=np.int64) * n_cells // n_plates)
    for tile, start in enumerate(range(0, n_cells, model.tile_rows)):
        stop = min(start + model.tile_rows, n_cells)
        row_nnz, cols, values, total, rng = model.tile(seed, tile, stop - start, dtype)
        cells = np.arange(start, stop, dtype=np.int64)
        plate = np.searchsorted(plate_start, cells, side="right") - 1
        pos, size = cells - plate_start[plate], plate_start[plate + 1] - plate_start[plate]
        drug = drug_perm[plate, pos * n_drugs // size]
        codes = dict(cell_line=rng.integers(0, n_cell_lines, stop - start), drug=drug, plate=plate,
                     sample=plate * n_drugs + drug)
        yield SyntheticTile(start, stop, row_nnz, cols, values, total, codes, _barcodes(start, stop))


def make_synthetic_h5ad(
    path,
    n_cells: int,
    n_genes: int = 62_710,
    nnz_per_cell: float = 1450,
    seed: int = 0,
    dtype: str = "float32",
    compression: str | None = None,
    chunk_cells: int = 10_000,
    with_raw: bool = False,
    n_cell_lines: int = 50,
    n_drugs: int = 380,
    n_plates: int = 14,
    progress: bool = True,
    table_seed: int | None = None,
) -> dict:
    """Write a synthetic Tahoe-like h5ad to ``path`` and return a summary dict.

    Parameters
    ----------
    path : output file (overwritten).
    n_cells, n_genes : matrix shape.
    nnz_per_cell : mean number of distinct genes per cell (before clipping to ``n_genes``).
    seed : the output is a pure function of all parameters except ``chunk_cells``/``progress``.
    dtype : dtype of ``X/data`` (integer-valued counts in all cases).
    compression : ``None``, ``"gzip"`` or ``"lzf"`` for the matrix datasets.
    chunk_cells : rows buffered before each write (memory ~ chunk_cells * nnz_per_cell * 8 B).
    with_raw : also write the same matrix as ``raw/X`` with ``raw/var``.
    n_cell_lines, n_drugs, n_plates : numbers of levels of the obs categoricals.
    table_seed : seed of the gene table (ids, symbols); default ``seed``. Files sharing it have the
        same genes, like the plates of one study.

    Returns
    -------
    dict with ``path, n_cells, n_genes, nnz, dtype, seed, compression, with_raw, file_size, seconds``.
    """
    if n_cells <= 0 or n_genes <= 0 or n_genes >= 2**31:
        raise ValueError(f"expected n_cells > 0 and 0 < n_genes < 2**31, got {n_cells}, {n_genes}")
    if dtype not in _DTYPES:
        raise ValueError(f"expected dtype in {_DTYPES}, got {dtype!r}")
    if compression not in (None, "none", "gzip", "lzf"):
        raise ValueError(f"expected compression None, 'gzip' or 'lzf', got {compression!r}")
    compression = None if compression == "none" else compression
    t0 = time.perf_counter()
    levels = dict(n_cell_lines=n_cell_lines, n_drugs=n_drugs, n_plates=n_plates)
    tables = synthetic_tables(n_genes, seed if table_seed is None else table_seed, **levels)
    chunk_elems = int(min(1 << 18, max(4096, n_cells * nnz_per_cell)))

    with h5py.File(path, "w", rdcc_nbytes=4 << 20) as f:
        _attrs(f, "anndata", "0.1.0")
        matrices = [_csr_group(f, "X", (n_cells, n_genes), dtype, compression, chunk_elems)]
        cats = tables["categories"]
        obs, obs_index = _dataframe(f, "obs", None, n_cells, [*cats, "n_genes", "total_counts"])
        codes_ds = {name: _categorical(obs, name, levels_, n_cells) for name, levels_ in cats.items()}
        n_genes_ds = _array(obs, "n_genes", np.int32, n_cells)
        total_ds = _array(obs, "total_counts", np.float32, n_cells)
        var, _ = _dataframe(f, "var", tables["var_index"], n_genes, ["gene_symbol"])
        _string_array(var, "gene_symbol", tables["gene_symbol"])
        for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            _attrs(f.create_group(name), "dict", "0.1.0")
        if with_raw:
            raw = f.create_group("raw")
            _attrs(raw, "raw", "0.1.0")
            matrices.append(_csr_group(raw, "X", (n_cells, n_genes), dtype, compression, chunk_elems))
            rvar, _ = _dataframe(raw, "var", tables["var_index"], n_genes, ["gene_symbol"])
            _string_array(rvar, "gene_symbol", tables["gene_symbol"])
            _attrs(raw.create_group("varm"), "dict", "0.1.0")
        for _, _, indptr in matrices:
            indptr[0] = 0

        nnz = 0
        pending: list = []
        bar = tqdm(total=n_cells, unit="cell", unit_scale=True, file=sys.stderr, disable=not progress,
                   desc="synthetic h5ad")
        rows = iter_synthetic_rows(n_cells, n_genes, nnz_per_cell, seed, dtype, **levels)
        for t in rows:
            for name, ds in codes_ds.items():
                ds[t.start : t.stop] = t.codes[name]
            obs_index[t.start : t.stop] = t.barcodes
            n_genes_ds[t.start : t.stop] = t.row_nnz
            total_ds[t.start : t.stop] = t.total_counts
            pending.append(t)
            bar.update(t.stop - t.start)
            if sum(len(p.row_nnz) for p in pending) < chunk_cells and t.stop < n_cells:
                continue
            # flush the buffered tiles with one resize per dataset and no concatenation
            block_nnz = sum(p.values.size for p in pending)
            for data_ds, indices_ds, indptr_ds in matrices:
                data_ds.resize((nnz + block_nnz,))
                indices_ds.resize((nnz + block_nnz,))
                at = nnz
                for p in pending:
                    data_ds[at : at + p.values.size] = p.values
                    indices_ds[at : at + p.values.size] = p.indices
                    indptr_ds[p.start + 1 : p.stop + 1] = at + np.cumsum(p.row_nnz)
                    at += p.values.size
            nnz += block_nnz
            pending = []
        bar.close()

    return dict(path=str(path), n_cells=n_cells, n_genes=n_genes, nnz=nnz, dtype=dtype, seed=seed,
                compression=compression, with_raw=with_raw, file_size=os.path.getsize(path),
                seconds=time.perf_counter() - t0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="path of the .h5ad to write")
    ap.add_argument("--n-cells", type=int, default=200_000)
    ap.add_argument("--n-genes", type=int, default=62_710)
    ap.add_argument("--nnz-per-cell", type=float, default=1450)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=_DTYPES, default="float32")
    ap.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none")
    ap.add_argument("--chunk-cells", type=int, default=10_000)
    ap.add_argument("--with-raw", action="store_true", help="also write raw/X and raw/var")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    info = make_synthetic_h5ad(a.output, a.n_cells, a.n_genes, a.nnz_per_cell, a.seed, a.dtype,
                               a.compression, a.chunk_cells, a.with_raw, progress=not a.no_progress)
    print(f"wrote {info['path']}: {info['n_cells']} x {info['n_genes']}, nnz {info['nnz']:,} "
          f"({info['nnz'] / info['n_cells']:.0f}/cell), {info['file_size'] / 2**20:.1f} MiB "
          f"in {info['seconds']:.1f} s")


if __name__ == "__main__":
    main()
