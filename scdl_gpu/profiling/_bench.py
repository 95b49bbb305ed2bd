"""``scdl-gpu bench``: loader throughput over a grid of settings, against this machine's ceilings."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._ceilings import bound, drop_cached, measure_ceilings
from ._measure import batch_rows, loader_stream, measure, synchronize
from ._system import system_info

SCHEMA = "scdl-gpu-bench/1"
MAX_LOGGED = 2000  #: full batches whose rows are kept per configuration for the label-diversity figure


def batch_labels(archive: Path, column: str) -> np.ndarray:
    """Each archive row's label in obs ``column`` (integer codes for text columns)."""
    from ..archive import open_arrays
    from ..atlas import archives_of
    from ..loader._obs import ObsColumns

    try:
        n_rows = sum(open_arrays(a).n_rows for a in archives_of(archive))
        return ObsColumns(archive, [column], n_rows).values[column]
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None


def random_distinct(labels: np.ndarray, batch_size: int) -> float:
    """Expected distinct labels in a batch of ``batch_size`` rows drawn uniformly without replacement.

    Exact (hypergeometric): a label with ``m`` of the ``n`` rows is absent with probability
    ``C(n - m, b) / C(n, b)``; the expectation sums one minus that over labels.
    """
    from scipy.special import gammaln

    n, b = len(labels), min(int(batch_size), len(labels))
    m = np.unique(labels, return_counts=True)[1].astype(np.float64)
    rest = n - m
    absent = np.where(rest >= b, np.exp(gammaln(rest + 1) - gammaln(rest - b + 1) - gammaln(n + 1) + gammaln(n - b + 1)), 0.0)
    return float(np.sum(1.0 - absent))


def logging_rows(make, sink: list, batch_size: int):
    """``make`` whose stream also keeps (a CPU copy of) the rows of up to :data:`MAX_LOGGED` full batches."""

    def make_logged():
        stream = make()
        try:
            for batch in stream:
                rows = batch["rows"]
                if len(sink) < MAX_LOGGED and len(rows) == batch_size:
                    sink.append(rows.cpu().numpy().copy())
                yield batch
        finally:
            stream.close()

    return make_logged


def diversity(labels: np.ndarray, logged: list, batch_size: int) -> dict:
    """Mean distinct labels per logged batch, against the same figure for uniformly random batches."""
    seen = float(np.mean([len(np.unique(labels[r])) for r in logged])) if logged else None
    rand = random_distinct(labels, batch_size)
    return dict(distinct_labels=seen, random_distinct_labels=rand, diversity_of_random=seen / rand if seen and rand else None,
                diversity_batches=len(logged))


def archive_shape(archive: Path) -> dict:
    """Rows, genes, stored values and bytes per cell of the value and column files (of an atlas:
    its members' together; ``dtypes`` are the first member's, ``members`` counts them)."""
    from ..archive import open_arrays
    from ..atlas import archives_of, is_atlas

    parts = [open_arrays(p) for p in archives_of(archive)]
    a = parts[0]
    n, nnz = sum(p.n_rows for p in parts), sum(int(p.nnz) for p in parts)
    nbytes = sum(p.data.nbytes + p.col_ptr.nbytes for p in parts)
    out = dict(path=str(archive), n_rows=n, nnz=nnz, values_per_cell=nnz / n if n else 0.0,
               bytes_per_cell=nbytes / n if n else 0.0, dtypes={k: a.dtypes[k] for k in ("data.npy", "col_ptr.npy", "row_ptr.npy")})
    return out | ({"members": len(parts)} if is_atlas(archive) else {})


def open_loader(archive: Path, device: str, shuffle: str, batch_size: int, prefetch: int | None, residency: str = "auto",
                **kwargs):
    from ..loader import SingleCellLoader

    loader = SingleCellLoader(archive, batch_size=batch_size, shuffle=shuffle, device=device, prefetch=prefetch,
                              residency=residency, **kwargs)
    if len(loader) == 0:
        loader.close()
        raise ValueError(f"{archive} has no rows to load")
    return loader


def resolved_residency(loader) -> str | None:
    """Where a loader put the archive, if it says: a residency other than ``auto`` on the loader or its backend."""
    for obj in (getattr(loader, "backend", None), loader):
        r = getattr(obj, "residency", None)
        if isinstance(r, str) and r != "auto":
            return r
    return None


def loader_factory(archive: Path, device: str, shuffle: str, batch_size: int, prefetch: int, seen: dict | None = None,
                   **kwargs):
    """A ``make_stream()`` for :func:`measure`: a fresh loader's batches, the loader closed with the stream.
    ``seen["residency"]`` is set to where the loader put the archive (None if it does not say), and
    ``seen["prefetch"]`` to its prefetch depth (the loader's default when ``prefetch`` is None)."""

    def make():
        loader = open_loader(archive, device, shuffle, batch_size, prefetch, **kwargs)
        if seen is not None:
            seen["residency"] = resolved_residency(loader)
            seen["prefetch"] = getattr(loader, "prefetch", prefetch)
        try:
            yield from loader_stream(loader)
        finally:
            loader.close()

    return make


def dropping_cache(make, archive: Path):
    """``make`` that first drops every file of ``archive`` from the page cache (a cold run)."""

    def make_cold():
        drop_cached(p for p in sorted(Path(archive).rglob("*")) if p.is_file())
        return make()

    return make_cold


def warm_up(archive: Path, device: str, shuffle: str, batch_size: int, prefetch: int | None, **kwargs) -> float:
    """Seconds to the first batch of a throwaway loader: the process's one-off costs (the gather's
    compile or its cache load, CUDA kernel builds, first-use imports) plus one loader set-up, paid
    here so that no configuration's time to first batch carries them."""
    t0 = time.perf_counter()
    stream = loader_stream(open_loader(archive, device, shuffle, batch_size, prefetch, **kwargs))
    try:
        batch_rows(next(stream))
        synchronize(device)
    finally:
        stream.close()  # closes the loader
    return time.perf_counter() - t0


class Ticker:
    """Shows a configuration's elapsed time on a progress bar (at most ~5 updates a second).

    With ``advance``, the bar counts seconds of the timed window (its ``total`` is ``seconds``)
    and moves with them; otherwise only its label shows the time."""

    def __init__(self, bar, label: str, seconds: float, advance: bool = False) -> None:
        self.bar, self.label, self.seconds, self.advance = bar, label, seconds, advance
        self.start = self.last = time.perf_counter()
        self.shown = 0.0

    def __call__(self) -> None:
        now = time.perf_counter()
        if now - self.last >= 0.2:
            elapsed = now - self.start
            if self.advance:
                step = min(elapsed, self.seconds) - self.shown
                self.shown += step
                self.bar.update(step)
            self.bar.set_postfix_str(f"{self.label}: {elapsed:.0f}/{self.seconds:g} s", refresh=True)
            self.last = now


def run_bench(
    archive,
    *,
    device: str = "auto",
    shuffles: Sequence[str] = ("random", "block"),
    batch_sizes: Sequence[int] = (4096,),
    prefetch: Sequence[int | None] = (None,),
    residencies: Sequence[str] = ("auto",),
    seconds: float = 5.0,
    warmup: int = 3,
    ceilings: bool = True,
    cold: bool = True,
    progress: bool = False,
    diversity_column: str | None = None,
    cold_runs: bool = False,
    **loader_kwargs,
) -> dict:
    """Measure the loader for every combination of ``residencies`` x ``shuffles`` x ``batch_sizes`` x ``prefetch``.

    Each result has cells/s and batches/s (delivered as torch tensors on the device, synchronised),
    time to first batch (of a fresh loader, after the process's one-off costs: ``warmup_s`` is the
    first batch of a throwaway loader of the first configuration, taken before any), host RSS and device memory peaks, and ``fraction_of_bound``: its bytes/s
    over the ceiling that bounds it (``bound``: page-cache read on the CPU; on the GPU it depends on
    where the archive lives: HBM copy in device memory, host-to-device copy in pinned memory, the
    lesser of page-cache read and host-to-device copy when streamed). ``bounds`` maps each residency
    to its bound; ``bound`` is the first residency's. Returns a JSON-ready dict (``schema``
    ``scdl-gpu-bench/1``).

    With ``diversity_column`` (an obs column, such as a drug or cell-type label), each result
    also has ``distinct_labels``: the mean number of distinct labels per full batch, and
    ``random_distinct_labels``, the same expectation for uniformly random batches of that size,
    and their ratio ``diversity_of_random`` -- how well the order mixes the archive's groups
    (block order on an input-ordered archive keeps grouped rows together; on a shuffled
    archive it matches random order).

    With ``cold_runs``, every file of the archive is dropped from the page cache before each
    configuration's loader opens (``cold: true`` in its result), so its batches come from the disk
    until the run has read them once: compressed and flat archives compare where I/O is the bound.
    """
    from ..backend import resolve_device

    archive = Path(archive)
    dev = resolve_device(device)
    shape = archive_shape(archive)
    bpc = shape["bytes_per_cell"]
    labels = None if diversity_column is None else batch_labels(archive, diversity_column)
    ceil = measure_ceilings(archive, dev, cold=cold) if ceilings else {}

    def bound_of(residency: str) -> dict:
        name, bps = bound(ceil, dev, residency)
        return dict(name=name, bytes_per_s=bps, cells_per_s=bps / bpc if bps and bpc else None)

    grid = list(itertools.product(residencies, shuffles, [int(b) for b in batch_sizes],
                                  [None if p is None else int(p) for p in prefetch]))
    residency, shuffle, bs, pf = grid[0] if grid else ("auto", "block", 1, None)
    warm_s = warm_up(archive, dev, shuffle, bs, pf, residency=residency, **loader_kwargs) if grid else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), unit="config", desc="bench")
    results, bounds = [], {}
    try:
        for residency, shuffle, bs, pf in grid:
            seen: dict = {}
            make = loader_factory(archive, dev, shuffle, bs, pf, seen=seen, residency=residency, **loader_kwargs)
            if cold_runs:
                make = dropping_cache(make, archive)
            logged: list = []
            if labels is not None:
                make = logging_rows(make, logged, bs)
            label = f"{shuffle}@{bs} prefetch {'default' if pf is None else pf}" + (f" {residency}" if len(residencies) > 1 else "")
            t = measure(make, dev, seconds, warmup, on_batch=Ticker(bar, label, seconds) if bar is not None else None)
            used = seen.get("residency") or residency
            b = bounds.setdefault(residency, bound_of(used))
            rec = dict(shuffle=shuffle, batch_size=bs, prefetch=seen.get("prefetch", pf), device=dev, residency=residency,
                       residency_used=seen.get("residency"), cold=cold_runs, **t.to_dict())
            rec["bytes_per_s"] = t.cells_per_s * bpc
            rec["bound"] = b["name"]
            rec["fraction_of_bound"] = rec["bytes_per_s"] / b["bytes_per_s"] if b["bytes_per_s"] else None
            if labels is not None:
                rec.update(diversity_column=diversity_column, **diversity(labels, logged, bs))
            results.append(rec)
            if bar is not None:
                bar.set_postfix_str(f"{label}: {t.cells_per_s:,.0f} cells/s", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    first = bounds[residencies[0]] if results else bound_of(residencies[0] if residencies else "auto")
    return dict(
        schema=SCHEMA, kind="bench", system=system_info(dev), archive=shape,
        settings=dict(seconds=seconds, warmup=warmup, residencies=list(residencies), diversity_column=diversity_column,
                      loader_kwargs={k: repr(v) for k, v in loader_kwargs.items()}),
        ceilings=ceil, bound=first, bounds=bounds, results=results, warmup_s=warm_s,
    )
