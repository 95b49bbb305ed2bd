"""Check an SCDL memmap archive against the h5ad it was converted from (no SCDL library needed).

Reads ``header.sch`` for the array dtypes (bionemo-scdl's defaults when it is absent), then checks
``metadata.json``, the sizes of ``data.npy``/``col_ptr.npy``/``row_ptr.npy``, every row length
against the input ``indptr`` and, for a sample of rows, the exact column indices and values.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import h5py
import numpy as np

#: ``ArrayDType`` codes of ``header.sch`` (see docs/scdl-format-and-api.md section 2.4).
_HEADER_DTYPES = {1: "uint8", 2: "uint16", 3: "uint32", 4: "uint64", 5: "float16", 6: "float32", 7: "float64"}
#: What bionemo-scdl assumes when an archive has no header.
_DEFAULT_DTYPES = {"DATA": "float32", "COLPTR": "uint32", "ROWPTR": "uint64"}
_FILES = {"DATA": "data.npy", "COLPTR": "col_ptr.npy", "ROWPTR": "row_ptr.npy"}


class VerificationError(AssertionError):
    """The archive does not hold the input matrix."""


def input_info(h5ad_path, use_x: bool = True) -> dict:
    """Shape, nnz, dtype and file size of the CSR matrix ``X`` (or ``raw/X``) of an h5ad."""
    key = "X" if use_x else "raw/X"
    with h5py.File(h5ad_path, "r") as f:
        g = f[key]
        enc = g.attrs.get("encoding-type", "")
        if enc != "csr_matrix":
            raise ValueError(f"{h5ad_path}: expected {key} encoding-type csr_matrix, got {enc!r}")
        n_rows, n_cols = (int(v) for v in g.attrs["shape"])
        return dict(path=str(h5ad_path), key=key, n_cells=n_rows, n_genes=n_cols, nnz=int(g["data"].shape[0]),
                    dtype=str(g["data"].dtype), compression=g["data"].compression,
                    file_size=os.path.getsize(h5ad_path))


def read_header_dtypes(archive) -> dict | None:
    """``{"DATA": dtype, "ROWPTR": dtype, "COLPTR": dtype}`` from ``header.sch``; None if absent."""
    path = Path(archive) / "header.sch"
    if not path.exists():
        return None
    buf = path.read_bytes()
    if buf[:4] != b"SCDL" or len(buf) < 16:
        raise VerificationError(f"{path}: expected magic b'SCDL', got {buf[:4]!r}")
    (count,) = struct.unpack_from(">I", buf, 12)
    pos, dtypes = 16, {}
    for _ in range(count):
        (name_len,) = struct.unpack_from(">I", buf, pos)
        name = buf[pos + 4 : pos + 4 + name_len].decode()
        pos += 4 + name_len
        _length, code, has_shape = struct.unpack_from(">QIB", buf, pos)
        pos += 13
        if has_shape:
            (ndims,) = struct.unpack_from(">I", buf, pos)
            pos += 4 + 4 * ndims
        if code not in _HEADER_DTYPES:
            raise VerificationError(f"{path}: array {name} has unknown dtype code {code}")
        dtypes[name] = _HEADER_DTYPES[code]
    missing = set(_FILES) - set(dtypes)
    if missing:
        raise VerificationError(f"{path}: expected arrays DATA, ROWPTR, COLPTR, missing {sorted(missing)}")
    return dtypes


def archive_size(archive) -> int:
    """Apparent size in bytes of all files under ``archive``."""
    return sum(p.stat().st_size for p in Path(archive).rglob("*") if p.is_file())


def _parquet_rows(directory: Path) -> int | None:
    files = sorted(directory.rglob("*.parquet"))
    if not files:
        return None
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in files)


def verify_archive(
    archive, h5ad_paths, use_x: bool = True, n_sample_rows: int = 64, seed: int = 0, check_metadata: bool = True
) -> dict:
    """Raise :class:`VerificationError` unless ``archive`` holds the inputs' matrices exactly, in order.

    ``h5ad_paths`` is one h5ad or a list of them (a directory conversion stores them row after row).
    Returns ``{"dtypes": {...}, "header": bool, "checked_rows": n}`` on success.
    """
    archive = Path(archive)
    paths = [h5ad_paths] if isinstance(h5ad_paths, (str, os.PathLike)) else list(h5ad_paths)
    infos = [input_info(p, use_x) for p in paths]
    n, nnz = sum(i["n_cells"] for i in infos), sum(i["nnz"] for i in infos)

    def fail(msg: str):
        raise VerificationError(f"{archive}: {msg}")

    if not archive.is_dir():
        fail("archive directory does not exist")
    meta_path = archive / "metadata.json"
    if not meta_path.exists():
        fail("metadata.json is missing")
    num_rows = json.loads(meta_path.read_text()).get("num_rows")
    if num_rows != n and check_metadata:
        fail(f"metadata.json says num_rows={num_rows}, expected {n}")
    header = read_header_dtypes(archive)
    dtypes = header or dict(_DEFAULT_DTYPES)
    expected_len = {"DATA": nnz, "COLPTR": nnz, "ROWPTR": n + 1}
    arrays = {}
    for name, fname in _FILES.items():
        path, dt = archive / fname, np.dtype(dtypes[name])
        if not path.exists():
            fail(f"{fname} is missing")
        size = path.stat().st_size
        if size != expected_len[name] * dt.itemsize:
            fail(f"{fname} has {size} bytes, expected {expected_len[name]} x {dt} = {expected_len[name] * dt.itemsize}")
        arrays[name] = np.memmap(path, dtype=dt, mode="r") if size else np.zeros(0, dt)
    row_ptr, cols, data = arrays["ROWPTR"], arrays["COLPTR"], arrays["DATA"]
    if row_ptr[0] != 0 or int(row_ptr[-1]) != nnz:
        fail(f"row_ptr.npy spans [{row_ptr[0]}, {row_ptr[-1]}], expected [0, {nnz}]")
    r0 = v0 = checked = 0
    for k, (path, info) in enumerate(zip(paths, infos)):
        n_k = info["n_cells"]
        with h5py.File(path, "r") as f:
            g = f[info["key"]]
            step = 1 << 20
            for a in range(0, n_k + 1, step):  # every row boundary, in bounded-memory pieces
                b = min(a + step, n_k + 1)
                got = np.asarray(row_ptr[r0 + a : r0 + b], dtype=np.int64) - v0
                if not np.array_equal(got, g["indptr"][a:b].astype(np.int64)):
                    fail(f"row_ptr.npy differs from the indptr of input {k} within its rows [{a}, {b})")
            rows = np.random.default_rng(seed + k).choice(n_k, size=min(n_k, n_sample_rows), replace=False)
            for r in sorted(set(rows.tolist()) | {0, n_k - 1}):
                lo, hi = int(row_ptr[r0 + r]), int(row_ptr[r0 + r + 1])
                ilo, ihi = lo - v0, hi - v0
                if not np.array_equal(np.asarray(cols[lo:hi], dtype=np.int64), g["indices"][ilo:ihi].astype(np.int64)):
                    fail(f"column indices of row {r} of input {k} differ from the input")
                got, want = np.asarray(data[lo:hi], dtype=np.float64), g["data"][ilo:ihi].astype(np.float64)
                if not np.array_equal(got, want):
                    fail(f"values of row {r} of input {k} differ from the input (max abs diff {np.max(np.abs(got - want))})")
                checked += 1
        r0, v0 = r0 + n_k, v0 + info["nnz"]
    info = infos[0]
    if any(i["n_genes"] != info["n_genes"] for i in infos):
        info = dict(info, n_genes=None)  # several gene tables: block row counts are not checked
    if (archive / "var_features").is_dir():
        var_rows = _parquet_rows(archive / "var_features")
        if info["n_genes"] is not None and var_rows not in (None, info["n_genes"]):
            fail(f"var_features parquet has {var_rows} rows, expected {info['n_genes']}")
    if (archive / "obs_features").is_dir():
        obs_rows = _parquet_rows(archive / "obs_features")
        if obs_rows not in (None, n):
            fail(f"obs_features parquet has {obs_rows} rows, expected {n}")
    return {"dtypes": {_FILES[k]: v for k, v in dtypes.items()}, "header": header is not None, "metadata_num_rows": num_rows,
            "checked_rows": checked}
