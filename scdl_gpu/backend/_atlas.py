"""``AtlasBackend``: batches over an atlas of member archives, in the atlas's gene vocabulary.

Global row ids in, one batch out, as :class:`~scdl_gpu.backend._base.Backend` does for one
archive. Each member present in a batch is planned against its own ``row_ptr`` (checked), then
copied by one compiled pass (:mod:`._gather_remap`) into its rows' places in the output, its
columns checked against the member's width and mapped onto the vocabulary. Flat members are read
straight from their maps; other members (chunked, and any reader that supplies rows as compact
arrays through ``read_spans(starts, lengths)``, such as a remote archive) are first read into a
compact buffer in their own dtypes, then go through the same pass. A local flat member whose
columns the atlas stored already mapped (``create_atlas(..., materialize=True)``) is read from
those instead of its own ``col_ptr.npy``, and its columns are copied without the map lookup.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..archive._bounds import span_error
from ..archive._reader import rows_sorted
from ..atlas import Atlas, RemoteAtlas, open_atlas
from ..atlas._check import member_problems
from ..atlas._columns import mapped_columns
from ..errors import ArchiveError
from . import _gather_remap
from . import _reference as reference
from ._assemble import assemble, to_batch
from ._batch import Batch, BatchOptions, host_tensor
from ._plan import RowPlan, as_row_ids, plan_rows
from ._pool import BufferPool
from ._stages import NO_STAGES

log = logging.getLogger(__name__)


@dataclass
class AtlasMemberReader:
    """How one member supplies rows: ``row_ptr`` (checked by every plan) and either ``flat``
    (its value and column arrays, read in place) or ``compact(plan) -> (values, columns)``: the
    planned rows packed in order, in the member's dtypes."""

    name: str
    path: Path
    row_ptr: np.ndarray
    n_data: int
    width: int  # the member's genes: every column must be below it
    data_dtype: np.dtype
    col_dtype: np.dtype
    rows_sorted: bool  # rows come out with increasing columns (recorded by the writer, or sorted by compact)
    flat: tuple[np.ndarray, np.ndarray] | None = None
    compact: Callable[[RowPlan], tuple[np.ndarray, np.ndarray]] | None = None
    close: Callable[[], None] = lambda: None
    will_need: Callable[[np.ndarray], None] = lambda rows: None  #: the member's read-ahead hint (its own row ids)

    @property
    def n_rows(self) -> int:
        return len(self.row_ptr) - 1

    @classmethod
    def from_spans(cls, name: str, path, reader, rows_sorted: bool = False) -> "AtlasMemberReader":
        """A member read through ``reader.read_spans(starts, lengths) -> (values, columns)`` (compact
        arrays of the spans, in order), with ``reader.row_ptr``, ``.dtypes``, ``.width``."""
        dt = reader.dtypes

        def compact(plan: RowPlan):
            return reader.read_spans(plan.starts, np.diff(plan.in_ptr))

        return cls(name, Path(str(path)), np.asarray(reader.row_ptr), int(reader.row_ptr[-1]), int(reader.width),
                   np.dtype(dt["data.npy"]), np.dtype(dt["col_ptr.npy"]), rows_sorted, compact=compact,
                   close=getattr(reader, "close", lambda: None))


def open_member(path: Path, name: str) -> AtlasMemberReader:
    """A local member archive: flat ones read in place, chunked ones through their own CPU backend's
    gather (which checks columns against the member's width and sorts rows)."""
    from ._cpu import CPUBackend

    b = CPUBackend(path, BatchOptions())  # opens and checks the archive; warms its maps
    common = dict(name=name, path=Path(path), row_ptr=b.row_ptr, n_data=len(b.data), width=b.archive_cols,
                  data_dtype=np.dtype(b.data.dtype), col_dtype=np.dtype(b.col_ptr.dtype), close=b.close)
    if b.chunks is None:
        return AtlasMemberReader(**common, rows_sorted=b.archive_sorted, flat=(b.data, b.col_ptr))
    return AtlasMemberReader(**common, rows_sorted=True, compact=b.gather_native, will_need=b.will_need)


class _Member:
    """A member as a batch reads it: its reader, its (composed) column map and what the pass does.

    With ``mapped`` (the atlas's copy of a flat member's columns in vocabulary columns, ``width``
    the vocabulary's size), those are read instead of the member's, ``cmap`` applies to vocabulary
    columns, and ``identity`` says it is the identity (no ``gene_remap``): columns copied as they are."""

    def __init__(self, reader: AtlasMemberReader, cmap: np.ndarray, offset: int, mapped: np.ndarray | None = None,
                 width: int | None = None, identity: bool = False, mapped_path: Path | None = None) -> None:
        self.reader, self.offset = reader, offset
        self.flat = reader.flat if mapped is None else (reader.flat[0], mapped)
        self.col_dtype = reader.col_dtype if mapped is None else np.dtype(mapped.dtype)
        self.width = reader.width if mapped is None else int(width)
        self.identity = identity
        self.path = reader.path if mapped_path is None else mapped_path  # where a bad column is reported
        self.cmap = np.ascontiguousarray(cmap, np.int32)
        self.drops = bool((self.cmap < 0).any())
        kept = self.cmap[self.cmap >= 0]
        monotone = bool(np.all(np.diff(kept) > 0))
        self.sort = not (monotone and reader.rows_sorted)  # only then can a row come out of order
        self.f16 = reader.data_dtype == np.float16  # numba has no float16: moved as its bits

    def fetch(self, plan: RowPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, columns, starts)`` to copy ``plan``'s rows from."""
        if self.flat is not None:
            data, cols = self.flat
            starts = plan.starts
        else:
            data, cols = self.reader.compact(plan)
            if len(data) != plan.nnz or len(cols) != plan.nnz:
                raise ArchiveError(f"{self.reader.path}: read {len(data)}/{len(cols)} values for spans of {plan.nnz}")
            starts = plan.in_ptr[:-1]
        return (data.view(np.uint16) if self.f16 else data), cols, starts


@dataclass
class _Pass:
    """One count/copy pass of a batch: the rows (``pos`` in the batch; None: all, in order) of the
    members that share dtypes, read through ``arrays`` (``ptrs``: their pointers, when made at open)."""

    f16: bool
    arrays: list
    ptrs: tuple | None
    pos: np.ndarray | None
    member: np.ndarray
    local: np.ndarray
    starts: np.ndarray
    lens: np.ndarray


@dataclass
class _Direct:
    """An atlas whose members are all read in place: their row pointers and, per group of members
    sharing dtypes, ``(float16?, arrays, member_pointers)``, made once at open (``group_of``: each
    member's group)."""

    row_ptrs: tuple
    n_data: np.ndarray
    group_of: np.ndarray
    parts: list


def _direct_route(members: list[_Member]) -> _Direct | None:
    """The one-pass route when every member is a local flat archive (else None). The parts' arrays
    keep the members' maps alive as long as the pointers to them are used."""
    if not members or any(m.flat is None for m in members):
        return None
    row_ptrs = _gather_remap.row_pointers([m.reader.row_ptr for m in members])
    if row_ptrs is None:
        return None
    groups: dict[tuple, list[int]] = {}
    for k, m in enumerate(members):
        data, cols = m.flat
        groups.setdefault((np.uint16 if m.f16 else data.dtype, cols.dtype, m.f16), []).append(k)
    parts, group_of = [], np.empty(len(members), np.int64)
    for g, ((dd, cd, f16), ks) in enumerate(groups.items()):
        arrays = [(np.empty(0, dd), np.empty(0, cd))] * len(members)
        for k in ks:
            data, cols = members[k].flat
            arrays[k] = (data.view(np.uint16) if f16 else data, cols)
        parts.append((f16, arrays, _gather_remap.member_pointers(arrays)))
        group_of[ks] = g
    return _Direct(row_ptrs, np.array([len(m.flat[0]) for m in members], np.int64), group_of, parts)


class AtlasBackend:
    """Batches of an atlas's rows (global row ids, any order, repeats allowed) on the CPU.

    ``width`` is the vocabulary's size (or ``options``' ``n_cols``/``gene_remap`` width: a
    ``gene_remap`` maps vocabulary columns, composed with each member's map). ``groups`` is
    ``(member names, int64 offsets)``: member ``k`` holds global rows ``offsets[k]:offsets[k+1]``.

    An atlas at a URL opens through :meth:`open_remote`; then ``remote`` is its
    :class:`~scdl_gpu.atlas.RemoteAtlas`, ``path`` its URL and ``files`` its ``Atlas`` (whose member
    paths are the members' local mirrors, where the loader finds obs).

    On open every member is opened and checked (its files, then against what ``atlas.json``
    recorded: rows, values, dtype, genes, checksum; a member replaced under the atlas is an
    ``ArchiveError`` naming it) and its column map is read and checked.
    """

    device = "cpu"
    stages = NO_STAGES

    def __init__(self, atlas: str | os.PathLike | Atlas, options: BatchOptions | None = None,
                 readers: dict[int, AtlasMemberReader] | None = None, remote: RemoteAtlas | None = None) -> None:
        self.atlas = atlas if isinstance(atlas, Atlas) else open_atlas(atlas)
        self.path = self.files = self.atlas.root  # files: where the loader finds obs (the members' blocks)
        self.remote = remote  # closed with the backend
        if remote is not None:
            self.path, self.files = remote.url, self.atlas
        self.options = opts = options or BatchOptions()
        self.n_rows = self.atlas.n_rows
        self.archive_cols = self.atlas.n_genes
        self.width = opts.output_width(self.archive_cols)
        remap = opts.gene_remap
        if remap is not None and len(remap) < self.archive_cols:
            raise ValueError(f"gene_remap has {len(remap)} entries but the atlas vocabulary has {self.archive_cols} genes")
        if remap is None and self.width < self.archive_cols:
            raise ValueError(f"n_cols={self.width} is narrower than the atlas's {self.archive_cols} genes; "
                             "drop genes with gene_remap instead")
        self.groups = (self.atlas.names, self.atlas.offsets.copy())
        self.members: list[_Member] = []
        self._readers: list[AtlasMemberReader] = []
        try:
            for i, m in enumerate(self.atlas.members):
                reader = (readers or {}).get(i) or open_member(self.atlas.member_path(i), m.name)
                self._readers.append(reader)
                problems = member_problems(self.atlas, i, reader.n_rows, reader.n_data, str(reader.data_dtype),
                                           reader.width)
                if problems:
                    raise ArchiveError(problems[0])
                self.members.append(self._member(i, reader, remote is None and i not in (readers or {})))
        except BaseException:
            self.close()
            raise
        members = self.members
        self._maps, self._map_at = _gather_remap.concat_maps([m.cmap for m in members], [m.col_dtype for m in members])
        self._widths = np.array([m.width for m in members], np.int64)
        self._drops = np.array([m.drops for m in members], np.bool_)
        self._identity = np.array([m.identity for m in members], np.bool_)
        self._sort = np.array([m.sort for m in members], np.bool_)
        self._f16 = np.array([m.f16 for m in members], np.bool_)
        self._paths = [m.path for m in members]
        self._offsets = np.ascontiguousarray(self.atlas.offsets, np.int64)
        self._direct = _direct_route(members)
        self._outputs = BufferPool()
        self._warm_up()
        if self._sort.any():
            log.info("atlas %s: rows of %d of its %d members are sorted per batch (their genes come in another "
                     "order than the vocabulary's, or their rows were stored unsorted)", self.path,
                     int(self._sort.sum()), len(members))

    def _member(self, i: int, reader: AtlasMemberReader, local: bool) -> _Member:
        """Member ``i`` as batches read it: through its mapped columns when the atlas has them and
        the member is a local flat archive (checked cheaply here: file, dtype, length), else its map."""
        offset = int(self.atlas.offsets[i])
        cmap = self.atlas.column_map(i)
        mapped = mapped_columns(self.atlas, i) if local and reader.flat is not None else None
        if mapped is None:
            return _Member(reader, self._compose(cmap), offset)
        vocab = np.arange(self.archive_cols, dtype=np.int32)
        return _Member(reader, self._compose(vocab), offset, mapped, self.archive_cols,
                       identity=self.options.gene_remap is None,
                       mapped_path=self.atlas.root / self.atlas.members[i].mapped_columns)

    def _compose(self, cmap: np.ndarray) -> np.ndarray:
        remap = self.options.gene_remap
        if remap is None:
            return cmap
        return np.where(cmap >= 0, remap[np.maximum(cmap, 0)], -1).astype(np.int32)

    @property
    def _plain(self) -> bool:
        """Only a cast: the pass writes the output itself (otherwise it stages float64 rows for the
        transforms' NumPy references, whose rounding is the GPU kernels')."""
        o = self.options
        return not (o.dense or o.log1p or o.target_sum is not None) and o.value_dtype != "float16"

    def _out_dtypes(self, nnz: int) -> tuple[str, str]:
        idx = self.options.index_dtype_for(self.width, nnz)
        return (self.options.value_dtype, idx) if self._plain else ("float64", idx)

    def _warm_up(self) -> None:
        seen = set()
        for m in self.members:
            key = (np.uint16 if m.f16 else m.reader.data_dtype, m.col_dtype)
            if key not in seen:
                seen.add(key)
                _gather_remap.warm_up(*key, [self._out_dtypes(0)])
        if self._direct is not None:  # compiles (or loads) the planner now, not in the first batch
            _gather_remap.plan_members(self._direct.row_ptrs, self._direct.n_data, self._offsets, np.zeros(0, np.int64))

    def batch(self, rows) -> Batch:
        opts, stages = self.options, self.stages
        with stages("read"):
            rows = as_row_ids(rows)
            values, cols, out_ptr = self._gather(rows)
        shape = (len(rows), self.width)
        if self._plain:
            with stages("dlpack"):
                return Batch(rows, shape, crow=host_tensor(out_ptr.astype(cols.dtype)), col=host_tensor(cols),
                             values=host_tensor(values), sorted=True)
        with stages("kernels"):
            out = assemble(reference, np, values, cols, out_ptr, opts, self.width, None)
        with stages("dlpack"):
            return to_batch(types.SimpleNamespace(rows=rows), shape, out, host_tensor, sorted=True)

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows' values and vocabulary columns, packed in request order, and their pointers.

        Each member's rows are planned (and, unless flat, read) apart; then members that share
        dtypes go through the count and copy passes together, one launch each. When every member
        is read in place, :meth:`_gather_direct` plans them all in one compiled pass instead."""
        if self._direct is not None:
            return self._gather_direct(rows)
        member, local = self.atlas.locate(rows)
        order = np.argsort(member, kind="stable") if np.any(member[1:] < member[:-1]) else np.arange(len(rows))
        grouped = member[order]
        runs = np.split(order, np.flatnonzero(grouped[1:] != grouped[:-1]) + 1) if len(rows) else []
        groups: dict[tuple, list] = {}
        for pos in runs:
            k = int(member[pos[0]])
            m = self.members[k]
            plan = plan_rows(m.reader.row_ptr, local[pos], m.reader.n_data, m.reader.path)
            data, cols, starts = m.fetch(plan)
            key = (data.dtype, cols.dtype, m.f16)
            groups.setdefault(key, []).append((k, pos, data, cols, starts, np.diff(plan.in_ptr)))
        passes = []
        for (dd, cd, f16), parts in groups.items():
            arrays = [(np.empty(0, dd), np.empty(0, cd))] * len(self.members)
            for k, _, data, cols, *_ in parts:
                arrays[k] = (data, cols)
            pos, mem, starts, lens = (np.concatenate(x) for x in zip(*[
                (p, np.full(len(p), k, np.int64), st, ln) for k, p, _, _, st, ln in parts]))
            passes.append(_Pass(f16, arrays, None, pos, mem, local[pos], starts, lens))
        return self._copy(len(rows), member, passes)

    def _gather_direct(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_gather` for atlases of local flat members: one compiled pass plans every row
        (member, span, checked), and the passes read the members through pointers made at open.
        Random batches of 64 rows over ten members spent ~125 us of their ~200 in per-member Python
        planning before (then 317k cells/s; 634-679k after)."""
        d = self._direct
        status, i, member, local, starts, lens = _gather_remap.plan_members(d.row_ptrs, d.n_data, self._offsets, rows)
        if status == 1:
            raise IndexError(f"row {int(rows[i])} out of range for an atlas of {self.n_rows} rows")
        if status == 2:
            r = self.members[int(member[i])].reader
            j = int(local[i])
            lo, hi = (int(r.row_ptr[j]), int(r.row_ptr[j + 1])) if j + 1 < len(r.row_ptr) else (-1, -1)
            raise span_error(r.path, j, lo, hi, r.n_data)
        if len(d.parts) == 1:  # one dtype group: every row in one pass, nothing to select
            f16, arrays, ptrs = d.parts[0]
            return self._copy(len(rows), member, [_Pass(f16, arrays, ptrs, None, member, local, starts, lens)])
        passes = []
        for g, (f16, arrays, ptrs) in enumerate(d.parts):
            pos = np.flatnonzero(d.group_of[member] == g)
            if len(pos):
                passes.append(_Pass(f16, arrays, ptrs, pos, member[pos], local[pos], starts[pos], lens[pos]))
        return self._copy(len(rows), member, passes)

    def _copy(self, n_rows: int, member: np.ndarray, passes: list["_Pass"]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Size every row (the count pass where a member drops genes), then run each pass's copy into
        the batch's outputs; ``pos`` None: the pass holds every row of the batch, in order."""
        out_len = np.zeros(n_rows, np.int64)
        for p in passes:
            kept = p.lens
            if self._drops[p.member].any():
                kept = _gather_remap.count_kept(p.arrays, p.member, p.starts, p.lens, self._widths, self._maps,
                                                self._map_at, archives=self._paths, rows=p.local, ptrs=p.ptrs)
            out_len[slice(None) if p.pos is None else p.pos] = kept
        out_ptr = np.zeros(n_rows + 1, np.int64)
        np.cumsum(out_len, out=out_ptr[1:])
        nnz = int(out_ptr[-1])
        vd, idt = self._out_dtypes(nnz)
        values, out_cols = self._outputs.empty(nnz, vd), self._outputs.empty(nnz, idt)
        # float16 members move as their bits (numba has no float16), cast where they landed
        halves = np.empty(nnz, np.uint16) if any(p.f16 for p in passes) else None
        for p in passes:
            dest = out_ptr[:-1] if p.pos is None else out_ptr[p.pos]
            _gather_remap.gather_remap(p.arrays, p.member, p.starts, p.lens, dest, self._widths, self._maps,
                                       self._map_at, self._drops, self._sort, halves if p.f16 else values, out_cols,
                                       identity=self._identity, archives=self._paths, rows=p.local, ptrs=p.ptrs)
        if halves is not None:
            where = np.repeat(self._f16[member], out_len)
            values[where] = halves[where].view(np.float16)
        return values, out_cols, out_ptr

    @classmethod
    def open_remote(cls, url: str, options: BatchOptions | None = None, storage_options: dict | None = None,
                    **remote_kwargs) -> "AtlasBackend":
        """The backend of the atlas at ``url``: its members read by range (``remote_kwargs`` go to
        :class:`~scdl_gpu.atlas.RemoteAtlas`: ``cache_bytes`` is the budget all members share)."""
        remote = RemoteAtlas(url, storage_options, **remote_kwargs)
        try:
            with remote.naming_url():
                readers = {i: AtlasMemberReader.from_spans(m.name, r.url, r, rows_sorted(r.local, r.n_rows, r.nnz))
                           for i, (m, r) in enumerate(zip(remote.atlas.members, remote.members))}
                return cls(remote.atlas, options, readers=readers, remote=remote)
        except BaseException:
            remote.close()
            raise

    def will_need(self, rows) -> None:
        """The loader's read-ahead hint (see ``Backend.will_need``), passed to each member its rows fall in
        (a compressed member starts decoding them); rows outside the atlas are ignored."""
        rows = np.asarray(rows, np.int64)
        rows = rows[(rows >= 0) & (rows < self.n_rows)]
        if not len(rows):
            return
        member, local = self.atlas.locate(rows)
        for k in np.unique(member):
            self.members[int(k)].reader.will_need(local[member == k])

    # The loader's hand-off hooks: nothing to order on the CPU.
    def producing(self):
        return contextlib.nullcontext()

    def ready_event(self):
        return None

    def handoff(self, ready, tensors) -> None:
        pass

    def close(self) -> None:
        for r in getattr(self, "_readers", []):
            r.close()
        if getattr(self, "remote", None) is not None:
            self.remote.close()

    def __enter__(self) -> "AtlasBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AtlasBackend({str(self.path)!r}, members={len(self.members)}, rows={self.n_rows}, width={self.width})"



__all__ = ["AtlasBackend", "AtlasMemberReader", "open_member"]
