"""Member archives with different gene sets, and the AnnData they came from (for expected rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scdl_gpu.archive import partition_scdl
from scdl_gpu.convert import convert_h5ad
from tests.conftest import make_adata, random_csr

ALL_GENES = [f"ENSG{i:011d}" for i in range(40)]


def member_adata(n_rows: int, genes: list[str], seed: int, empty_rows=(), shuffle_cols: bool = False):
    """Cells over ``genes`` (ids from ALL_GENES, in the order given)."""
    X = random_csr(n_rows, len(genes), density=0.3, seed=seed, empty_rows=empty_rows, shuffle_cols=shuffle_cols)
    a = make_adata(X, seed=seed)
    a.var = pd.DataFrame({"feature_id": genes, "feature_name": [f"N{g[-3:]}" for g in genes]}, index=genes)
    a.obs_names = [f"m{seed}_cell{i}" for i in range(n_rows)]
    return a


def make_members(tmp: Path, specs=None) -> list[tuple[Path, object]]:
    """Three members by default: overlapping gene subsets, one in a different gene order, one with
    empty rows. Returns (archive path, AnnData) pairs."""
    rng = np.random.default_rng(7)
    specs = specs or [
        (30, ALL_GENES[:25], ()),
        (17, list(rng.permutation(ALL_GENES[10:35])), (0, 5)),
        (23, ALL_GENES[5:15] + ALL_GENES[30:40], ()),
    ]
    out = []
    for k, (n, genes, empty) in enumerate(specs):
        a = member_adata(n, list(genes), seed=k, empty_rows=empty)
        h5 = tmp / f"m{k}.h5ad"
        a.write_h5ad(h5)
        arch = tmp / f"m{k}.scdl"
        convert_h5ad(h5, arch, use_X_not_raw=True)
        out.append((arch, a))
    return out


def make_member(tmp: Path, k: int, n_rows: int, genes, empty_rows=(), *, shuffle_cols: bool = False,
                data_dtype: str | None = None, chunk_size: int | None = None, obs_drop=()) -> tuple[Path, object]:
    """One member archive ``tmp/m{k}.scdl`` and its AnnData: ``shuffle_cols`` stores unsorted
    columns (kept by the converter), ``data_dtype`` the stored value dtype, ``chunk_size`` writes
    upstream's chunked layout, ``obs_drop`` leaves obs columns out."""
    a = member_adata(n_rows, list(genes), seed=k, empty_rows=empty_rows, shuffle_cols=shuffle_cols)
    a.obs = a.obs.drop(columns=list(obs_drop))
    h5 = tmp / f"m{k}.h5ad"
    a.write_h5ad(h5)
    arch = tmp / f"m{k}.scdl"
    flat = arch if chunk_size is None else tmp / f"m{k}_flat.scdl"
    convert_h5ad(h5, flat, use_X_not_raw=True, data_dtype=data_dtype, keep_column_order=shuffle_cols)
    if chunk_size is not None:
        partition_scdl(flat, arch, chunk_size)
    return arch, a


def expected_rows(members, vocab: list[str]) -> np.ndarray:
    """Dense (rows, len(vocab)) float64 matrix of every member's rows mapped onto ``vocab``."""
    pos = {g: j for j, g in enumerate(vocab)}
    blocks = []
    for _, a in members:
        X = a.X.toarray()
        out = np.zeros((X.shape[0], len(vocab)))
        for j, g in enumerate(a.var_names):
            if g in pos:
                out[:, pos[g]] = X[:, j]
        blocks.append(out)
    return np.vstack(blocks)
