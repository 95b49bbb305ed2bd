"""Loader throughput under one protocol: scdl_gpu and its peers as full-width torch CSR batches, against a ceiling.

One script for what ``bench_backend.py``, ``bench_loader.py``, ``bench_profiling.py`` and
``compare_peers.py`` measured apart: every runner is timed by :func:`scdl_gpu.profiling.measure`,
the routine behind ``scdl-gpu bench`` (the stream's set-up and first batch recorded but untimed,
``--warmup`` untimed batches, then cells/s over ``--seconds``; the device synchronised; host memory
peaks), in one run, ``--repeats`` interleaved repeats, the median reported (every repeat in the
JSON). The page cache is warmed by a plain read of every file involved before each repeat, and of
the files a measurement reads just before it (a shared machine may have evicted them meanwhile).

Archives, made once in ``--workdir`` from the same h5ad inputs (by default the 200,000-cell
Tahoe-like directory of ``bench_convert_dir.py``: 10 files x 20,000 cells, 62,710 genes, ~1,450
values per cell, generated if missing), so every archive holds the same cells:

* ``scdl_gpu``: ``convert_many(inputs, use_X_not_raw=True, data_dtype="auto")`` (uint16 values and columns);
* ``bionemo``: bionemo-scdl's own ``convert_h5ad_to_scdl --use-X-not-raw`` (float32 values, uint16 columns);
* ``aligned``: as ``scdl_gpu`` with ``gene_vocab=`` a file of the inputs' gene ids in a seeded random
  order, so every column is remapped (rows are sorted at conversion).

Runners (:data:`RUNNERS`), each a stream of ``(B, n_genes)`` torch sparse CSR batches:

* ``scdl_gpu``: ``SingleCellLoader(archive, batch_size=B, shuffle=order, device=DEVICE)``, the
  loader's defaults otherwise (``--prefetch`` passes one), on every archive, each of ``--orders``;
* ``bionemo-scdl`` 0.1.3: ``DataLoader(SingleCellMemMapDataset(copy of the archive), batch_size=B,
  shuffle=True, collate_fn=collate_sparse_matrix_batch, num_workers=0)`` on every archive (it maps
  archives read-write, so it gets copies); its ``max column + 1`` wide batches are re-wrapped to full width;
* ``AnnLoader`` (anndata) over the backed inputs in one ``AnnCollection`` (shuffle, ``num_workers=0``),
  each batch's scipy CSR wrapped without densifying; ``scDataset`` block mode over the same
  collection (``BlockShuffling(B // 64)``, one sorted view per fetch); both timed ``--peer-seconds``;
* ``annbatch``: needs Python >= 3.12 and has no runner yet: reported as not measured.

Ceiling: a ``memcpy`` (``np.copyto``, 64 MiB chunks) of each archive's page-cached value and column
bytes, once per repeat, the best repeat, as cells/s (bytes/s over the archive's bytes per cell); on
a GPU the ``scdl-gpu bench`` bound of the residency the loader chose. A target that compares two
loaders (the aligned archive against the unaligned one, scdl_gpu against bionemo-scdl) takes the
ratio inside each repeat and the median of those: this machine's speed drifts between phases of
one run, and the two are measured one after the other, so a repeat's ratio spans seconds, not
minutes. As many threads as the gather's copying at once are measured too (the memory bandwidth they
share; for context, not a target). (Pairing the memcpy the same way was tried: a memcpy measured just after a loader ran
0.5-3.4M cells/s within one run, too unsteady to divide by.) ``scdl-gpu bench``'s ceilings
(page-cache read, cold read, ...) are recorded beside it. Shuffle quality: distinct ``--label``
values (plates, contiguous in the inputs) per batch. :data:`TARGETS` are evaluated and printed as
met or not met. ``--profile SHUFFLE:BATCH`` also runs ``scdl-gpu profile`` (ms per stage) on the
``scdl_gpu`` archive. Example (``make bench-loader``, about 5 minutes on 2 cores once the archives exist)::

    PYTHONPATH=. python benchmarks/bench_loader.py --repeats 3 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import torch

try:  # imported as benchmarks.bench_loader
    from . import _report
    from .bench_convert import warm_read
except ImportError:  # run as a script
    import _report
    from bench_convert import warm_read

ARCHIVES = ("scdl_gpu", "bionemo", "aligned")
PRIMARY = "scdl_gpu"  #: the archive the aligned one is compared with and the profile runs on
DEFAULT_INPUTS = "dir_10x20000_62710_nnz1450"
DEFAULT_STEM = "tahoe200k"  #: the default inputs' archives: tahoe200k.scdl, tahoe200k.bionemo.scdl, ...
MAX_LOGGED = 5000  #: batches whose rows or labels are kept per measurement, for the shuffle quality
CHUNK = 64 << 20

#: (name, archive or None for each ceiling-bounded archive, order, batch, kind, threshold): ``ceiling``:
#: cells/s >= threshold x that archive's ceiling; ``bionemo``: >= threshold x bionemo-scdl's DataLoader on
#: the same archive and batch size; ``aligned``: the aligned archive >= threshold x the scdl_gpu one
#: (within 10%; faster counts as met).
TARGETS = (
    ("random4096_of_ceiling", None, "random", 4096, "ceiling", 0.60),
    ("random64_of_ceiling", None, "random", 64, "ceiling", 0.40),
    ("random64_vs_bionemo", None, "random", 64, "bionemo", 8.0),
    ("block4096_of_ceiling", None, "block", 4096, "ceiling", 0.80),
    ("aligned_block4096", "aligned", "block", 4096, "aligned", 0.90),
    ("aligned_random4096", "aligned", "random", 4096, "aligned", 0.90),
)


def _quiet() -> None:
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    warnings.filterwarnings("ignore", message=".*AnnLoader.*")  # deprecated in anndata 0.12.17
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Observation names are not unique")  # same barcodes in several inputs


# -- data -----------------------------------------------------------------------------------------------
def default_inputs(workdir: Path) -> Path:
    inputs = workdir / DEFAULT_INPUTS
    if not inputs.exists():
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_convert_dir import make_inputs

        make_inputs(inputs, 10, 20_000, 62_710, 1450)
    return inputs


def _build(path: Path, write) -> Path:
    """``write(partial_path)`` once; the archive appears under ``path`` only when complete."""
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        t0 = time.perf_counter()
        write(partial)
        partial.rename(path)
        print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def gene_ids(inputs: Path) -> list[str]:
    import anndata as ad

    from scdl_gpu.convert import discover_inputs

    return list(ad.read_h5ad(discover_inputs([inputs])[0], backed="r").var_names)


def build_archive(kind: str, inputs: Path, workdir: Path, seed: int = 0) -> Path:
    """One of :data:`ARCHIVES` converted from ``inputs`` (made once, kept in ``workdir``)."""
    from scdl_gpu.convert import convert_many

    stem = DEFAULT_STEM if inputs.name == DEFAULT_INPUTS else inputs.name
    if kind == "scdl_gpu":
        return _build(workdir / f"{stem}.scdl", lambda out: convert_many(
            [inputs], out, use_X_not_raw=True, data_dtype="auto", workers=2))
    if kind == "aligned":
        vocab = workdir / f"{stem}.aligned.genes.txt"  # the inputs' genes in another order: every column remaps
        genes = gene_ids(inputs)
        vocab.write_text("\n".join(np.random.default_rng(seed).permutation(genes)) + "\n")
        return _build(workdir / f"{stem}.aligned.scdl", lambda out: convert_many(
            [inputs], out, use_X_not_raw=True, data_dtype="auto", workers=2, gene_vocab=vocab))
    if kind == "bionemo":  # its CLI as a user runs it, in a child: its peak memory stays out of this process
        cmd = [sys.executable, "-m", "bionemo.scdl.scripts.convert_h5ad_to_scdl", "--data-path", str(inputs),
               "--save-path", "OUT", "--use-X-not-raw"]
        return _build(workdir / f"{stem}.bionemo.scdl", lambda out: subprocess.run(
            [str(out) if c == "OUT" else c for c in cmd], check=True, capture_output=True))
    raise ValueError(f"unknown archive kind {kind!r}")


def default_archive(workdir: Path) -> Path:
    """The 200,000-cell Tahoe-like uint16 archive (inputs generated and converted when missing)."""
    return build_archive("scdl_gpu", default_inputs(workdir), workdir)


def bionemo_copy(archive: Path, workdir: Path) -> Path:
    """bionemo-scdl maps archives read-write: it gets its own copy (made once, kept in the workdir)."""
    copy = workdir / f"bionemo_copy_{archive.name}"
    marker = copy / ".complete"
    if not marker.exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(archive, copy)
        marker.touch()
    return copy


def archive_info(archive: Path) -> dict:
    from scdl_gpu.archive import open_arrays
    from scdl_gpu.profiling._bench import archive_shape

    info = archive_shape(archive)
    a = open_arrays(archive)
    info["arrays"] = a  # not written out: the memcpy ceiling copies out of these maps
    return info


def archive_labels(archive: Path, label: str, n_rows: int) -> np.ndarray | None:
    from scdl_gpu.loader._obs import ObsColumns

    try:
        return ObsColumns(archive, [label], n_rows).values[label]
    except (KeyError, ValueError, OSError):
        return None


def _files_read(m, archives: dict, workdir: Path, inputs) -> list[Path]:
    """The files measurement ``m`` reads: its archive's (bionemo-scdl: its own copy's), or the inputs."""
    if RUNNERS[m.runner].reads == "inputs":
        from scdl_gpu.convert import discover_inputs

        return list(discover_inputs([inputs]))
    root = archives[m.archive] if m.runner != "bionemo-scdl" else bionemo_copy(archives[m.archive], workdir)
    return [root / f for f in ("data.npy", "col_ptr.npy", "row_ptr.npy")]


def warm_page_cache(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        for f in [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()):
            warm_read(f)
    return time.perf_counter() - t0


def memcpy_ceiling(arrays, bytes_per_cell: float, seconds: float, threads: int = 1) -> dict:
    """Bytes/s of ``np.copyto`` out of the archive's mapped value and column files, as cells/s.
    ``threads`` > 1: that many threads copy at once (``np.copyto`` releases the GIL), each its own
    buffers and offsets, and the bytes/s are their sum: how much more a second core gets."""
    srcs = [arrays.data.view(np.ndarray), arrays.col_ptr.view(np.ndarray)]
    t0 = time.perf_counter()

    def copy(seed: int) -> int:
        bufs = [np.empty(min(CHUNK // s.itemsize, len(s)), s.dtype) for s in srcs]
        rng = np.random.default_rng(seed)
        total, n = 0, 0
        while n < 2 or time.perf_counter() - t0 < seconds:
            for buf, src in zip(bufs, srcs):
                off = int(rng.integers(0, len(src) - len(buf) + 1))
                np.copyto(buf, src[off : off + len(buf)])
                total += buf.nbytes
            n += 1
        return total

    if threads == 1:
        total = copy(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(copy, range(threads)))
    dt = time.perf_counter() - t0
    return dict(bytes_per_s=total / dt, cells_per_s=total / dt / bytes_per_cell, bytes=total, seconds=dt, threads=threads)


# -- runners: each returns make_stream() -> batches (a loader's dicts, or torch CSR tensors) -------------
@dataclass
class Measurement:
    runner: str
    archive: str | None
    order: str
    batch_size: int
    seconds: float
    make: object = None
    log: list = field(default_factory=list)  #: per batch: rows or labels (shuffle quality), or bionemo's shape/dtype
    residency: str | None = None  #: where the loader put the archive (GPU bound)
    repeats: list = field(default_factory=list)


@dataclass
class Ctx:
    device: str
    workdir: Path
    widths: dict  #: archive path -> n_genes; None -> the inputs'
    prefetch: int | None
    inputs: Path | None
    collection: object = None  #: the inputs as one backed AnnCollection, opened once
    label: str | None = None

    def anncollection(self):
        if self.collection is None:
            import anndata as ad
            from anndata.experimental import AnnCollection

            from scdl_gpu.convert import discover_inputs

            self.collection = AnnCollection([ad.read_h5ad(f, backed="r") for f in discover_inputs([self.inputs])])
        return self.collection


def scipy_to_torch(m) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor sharing its arrays (indptr cast to the indices' dtype)."""
    crow = m.indptr if m.indptr.dtype == m.indices.dtype else m.indptr.astype(m.indices.dtype)
    return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(m.indices), torch.from_numpy(m.data), m.shape)


def _full_width(X: torch.Tensor, ctx: Ctx, archive: Path | None) -> torch.Tensor:
    width = ctx.widths[archive]
    if X.shape[1] != width:  # bionemo-scdl's collate makes batches max column + 1 wide
        X = torch.sparse_csr_tensor(X.crow_indices(), X.col_indices(), X.values(), size=(X.shape[0], width))
    return X.to(ctx.device) if ctx.device != "cpu" else X


def run_scdl_gpu(ctx: Ctx, archive: Path, order: str, bs: int, m: Measurement):
    from scdl_gpu import SingleCellLoader
    from scdl_gpu.profiling._measure import loader_stream

    kw = {} if ctx.prefetch is None else dict(prefetch=ctx.prefetch)  # None: the loader's own default

    def make():
        loader = SingleCellLoader(archive, batch_size=bs, shuffle=order, device=ctx.device, **kw)
        m.residency = loader.residency
        batches = loader_stream(loader)
        try:
            for b in batches:
                if len(m.log) < MAX_LOGGED:
                    m.log.append(b["rows"].cpu())
                yield b
        finally:
            batches.close()  # stops the prefetch thread before the loader closes
            loader.close()

    return make


def run_bionemo(ctx: Ctx, archive: Path, order: str, bs: int, m: Measurement):
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset
    from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch
    from torch.utils.data import DataLoader

    copy = bionemo_copy(archive, ctx.workdir)

    def make():
        loader = DataLoader(SingleCellMemMapDataset(str(copy)), batch_size=bs, shuffle=True,
                            collate_fn=collate_sparse_matrix_batch, num_workers=0)
        while True:
            for X in loader:
                if len(m.log) < MAX_LOGGED:
                    m.log.append((tuple(X.shape), str(X.values().dtype)))
                yield _full_width(X, ctx, archive)

    return make


def run_annloader(ctx: Ctx, archive, order: str, bs: int, m: Measurement):
    from anndata.experimental import AnnLoader

    def make():
        loader = AnnLoader(ctx.anncollection(), batch_size=bs, shuffle=True, num_workers=0, use_default_converter=False,
                           collate_fn=lambda view: scipy_to_torch(view.X))
        while True:
            for X in loader:
                yield _full_width(X, ctx, None)

    return make


def run_scdataset(ctx: Ctx, archive, order: str, bs: int, m: Measurement):
    from scdataset import BlockShuffling, scDataset

    label = ctx.label if ctx.label in ctx.anncollection().obs.keys() else None

    def fetch(coll, idx):  # one sorted view per fetch: X (scipy CSR) and the labels
        view = coll[idx]
        return view.X, (view.obs[label].cat.codes.to_numpy() if label else np.zeros(len(idx), np.int8))

    def make():
        ds = scDataset(ctx.anncollection(), BlockShuffling(block_size=max(1, bs // 64)), batch_size=bs, fetch_factor=1,
                       fetch_callback=fetch, batch_callback=lambda f, j: (f[0][j], f[1][j]),
                       batch_transform=lambda b: (scipy_to_torch(b[0]), b[1]), seed=0)
        while True:
            for X, lab in ds:
                if label and len(m.log) < MAX_LOGGED:
                    m.log.append(lab)
                yield _full_width(X, ctx, None)

    return make


@dataclass(frozen=True)
class Runner:
    make: object  #: (ctx, archive, order, batch size, measurement) -> make_stream
    reads: str  #: "archives" (each measured archive) or "inputs" (the h5ad files)
    orders: tuple | None  #: None: the --orders; else the runner's own
    settings: str
    module: str | None = None  #: imported first: a peer that is not installed is noted, not run


#: name -> Runner. A runner's ``make`` returns a ``make_stream()`` for :func:`scdl_gpu.profiling.measure`.
RUNNERS: dict[str, Runner] = {
    "scdl_gpu": Runner(run_scdl_gpu, "archives", None, "loader defaults"),
    "bionemo-scdl": Runner(run_bionemo, "archives", ("shuffle",), "DataLoader num_workers=0",
                           "bionemo.scdl.io.single_cell_memmap_dataset"),
    "AnnLoader": Runner(run_annloader, "inputs", ("shuffle",), "num_workers=0, no densify", "anndata.experimental"),
    "scDataset": Runner(run_scdataset, "inputs", ("block",), "BlockShuffling(batch // 64), fetch_factor=1", "scdataset"),
    "annbatch": Runner(None, "inputs", ("shuffle",), "", "annbatch"),
}
PEERS_TIMED_SHORTER = ("AnnLoader", "scDataset")


# -- results ----------------------------------------------------------------------------------------------
def distinct_per_batch(logged: list, labels_of_rows: np.ndarray | None) -> float | None:
    """Mean number of distinct labels per batch; entries are labels, or archive rows (tensors) to look up."""
    counts = []
    for entry in logged:
        if isinstance(entry, torch.Tensor):
            if labels_of_rows is None:
                return None
            entry = labels_of_rows[entry.numpy()]
        counts.append(len(np.unique(entry)))
    return float(np.mean(counts)) if counts else None


def summarize(m: Measurement, ceiling: dict | None, labels: np.ndarray | None) -> dict:
    """The median repeat by cells/s, every repeat's cells/s, its spread and fraction of the ceiling."""
    ranked = sorted(m.repeats, key=lambda t: t["cells_per_s"])
    med = ranked[len(ranked) // 2]
    cps = [t["cells_per_s"] for t in m.repeats]
    rec = dict(runner=m.runner, archive=m.archive, order=m.order, batch_size=m.batch_size,
               settings=RUNNERS[m.runner].settings, **med, all_cells_per_s=cps,
               cells_per_s_sd=statistics.stdev(cps) if len(cps) > 1 else None)
    rec["of_ceiling"] = med["cells_per_s"] / ceiling["cells_per_s"] if ceiling and ceiling.get("cells_per_s") else None
    if m.runner == "bionemo-scdl" and m.log:
        rec["batch_widths"] = sorted({s[1] for s, _ in m.log})
        rec["value_dtype"] = ",".join(sorted({d.replace("torch.", "") for _, d in m.log}))
    else:
        rec["distinct_labels"] = distinct_per_batch(m.log, labels)
    return rec


def find(runs: list[dict], runner: str, archive: str | None, order: str, bs: int) -> dict | None:
    return next((r for r in runs if (r["runner"], r["archive"], r["order"], r["batch_size"]) == (runner, archive, order, bs)),
                None)


def paired_ratio(ours: dict, other: dict) -> tuple[float, list[float]]:
    """``ours`` over ``other``: the median of the repeats' ratios when both have every repeat (one
    repeat measures both within minutes, while their medians may come from different phases of the
    run), else the ratio of the medians."""
    a, b = ours.get("all_cells_per_s"), other.get("all_cells_per_s")
    if a and b and len(a) == len(b):
        ratios = [x / y for x, y in zip(a, b)]
        return statistics.median(ratios), ratios
    return ours["cells_per_s"] / other["cells_per_s"], []


def _each(values: list[float], spec: str) -> str:
    return f" (per repeat: {', '.join(format(v, spec) for v in values)})" if len(values) > 1 else ""


def evaluate(runs: list[dict]) -> list[dict]:
    """Every :data:`TARGETS` entry that this run's measurements allow, with its numbers and verdict.

    A fraction of the ceiling is the median repeat over the run's best memcpy; a ratio of two
    loaders is paired inside each repeat (:func:`paired_ratio`)."""
    archives = list(dict.fromkeys(r["archive"] for r in runs if r["runner"] == "scdl_gpu"))
    out = []
    for name, only, order, bs, kind, thr in TARGETS:
        for arc in [only] if only else [a for a in archives if a != "aligned"]:
            ours = find(runs, "scdl_gpu", arc, order, bs)
            if ours is None:
                continue
            cps = ours["cells_per_s"]
            if kind == "ceiling":
                if ours["of_ceiling"] is None:
                    continue
                value, ref, text = ours["of_ceiling"], ours["ceiling_cells_per_s"], f"{order} @{bs} >= {thr:.0%} of the ceiling"
                numbers = f"{cps:,.0f} of {ref:,.0f} cells/s = {value:.1%}"
            else:
                other = find(runs, "bionemo-scdl", arc, "shuffle", bs) if kind == "bionemo" else \
                    find(runs, "scdl_gpu", PRIMARY, order, bs)
                if other is None:
                    continue
                value, each = paired_ratio(ours, other)
                ref = other["cells_per_s"]
                if kind == "bionemo":
                    text = f"{order} @{bs} >= {thr:g}x bionemo-scdl's DataLoader"
                    numbers = f"{cps:,.0f} vs {ref:,.0f} cells/s (medians); median ratio {value:.1f}x{_each(each, '.1f')}"
                else:
                    text = f"gene-aligned {order} @{bs} within {1 - thr:.0%} of the unaligned archive (>= {thr:.0%} of it)"
                    numbers = f"{cps:,.0f} vs {ref:,.0f} cells/s (medians); median ratio {value:.1%}{_each(each, '.1%')}"
            out.append(dict(name=f"{arc}:{name}", archive=arc, target=text, value=value, threshold=thr, met=value >= thr,
                            numbers=numbers))
    return out


def _cell(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    s, c = result["system"], result["config"]
    v = s["versions"]
    lines = [
        f"# Loader throughput, one protocol ({s['date']})", "",
        f"- machine: {s['cpu']}, {s['cpu_count']} CPUs ({s['cpu_affinity']} usable), {s['ram_gib']} GiB RAM; "
        f"{s['platform']}; device **{c['device']}**" + (f" ({c['gpu']})" if c.get("gpu") else ""),
        f"- python {s['python']}, torch {v['torch']}, numpy {v['numpy']}, anndata {v['anndata']}, "
        f"bionemo-scdl {v['bionemo-scdl']}, scDataset {c['scdataset_version']}, repo git {s['git']}",
        f"- load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in c['loadavg_before'])} before the repeats, "
        f"{', '.join(f'{x:.2f}' for x in c['loadavg_after'])} after",
        f"- inputs: `{c['inputs']}` ({c['n_inputs']} h5ad files, read backed by AnnLoader and scDataset)",
    ]
    for name, a in result["archives"].items():
        lines.append(f"- archive `{name}`: `{a['path']}`, {a['n_rows']:,} cells x {a['n_genes']:,} genes, "
                     f"{a['values_per_cell']:,.0f} values per cell, dtypes {a['dtypes']}, {a['bytes_per_cell']:,.0f} B/cell; "
                     f"{a['how']}")
    lines += [
        f"- method: `scdl_gpu.profiling.measure` (as `scdl-gpu bench`): {c['seconds']} s per measurement "
        f"({c['peer_seconds']} s for {' and '.join(PEERS_TIMED_SHORTER)}) after {c['warmup']} warm-up batches, set-up "
        f"and first batch untimed; median of {c['repeats']} interleaved repeats (± sd; all in the JSON); page cache "
        "warmed before each repeat and each measurement's files again before it; every batch a full-width torch "
        "sparse CSR tensor on the device; ceiling = memcpy of the archive's value and column bytes, best repeat, as "
        "cells/s; a target comparing two loaders is the median of the repeats' own ratios (the two measured one "
        "after the other), as this machine's speed drifts between phases of a run",
        "", f"| runner | archive | order | batch | cells/s | of ceiling | x bionemo-scdl | distinct {c['label']}s per batch "
        "| first batch ms | peak anon MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = result["runs"]
    for r in runs:
        bio = find(runs, "bionemo-scdl", r["archive"] or PRIMARY, "shuffle", r["batch_size"])
        x = r["cells_per_s"] / bio["cells_per_s"] if bio and r["runner"] != "bionemo-scdl" else None
        vs = "–" if x is None else f"{x:.1f}x" if x >= 1 else f"{x:.2g}x"
        sd = f" ± {r['cells_per_s_sd']:,.0f}" if r.get("cells_per_s_sd") is not None else ""
        lines.append(f"| {r['runner']} | {r['archive'] or 'h5ad inputs'} | {r['order']} | {r['batch_size']} | "
                     f"{r['cells_per_s']:,.0f}{sd} | {_cell(r['of_ceiling'], '.1%')} | {vs} | "
                     f"{_cell(r.get('distinct_labels'), '.1f')} | {1e3 * r['first_batch_s']:,.0f} | "
                     f"{r['host_anon_peak_bytes'] / 2**20:,.0f} |")
    lines.append("")
    for name, ce in result["ceilings"].items():
        other = "; ".join(f"{k.replace('_', ' ')} {x['bytes_per_s'] / 1e9:.2f} GB/s" for k, x in ce["bench"].items()
                          if x.get("bytes_per_s"))
        lines.append(f"- ceiling `{name}`: {ce['name']} {ce['bytes_per_s'] / 1e9:.2f} GB/s = {ce['cells_per_s']:,.0f} cells/s, "
                     f"the best of {len(ce['all_cells_per_s'])} (range {min(ce['all_cells_per_s']):,.0f}–"
                     f"{max(ce['all_cells_per_s']):,.0f})" + (f"; {ce['all_threads']['threads']} threads copying at once "
                     f"(the gather's): {ce['all_threads']['bytes_per_s'] / 1e9:.2f} GB/s together, best of "
                     f"{len(ce['all_cells_per_s'])}" if ce.get("all_threads") else "") + f"; `scdl-gpu bench`'s: {other}")
    for t in result["targets"]:
        lines.append(f"- target ({t['archive']}): {t['target']}: {t['numbers']}: **{'met' if t['met'] else 'NOT met'}**")
    lines += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Horizontal bars of cells/s (log scale) per measurement, each with its archive's ceiling as a tick."""
    from scdl_gpu.profiling._plot import pyplot

    plt = pyplot()
    runs = result["runs"]
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.3 * len(runs)), layout="constrained")
    colors = {name: plt.get_cmap("tab10").colors[i] for i, name in enumerate(RUNNERS)}
    for i, r in enumerate(runs):
        ax.barh(i, r["cells_per_s"], color=colors[r["runner"]])
        ax.annotate(f"{r['cells_per_s']:,.0f}", (r["cells_per_s"], i), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=6)
        if r.get("ceiling_cells_per_s"):
            ax.plot([r["ceiling_cells_per_s"]] * 2, [i - 0.45, i + 0.45], color="#C44E52", lw=1.5)
    ax.set_yticks(range(len(runs)), [f"{r['runner']} [{r['archive'] or 'h5ad'}] {r['order']} @{r['batch_size']}" for r in runs],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("cells/s (red tick: memcpy ceiling of that archive)")
    s = result["system"]
    ax.set_title(f"{result['config']['device']} ({s['cpu']}, {s['cpu_affinity']} CPUs); {s['date'][:10]}", fontsize=9)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_profiles(specs: list[str], archive: Path, device: str, prefetch: int, seconds: float, out: Path | None) -> list:
    """``scdl-gpu profile`` per SHUFFLE:BATCH, written as profile_<device>.{json,md} and a figure each."""
    from scdl_gpu.profiling import format_profile, plot_profile, run_profile

    profiles, texts = [], []
    for spec in specs:
        shuffle, bs = spec.split(":")
        p = run_profile(archive, device=device, shuffle=shuffle, batch_size=int(bs), prefetch=prefetch, seconds=seconds)
        profiles.append(p)
        fig = f"profile_{device}_{shuffle}{bs}.png"
        texts.append(f"`scdl-gpu profile ARCHIVE --device {device} --shuffle {shuffle} --batch-size {bs} --prefetch "
                     f"{prefetch} --seconds {seconds:g}` (figure: `{fig}`)\n\n```\n{format_profile(p)}\n```\n")
        print(texts[-1])
        if out is not None:
            plot_profile(p, out / fig)
    if out is not None and profiles:
        (out / f"profile_{device}.json").write_text(json.dumps(_report.portable(profiles, archive.parent), indent=2) + "\n")
        (out / f"profile_{device}.md").write_text(f"# `scdl-gpu profile` on {device} ({profiles[0]['system']['date']})\n\n"
                                                  "Written by `benchmarks/bench_loader.py` after its repeats, on the "
                                                  "`scdl_gpu` archive.\n\n"
                                                  + _report.portable("\n".join(texts), archive.parent))
    return profiles


# -- main -------------------------------------------------------------------------------------------------
def plan(a, ctx: Ctx, archives: dict[str, Path], notes: list[str]) -> list[Measurement]:
    runners = []
    for name in a.runners:
        r = RUNNERS[name]
        if r.reads == "inputs" and ctx.inputs is None:
            notes.append(f"{name} not measured: no --inputs")
            continue
        if name == "annbatch" and sys.version_info < (3, 12):
            notes.append("annbatch not measured: needs Python >= 3.12")
            continue
        try:
            if r.module:
                importlib.import_module(r.module)
        except ImportError as e:
            notes.append(f"{name} not measured: {e}")
            continue
        if r.make is None:  # installed, but no runner is written for it yet: say so rather than guess its API
            notes.append(f"{name} is installed but has no runner here yet: not measured")
            continue
        runners.append(name)
    # What a target compares is measured side by side: scdl_gpu's archives one after another for each
    # order (the primary, then the aligned copy), so a repeat's ratio spans seconds, not minutes.
    arcs = sorted(archives, key=lambda k: (k != PRIMARY, k != "aligned"))
    out = []
    for bs in a.batch_sizes:
        for name in runners:
            r = RUNNERS[name]
            secs = a.peer_seconds if name in PEERS_TIMED_SHORTER else a.seconds
            pairs = [(None, o) for o in r.orders or a.orders] if r.reads != "archives" else \
                [(arc, o) for o in r.orders or a.orders for arc in arcs] if name == "scdl_gpu" else \
                [(arc, o) for arc in arcs for o in r.orders or a.orders]
            for arc, order in pairs:
                m = Measurement(name, arc, order, bs, secs)
                m.make = r.make(ctx, archives.get(arc), order, bs, m)
                out.append(m)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=Path, help="directory of h5ad files (default: the 200k Tahoe-like ones, generated)")
    ap.add_argument("--archive", type=Path, help="measure this archive only (no conversions; peers need --inputs)")
    ap.add_argument("--archives", nargs="+", choices=ARCHIVES, default=list(ARCHIVES), help="archives made from the inputs")
    ap.add_argument("--runners", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--orders", nargs="+", choices=("sequential", "random", "block"), default=["random", "block"],
                    help="scdl_gpu's orders")
    ap.add_argument("--prefetch", type=int, help="passed to SingleCellLoader (default: not passed, its own default)")
    ap.add_argument("--label", default="plate", help="obs column for the shuffle quality")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--peer-seconds", type=float, default=2.0, help=f"time box for {' and '.join(PEERS_TIMED_SHORTER)}")
    ap.add_argument("--ceiling-seconds", type=float, default=2.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    ap.add_argument("--profile", nargs="*", default=["block:4096", "random:64"], metavar="SHUFFLE:BATCH",
                    help="scdl-gpu profile runs on the scdl_gpu archive after the repeats (none: --profile)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-read ceiling")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--out", type=Path, help="write loader_<device>.{json,md,png} and profile_<device>.* here")
    a = ap.parse_args(argv)
    _quiet()
    from scdl_gpu import SingleCellLoader
    from scdl_gpu.profiling import measure, measure_ceilings
    from scdl_gpu.profiling._ceilings import bound
    from scdl_gpu.profiling._system import gpu_name

    a.workdir.mkdir(parents=True, exist_ok=True)
    loadavg_start = os.getloadavg()
    inputs = a.inputs or (None if a.archive else default_inputs(a.workdir))
    if a.archive:
        archives = {"given": a.archive}
        how = {"given": "given with --archive"}
    else:
        archives = {k: build_archive(k, inputs, a.workdir) for k in ARCHIVES if k in a.archives}
        how = {"scdl_gpu": "convert_many(..., data_dtype='auto')", "bionemo": "bionemo-scdl convert_h5ad_to_scdl",
               "aligned": "convert_many(..., data_dtype='auto', gene_vocab=<shuffled gene ids file>)"}
    infos = {k: archive_info(p) for k, p in archives.items()}
    widths = {}
    for k, p in archives.items():  # "stream": a GPU probe copies nothing
        probe = SingleCellLoader(p, batch_size=max(a.batch_sizes), device=a.device, residency="stream")
        infos[k]["n_genes"] = widths[p] = probe.n_genes
        default_prefetch = probe.prefetch
        probe.close()
    first = next(iter(archives.values()))
    widths[None] = widths[archives.get(PRIMARY, first)]  # the inputs' genes: the unaligned archive's
    labels = {k: archive_labels(p, a.label, infos[k]["n_rows"]) for k, p in archives.items()}
    notes: list[str] = []
    ctx = Ctx(a.device, a.workdir, widths, a.prefetch, inputs, label=a.label)
    plan_ = plan(a, ctx, archives, notes)
    if any(m.runner in PEERS_TIMED_SHORTER for m in plan_) and a.peer_seconds != a.seconds:
        notes.append(f"{' and '.join(PEERS_TIMED_SHORTER)} timed for {a.peer_seconds:g} s per measurement "
                     f"(the others {a.seconds:g} s)")
    bench_ceilings = {k: measure_ceilings(p, a.device, cold=not a.no_cold) for k, p in archives.items()}

    warm = [p / f for p in archives.values() for f in ("data.npy", "col_ptr.npy", "row_ptr.npy")]
    if any(m.runner == "bionemo-scdl" for m in plan_):
        warm += [bionemo_copy(p, a.workdir) / f for p in archives.values() for f in ("data.npy", "col_ptr.npy", "row_ptr.npy")]
    if any(RUNNERS[m.runner].reads == "inputs" for m in plan_):
        from scdl_gpu.convert import discover_inputs

        warm += discover_inputs([inputs])
    memcpy = {k: [] for k in archives}
    memcpy2 = {k: [] for k in archives}
    warm_s = []
    loadavg_before = os.getloadavg()
    for rep in range(a.repeats):  # interleaved, so a slow phase of a shared machine hits every configuration
        warm_s.append(warm_page_cache(warm))
        for k, info in infos.items():
            memcpy[k].append(memcpy_ceiling(info["arrays"], info["bytes_per_cell"], a.ceiling_seconds))
            if a.device == "cpu":  # as many threads as the gather's: the memory bandwidth they share
                memcpy2[k].append(memcpy_ceiling(info["arrays"], info["bytes_per_cell"], a.ceiling_seconds,
                                                 threads=numba.get_num_threads()))
        print(f"r{rep} warm {warm_s[-1]:.1f} s; memcpy " + ", ".join(f"{k} {v[-1]['cells_per_s']:,.0f}"
                                                                   for k, v in memcpy.items()) + " cells/s", file=sys.stderr)
        for m in plan_:
            warm_page_cache(_files_read(m, archives, a.workdir, inputs))  # what the machine evicted since
            t = measure(m.make, a.device, m.seconds, a.warmup)
            m.repeats.append(t.to_dict())
            print(f"r{rep} {m.runner} [{m.archive or 'h5ad'}] {m.order} @{m.batch_size}: {t.cells_per_s:,.0f} cells/s "
                  f"({t.batches} batches)", file=sys.stderr)
    loadavg_after = os.getloadavg()

    ceilings = {}
    for k, info in infos.items():
        best = max(memcpy[k], key=lambda c: c["bytes_per_s"])
        ceilings[k] = dict(name="memcpy", **best, all_cells_per_s=[c["cells_per_s"] for c in memcpy[k]],
                           bench=bench_ceilings[k])
        if memcpy2[k]:
            ceilings[k]["all_threads"] = max(memcpy2[k], key=lambda c: c["bytes_per_s"])
    runs = []
    for m in plan_:
        ce = ceilings.get(m.archive)
        if ce and a.device == "cuda":  # a GPU loader is bound by where its archive lives, not by host memcpy
            name, bps = bound(ce["bench"], "cuda", m.residency or "stream")
            ce = dict(name=name, cells_per_s=bps / infos[m.archive]["bytes_per_cell"] if bps else None)
        runs.append(dict(summarize(m, ce, labels.get(m.archive)), ceiling=ce and ce["name"],
                         ceiling_cells_per_s=ce and ce["cells_per_s"], residency=m.residency))
    bio = [r for r in runs if r["runner"] == "bionemo-scdl" and r.get("batch_widths")]
    if bio:
        lo, hi = min(r["batch_widths"][0] for r in bio), max(r["batch_widths"][-1] for r in bio)
        notes.append(f"bionemo-scdl's batches are max column + 1 wide ({lo:,}–{hi:,} seen), re-wrapped to full width "
                     "(no copy); their values keep the archive's dtype ("
                     + ", ".join(f"{r['value_dtype']} from `{r['archive']}`" for r in bio if r["batch_size"] == bio[0]["batch_size"])
                     + "), scdl_gpu's are float32 (the loader's default)")
    if any(r["runner"] == "AnnLoader" for r in runs):
        notes.append("AnnLoader: each batch's scipy CSR X wrapped as a torch CSR tensor without densifying")
    notes.append(f"scdl_gpu: SingleCellLoader's defaults (prefetch={a.prefetch if a.prefetch is not None else default_prefetch}"
                 f"{' as passed' if a.prefetch is not None else ', its default on this device'}; block order's "
                 "block_size = batch // 64, fetch_factor 1)")
    try:
        scds_version = importlib.metadata.version("scdataset")
    except importlib.metadata.PackageNotFoundError:
        scds_version = None
    system = _report.system_info()
    config = dict(device=a.device, gpu=gpu_name() if a.device == "cuda" else None, inputs=str(inputs) if inputs else None,
                  n_inputs=len(list(Path(inputs).glob("*.h5ad"))) if inputs else 0,
                  batch_sizes=a.batch_sizes, orders=a.orders, runners=a.runners, prefetch=a.prefetch,
                  loader_default_prefetch=default_prefetch, label=a.label, seconds=a.seconds, peer_seconds=a.peer_seconds,
                  ceiling_seconds=a.ceiling_seconds, warmup=a.warmup, repeats=a.repeats, warm_s=warm_s,
                  loadavg_start=loadavg_start, loadavg_before=loadavg_before, loadavg_after=loadavg_after,
                  scdataset_version=scds_version,
                  command="python benchmarks/bench_loader.py " + " ".join(sys.argv[1:] if argv is None else argv))
    arch = {k: dict({x: y for x, y in info.items() if x != "arrays"}, how=how[k]) for k, info in infos.items()}
    result = dict(system=system, config=config, archives=arch, ceilings=ceilings, runs=runs, targets=evaluate(runs),
                  notes=notes)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"loader_{a.device}" if a.out else None
    _report.write_outputs(result, markdown(result), stem and stem.with_suffix(".json"), stem and stem.with_suffix(".md"),
                          workdir={"<workdir>": a.workdir, "<inputs>": inputs, "<out>": a.out})
    if stem:
        plot(result, stem.with_suffix(".png"))
    if a.profile:
        prof_archive = archives.get(PRIMARY, first)
        run_profiles(a.profile, prof_archive, a.device, a.prefetch if a.prefetch is not None else default_prefetch,
                     a.seconds, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
