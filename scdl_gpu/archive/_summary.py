"""What an archive holds, in numbers (:func:`archive_summary`) and as text (:func:`format_summary`).

Only metadata is read: file sizes, the header, the last entry of each pointer array, the var
index (one small table per gene set) and the obs index's block boundaries and parquet schemas
(never its per-cell values), so summarising a 100M-cell archive is instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ._constants import DEFAULT_DTYPES, FileNames
from ._feature_index import _read_csum, _select_blocks
from ._memmap import raw_length
from ._obsm import obsm_outline
from ._reader import layout_facts, load_feature_index, open_arrays, row_order_of
from ._remote import RemoteArchive
from ._urls import is_url

__all__ = ["archive_summary", "format_summary"]

_NEIGHBORS = (FileNames.NEIGHBOR_INDICES_PTR, FileNames.NEIGHBOR_INDICES, FileNames.NEIGHBOR_VALUES)


def archive_summary(path: str | os.PathLike, storage_options: dict | None = None) -> dict:
    """Sizes, dtypes, feature columns and files of the archive at ``path`` (a directory, or a URL
    read through fsspec with ``storage_options``: only its small files are fetched).

    Keys: ``path``, ``n_rows``, ``n_genes`` (genes of each var block, ``[]`` without a var index),
    ``nnz`` (stored values, explicit zeros included), ``density``, ``dtypes`` (``data``,
    ``row_ptr``, ``col_ptr``), ``files`` (path relative to the archive, ``/``-separated -> bytes,
    every file at any depth), ``total_bytes``, ``var_blocks``, ``var_columns``, ``obs_blocks``,
    ``obs_columns``, ``neighbors`` (bool), ``neighbor_nnz`` (edges, or None), ``obsm`` (key ->
    ``[dtype, width]`` of each obsm array, None for a damaged one), ``header`` (whether
    ``header.sch`` exists), ``version`` (the string in ``version.json``, or None), ``row_order``
    (``"input"``, ``"shuffle"``, or None when not recorded) ``shuffle_seed``, and ``chunks``
    (``{"chunk_size", "num_chunks"}`` of a chunked archive, None for a flat one), ``compression``
    (:func:`compression_summary` of a compressed archive, None for any other).

    ``density`` is ``nnz`` over the number of cells of the (ragged) matrix: the sum over var blocks
    of rows x genes, which is ``nnz / (n_rows * n_genes)`` for a single block; None when that sum
    is 0 (no var index, no rows or no genes). ``var_columns`` / ``obs_columns`` are the union of the
    blocks' column names, in order of first appearance.

    Raises
    ------
    ArchiveError, ArchiveNotFoundError
        The archive cannot be opened (see :func:`validate_archive` for a full diagnosis).
    """
    if is_url(path):  # the summary of its mirror: every small file, and the others' listed sizes
        with RemoteArchive(path, storage_options) as remote:
            return {**archive_summary(remote.local), "path": remote.url}
    path = Path(path)
    arrays = open_arrays(path)
    n_rows, nnz = arrays.n_rows, arrays.nnz
    var = load_feature_index(path, FileNames.VAR_FEATURES)
    n_genes = [int(g) for g in var.column_dims()]
    cells = int(sum(var.number_of_values())) if len(var) else 0
    var_columns = _union(list(block) for block in var._feature_arr)
    obs_blocks, obs_columns = _obs_outline(path / FileNames.OBS_FEATURES.value)

    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        files[f.relative_to(path).as_posix()] = f.stat().st_size

    return {
        "path": str(path),
        "n_rows": n_rows,
        "n_genes": n_genes,
        "nnz": nnz,
        "density": nnz / cells if cells else None,
        "dtypes": {
            "data": arrays.dtypes[FileNames.DATA.value],
            "row_ptr": arrays.dtypes[FileNames.ROWPTR.value],
            "col_ptr": arrays.dtypes[FileNames.COLPTR.value],
        },
        "files": files,
        "total_bytes": sum(files.values()),
        "var_blocks": len(var),
        "var_columns": var_columns,
        "obs_blocks": obs_blocks,
        "obs_columns": obs_columns,
        **_neighbor_outline(path),
        "obsm": {k: None if v is None else list(v) for k, v in obsm_outline(path, n_rows).items()},
        "header": arrays.header is not None,
        "version": _version(path),
        **(row_order_of(layout_facts(path)) or {"row_order": None, "shuffle_seed": None}),
        "chunks": None if arrays.chunks is None else {"chunk_size": arrays.chunks.chunk_size,
                                                      "num_chunks": arrays.chunks.num_chunks},
        "compression": compression_summary(path, arrays),
    }


def compression_summary(path: str | Path, arrays=None) -> dict | None:
    """A compressed archive's codecs and sizes, None for any other archive: ``frame_bytes``,
    ``arrays`` (``data``/``col_ptr`` -> ``{"codec", "raw_bytes", "stored_bytes", "ratio"}``, the
    codec as its steps joined by ``+``) and the totals ``raw_bytes``, ``stored_bytes``, ``ratio``
    (raw: the flat archive's value and column files; stored: the chunks' frames)."""
    path = Path(path)
    arrays = open_arrays(path) if arrays is None else arrays
    storage = arrays.chunks
    if storage is None or not storage.compressed:
        return None
    out = {"frame_bytes": storage.frame_bytes, "arrays": {}}
    for member in (FileNames.DATA, FileNames.COLPTR):
        pipe = storage.pipelines[member.value]
        raw = arrays.nnz * np.dtype(arrays.dtypes[member.value]).itemsize
        stored = sum(storage.file(k, member).stat().st_size for k in range(storage.num_chunks))
        steps = [f.codec_id for f in pipe.filters] + [_codec_text(pipe.compressor.get_config())]
        out["arrays"][member.value.removesuffix(".npy")] = {
            "codec": "+".join(steps), "raw_bytes": raw, "stored_bytes": stored, "ratio": raw / stored if stored else None}
    raw = sum(a["raw_bytes"] for a in out["arrays"].values())
    stored = sum(a["stored_bytes"] for a in out["arrays"].values())
    out.update(raw_bytes=raw, stored_bytes=stored, ratio=raw / stored if stored else None)
    return out


def _codec_text(cfg: dict) -> str:
    return cfg["id"] + (f"-{cfg['level']}" if "level" in cfg else "")


def _union(column_lists) -> list[str]:
    return list(dict.fromkeys(c for cols in column_lists for c in cols))


def _obs_outline(d: Path) -> tuple[int, list[str]]:
    """Blocks and column names of the obs index, from its block boundaries and parquet schemas."""
    if not (d / "cumulative_sum_index.npy").is_file():
        return 0, []
    n_blocks = len(_read_csum(d, mmap=True)) - 1
    return n_blocks, _union(pq.read_schema(str(p)).names for p in _select_blocks(d, n_blocks))


def _neighbor_outline(path: Path) -> dict:
    if not all((path / m.value).is_file() for m in _NEIGHBORS):
        return {"neighbors": False, "neighbor_nnz": None}
    ptr = path / FileNames.NEIGHBOR_INDICES_PTR.value
    dt = DEFAULT_DTYPES[ptr.name]
    n = raw_length(ptr, dt)
    last = np.fromfile(ptr, dtype=np.dtype(dt).newbyteorder("<"), count=1, offset=(n - 1) * np.dtype(dt).itemsize) if n else [0]
    return {"neighbors": True, "neighbor_nnz": int(last[0])}


def _version(path: Path) -> str | None:
    try:
        v = json.loads((path / FileNames.VERSION.value).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return v if isinstance(v, str) else str(v)


def human_bytes(n: int) -> str:
    """``417 B``, ``75.4 KiB``, ``1.2 MiB`` ... (binary units, one decimal)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _names(cols: list[str], width: int = 60) -> str:
    """Column names joined up to about ``width`` characters, then a count of the rest."""
    if not cols:
        return "no columns"
    shown: list[str] = []
    for c in cols:
        if shown and len(", ".join(shown + [c])) > width:
            break
        shown.append(c)
    rest = len(cols) - len(shown)
    return ", ".join(shown) + (f", ... (+{rest} more)" if rest else "")


def _obsm_text(obsm: dict) -> str:
    if not obsm:
        return "none"
    return ", ".join(f"{k} ({'damaged' if v is None else f'{v[1]} x {v[0]}'})" for k, v in obsm.items())


def _blocks(n: int) -> str:
    return f"{n} block{'' if n == 1 else 's'}"


def _row_order_text(s: dict) -> str:
    order = s.get("row_order")
    if order == "shuffle":
        return f"shuffled (seed {s['shuffle_seed']}): block order gives batches the variety of random ones"
    return "input order" if order == "input" else "not recorded"


def _layout(chunks: dict | None, compression: dict | None = None) -> str:
    if not chunks:
        return "flat"
    n = chunks["num_chunks"]
    kind = "compressed chunks" if compression else "chunked"
    return f"{kind}, {n:,} chunk{'' if n == 1 else 's'} of {chunks['chunk_size']:,} rows"


def _compression_text(c: dict) -> str:
    def ratio(r):
        return "-" if r is None else f"{r:.2f}x"

    parts = [f"{name} {a['codec']} {ratio(a['ratio'])}" for name, a in c["arrays"].items()]
    return (", ".join(parts) + f"; {human_bytes(c['raw_bytes'])} -> {human_bytes(c['stored_bytes'])} "
            f"({ratio(c['ratio'])}, frames of {human_bytes(c['frame_bytes'])})")


def format_summary(summary: dict) -> str:
    """A compact multi-line text of an :func:`archive_summary` dict, one aligned ``key: value`` a line.

    Top-level files are listed one by one; the contents of each sub-directory are added up.
    """
    s = summary
    genes = s["n_genes"]
    if not genes:
        genes_text = "unknown (no var index)"
    elif len(genes) == 1:
        genes_text = f"{genes[0]:,}"
    else:
        genes_text = f"{', '.join(f'{g:,}' for g in genes)} ({_blocks(len(genes))})"
    density = "" if s["density"] is None else f" (density {100 * s['density']:.3g}%)"
    dt = s["dtypes"]
    n_files = len(s["files"])
    rows = [
        ("path", s["path"]),
        ("rows", f"{s['n_rows']:,}"),
        ("genes", genes_text),
        ("values", f"{s['nnz']:,} stored{density}"),
        ("dtypes", f"data {dt['data']}, row_ptr {dt['row_ptr']}, col_ptr {dt['col_ptr']}"),
        ("var", f"{_blocks(s['var_blocks'])}: {_names(s['var_columns'])}" if s["var_blocks"] else "none"),
        ("obs", f"{_blocks(s['obs_blocks'])}: {_names(s['obs_columns'])}" if s["obs_blocks"] else "none"),
        ("neighbors", f"yes, {s['neighbor_nnz']:,} edges" if s["neighbors"] else "no"),
        ("obsm", _obsm_text(s.get("obsm") or {})),
        ("header", "yes" if s["header"] else "no (legacy layout, default dtypes)"),
        ("layout", _layout(s.get("chunks"), s.get("compression"))),
        *([("compression", _compression_text(s["compression"]))] if s.get("compression") else []),
        ("version", s["version"] if s["version"] is not None else "unknown"),
        ("row order", _row_order_text(s)),
        ("size", f"{human_bytes(s['total_bytes'])} in {n_files} file{'' if n_files == 1 else 's'}"),
    ]
    width = max(len(k) for k, _ in rows) + 1
    lines = [f"{k + ':':<{width}} {v}" for k, v in rows]

    entries: dict[str, list[int]] = {}  # top-level name -> [bytes, files]
    for rel, size in s["files"].items():
        top, sep, _ = rel.partition("/")
        if sep and s.get("chunks") and top.startswith("chunk_"):
            top = "chunk_*"  # one line for all chunks, however many
        e = entries.setdefault(top + sep, [0, 0])
        e[0] += size
        e[1] += 1
    if entries:
        name_w = max(len(k) for k in entries) + 1
        size_w = max(len(human_bytes(b)) for b, _ in entries.values())
        for name, (size, count) in entries.items():
            extra = f"  ({count} file{'' if count == 1 else 's'})" if name.endswith("/") else ""
            lines.append(f"  {name:<{name_w}} {human_bytes(size):>{size_w}}{extra}")
    return "\n".join(lines)
