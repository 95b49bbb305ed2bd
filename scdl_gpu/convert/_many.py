"""Many inputs into one archive: each input converted in parallel into a segment, appended in order.

Workers (threads or processes) each turn one input into a *segment* (its own row files inside
the partial archive), holding one row block at a time. The parent appends finished segments in
input order (an in-kernel file copy when dtypes agree) and writes the feature indices and header
once. With ``data_dtype="auto"`` every segment keeps its input's dtype until all values have
been seen; the appends then cast to the smallest lossless type.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..archive._concat import DEFAULT_CHUNK, row_chunks
from ..archive._dtypes import check_data_dtype, col_dtype_for
from ..archive._obsm import ObsmSpec, ObsmTarget
from ..archive._feature_index import are_dicts_equal
from ..archive._rowfiles import RowFiles, Segment
from ..archive._writer import ArchiveWriter
from ..errors import ConversionError
from ._cancel import cancel_scope, check_cancelled, interruptible
from ._convert import MAX_BLOCK_VALUES, check_neighbors_allowed, copy_neighbors
from ._copy import AUTO, ColumnMap, ValueCast, ValueStats, copy_matrix
from ._h5ad import features_of
from ._inputs import discover_inputs, open_source
from ._obsm import check_keys, copy_obsm, plan_obsm, probe_obsm
from ._shuffle import ShuffleInput, check_obs_columns, check_row_order, parse_memory, shuffle_rows, shuffled_obs
from ._source import table_names
from ._vocab import Alignment, align, build_vocabulary, gene_ids

NEIGHBORS = "neighbors"


@dataclass
class InputReport:
    """What became of one input."""

    path: str
    kind: str
    n_rows: int
    n_genes: int
    nnz: int = 0
    values_dropped: int = 0  # stored values of genes the vocabulary drops
    genes_matched: int | None = None
    genes_dropped: int | None = None
    genes_duplicate: int | None = None
    genes_missing: int | None = None
    rows_unsorted: int = 0  # rows whose columns (after alignment) were not strictly increasing as read
    rows_sorted: bool = False  # every row of this input is stored with strictly increasing columns


@dataclass
class ConversionReport:
    """The result of :func:`convert_many`: the archive and a line per input."""

    archive: Path
    n_rows: int
    n_vars: int
    nnz: int
    data_dtype: str
    seconds: float
    vocabulary_size: int | None = None
    inputs: list[InputReport] = field(default_factory=list)
    keep_column_order: bool = False
    rows_sorted: bool = False  # every archive row strictly increasing (``rows_sorted`` in scdl_gpu.json)
    shuffle_seed: int | None = None  # rows stored in the random order of this seed (None: input order)
    shuffle_buckets: int = 0  # bucket files the shuffle went through (memory budget / data size)

    @property
    def inputs_sorted(self) -> int:
        """Inputs with unsorted rows whose rows this conversion sorted."""
        return 0 if self.keep_column_order else sum(1 for r in self.inputs if r.rows_unsorted)

    def row_order(self) -> str:
        """One sentence on column order inside rows: what was sorted, or what was kept unsorted."""
        unsorted = [r for r in self.inputs if r.rows_unsorted]
        rows = sum(r.rows_unsorted for r in unsorted)
        if not unsorted:
            return "rows: every input's columns already in order"
        done = "kept as given" if self.keep_column_order else "sorted"
        tail = "" if self.rows_sorted else "; some rows repeat a column, so not all are strictly increasing"
        return f"rows: {rows:,} rows with unsorted columns in {len(unsorted)} of {len(self.inputs)} input(s), {done}{tail}"

    def alignment_table(self) -> str:
        """Per input: genes matched and dropped (only meaningful with a gene vocabulary)."""
        rows = [("input", "genes", "matched", "dropped", "duplicate", "values dropped")]
        for r in self.inputs:
            rows.append((r.path, r.n_genes, r.genes_matched, r.genes_dropped, r.genes_duplicate, r.values_dropped))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in rows)


@dataclass(frozen=True)
class _Probe:
    path: Path
    kind: str
    shape: tuple[int, int]
    dtype: str
    genes: np.ndarray | None  # ids matched against the vocabulary, when aligning
    has_neighbors: bool
    neighbor_keys: list[str]  # what the input has, for a message about a mistyped key
    obsm: dict[str, ObsmSpec] = field(default_factory=dict)  # the requested obsm keys it holds
    obsm_keys: list[str] = field(default_factory=list)  # every obsm key it holds


@dataclass(frozen=True)
class _Task:
    index: int
    path: Path
    segment: Path
    col_dtype: str
    data_dtype: str
    tolerance: float
    use_X_not_raw: bool
    genome: str | None
    columns: ColumnMap | None
    sort_rows: bool
    neighbor_key: str | None
    max_values: int
    max_rows: int
    want_var: bool
    var_name: str
    obs_name: str
    allow_nonfinite: bool = False
    row_offset: int = 0  # the input's first archive row
    obsm: tuple[tuple[str, ObsmTarget], ...] = ()  # obsm files it fills its rows of (NaN where it lacks the key)


@dataclass
class _Result:
    index: int
    rows: Segment
    neighbors: Segment | None
    stats: ValueStats
    rows_unsorted: int
    obs_features: dict
    obs_names: np.ndarray
    var_features: dict | None
    var_names: np.ndarray | None
    warnings: list = field(default_factory=list)  # (message, category) raised in a worker process


# -- worker side -------------------------------------------------------------------------------
_rows_done = None  # a shared counter the parent polls for the progress bar
_in_child = False  # True in worker processes: their warnings are sent back to the parent
_cancel = None  # in worker processes: the parent's cancel event (threads get theirs per task)


def _init_worker(counter, child: bool = False, cancel=None) -> None:
    global _rows_done, _in_child, _cancel
    _rows_done, _in_child, _cancel = counter, child, cancel
    if child:
        # A terminal's Ctrl-C reaches the whole process group: workers stop through the cancel
        # event the parent sets, at a block boundary, instead of dying mid-write.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _tick(n: int) -> None:
    if _rows_done is not None:
        with _rows_done.get_lock():
            _rows_done.value += n


class _NeighborSegment:
    """Neighbor rows of one input in a RowFiles: values float32, indices uint64 (offset later)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.files = RowFiles(directory, "float32", "uint64")

    def append_neighbor_rows(self, indptr, indices, values) -> None:
        self.files.append_rows(indptr, np.asarray(indices, np.uint64), np.asarray(values, np.float32))


def _convert_one(task: _Task, cancel=None) -> _Result:
    with cancel_scope(cancel if cancel is not None else _cancel):
        check_cancelled()  # a task that starts after a cancel does nothing
        if not _in_child:  # threads share the parent's warning machinery (catch_warnings is not thread-safe)
            return _convert(task)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _convert(task)
        result.warnings = [(str(w.message), w.category) for w in caught]
        return result


def _convert(task: _Task) -> _Result:
    with open_source(task.path, use_X_not_raw=task.use_X_not_raw, genome=task.genome) as src:
        obs = src.obs()
        var = src.var() if task.want_var else None
        cast = ValueCast(task.data_dtype, task.tolerance, allow_nonfinite=task.allow_nonfinite)
        rows = RowFiles(task.segment, cast.staging_dtype(src.matrix.dtype), task.col_dtype)
        sink = None
        try:
            unsorted = copy_matrix(
                src.matrix, rows, cast, task.max_values, task.max_rows, task.columns, on_rows=_tick, sort_rows=task.sort_rows
            )
            if task.neighbor_key is not None:
                sink = _NeighborSegment(task.segment / NEIGHBORS)
                copy_neighbors(src, task.neighbor_key, sink, task.max_values)
            for key, target in task.obsm:  # straight into the archive's file, at the input's rows
                copy_obsm(src.obsm(key), src.shape[0], target, task.row_offset, task.max_values)
        finally:  # the archive is fsynced once, at commit
            segment = rows.close(fsync=False)
            neighbors = None if sink is None else sink.files.close(fsync=False)
    return _Result(
        index=task.index,
        rows=segment,
        neighbors=neighbors,
        stats=cast.stats,
        rows_unsorted=unsorted,
        obs_features=features_of(obs, task.obs_name),
        obs_names=table_names(obs),
        var_features=None if var is None else features_of(var, task.var_name),
        var_names=None if var is None else table_names(var),
    )


# -- parent side -------------------------------------------------------------------------------
@interruptible
def convert_many(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    archive_path: str | os.PathLike,
    *,
    workers: int = 1,
    use_processes: bool = False,
    data_dtype: str | None = None,
    data_dtype_tolerance: float = 1e-08,
    use_X_not_raw: bool = False,
    genome: str | None = None,
    neighbor_key: str | None = None,
    allow_missing_neighbors: bool = False,
    gene_vocab: str | os.PathLike | Sequence[str] | None = None,
    gene_key: str | None = None,
    paginated_load_cutoff: float = 10_000,
    load_block_row_size: int = 1_000_000,
    var_feature_index_name: str = "var_feature_id",
    obs_feature_index_name: str = "obs_feature_id",
    overwrite: bool = False,
    max_block_values: int = MAX_BLOCK_VALUES,
    progress: bool = False,
    keep_column_order: bool = False,
    allow_nonfinite: bool = False,
    obsm_keys: Sequence[str] | None = None,
    row_order: str = "input",
    seed: int | None = None,
    max_memory: int | str | None = None,
) -> ConversionReport:
    """Convert ``.h5ad`` files, 10x HDF5 files and Matrix Market directories into one archive.

    Parameters
    ----------
    inputs
        Files and directories (searched recursively, see :func:`discover_inputs`). Rows are
        stored input after input, in that order.
    workers, use_processes
        Inputs converted at once, by threads or by processes. Each worker holds one row block
        (at most ``max_block_values`` stored values) at a time.
    data_dtype
        Stored value dtype for every input (default float32), or ``"auto"``: the smallest type
        that holds every value exactly (``uint8`` … ``uint64`` for non-negative integer counts,
        else float32 or float64).
    neighbor_key
        Also store each input's ``obsp[neighbor_key]`` graph (indices offset to archive rows).
        An input without it is a ``ConversionError`` naming the inputs and their obsp keys.
    allow_missing_neighbors
        Convert anyway when an input lacks ``neighbor_key``: no graph is stored, and a warning
        names the inputs without one.
    gene_vocab, gene_key
        Align columns onto one gene list: ``"union"``, ``"intersection"``, a file of feature ids
        (one per line) or a sequence of ids. Genes are matched by the var index (gene ids for
        10x inputs), or by the var column ``gene_key``. Without it every input keeps its own
        columns and var block, as upstream does.
    keep_column_order
        Store each row's entries in input order, as upstream does (byte parity with its
        conversion). By default every row is stored by increasing column (values follow;
        entries repeating a column keep their input order), which aligned inputs and many
        CELLxGENE files need, so that loading needs no per-batch sort. Sorting works on one
        row block at a time, inside the same memory bound.
    allow_nonfinite
        Store NaN and infinity in a float archive. By default they are an error naming the
        input and the first row holding one.
    obsm_keys
        Also keep these ``obsm`` arrays as ``obsm/<key>.npy`` (see :func:`convert_h5ad`), rows in
        input order. An input without a key gets NaN rows (a warning names it; integer arrays
        become float64 then); a key no input holds, or widths that differ, is an error.
    row_order, seed, max_memory
        ``"input"`` (default): rows input after input. ``"shuffle"``: every row of every input
        at a uniformly random position, the permutation fixed by ``seed`` (drawn and recorded
        when None) and independent of ``max_memory``, which bounds the shuffle's memory (bytes
        or a size such as ``"1GB"``, for the whole process; without it the shuffle adds at most 2 GiB): see :mod:`scdl_gpu.convert._shuffle`.
        Obs gains ``source_row`` (the row within its input) and, with several inputs,
        ``source_file``; row names and the neighbor graph follow their rows. Several inputs
        need one gene space (``gene_vocab``, or identical var tables). ``scdl_gpu.json``
        records the order and seed.
    paginated_load_cutoff, load_block_row_size
        Upstream's switches: inputs larger than the cutoff (MiB) are read in blocks of at most
        that many rows (blocks are always bounded by ``max_block_values`` too).

    The archive appears at ``archive_path`` only once complete; an existing one is refused
    unless ``overwrite``, and replaced in one atomic exchange otherwise. SIGINT and SIGTERM
    (when called from the main thread) stop every worker at its next row block: the partial
    output is removed and ``ConversionInterrupted`` (a ``KeyboardInterrupt``) is raised.
    """
    t0 = time.perf_counter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    paths = discover_inputs(inputs)
    if not paths:
        raise FileNotFoundError(
            f"No inputs found in {', '.join(map(str, inputs)) or '(nothing given)'}: "
            "expected .h5ad files, 10x .h5 files or Matrix Market directories"
        )
    if data_dtype != AUTO:
        data_dtype = check_data_dtype(data_dtype)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    obsm_keys = check_keys(obsm_keys)
    seed = check_row_order(row_order, seed)
    shuffle = seed is not None
    memory = parse_memory(max_memory)
    if shuffle:  # the workers' row blocks inside the budget too (blocks never change the archive)
        max_block_values = min(max_block_values, max(1 << 16, memory // (64 * workers)))
    if shuffle and obsm_keys:  # obsm is written in input order, by row ranges
        raise ValueError("obsm_keys cannot be combined with row_order='shuffle' yet: convert without one of them")
    if Path(archive_path).exists() and not overwrite:
        raise FileExistsError(f"Output archive already exists: {archive_path} (pass overwrite to replace it)")

    probes = [
        _probe(p, use_X_not_raw, genome, gene_key if gene_vocab is not None else False, neighbor_key, obsm_keys) for p in paths
    ]
    obsm = plan_obsm([(str(p.path), p.obsm, p.obsm_keys) for p in probes], obsm_keys)
    for key in obsm:
        lacking = [str(p.path) for p in probes if key not in p.obsm]
        if lacking:
            warnings.warn(f"obsm key {key!r} not found in {lacking}; their rows hold NaN.", UserWarning, stacklevel=2)
    alignments: list[Alignment | None] = [None] * len(probes)
    vocab = None
    if gene_vocab is not None:
        vocab = build_vocabulary(gene_vocab, [p.genes for p in probes])
        index = pd.Index(vocab)
        alignments = [align(p.genes, index) for p in probes]
        n_vars = len(vocab)
    else:
        n_vars = max(p.shape[1] for p in probes)
        if shuffle and len({p.shape[1] for p in probes}) > 1:
            raise ConversionError(_ONE_GENE_SPACE + f": the inputs have {sorted({p.shape[1] for p in probes})} genes")
    if neighbor_key is not None and not all(p.has_neighbors for p in probes):
        missing = [(p.path, p.neighbor_keys) for p in probes if not p.has_neighbors]
        check_neighbors_allowed(neighbor_key, missing, allow_missing_neighbors)
        neighbor_key = None

    reports = [
        InputReport(str(p.path), p.kind, p.shape[0], p.shape[1])
        if a is None
        else InputReport(str(p.path), p.kind, p.shape[0], p.shape[1], 0, 0, a.matched, a.dropped, a.duplicates, a.missing)
        for p, a in zip(probes, alignments)
    ]
    total_rows = sum(p.shape[0] for p in probes)
    with ArchiveWriter(
        archive_path,
        n_vars=n_vars,
        data_dtype=None if data_dtype == AUTO else data_dtype,
        col_dtype=col_dtype_for(n_vars),
        overwrite=overwrite,
    ) as w:
        targets = tuple((key, w.add_obsm(key, dtype, total_rows, width)) for key, (dtype, width) in obsm.items())
        offsets = np.cumsum([0] + [p.shape[0] for p in probes]).tolist()
        tasks = [
            _Task(
                index=k,
                path=p.path,
                segment=w.segment_dir(f"{k:06d}"),
                col_dtype=w.col_dtype,
                data_dtype=data_dtype,
                tolerance=data_dtype_tolerance,
                use_X_not_raw=use_X_not_raw,
                genome=genome,
                columns=None if a is None else a.columns,
                sort_rows=not keep_column_order,
                neighbor_key=neighbor_key,
                max_values=max_block_values,
                max_rows=_max_rows(p.path, paginated_load_cutoff, load_block_row_size),
                want_var=vocab is None,
                var_name=var_feature_index_name,
                obs_name=obs_feature_index_name,
                allow_nonfinite=allow_nonfinite,
                row_offset=offsets[k],
                obsm=targets,
            )
            for k, (p, a) in enumerate(zip(probes, alignments))
        ]
        stats = ValueStats()
        held: list[_Result] = []

        def ready(r: _Result) -> None:  # called in input order
            stats.merge(r.stats)
            reports[r.index].nnz = r.rows.nnz
            reports[r.index].values_dropped = r.stats.dropped
            reports[r.index].rows_unsorted = r.rows_unsorted
            reports[r.index].rows_sorted = r.rows.rows_sorted
            if data_dtype == AUTO or shuffle:
                held.append(r)  # the dtype is known only once every value has been seen; shuffles deal all rows at once
            else:
                _append(w, r, probes[r.index], vocab is not None)

        _run(tasks, workers, use_processes, total_rows, progress, ready)
        if data_dtype == AUTO:
            w.set_data_dtype(stats.smallest_dtype())
        if shuffle:
            buckets = _append_shuffled(w, held, probes, vocab is not None, seed, None if max_memory is None else memory)
        else:
            for r in held:
                _append(w, r, probes[r.index], vocab is not None)
        if vocab is not None:
            label = str(gene_vocab) if isinstance(gene_vocab, (str, os.PathLike)) else "gene vocabulary"
            w.add_var_block(total_rows, features_of(pd.DataFrame(index=pd.Index(vocab)), var_feature_index_name), label, names=vocab)
        out = w.commit()
    return ConversionReport(
        archive=out,
        n_rows=total_rows,
        n_vars=n_vars,
        nnz=int(sum(r.nnz for r in reports)),
        data_dtype=w.data_dtype,
        seconds=time.perf_counter() - t0,
        vocabulary_size=None if vocab is None else len(vocab),
        inputs=reports,
        keep_column_order=keep_column_order,
        rows_sorted=w.rows.rows_sorted,
        shuffle_seed=seed,
        shuffle_buckets=buckets if shuffle else 0,
    )


def _probe(path: Path, use_X_not_raw: bool, genome, gene_key, neighbor_key, obsm_keys: Sequence[str] = ()) -> _Probe:
    """Open an input just far enough to check it and learn its shape (and gene ids to align)."""
    try:
        with open_source(path, use_X_not_raw=use_X_not_raw, genome=genome) as src:
            genes = None if gene_key is False else gene_ids(src.var(), gene_key, str(path))
            has_neighbors = neighbor_key is not None and src.neighbors(neighbor_key) is not None
            obsm = probe_obsm(src, obsm_keys)
            keys = src.neighbor_keys() if neighbor_key is not None and not has_neighbors else []
            return _Probe(path, src.kind, src.shape, np.dtype(src.matrix.dtype).name, genes, has_neighbors, keys, obsm,
                          src.obsm_keys())
    except (ConversionError, FileNotFoundError):
        raise
    except Exception as e:
        raise ConversionError(f"{path}: {e}") from e


def _max_rows(path: Path, cutoff_mib: float, block_rows: int) -> int:
    if block_rows < 1:
        raise ValueError(f"load_block_row_size must be positive, got {block_rows}")
    size = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
    return int(block_rows) if size / 1024**2 >= cutoff_mib else 1 << 62


def _run(tasks: list[_Task], workers: int, use_processes: bool, total_rows: int, progress: bool, ready) -> None:
    """Run the tasks, calling ``ready(result)`` in task order as soon as each prefix is complete.

    Any failure (an interrupt too) cancels the tasks not yet started and sets the cancel event,
    which running tasks check between row blocks; it raises once they have stopped.
    """
    ctx = mp.get_context("spawn") if use_processes else None
    counter = (ctx or mp).Value("q", 0)
    cancel = ctx.Event() if use_processes else threading.Event()
    workers = min(workers, len(tasks))
    if use_processes:
        pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(counter, True, cancel))
    else:
        _init_worker(counter)
        pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="scdl-convert")
    bar = _progress_bar(progress, total_rows)
    results: dict[int, _Result] = {}
    next_k = 0
    try:
        with pool:
            futures = {pool.submit(_convert_one, t, None if use_processes else cancel): t for t in tasks}
            pending = set(futures)
            try:
                while pending:
                    done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                    if bar is not None:
                        bar.update(counter.value - bar.n)
                    for fut in done:
                        task = futures[fut]
                        try:
                            results[task.index] = fut.result()
                        except Exception as e:
                            raise _wrap(e, task.path) from e
                        for message, category in results[task.index].warnings:
                            warnings.warn(message, category, stacklevel=4)
                    while next_k in results:
                        ready(results.pop(next_k))
                        next_k += 1
            except BaseException:
                cancel.set()
                for fut in pending:
                    fut.cancel()
                raise
    finally:
        if bar is not None:
            bar.close()
        if not use_processes:
            _init_worker(None)


def _wrap(e: Exception, path: Path) -> Exception:
    """A ``ConversionError`` (or ``FileNotFoundError``) naming the input, whatever the worker raised."""
    msg = str(e) if str(path) in str(e) else f"{path}: {e}"
    if isinstance(e, FileNotFoundError):
        return e if msg == str(e) else FileNotFoundError(msg)
    if isinstance(e, ConversionError) and msg == str(e):
        return e
    return ConversionError(msg)


def _append(w: ArchiveWriter, r: _Result, probe: _Probe, aligned: bool) -> None:
    row_offset = w.n_rows
    if r.neighbors is not None:  # before the rows: removing the row segment removes this too
        ptr, idx, val = r.neighbors.arrays()
        for s, e in row_chunks(ptr, DEFAULT_CHUNK):
            lo, hi = int(ptr[s]), int(ptr[e])
            w.append_neighbor_rows(ptr[s : e + 1], idx[lo:hi] + np.uint64(row_offset), val[lo:hi])
        del ptr, idx, val
    w.append_segment(r.rows)
    label = str(probe.path)
    if not aligned:
        w.add_var_block(r.rows.n_rows, r.var_features, label, names=r.var_names)
    w.add_obs_block(r.obs_features, label, names=r.obs_names)


_ONE_GENE_SPACE = (
    "row_order='shuffle' puts rows of different inputs side by side, so they need one gene space: "
    "pass gene_vocab ('union', 'intersection' or a gene list) to align them"
)


def _append_shuffled(w: ArchiveWriter, results: list[_Result], probes: list[_Probe], aligned: bool, seed: int,
                     memory: int | None) -> int:
    """Every input's rows in the seeded random order, one obs block (and var block) for all; the bucket count."""
    if not aligned:
        first = results[0]
        for r in results[1:]:
            same_names = r.var_names is None or first.var_names is None or np.array_equal(r.var_names, first.var_names)
            if not (are_dicts_equal(r.var_features, first.var_features) and same_names):
                raise ConversionError(f"{_ONE_GENE_SPACE}: the var table of {probes[r.index].path} differs from that of {probes[0].path}")
    inputs = [ShuffleInput(str(probes[r.index].path), r.rows, r.neighbors, r.obs_features, r.obs_names) for r in results]
    for r in results:  # the inputs hold the obs tables now, and release them as they are permuted
        r.obs_features, r.obs_names = {}, None
    check_obs_columns(inputs)
    n_rows = sum(r.rows.n_rows for r in results)
    done = shuffle_rows(w, inputs, seed, memory)
    w.row_order = {"row_order": "shuffle", "shuffle_seed": seed}
    label = inputs[0].label if len(inputs) == 1 else None
    if not aligned:
        w.add_var_block(n_rows, results[0].var_features, inputs[0].label, names=results[0].var_names)
    features, names = shuffled_obs(inputs, done.order)
    w.add_obs_block(features, label, names=names)
    return done.buckets


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cells", unit_scale=True, desc="converting", smoothing=0.1)
