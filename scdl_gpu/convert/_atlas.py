"""Many inputs into an atlas: one member archive per input (or per row range of a large one), the manifest last.

Each *task* converts one input, or one row range of it, into ``DIR/members/<name>.scdl`` through
the single-input conversion (:func:`~._convert.write_source`): the member appears only once
complete, under its final name, so a task that fails or is killed leaves at most a hidden partial
directory, which the next writer of that member (a retry, a rerun) removes once its owner is gone.
Members are not gene-aligned; the manifest maps each one onto the vocabulary. Tasks run on
threads or processes here, or on Dask distributed (:mod:`._dask`); the manifest is written only
when every task has succeeded.

The output directory is in one of four states: missing or empty (a new atlas); an atlas
(``append`` adds members, ``overwrite`` deletes it and converts anew); what a failed run left, an
atlas directory with members but no manifest (``resume`` keeps the finished members and converts
the rest, ``overwrite`` starts anew); anything else is refused. ``resume`` also works with
``append``: members already on disk or in the manifest are not converted again.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..archive._atomic import clean_leftovers, remove_tree
from ..archive._dtypes import check_data_dtype
from ..archive._reader import open_arrays
from ..atlas._manifest import MANIFEST, MAPS_DIR, MEMBERS_DIR, Atlas, is_atlas, read_manifest
from ..errors import ConversionError
from ._cancel import cancel_scope, check_cancelled, interruptible
from ._convert import MAX_BLOCK_VALUES, check_neighbors_allowed, write_source
from ._copy import AUTO
from ._inputs import discover_inputs, open_source
from ._many import _max_rows, _probe, _wrap
from ._obsm import check_keys, plan_obsm
from ._shuffle import parse_memory

SUFFIX = ".scdl"


@dataclass(frozen=True)
class MemberOptions:
    """How every member is converted: the options of the single-input conversion."""

    data_dtype: str | None = None
    data_dtype_tolerance: float = 1e-08
    use_X_not_raw: bool = False
    genome: str | None = None
    neighbor_key: str | None = None
    var_feature_index_name: str = "var_feature_id"
    obs_feature_index_name: str = "obs_feature_id"
    keep_column_order: bool = False
    allow_nonfinite: bool = False
    obsm_keys: tuple[str, ...] = ()
    max_block_values: int = MAX_BLOCK_VALUES
    paginated_load_cutoff: float = 10_000
    load_block_row_size: int = 1_000_000


@dataclass(frozen=True)
class MemberTask:
    """One member to write: ``rows`` of ``source`` (absolute paths, valid on every worker)."""

    name: str
    source: str
    label: str  # the input as the user named it (recorded in the member's feature indices)
    member: str
    rows: tuple[int, int] | None  # None: the whole input
    n_rows: int
    options: MemberOptions
    neighbor_key: str | None = None  # options.neighbor_key, or None for an input allowed to lack it


@dataclass
class MemberResult:
    """A member written by a task: where, what, and which worker wrote it (host and pid)."""

    name: str
    member: str
    source: str
    rows: tuple[int, int] | None
    n_rows: int
    seconds: float
    host: str
    pid: int
    warnings: list = field(default_factory=list)  # (message, category) raised in a worker process


@dataclass
class AtlasConversionReport:
    """The result of :func:`convert_to_atlas`."""

    atlas: Path
    n_rows: int
    n_genes: int
    n_members: int  # members in the manifest, kept or earlier ones included
    vocab_mode: str
    seconds: float
    scheduler: str  # "threads", "processes", "local" (a LocalCluster) or the scheduler's address
    converted: list[MemberResult] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # members found finished on disk (resume) and not converted again


# -- a task, wherever it runs ---------------------------------------------------------------------
def convert_member(task: MemberTask, capture_warnings: bool = False) -> MemberResult:
    """Write one member; with ``capture_warnings`` (worker processes) the warnings travel in the result."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) if capture_warnings else contextlib.nullcontext([]) as record:
        if capture_warnings:
            warnings.simplefilter("always")
        o = task.options
        with open_source(task.source, use_X_not_raw=o.use_X_not_raw, genome=o.genome) as src:
            write_source(
                src, task.member, rows=task.rows, label=task.label, data_dtype=o.data_dtype,
                data_dtype_tolerance=o.data_dtype_tolerance, neighbor_key=task.neighbor_key,
                var_feature_index_name=o.var_feature_index_name, obs_feature_index_name=o.obs_feature_index_name,
                # a task run again (a retry, or Dask recomputing a lost result) replaces its own member
                overwrite=True, max_block_values=o.max_block_values,
                max_rows=_max_rows(Path(task.source), o.paginated_load_cutoff, o.load_block_row_size),
                keep_column_order=o.keep_column_order, allow_nonfinite=o.allow_nonfinite, obsm_keys=o.obsm_keys,
            )
    return MemberResult(task.name, task.member, task.label, task.rows, task.n_rows, time.perf_counter() - t0,
                        socket.gethostname(), os.getpid(), [(str(w.message), w.category) for w in record])


def clean_members(paths: Sequence[str]) -> int:
    """Remove the partial directories killed writers left beside these members (owners gone, this host)."""
    return sum(len(clean_leftovers(p)) for p in paths)


# -- planning -------------------------------------------------------------------------------------
def member_names(paths: Sequence[Path]) -> list[str]:
    """A name per input from its file name without suffix (a Matrix Market directory's own name);
    a name seen before gets ``_2``, ``_3`` ..."""
    out: list[str] = []
    for p in paths:
        base = p.name if p.is_dir() else p.stem
        name, k = base, 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        out.append(name)
    return out


def row_ranges(n_rows: int, member_rows: int | None) -> list[tuple[int, int] | None]:
    """``[None]`` (the whole input) unless ``member_rows`` cuts it into ranges of that many rows."""
    if member_rows is None or n_rows <= member_rows:
        return [None]
    return [(s, min(n_rows, s + member_rows)) for s in range(0, n_rows, member_rows)]


def _state(root: Path) -> str:
    """``new``, ``atlas``, ``failed`` (members but no manifest) or ``other``."""
    from ..atlas._create import LOCK  # here: the atlas package imports the conversion's vocabulary

    if not root.exists():
        return "new"
    if not root.is_dir():
        return "other"
    if is_atlas(root):
        return "atlas"
    names = set(os.listdir(root))
    if names <= {LOCK}:
        return "new"
    return "failed" if names <= {MEMBERS_DIR, MAPS_DIR, LOCK} else "other"


def _prepare(root: Path, append: bool, resume: bool, overwrite: bool) -> tuple[Atlas | None, bool]:
    """Check the output directory against the mode: ``(the atlas to append to, whether to delete
    what is there first)``. Nothing is deleted here: the inputs are checked before that."""
    if overwrite and (append or resume):
        raise ValueError(f"overwrite and {'append' if append else 'resume'} exclude each other")
    state = _state(root)
    if state == "other":
        raise FileExistsError(f"{root} exists and is not an atlas directory; choose another output")
    if state == "atlas":
        if overwrite:
            return None, True
        if not append:
            raise FileExistsError(f"{root} is already an atlas; pass append=True to add members, or pass overwrite=True to convert anew")
        return read_manifest(root), False
    if append:
        raise FileNotFoundError(f"{root} is not an atlas to append to (no {MANIFEST})")
    if state == "failed" and not (resume or overwrite):
        raise FileExistsError(
            f"{root} holds the members of a conversion that did not finish (no {MANIFEST}); pass resume=True to keep "
            "them and convert the rest, or pass overwrite=True to convert anew"
        )
    return None, state == "failed" and overwrite


def _delete_atlas(root: Path) -> None:
    """The manifest first (the directory stops being an atlas at once), then members and maps."""
    (root / MANIFEST).unlink(missing_ok=True)
    for sub in (MEMBERS_DIR, MAPS_DIR):
        remove_tree(root / sub)


def _kept(task: MemberTask) -> bool:
    """Whether a resumed run finds ``task``'s member finished on disk (it appears only once complete)."""
    if not os.path.lexists(task.member):
        return False
    try:
        n = open_arrays(task.member).n_rows
    except Exception as e:
        raise ConversionError(f"{task.member}: a member left by an earlier run does not open ({e}); delete it to convert it again") from e
    if n != task.n_rows:
        raise ConversionError(
            f"{task.member} holds {n} rows but {task.label} gives this member {task.n_rows}; delete it to convert it again "
            "(a resumed run needs the inputs and member_rows of the first)"
        )
    return True


# -- running the tasks here -----------------------------------------------------------------------
_pool_cancel = None  # in worker processes: the parent's cancel event


def _init_process(cancel) -> None:
    global _pool_cancel
    _pool_cancel = cancel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's cancel event stops us at a block boundary


def _pool_task(task: MemberTask, cancel=None) -> MemberResult:
    with cancel_scope(cancel if cancel is not None else _pool_cancel):
        check_cancelled()  # a task that starts after a cancel does nothing
        return convert_member(task, capture_warnings=cancel is None)


def run_local(tasks: Sequence[MemberTask], workers: int, use_processes: bool,
              done: Callable[[MemberResult], None]) -> list[tuple[MemberTask, BaseException]]:
    """Run every task on threads or processes; ``done(result)`` as each finishes. Returns the failures.

    A failed task does not stop the others (their members stay for a resumed run); an interrupt
    sets the cancel event every task checks between row blocks, and raises once they stopped.
    """
    ctx = mp.get_context("spawn") if use_processes else None
    cancel = ctx.Event() if use_processes else threading.Event()
    workers = max(1, min(workers, len(tasks)))
    if use_processes:
        pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_process, initargs=(cancel,))
    else:
        pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="scdl-atlas")
    failures = []
    with pool:
        futures = {pool.submit(_pool_task, t, None if use_processes else cancel): t for t in tasks}
        try:
            for fut in cf.as_completed(futures):
                try:
                    done(fut.result())
                except Exception as e:
                    failures.append((futures[fut], e))
        except BaseException:
            cancel.set()
            for fut in futures:
                fut.cancel()
            raise
    return failures


# -- the whole conversion -------------------------------------------------------------------------
@interruptible
def convert_to_atlas(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    atlas_path: str | os.PathLike,
    *,
    workers: int = 1,
    use_processes: bool = False,
    scheduler=None,
    member_rows: int | None = None,
    gene_vocab: str | os.PathLike | Sequence[str] | None = None,
    gene_key: str | None = None,
    append: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    max_memory: int | str | None = None,
    progress: bool = False,
    data_dtype: str | None = None,
    data_dtype_tolerance: float = 1e-08,
    use_X_not_raw: bool = False,
    genome: str | None = None,
    neighbor_key: str | None = None,
    allow_missing_neighbors: bool = False,
    var_feature_index_name: str = "var_feature_id",
    obs_feature_index_name: str = "obs_feature_id",
    keep_column_order: bool = False,
    allow_nonfinite: bool = False,
    obsm_keys: Sequence[str] | None = None,
    max_block_values: int = MAX_BLOCK_VALUES,
    paginated_load_cutoff: float = 10_000,
    load_block_row_size: int = 1_000_000,
) -> AtlasConversionReport:
    """Convert inputs into an atlas at ``atlas_path``: one member archive per input, then the manifest.

    Parameters
    ----------
    inputs
        Files and directories, found as :func:`~scdl_gpu.convert_many` finds them. Member ``k``
        is named after its input's file name without suffix (``plate1.h5ad`` -> ``plate1``, a
        repeated name gets ``_2``) and written to ``members/<name>.scdl``.
    workers, use_processes
        Members converted at once, by threads or processes (each holds one row block at a time).
    scheduler
        ``None``: threads or processes here. ``"local"``: a Dask ``LocalCluster`` of ``workers``
        processes with one thread each (memory limit per worker ``max_memory``). An address
        (``"tcp://host:8786"``) or a Dask cluster object (``SLURMCluster``, ``KubeCluster``: its
        ``scheduler_address``): that cluster, whose workers must see the inputs and
        ``atlas_path`` at the same paths (a shared filesystem). Needs ``dask[distributed]``.
    member_rows
        Cut inputs of more rows into members of this many (``<name>-<k>``, the last one
        shorter); only their rows are read (column-major inputs are read whole for each range).
        An input with a neighbor graph cannot be cut.
    gene_vocab, gene_key
        The atlas vocabulary (``"union"`` by default, ``"intersection"``, a gene list file or
        ids) and the var column genes are matched by: see :func:`~scdl_gpu.atlas.create_atlas`.
        Members keep their own columns. With ``append`` the atlas keeps its vocabulary.
    append, resume, overwrite
        What to do with an existing ``atlas_path`` (see the module docs): add members to the
        atlas; keep the members a failed run finished (they are checked by row count, and must
        come from the same inputs and options); delete the atlas or the leftovers first.
    max_memory
        With ``scheduler="local"``: the memory limit of each Dask worker (bytes or ``"4GB"``).
    data_dtype, data_dtype_tolerance, use_X_not_raw, genome, neighbor_key, allow_missing_neighbors,
    keep_column_order, allow_nonfinite, obsm_keys, max_block_values, paginated_load_cutoff, load_block_row_size
        As for :func:`~scdl_gpu.convert_h5ad`, per member (``data_dtype="auto"`` chooses each
        member's dtype on its own); an input without one of ``obsm_keys`` is an error.

    A failed task does not stop the others. When any failed, no manifest is written, the finished
    members stay (a rerun with ``resume=True`` keeps them) and a ``ConversionError`` names every
    failed input; no partial member is left (a killed task's is removed by the retry or the rerun).
    """
    t0 = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    paths = discover_inputs(inputs)
    if not paths:
        raise FileNotFoundError(f"No inputs found in {', '.join(map(str, inputs)) or '(nothing given)'}")
    if data_dtype != AUTO:
        data_dtype = check_data_dtype(data_dtype)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if member_rows is not None and member_rows < 1:
        raise ValueError(f"member_rows must be at least 1, got {member_rows}")
    if append and (gene_vocab is not None or gene_key is not None):
        raise ValueError("an atlas keeps its gene vocabulary: gene_vocab and gene_key cannot be given with append")
    if scheduler is not None:
        from ._dask import check_scheduler

        scheduler = getattr(scheduler, "scheduler_address", scheduler)  # a cluster object
        check_scheduler(scheduler)
    memory = parse_memory(max_memory) if max_memory is not None else None
    obsm_keys = tuple(check_keys(obsm_keys))
    root = Path(atlas_path)
    old, delete = _prepare(root, append, resume, overwrite)

    probes = [_probe(p, use_X_not_raw, genome, False, neighbor_key, obsm_keys) for p in paths]
    for p in probes:  # an input must hold every requested key, as a single-input conversion needs
        plan_obsm([(str(p.path), p.obsm, p.obsm_keys)], obsm_keys)
    lacking = [(p.path, p.neighbor_keys) for p in probes if neighbor_key is not None and not p.has_neighbors]
    if lacking:
        check_neighbors_allowed(neighbor_key, lacking, allow_missing_neighbors)
    options = MemberOptions(
        data_dtype, data_dtype_tolerance, use_X_not_raw, genome, neighbor_key, var_feature_index_name,
        obs_feature_index_name, keep_column_order, allow_nonfinite, obsm_keys, max_block_values,
        paginated_load_cutoff, load_block_row_size,
    )
    if delete:
        _delete_atlas(root)
    tasks = _plan(root, probes, member_names(paths), member_rows, options)
    existing = set(old.names) if old is not None else set()
    clash = sorted(t.name for t in tasks if t.name in existing)
    if clash and not resume:
        raise FileExistsError(f"{root} already has members named {clash}; rename the inputs (or pass resume=True to skip them)")
    todo, kept = [], []
    for t in tasks:
        if t.name in existing:
            continue  # resume of an append: the manifest lists it already
        (kept if resume and _kept(t) else todo).append(t)

    label = "threads" if scheduler is None and not use_processes else "processes" if scheduler is None else scheduler
    results: list[MemberResult] = []
    bar = _progress(progress, sum(t.n_rows for t in todo))

    def done(r: MemberResult) -> None:
        results.append(r)
        for message, category in r.warnings:
            warnings.warn(message, category, stacklevel=3)
        if bar is not None:
            bar.update(r.n_rows)

    try:
        if not todo:
            failures = []
        elif scheduler is None:
            failures = run_local(todo, workers, use_processes, done)
        else:
            from ._dask import run_dask

            failures = run_dask(todo, scheduler, workers, memory, done)
    finally:
        if bar is not None:
            bar.close()
        clean_members([t.member for t in todo])  # what killed writers on this host left
    if failures:
        raise _failed(root, failures, len(todo))

    new = [t for t in tasks if t.name not in existing]
    from ..atlas import add_members, create_atlas

    if old is not None:
        atlas = add_members(root, [t.member for t in new], names=[t.name for t in new])
    else:
        atlas = create_atlas(root, [t.member for t in new], gene_vocab=gene_vocab or "union", gene_key=gene_key,
                             names=[t.name for t in new])
    order = {t.name: k for k, t in enumerate(tasks)}
    results.sort(key=lambda r: order[r.name])
    return AtlasConversionReport(
        atlas=root, n_rows=atlas.n_rows, n_genes=atlas.n_genes, n_members=len(atlas.members), vocab_mode=atlas.vocab_mode,
        seconds=time.perf_counter() - t0, scheduler=label, converted=results, kept=[t.name for t in kept],
    )


def _plan(root: Path, probes, names: list[str], member_rows: int | None, options: MemberOptions) -> list[MemberTask]:
    members = (root / MEMBERS_DIR).absolute()
    tasks = []
    for p, name in zip(probes, names):
        ranges = row_ranges(p.shape[0], member_rows)
        width = len(str(len(ranges) - 1))
        for k, rows in enumerate(ranges):
            if rows is not None and options.neighbor_key is not None and p.has_neighbors:
                raise ConversionError(
                    f"{p.path}: its neighbor graph obsp[{options.neighbor_key!r}] links cells across the whole input, so "
                    f"it cannot be cut into members of {member_rows} rows; convert without member_rows or without the graph"
                )
            member_name = name if rows is None else f"{name}-{k:0{width}d}"
            n = p.shape[0] if rows is None else rows[1] - rows[0]
            tasks.append(MemberTask(
                member_name, str(p.path.absolute()), str(p.path), str(members / f"{member_name}{SUFFIX}"), rows, n, options,
                options.neighbor_key if p.has_neighbors else None,
            ))
    seen: set[str] = set()
    repeated = sorted({t.name for t in tasks if t.name in seen or seen.add(t.name)})
    if repeated:
        raise ValueError(f"member names repeat: {repeated}; rename the inputs")
    (root / MEMBERS_DIR).mkdir(parents=True, exist_ok=True)
    return tasks


def _failed(root: Path, failures: list[tuple[MemberTask, BaseException]], n_tasks: int) -> ConversionError:
    lines = [str(_wrap(e, Path(t.label))) if not isinstance(e, KeyboardInterrupt) else f"{t.label}: interrupted"
             for t, e in failures]
    where = ", ".join(sorted({t.label for t, _ in failures}))
    return ConversionError(
        f"{len(failures)} of {n_tasks} member conversions failed ({where}); {root} has no manifest yet. The finished "
        f"members stay: fix the inputs and run again (pass resume=True) to convert only the rest.\n" + "\n".join(lines)
    )


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cells", unit_scale=True, desc="converting members", smoothing=0.1)
