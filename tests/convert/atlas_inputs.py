"""Inputs for the atlas conversion tests, and comparisons of the member archives they become."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scdl_gpu.archive._constants import FileNames
from scdl_gpu.archive._reader import load_feature_index, open_arrays
from tests.atlas.members import ALL_GENES, member_adata


def write_inputs(d: Path) -> Path:
    """Four h5ad files in ``d`` with different genes and layouts (CSR with unsorted rows, CSC, dense,
    CSR), each with an obsm array; returns ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    specs = [(37, ALL_GENES[:25], "csr"), (29, ALL_GENES[10:35], "csc"), (23, ALL_GENES[5:30], "dense"), (41, ALL_GENES[15:40], "csr")]
    for k, (n, genes, layout) in enumerate(specs):
        a = member_adata(n, list(genes), seed=k, empty_rows=(3,), shuffle_cols=layout == "csr")
        if layout == "csc":
            a.X = sp.csc_matrix(a.X)
        elif layout == "dense":
            a.X = a.X.toarray()
        a.obsm["X_pca"] = np.random.default_rng(k).random((n, 3)).astype(np.float32)
        p = d / f"s{k}_{layout}.h5ad"
        a.write_h5ad(p)
    return d


def files_of(archive: Path) -> dict[str, bytes]:
    return {str(f.relative_to(archive)): f.read_bytes() for f in sorted(archive.rglob("*")) if f.is_file()}


def assert_same_archive(a: Path, b: Path, but=()) -> None:
    """Every file equal, byte for byte, but those named in ``but``."""
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    differ = [name for name in fa if fa[name] != fb[name] and name not in but]
    assert not differ, f"{a} and {b} differ in {differ}"


def csr_of(archive: Path) -> sp.csr_matrix:
    arr = open_arrays(archive)
    n_vars = len(load_feature_index(archive, FileNames.VAR_FEATURES).names(0))
    ptr = np.asarray(arr.row_ptr, dtype=np.int64)
    return sp.csr_matrix((np.asarray(arr.data), np.asarray(arr.col_ptr), ptr), shape=(len(ptr) - 1, n_vars))


def obs_of(archive: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    index = load_feature_index(archive, FileNames.OBS_FEATURES)
    cols = {k: np.concatenate([np.asarray(b[k]) for b in index._feature_arr]) for k in index._feature_arr[0]}
    return cols, np.concatenate([index.names(b) for b in range(len(index._feature_arr))])


def no_partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*partial*")]
