"""Create an atlas from member archives, or add members to one: only the manifest and the small
column maps are written; members are opened, checked and read for their genes and obs columns."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..archive._checksums import recorded_checksum
from ..archive._constants import FileNames
from ..archive._reader import load_feature_index, open_arrays, rows_sorted
from ..convert._vocab import INTERSECTION, UNION, build_vocabulary
from ..errors import ArchiveError, ArchiveNotFoundError
from ._columns import eligible, write_mapped_columns
from ._manifest import MANIFEST, Atlas, AtlasMember, is_atlas, map_facts, read_manifest, write_manifest, write_map

LOCK = ".atlas.lock"
log = logging.getLogger(__name__)


def create_atlas(path: str | os.PathLike, members: Sequence[str | os.PathLike], *, gene_vocab="union",
                 gene_key: str | None = None, names: Sequence[str] | None = None, overwrite: bool = False,
                 materialize: bool = False) -> Atlas:
    """Make ``path`` an atlas of ``members`` (archive directories; none is rewritten).

    ``gene_vocab``: ``"union"`` (sorted when every member lists its genes sorted, so no member's
    rows need re-sorting; else first-seen order over members), ``"intersection"`` (the first
    member's order), a gene list file (one id per line), or a sequence of ids. Genes are matched by
    the var column ``gene_key``, or by the var names the converter stored (the AnnData index).
    ``names``: one per member (default: each directory's name without ``.scdl``).
    ``materialize``: also write each flat member's columns mapped onto the vocabulary under
    ``columns/`` (members whose map keeps all their genes in order; see :mod:`._columns`), so
    batches skip the map lookup, at the cost of one column array per such member on disk.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        if is_atlas(root) and not overwrite:
            raise FileExistsError(f"{root} is already an atlas; add members with add_members (or pass overwrite=True)")
        if not members:
            raise ValueError("an atlas needs at least one member")
        mode = gene_vocab if isinstance(gene_vocab, str) and gene_vocab in (UNION, INTERSECTION) else "list"
        facts = [_member_facts(root, m, gene_key) for m in members]
        fixed = None if mode != "list" else build_vocabulary(gene_vocab, [])
        return _write(root, facts, _names(facts, names, []), mode, gene_key, fixed, [], materialize)


def add_members(path: str | os.PathLike, members: Sequence[str | os.PathLike],
                names: Sequence[str] | None = None, materialize: bool = False) -> Atlas:
    """Add ``members`` to the atlas at ``path``; the existing members stay as they are.

    With a union vocabulary new genes are appended (existing columns keep their places); an
    intersection may shrink, which rewrites every map (still no member). ``materialize``: as in
    :func:`create_atlas`, for the new members; members materialized before whose map changes get
    their mapped columns rewritten (or dropped when no longer eligible), never left stale.
    """
    root = Path(path)
    with _locked(root):
        atlas = read_manifest(root)
        if not members:
            return atlas
        facts = [_member_facts(root, m, atlas.gene_key) for m in members]
        fixed = atlas.genes if atlas.vocab_mode == "list" else None
        return _write(root, facts, _names(facts, names, atlas.names), atlas.vocab_mode, atlas.gene_key, fixed, atlas,
                      materialize)


def _write(root: Path, facts: list[dict], names: list[str], mode: str, gene_key, fixed, old, materialize: bool) -> Atlas:
    previous = [] if not old else [(m, old.member_path(i)) for i, m in enumerate(old.members)]
    old_ids = [_gene_ids_of(p, gene_key) for _, p in previous]  # read again: maps may need rebuilding
    all_ids = old_ids + [f["genes"] for f in facts]
    if fixed is not None:
        vocab = np.asarray(fixed, dtype=object)
    elif mode == UNION and old:  # append new genes: existing columns keep their places
        vocab = np.asarray(pd.unique(np.concatenate([old.genes] + [np.asarray(f["genes"], dtype=object) for f in facts])), dtype=object)
    elif mode == UNION and all(_ascending(ids) for ids in all_ids):
        # members that list genes in one sorted order keep it in the vocabulary: every map is then
        # increasing and sorted member rows need no per-batch sort (first-seen order would put each
        # member's genes the earlier ones lack after theirs)
        vocab = np.asarray(sorted(set().union(*map(set, all_ids))), dtype=object)
    else:
        vocab = build_vocabulary(mode, all_ids)
    if len(vocab) == 0:
        raise ValueError(f"the {mode} gene vocabulary of these members is empty; check gene_key")
    index = pd.Index(vocab)
    out, skipped = [], []
    for (m, path), ids in zip(previous, old_ids):
        out.append(_with_map(root, m.__dict__ | {}, ids, index, path, m.mapped_columns is not None, skipped))
    for f, name in zip(facts, names):
        fields = {k: v for k, v in f.items() if k not in ("genes", "source")} | {"name": name}
        out.append(_with_map(root, fields, f["genes"], index, f["source"], materialize, skipped))
    if skipped:
        log.info("atlas %s: columns not materialized for %s", root, "; ".join(skipped))
    obs_schema: dict[str, str] = {}
    for m in out:
        for col, kind in m.obs.items():
            obs_schema[col] = kind if obs_schema.get(col, kind) == kind else "category"
    atlas = Atlas(root, out, vocab, mode, gene_key, obs_schema)
    write_manifest(atlas)  # maps no longer listed stay: a reader of the old manifest may still open them
    return read_manifest(root)


def _ascending(ids) -> bool:
    ids = pd.Index(np.asarray(ids, dtype=object))
    return ids.is_monotonic_increasing and ids.is_unique


def _with_map(root: Path, fields: dict, ids: np.ndarray, vocab: pd.Index, source: Path, materialize: bool,
              skipped: list[str]) -> AtlasMember:
    """The member with its map written; with ``materialize``, its mapped columns too (kept as they
    are when its map did not change, else rewritten). Members that do not qualify go to ``skipped``."""
    ids = pd.Index(np.asarray(ids, dtype=object))
    column_map = vocab.get_indexer(ids).astype(np.int32)
    column_map[ids.duplicated()] = -1  # two member genes onto one column would give a row two values there
    rel, crc = write_map(root, column_map)
    kept, monotone = map_facts(column_map)
    keep = {k: v for k, v in fields.items() if k in AtlasMember.__dataclass_fields__}
    member = AtlasMember(**(keep | dict(column_map=rel, map_checksum=crc, kept=kept, monotone=monotone, n_genes=len(ids))))
    if not materialize or (member.mapped_columns is not None and fields.get("map_checksum") == crc):
        return member
    mapped = dict(mapped_columns=None, mapped_checksum=None, mapped_dtype=None)
    if not eligible(member):
        skipped.append(f"{member.name} (its map drops or reorders genes)")
    else:
        try:
            files = write_mapped_columns(root, source, member.name, column_map, member.n_values, len(vocab))
            mapped = dict(zip(mapped, files))
        except ValueError as e:  # a chunked member
            skipped.append(f"{member.name} ({e})")
    return dataclasses.replace(member, **mapped)


def _member_facts(root: Path, member: str | os.PathLike, gene_key: str | None) -> dict:
    p = Path(member)
    if not p.is_dir():
        raise ArchiveNotFoundError(f"atlas member {p} is not an archive directory")
    if is_atlas(p):
        raise ValueError(f"{p} is an atlas; add its members instead (atlases do not nest)")
    arrays = open_arrays(p)  # every cheap check an archive gets on open
    genes = _gene_ids_of(p, gene_key)
    rel = os.path.relpath(p.resolve(), root.resolve())
    return dict(
        source=p, path=rel if not rel.startswith("..") else str(p.resolve()),
        n_rows=arrays.n_rows, n_values=int(arrays.nnz), n_genes=len(genes),
        data_dtype=str(arrays.data.dtype), col_dtype=str(arrays.col_ptr.dtype),
        rows_sorted=rows_sorted(p, arrays.n_rows, int(arrays.nnz)), checksum=recorded_checksum(p),
        obs=_obs_kinds(p), genes=genes, default_name=p.name.removesuffix(".scdl"),
    )


def _gene_ids_of(archive: Path, gene_key: str | None) -> np.ndarray:
    """The member's gene ids: var column ``gene_key``, else the var names stored at conversion,
    else the var block's only column. Members must have one set of genes for all rows."""
    index = load_feature_index(archive, FileNames.VAR_FEATURES)
    blocks = index._feature_arr
    if not blocks:
        raise ArchiveError(f"{archive}: no var feature index, so its genes cannot be matched to a vocabulary")
    first = blocks[0]
    for b in blocks[1:]:
        if set(b) != set(first) or any(not np.array_equal(np.asarray(b[k]), np.asarray(first[k])) for k in first):
            raise ArchiveError(f"{archive}: its rows have different gene sets ({len(blocks)} var blocks); convert it "
                               "with a gene vocabulary first, or add its inputs as separate members")
    if gene_key is not None:
        if gene_key not in first:
            raise ValueError(f"{archive}: var has no column {gene_key!r} (columns: {sorted(first)})")
        return np.asarray(first[gene_key]).astype(str).astype(object)
    names = index.names(0)
    if names is not None:
        return np.asarray(names, dtype=str).astype(object)
    if len(first) == 1:
        return np.asarray(next(iter(first.values()))).astype(str).astype(object)
    raise ValueError(f"{archive}: no stored var names; choose the column that holds gene ids with gene_key "
                     f"(columns: {sorted(first)})")


def _obs_kinds(archive: Path) -> dict[str, str]:
    index = load_feature_index(archive, FileNames.OBS_FEATURES)
    kinds: dict[str, str] = {}
    for block in index._feature_arr:
        for col, values in block.items():
            arr = np.asarray(values)
            kind = "category" if arr.dtype.kind in "OUSb" else str(arr.dtype)
            kinds[col] = kind if kinds.get(col, kind) == kind else "category"
    return kinds


def _names(facts: list[dict], names: Sequence[str] | None, taken: list[str]) -> list[str]:
    chosen = list(names) if names is not None else [f["default_name"] for f in facts]
    if len(chosen) != len(facts):
        raise ValueError(f"got {len(chosen)} names for {len(facts)} members")
    clash = [n for n in chosen if n in taken] + [n for i, n in enumerate(chosen) if n in chosen[:i]]
    if clash:
        raise ValueError(f"member names must be unique in an atlas; repeated: {sorted(set(clash))} (pass names=)")
    for f in facts:
        f.pop("default_name")
    return chosen


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One writer at a time per atlas (two concurrent ``add`` would each drop the other's member)."""
    if not root.is_dir():
        raise ArchiveNotFoundError(f"{root} is not a directory")
    with open(root / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


__all__ = ["MANIFEST", "add_members", "create_atlas"]
