"""Archives with known contents for backend tests, written straight through the archive writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scdl_gpu.archive import ArchiveWriter

#: every stored value dtype, with values that reach each integer type's extremes
DATA_DTYPES = ["uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]


def random_matrix(n_rows: int, n_cols: int, dtype: str, seed: int = 0, density: float = 0.05) -> sp.csr_matrix:
    """Random CSR with empty rows (first, last, some middle), unsorted columns in every row, the
    largest column index used, and values spanning the dtype (integer types up to their max)."""
    rng = np.random.default_rng(seed)
    m = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng, dtype=np.float64)
    dt = np.dtype(dtype)
    if dt.kind == "u":
        hi = np.iinfo(dt).max
        vals = rng.integers(1, min(hi, 2**62), size=m.nnz, endpoint=True, dtype=np.uint64)
        if m.nnz:
            vals[0] = hi  # the extreme
        data = vals.astype(dt)
    else:
        data = (rng.random(m.nnz) * 1000).astype(dt)
    m = sp.csr_matrix((data, m.indices.astype(np.int64), m.indptr.astype(np.int64)), shape=m.shape)
    lil = m.tolil()
    lil[n_rows // 2, n_cols - 1] = data[0] if m.nnz else 1  # largest column index
    m = sp.csr_matrix(lil, dtype=dt)
    for r in (0, n_rows - 1, n_rows // 3):
        m.data[m.indptr[r] : m.indptr[r + 1]] = 0
    m.eliminate_zeros()
    for r in range(n_rows):  # reverse each row: unsorted columns
        s, e = m.indptr[r], m.indptr[r + 1]
        m.indices[s:e] = m.indices[s:e][::-1].copy()
        m.data[s:e] = m.data[s:e][::-1].copy()
    m.has_sorted_indices = False
    return m


def write_archive(path: Path, m: sp.csr_matrix, data_dtype: str | None = None) -> Path:
    """Store ``m`` as an archive with one var block of ``m.shape[1]`` genes (row blocks of 7 rows)."""
    dtype = data_dtype or m.dtype.name
    with ArchiveWriter(path, n_vars=m.shape[1], data_dtype=dtype) as w:
        for s in range(0, m.shape[0], 7):
            e = min(s + 7, m.shape[0])
            ip = m.indptr[s : e + 1]
            lo, hi = ip[0], ip[-1]
            w.append_rows(ip, m.indices[lo:hi].astype(w.col_dtype), m.data[lo:hi].astype(dtype))
        w.add_var_block(m.shape[0], {"gene": np.array([f"g{i}" for i in range(m.shape[1])])}, "test")
        return w.commit()
