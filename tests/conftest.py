"""Shared fixtures: real data locations, small AnnData builders, marker-based skips and the
warning policy of a run on a GPU machine."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import scipy.sparse as sp

if TYPE_CHECKING:  # anndata only where a fixture builds AnnData: the GPU image may lack it
    import anndata as ad

TESTS = Path(__file__).resolve().parent
BUNDLED = TESTS / "data"
SHARED_REAL = TESTS.parent.parent / "shared" / "data" / "real"


def real_h5ads() -> list[Path]:
    """Every real .h5ad: the shared collection when present, else the bundled copies."""
    files = {p.name: p for p in BUNDLED.glob("*.h5ad")}
    if SHARED_REAL.is_dir():
        files.update({p.name: p for p in SHARED_REAL.glob("*.h5ad")})
    return [files[k] for k in sorted(files)]


@functools.cache
def gpu_available() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


def pytest_addoption(parser):
    parser.addoption(
        "--third-party-warnings", choices=("error", "show"), default=None,
        help="error: any warning fails its test (pyproject's filterwarnings); show: only warnings attributed to "
             "scdl_gpu or tests code fail, others are reported. Default: show where a CUDA device is usable, else error.")


# Why two policies: the CPU CI pins its third-party stack (constraints-cpu.txt), so any new warning
# there is worth failing on. A GPU machine runs whatever torch, CuPy and kvikio its image ships,
# whose own notices (CUDA initialisation, kvikio's compat mode, import-time deprecations) are not
# ours to fix, so there only warnings attributed to our modules stay errors. Attribution is by
# the module a warning points at (its stacklevel), so a library warning about how our code calls
# it (a deprecation at our call site) is still ours. Appended ini lines take precedence over
# pyproject's, and the torch notices pyproject ignores are appended again to stay ignored.
def pytest_configure(config):
    policy = config.getoption("--third-party-warnings") or ("show" if gpu_available() else "error")
    if policy == "show":
        ignores = [f for f in config.getini("filterwarnings") if f.startswith("ignore")]
        for line in ("default", r"error:::scdl_gpu(\.|$)", r"error:::tests(\.|$)", *ignores):
            config.addinivalue_line("filterwarnings", line)


def pytest_collection_modifyitems(config, items):
    skips = {
        "gpu": (not gpu_available(), "no usable CUDA device"),
        "nvcc": (shutil.which("nvcc") is None, "nvcc not on PATH"),
    }
    for item in items:
        for marker, (skip, why) in skips.items():
            if skip and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))


def random_csr(n_rows, n_cols, density=0.1, seed=0, dtype=np.float32, empty_rows=(), shuffle_cols=False, integer=True):
    """A random CSR matrix with chosen empty rows and, optionally, unsorted columns in each row."""
    rng = np.random.default_rng(seed)
    m = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng, dtype=np.float64)
    if integer:
        m.data = rng.integers(1, 50, size=m.nnz).astype(np.float64)
    m = m.astype(dtype)
    m = sp.csr_matrix(m)
    for r in empty_rows:
        m.data[m.indptr[r] : m.indptr[r + 1]] = 0
    m.eliminate_zeros()
    if shuffle_cols:
        for r in range(n_rows):
            s, e = m.indptr[r], m.indptr[r + 1]
            perm = rng.permutation(e - s)
            m.indices[s:e] = m.indices[s:e][perm]
            m.data[s:e] = m.data[s:e][perm]
        m.has_sorted_indices = False
    return m


def make_adata(X, raw_X=None, obsp=None, seed=0, obsm=None) -> ad.AnnData:
    import anndata as ad
    import pandas as pd

    n, g = X.shape
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], size=n)),
            "donor": [f"d{i % 4}" for i in range(n)],
            "n_genes": rng.integers(0, 1000, size=n),
            "score": rng.random(n),
            "flag": rng.random(n) > 0.5,
        },
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(
        {"feature_id": [f"ENSG{i:011d}" for i in range(g)], "feature_name": [f"G{i}" for i in range(g)]},
        index=[f"ENSG{i:011d}" for i in range(g)],
    )
    a = ad.AnnData(X=X, obs=obs, var=var)
    if raw_X is not None:
        a.raw = ad.AnnData(X=raw_X, obs=obs, var=var)
    if obsp is not None:
        for k, v in obsp.items():
            a.obsp[k] = v
    for k, v in (obsm or {}).items():
        a.obsm[k] = v
    return a


def write_obsm_h5ad(path: Path, n: int, obsm: dict, seed: int = 0, n_genes: int = 12) -> Path:
    """A small h5ad of ``n`` cells with the given ``.obsm`` arrays."""
    make_adata(random_csr(n, n_genes, density=0.3, seed=seed), seed=seed, obsm=obsm).write_h5ad(path)
    return path


@pytest.fixture
def write_h5ad(tmp_path):
    """Write an AnnData to tmp_path/name.h5ad and return the path."""

    def _write(adata: ad.AnnData, name: str = "in.h5ad", **kwargs) -> Path:
        p = tmp_path / name
        adata.write_h5ad(p, **kwargs)
        return p

    return _write


@pytest.fixture(scope="session")
def bundled_archive(tmp_path_factory) -> Path:
    """The bundled CELLxGENE example converted once per session (read-only use)."""
    from scdl_gpu import convert_h5ad

    out = tmp_path_factory.mktemp("bundled") / "cxg_example.scdl"
    convert_h5ad(BUNDLED / "cxg_example_valid.h5ad", out)
    return out
