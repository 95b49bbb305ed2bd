"""``scdl-gpu bench``: loader throughput over a grid of settings, against this machine's ceilings."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

from ._ceilings import bound, measure_ceilings
from ._measure import loader_stream, measure
from ._system import system_info

SCHEMA = "scdl-gpu-bench/1"


def archive_shape(archive: Path) -> dict:
    """Rows, genes, stored values and bytes per cell of the value and column files."""
    from ..archive import open_arrays

    a = open_arrays(archive)
    n = a.n_rows
    nbytes = a.data.nbytes + a.col_ptr.nbytes
    return dict(path=str(archive), n_rows=n, nnz=int(a.nnz), values_per_cell=a.nnz / n if n else 0.0,
                bytes_per_cell=nbytes / n if n else 0.0, dtypes={k: a.dtypes[k] for k in ("data.npy", "col_ptr.npy", "row_ptr.npy")})


def open_loader(archive: Path, device: str, shuffle: str, batch_size: int, prefetch: int, **kwargs):
    from ..loader import SingleCellLoader

    loader = SingleCellLoader(archive, batch_size=batch_size, shuffle=shuffle, device=device, prefetch=prefetch, **kwargs)
    if len(loader) == 0:
        loader.close()
        raise ValueError(f"{archive} has no rows to load")
    return loader


def loader_factory(archive: Path, device: str, shuffle: str, batch_size: int, prefetch: int, **kwargs):
    """A ``make_stream()`` for :func:`measure`: a fresh loader's batches, the loader closed with the stream."""

    def make():
        loader = open_loader(archive, device, shuffle, batch_size, prefetch, **kwargs)
        try:
            yield from loader_stream(loader)
        finally:
            loader.close()

    return make


class Ticker:
    """Shows a configuration's elapsed time on a progress bar (at most ~5 updates a second)."""

    def __init__(self, bar, label: str, seconds: float) -> None:
        self.bar, self.label, self.seconds = bar, label, seconds
        self.start = self.last = time.perf_counter()

    def __call__(self) -> None:
        now = time.perf_counter()
        if now - self.last >= 0.2:
            self.bar.set_postfix_str(f"{self.label}: {now - self.start:.0f}/{self.seconds:g} s", refresh=True)
            self.last = now


def run_bench(
    archive,
    *,
    device: str = "auto",
    shuffles: Sequence[str] = ("random", "block"),
    batch_sizes: Sequence[int] = (4096,),
    prefetch: Sequence[int] = (2,),
    seconds: float = 5.0,
    warmup: int = 3,
    ceilings: bool = True,
    cold: bool = True,
    progress: bool = False,
    **loader_kwargs,
) -> dict:
    """Measure the loader for every combination of ``shuffles`` x ``batch_sizes`` x ``prefetch``.

    Each result has cells/s and batches/s (delivered as torch tensors on the device, synchronised),
    time to first batch, host RSS and device memory peaks, and ``fraction_of_bound``: its bytes/s
    over the ceiling that bounds it (page-cache read on the CPU; the lesser of that and
    host-to-device copy on the GPU). Returns a JSON-ready dict (``schema`` ``scdl-gpu-bench/1``).
    """
    from ..backend import resolve_device

    archive = Path(archive)
    dev = resolve_device(device)
    shape = archive_shape(archive)
    ceil = measure_ceilings(archive, dev, cold=cold) if ceilings else {}
    bound_name, bound_bps = bound(ceil, dev)
    grid = list(itertools.product(shuffles, [int(b) for b in batch_sizes], [int(p) for p in prefetch]))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), unit="config", desc="bench")
    results = []
    try:
        for shuffle, bs, pf in grid:
            make = loader_factory(archive, dev, shuffle, bs, pf, **loader_kwargs)
            label = f"{shuffle}@{bs} prefetch {pf}"
            t = measure(make, dev, seconds, warmup, on_batch=Ticker(bar, label, seconds) if bar is not None else None)
            rec = dict(shuffle=shuffle, batch_size=bs, prefetch=pf, device=dev, **t.to_dict())
            rec["bytes_per_s"] = t.cells_per_s * shape["bytes_per_cell"]
            rec["fraction_of_bound"] = rec["bytes_per_s"] / bound_bps if bound_bps else None
            results.append(rec)
            if bar is not None:
                bar.set_postfix_str(f"{label}: {t.cells_per_s:,.0f} cells/s", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    bpc = shape["bytes_per_cell"]
    return dict(
        schema=SCHEMA, kind="bench", system=system_info(dev), archive=shape,
        settings=dict(seconds=seconds, warmup=warmup, loader_kwargs={k: repr(v) for k, v in loader_kwargs.items()}),
        ceilings=ceil,
        bound=dict(name=bound_name, bytes_per_s=bound_bps, cells_per_s=bound_bps / bpc if bound_bps and bpc else None),
        results=results,
    )
