"""Reference readers for tests: each input's matrix and gene ids, read without scdl_gpu's readers."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp


def reference(path: Path, use_x: bool) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(cells x genes CSR, gene ids)`` of an h5ad (``X`` or ``raw.X``), 10x .h5 or mtx directory."""
    path = Path(path)
    if path.is_dir():
        m = scipy.io.mmread(path / "matrix.mtx.gz").T.tocsr()
        genes = pd.read_csv(path / "features.tsv.gz", sep="\t", header=None)[0].astype(str).to_numpy()
        return m, genes
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            g = f["matrix"] if "matrix" in f else f[next(iter(f))]
            n_genes, n_cells = g["shape"][()]
            m = sp.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]), shape=(n_cells, n_genes))
            ids = g["features/id"][()] if "features" in g else g["genes"][()]
        return m, np.asarray([i.decode() for i in ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ad.read_h5ad(path)
    x, var = (a.X, a.var) if use_x or a.raw is None else (a.raw.X, a.raw.var)
    m = x.tocsr() if sp.issparse(x) else sp.csr_matrix(np.asarray(x))
    return sp.csr_matrix(m), np.asarray(var.index.astype(str))


def row_dict(values, cols) -> dict[int, float]:
    return {int(c): float(v) for c, v in zip(cols, values) if v != 0}


def unsorted_row_count(m: sp.csr_matrix) -> int:
    """Rows whose stored column indices are not strictly increasing."""
    return sum(1 for i in range(m.shape[0]) if np.any(np.diff(m.indices[m.indptr[i] : m.indptr[i + 1]]) <= 0))
