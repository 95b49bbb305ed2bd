"""Training-loader throughput: cells/s delivered as full torch sparse CSR batches, against peers and a ceiling.

Every runner turns the same cells (the 200,000-cell Tahoe-like data of ``bench_convert_dir.py``:
ten h5ad files of 20,000 cells, and their conversion into one archive) into a stream of
``(B, n_genes)`` torch sparse CSR tensors on the CPU, and is timed for ``--seconds`` after
``--warmup`` batches (cells/s = cells delivered / time; epochs roll over inside the window):

* ``scdl_gpu``: ``SingleCellLoader(archive, batch_size=B, shuffle=order, device="cpu", prefetch=2,
  seed=0)`` for each order (``sequential``, ``random``, ``block`` with the loader's default
  ``block_size``/``fetch_factor``, recorded), iterated ``for b in loader: b["X"]``; ``--block``
  adds other block settings (``64x4``: block_size 64, fetch_factor 4) and ``--prefetch`` other
  prefetch depths; the targets are evaluated for every prefetch depth, with the first block setting;
* ``bionemo-scdl`` 0.1.3: ``DataLoader(SingleCellMemMapDataset(copy of the archive), batch_size=B,
  shuffle=True, collate_fn=collate_sparse_matrix_batch, num_workers=0)`` (its batches are only
  ``max column + 1`` wide, passed through as they are);
* ``AnnLoader`` (anndata): ``AnnLoader(AnnCollection(backed inputs), batch_size=B, shuffle=True,
  num_workers=0, use_default_converter=False)``, each batch's scipy CSR ``X`` wrapped as a torch
  CSR tensor (no densifying; bionemo-scdl's simple-benchmark densifies first, which is slower);
* ``scDataset``: ``scDataset(AnnCollection(backed inputs), BlockShuffling(block_size), batch_size=B,
  fetch_factor=...)`` with our loader's block settings, each fetch read as one sorted
  ``AnnCollection`` view, batches cut from its scipy CSR and wrapped as torch CSR tensors;
* the ceiling: a plain ``memcpy`` (``np.copyto``, 64 MiB chunks) of the archive's page-cached value
  and column bytes, as cells/s (bytes/s over archive bytes per cell).

Shuffle quality: the mean number of distinct ``--label`` values (``plate``; contiguous in the
inputs) per delivered batch, for our orders and scDataset's block mode, next to ``random``'s.

The page cache is warmed with a plain read of every file involved before each repeat; repeats are
interleaved and the median reported (all values in the JSON). Example::

    PYTHONPATH=. python benchmarks/bench_loader.py --repeats 3 --seconds 4 --block default 64x4 \\
        --prefetch 2 0 --json benchmarks/results/loader_cpu.json --markdown benchmarks/results/loader_cpu.md
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

try:  # imported as benchmarks.bench_loader
    from . import _report
    from .bench_backend import _median, bench_ceiling, default_archive, time_loop
    from .bench_convert import warm_read
except ImportError:  # run as a script
    import _report
    from bench_backend import _median, bench_ceiling, default_archive, time_loop
    from bench_convert import warm_read

ORDERS = ("sequential", "random", "block")
PEERS = ("bionemo", "annloader", "scdataset")
DEFAULT_INPUTS = "dir_10x20000_62710_nnz1450"
MAX_LOGGED = 5000  #: batches whose labels are kept per measurement, for the shuffle quality
TARGET_RANDOM_VS_BIONEMO = 5.0  #: random order at batch 64 >= 5x bionemo-scdl at batch 64
TARGET_BLOCK_OF_CEILING = 0.5  #: block order at batch 4096 >= 50% of the memcpy ceiling


def _quiet() -> None:
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    warnings.filterwarnings("ignore", message=".*AnnLoader.*")  # deprecated in anndata 0.12.17
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Observation names are not unique")  # same barcodes in several inputs


def scipy_to_torch(m) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR tensor sharing its arrays (indptr cast to the indices' dtype)."""
    crow = m.indptr if m.indptr.dtype == m.indices.dtype else m.indptr.astype(m.indices.dtype)
    return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(m.indices), torch.from_numpy(m.data), m.shape)


def measure(stream, warmup: int, seconds: float) -> tuple[dict, list]:
    """Time ``stream`` (yields ``(X, labels or rows or None)``); also the logged labels and X's widths/dtype."""
    logged, widths, dtypes = [], set(), set()

    def step():
        X, lab = next(stream)
        if len(logged) < MAX_LOGGED:
            logged.append(lab)
            widths.add(int(X.shape[1]))
            dtypes.add(str(X.dtype).replace("torch.", ""))
        return X.shape[0]

    first, _ = next(stream)  # the stream is built lazily: its set-up is outside the timed window
    if first.layout != torch.sparse_csr:
        raise TypeError(f"expected torch sparse CSR batches, got {first.layout}")
    res = time_loop(step, warmup, seconds, "cpu")
    res.update(widths=sorted(widths), dtype=",".join(sorted(dtypes)))
    return res, logged


# -- runners: each yields (X as torch sparse CSR, per-batch labels or archive rows) forever ---------------
def stream_ours(archive: Path, order: str, bs: int, prefetch: int, block_size=None, fetch_factor=None):
    from scdl_gpu import SingleCellLoader

    kw = {k: v for k, v in (("block_size", block_size), ("fetch_factor", fetch_factor)) if v is not None}
    loader = SingleCellLoader(archive, batch_size=bs, shuffle=order, device="cpu", prefetch=prefetch, seed=0, **kw)
    try:
        while True:  # every pass is the next epoch
            it = iter(loader)
            try:
                for b in it:
                    yield b["X"], b["rows"]
            finally:
                it.close()  # stops the prefetch thread
    finally:
        loader.close()


def stream_bionemo(archive: Path, bs: int, workdir: Path):
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset
    from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch
    from torch.utils.data import DataLoader

    loader = DataLoader(SingleCellMemMapDataset(str(bionemo_copy(archive, workdir))), batch_size=bs, shuffle=True,
                        collate_fn=collate_sparse_matrix_batch, num_workers=0)
    while True:
        for X in loader:
            yield X, None


def stream_annloader(collection, bs: int):
    from anndata.experimental import AnnLoader

    loader = AnnLoader(collection, batch_size=bs, shuffle=True, num_workers=0, use_default_converter=False,
                       collate_fn=lambda view: scipy_to_torch(view.X))
    while True:
        for X in loader:
            yield X, None


def stream_scdataset(collection, bs: int, block_size: int, fetch_factor: int, label: str | None):
    from scdataset import BlockShuffling, scDataset

    def fetch(coll, idx):  # one sorted view per fetch: X (scipy CSR) and the labels
        view = coll[idx]
        lab = view.obs[label].cat.codes.to_numpy() if label else np.zeros(len(idx), np.int8)
        return view.X, lab

    def pick(fetched, j):
        return fetched[0][j], fetched[1][j]

    ds = scDataset(collection, BlockShuffling(block_size=block_size), batch_size=bs, fetch_factor=fetch_factor,
                   fetch_callback=fetch, batch_callback=pick, batch_transform=lambda b: (scipy_to_torch(b[0]), b[1]),
                   seed=0)
    while True:
        for X, lab in ds:
            yield X, (lab if label else None)


# -- inputs ----------------------------------------------------------------------------------------------
def bionemo_copy(archive: Path, workdir: Path) -> Path:
    """bionemo-scdl maps archives read-write: it gets its own copy (made once, kept in the workdir)."""
    copy = workdir / f"bionemo_copy_{archive.name}"
    marker = copy / ".complete"
    if not marker.exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(archive, copy)
        marker.touch()
    return copy


def resolve_data(a) -> tuple[Path, Path | None]:
    """The archive and the h5ad inputs it was converted from (generated/converted when missing)."""
    if a.archive is None and a.inputs is None:
        archive = default_archive(a.workdir)
        inputs = a.workdir / DEFAULT_INPUTS
        if not inputs.exists():
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_convert_dir import make_inputs

            make_inputs(inputs, 10, 20_000, 62_710, 1450)
        return archive, inputs
    archive = a.archive
    if archive is None:
        archive = a.workdir / f"{a.inputs.name}.scdl"
        if not archive.exists():
            from scdl_gpu.convert import convert_many

            convert_many([a.inputs], archive, use_X_not_raw=True, data_dtype="auto", workers=2)
    return archive, a.inputs


def archive_labels(archive: Path, label: str, n_rows: int) -> np.ndarray | None:
    from scdl_gpu.loader._obs import ObsColumns

    try:
        return ObsColumns(archive, [label], n_rows).values[label]
    except (KeyError, ValueError, OSError):
        return None


def distinct_per_batch(logged: list, labels_of_rows: np.ndarray | None) -> float | None:
    """Mean number of distinct labels per batch; entries are labels, or archive rows (tensors) to look up."""
    counts = []
    for entry in logged:
        if entry is None:
            return None
        if isinstance(entry, torch.Tensor):
            if labels_of_rows is None:
                return None
            entry = labels_of_rows[entry.numpy()]
        counts.append(len(np.unique(entry)))
    return float(np.mean(counts)) if counts else None


def warm_page_cache(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            warm_read(f)
    return time.perf_counter() - t0


# -- report ----------------------------------------------------------------------------------------------
def evaluate(runs: list[dict], ceiling: float) -> dict:
    """The targets for each prefetch depth measured (first block setting). bionemo-scdl runs with
    ``num_workers=0`` (nothing in the background), so ``prefetch=0`` is the like-for-like figure;
    the default ``prefetch=2`` adds a thread that, with a consumer that does nothing, only competes
    for the GIL on a 2-core machine. Both are reported."""
    def find(runner, order, bs, pf=None):
        return next((r for r in runs if r["runner"] == runner and r["order"] == order and r["batch_size"] == bs
                     and (pf is None or r["settings"].split(",")[0] == f"prefetch={pf}")), None)

    depths = list(dict.fromkeys(int(r["settings"].split(",")[0].split("=")[1]) for r in runs if r["runner"] == "scdl_gpu"))
    bio = find("bionemo-scdl", "shuffle", 64)
    out = {}
    for pf in depths:
        ours_r, blk = find("scdl_gpu", "random", 64, pf), find("scdl_gpu", "block", 4096, pf)
        if ours_r and bio:
            ratio = ours_r["cells_per_s"] / bio["cells_per_s"]
            out[f"random64_vs_bionemo_prefetch{pf}"] = dict(
                target=f"random at batch 64 >= {TARGET_RANDOM_VS_BIONEMO:g}x bionemo-scdl at batch 64 (prefetch={pf})",
                value=ratio, met=ratio >= TARGET_RANDOM_VS_BIONEMO)
        if blk:
            frac = blk["cells_per_s"] / ceiling
            out[f"block4096_of_ceiling_prefetch{pf}"] = dict(
                target=f"block at batch 4096 >= {TARGET_BLOCK_OF_CEILING:.0%} of the memcpy ceiling (prefetch={pf})",
                value=frac, met=frac >= TARGET_BLOCK_OF_CEILING)
    return out


def markdown(result: dict) -> str:
    s, c, v = result["system"], result["config"], result["system"]["versions"]
    ceil = result["ceiling"]["cells_per_s"]
    lines = [
        f"# Training-loader throughput ({s['date']})", "",
        f"- machine: {s['cpu']}, {s['cpu_count']} CPUs ({s['cpu_affinity']} usable), {s['ram_gib']} GiB RAM; "
        f"{s['platform']}; device **cpu**",
        f"- python {s['python']}, torch {v['torch']}, numpy {v['numpy']}, scipy {v['scipy']}, anndata {v['anndata']}, "
        f"bionemo-scdl {v['bionemo-scdl']}, scDataset {c['scdataset_version']}, repo git {s['git']}",
        f"- data: archive `{c['archive']}` ({c['n_rows']:,} cells x {c['n_genes']:,} genes, ~{c['nnz_per_cell']:.0f} "
        f"stored values per cell, dtypes {c['dtypes']}); h5ad inputs `{c['inputs']}` ({c['n_inputs']} backed files "
        "in one `AnnCollection`)",
        f"- method: page cache warmed by a plain read of every file before each repeat ({c['warm_s']:.1f} s the "
        f"first time); per measurement {c['seconds']} s after {c['warmup']} warm-up batches (set-up and first batch "
        f"untimed), cells/s = cells delivered / time, epochs roll over inside the window; median of {c['repeats']} "
        "interleaved repeats (all in the JSON); every batch is a torch sparse CSR tensor on the CPU; "
        f"`ceiling` = memcpy of the archive's value+column bytes ({c['bytes_per_cell']:,.0f} B/cell) as cells/s",
        "",
        f"| runner | order | batch | cells/s | % of ceiling | x bionemo-scdl | distinct {c['label']}s per batch "
        "(x random) | settings | batch width, dtype |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    runs = result["runs"]
    bio = {r["batch_size"]: r["cells_per_s"] for r in runs if r["runner"] == "bionemo-scdl"}
    rnd = {}
    for r in runs:
        if r["runner"] == "scdl_gpu" and r["order"] == "random":
            rnd.setdefault(r["batch_size"], r.get("distinct_labels"))
    for r in runs:
        cps, q, base = r["cells_per_s"], r.get("distinct_labels"), rnd.get(r["batch_size"])
        qs = "–" if q is None else f"{q:.1f}" + (f" ({q / base:.2f}x)" if base and r["order"] != "random" else "")
        vs = f"{cps / bio[r['batch_size']]:.1f}x" if bio.get(r["batch_size"]) and r["runner"] != "bionemo-scdl" else "–"
        widths = r.get("widths") or []
        wtxt = "–" if not widths else (f"{widths[0]:,}" if len(widths) == 1 else f"{widths[0]:,}–{widths[-1]:,}")
        lines.append(f"| {r['runner']} | {r['order']} | {r['batch_size']} | {cps:,.0f} | {cps / ceil:.1%} | {vs} | {qs} "
                     f"| {r.get('settings') or '–'} | {wtxt}, {r.get('dtype') or '?'} |")
    lines += ["", f"- ceiling: {result['ceiling']['bytes_per_s'] / 1e9:.2f} GB/s = {ceil:,.0f} cells/s "
              f"(all repeats: {', '.join(f'{x:,.0f}' for x in result['ceiling']['all_cells_per_s'])})"]
    for t in result["targets"].values():
        if t is None:
            continue
        val = f"{t['value']:.2f}x" if "bionemo" in t["target"] else f"{t['value']:.1%}"
        lines.append(f"- target: {t['target']}: measured {val}: **{'met' if t['met'] else 'NOT met'}**")
    lines += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", type=Path, help="archive to read (default: the 200k Tahoe-like conversion)")
    ap.add_argument("--inputs", type=Path, help="directory of the h5ad files the archive holds (for AnnLoader, scDataset)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    ap.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS), help="peers to measure (none: --peers)")
    ap.add_argument("--block", nargs="+", default=["default"], metavar="SETTING",
                    help="block-order settings to measure: 'default' (the loader's) or BLOCK_SIZExFETCH_FACTOR, "
                         "e.g. 64x4; scDataset's block mode gets the same; the first is the one the target uses")
    ap.add_argument("--prefetch", type=int, nargs="+", default=[2],
                    help="our loader's prefetch depths to measure (targets are given for each)")
    ap.add_argument("--label", default="plate", help="obs column for the shuffle-quality count")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--peer-seconds", type=float, help="time box for AnnLoader and scDataset (default: --seconds)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    _quiet()
    from scdl_gpu import SingleCellLoader
    from scdl_gpu.archive import open_arrays

    a.workdir.mkdir(parents=True, exist_ok=True)
    archive, inputs = resolve_data(a)
    arrays = open_arrays(archive)
    nnz_per_cell = arrays.nnz / arrays.n_rows
    bytes_per_cell = nnz_per_cell * (arrays.data.itemsize + arrays.col_ptr.itemsize)
    peer_seconds = a.peer_seconds or a.seconds
    notes = []
    if peer_seconds != a.seconds:
        notes.append(f"AnnLoader and scDataset were timed for {peer_seconds} s per measurement (others {a.seconds} s)")

    # block settings per batch size, resolved (the loader's defaults for 'default'), duplicates dropped
    block: dict[int, list[tuple[int, int]]] = {}
    for bs in a.batch_sizes:
        for setting in a.block:
            kw = {} if setting == "default" else dict(zip(("block_size", "fetch_factor"), map(int, setting.lower().split("x"))))
            probe = SingleCellLoader(archive, batch_size=bs, shuffle="block", device="cpu", prefetch=0, **kw)
            if (probe.block_size, probe.fetch_factor) not in block.setdefault(bs, []):
                block[bs].append((probe.block_size, probe.fetch_factor))
            n_genes = probe.n_genes
            probe.close()
    labels = archive_labels(archive, a.label, arrays.n_rows)
    if labels is None:
        notes.append(f"the archive has no obs column {a.label!r}: no shuffle quality for scdl_gpu")

    peers, collection, input_files = list(a.peers), None, []
    if {"annloader", "scdataset"} & set(peers):
        if inputs is None:
            notes.append("no --inputs: AnnLoader and scDataset not measured")
            peers = [p for p in peers if p not in ("annloader", "scdataset")]
        else:
            import anndata as ad
            from anndata.experimental import AnnCollection
            from scdl_gpu.convert import discover_inputs

            input_files = discover_inputs([inputs])  # the archive's row order
            collection = AnnCollection([ad.read_h5ad(f, backed="r") for f in input_files])
            if a.label not in collection.obs.keys():
                notes.append(f"the inputs have no obs column {a.label!r}: no shuffle quality for scDataset")
    if "scdataset" in peers:
        try:
            importlib.import_module("scdataset")
        except ImportError as e:
            notes.append(f"scDataset not measured: {e}")
            peers.remove("scdataset")
    if "bionemo" in peers:
        try:
            importlib.import_module("bionemo.scdl.io.single_cell_memmap_dataset")
        except ImportError as e:
            notes.append(f"bionemo-scdl not measured: {e}")
            peers.remove("bionemo")
        else:
            bionemo_copy(archive, a.workdir)

    # every measurement: (runner, order, batch size, settings, factory() -> stream, seconds)
    plan = []
    for bs in a.batch_sizes:
        for pf in a.prefetch:
            for order in a.orders:
                for bsz, ff in block[bs] if order == "block" else [(None, None)]:
                    settings = f"prefetch={pf}" + (f", block_size={bsz}, fetch_factor={ff}" if bsz else "")
                    plan.append(("scdl_gpu", order, bs, settings,
                                 lambda o=order, b=bs, p=pf, s=bsz, f=ff: stream_ours(archive, o, b, p, s, f), a.seconds))
        if "bionemo" in peers:
            plan.append(("bionemo-scdl", "shuffle", bs, "DataLoader num_workers=0",
                         lambda b=bs: stream_bionemo(archive, b, a.workdir), a.seconds))
        if "annloader" in peers:
            plan.append(("AnnLoader", "shuffle", bs, "num_workers=0, no densify",
                         lambda b=bs: stream_annloader(collection, b), peer_seconds))
        if "scdataset" in peers:
            label = a.label if a.label in collection.obs.keys() else None
            for bsz, ff in block[bs]:
                plan.append(("scDataset", "block", bs, f"BlockShuffling(block_size={bsz}), fetch_factor={ff}",
                             lambda b=bs, s=bsz, f=ff, lab=label: stream_scdataset(collection, b, s, f, lab), peer_seconds))

    warm_paths = [archive / "data.npy", archive / "col_ptr.npy", archive / "row_ptr.npy", *input_files]
    if "bionemo" in peers:
        copy = bionemo_copy(archive, a.workdir)
        warm_paths += [copy / "data.npy", copy / "col_ptr.npy", copy / "row_ptr.npy"]
    results = {(r, o, bs, st): dict(runner=r, order=o, batch_size=bs, settings=st, runs=[], logged=[])
               for r, o, bs, st, _, _ in plan}
    ceilings, warm_s = [], []
    for rep in range(a.repeats):  # interleaved, so slow phases of a shared machine hit every config
        warm_s.append(warm_page_cache(warm_paths))
        ceilings.append(bench_ceiling(archive, "cpu", bytes_per_cell, a.seconds))
        print(f"r{rep} warm {warm_s[-1]:.1f} s; ceiling {ceilings[-1]['cells_per_s']:,.0f} cells/s", file=sys.stderr)
        for runner, order, bs, settings, factory, secs in plan:
            stream = factory()
            try:
                res, logged = measure(stream, a.warmup, secs)
            finally:
                stream.close()
            rec = results[(runner, order, bs, settings)]
            rec["runs"].append(res)
            rec["logged"].extend(logged)
            print(f"r{rep} {runner} {order} {bs} [{settings}]: {res['cells_per_s']:,.0f} cells/s "
                  f"({res['batches']} batches)", file=sys.stderr)

    runs = []
    for rec in results.values():
        med = _median(rec.pop("runs"))
        q = distinct_per_batch(rec.pop("logged"), labels)
        runs.append(dict(rec, **med, distinct_labels=q))
    ceiling = _median(ceilings)
    if "bionemo" in peers:
        widths = sorted({w for r in runs if r["runner"] == "bionemo-scdl" for w in r["widths"]})
        if widths and widths != [n_genes]:
            notes.append(f"bionemo-scdl's collate makes batches max column + 1 wide ({widths[0]:,}–{widths[-1]:,} "
                         f"seen), not {n_genes:,}; passed through as they are (not padded)")
        ours_dt = {r["dtype"] for r in runs if r["runner"] == "scdl_gpu"}
        bio_dt = {r["dtype"] for r in runs if r["runner"] == "bionemo-scdl"}
        if bio_dt and bio_dt != ours_dt:
            notes.append(f"bionemo-scdl's batches carry the archive's stored value dtype ({', '.join(sorted(bio_dt))}); "
                         f"scdl_gpu's are cast to {', '.join(sorted(ours_dt))} (the loader's default BatchOptions)")
    if "annloader" in peers:
        notes.append("AnnLoader: each batch's scipy CSR X wrapped as a torch CSR tensor without densifying "
                     "(bionemo-scdl's simple-benchmark densifies through AnnLoader's default converter first, slower)")
    if {"bionemo", "annloader"} & set(peers):
        notes.append("shuffle quality of the uniformly shuffled peers (bionemo-scdl, AnnLoader) is that of `random`; "
                     "not counted")
    try:
        scds_version = importlib.metadata.version("scdataset")
    except importlib.metadata.PackageNotFoundError:
        scds_version = None
    config = dict(archive=str(archive), inputs=str(inputs) if inputs else None, n_inputs=len(input_files),
                  n_rows=arrays.n_rows, n_genes=n_genes, nnz_per_cell=nnz_per_cell, bytes_per_cell=bytes_per_cell,
                  dtypes={k: arrays.dtypes[k] for k in ("data.npy", "col_ptr.npy", "row_ptr.npy")},
                  batch_sizes=a.batch_sizes, orders=a.orders, peers=peers, label=a.label,
                  block_settings={str(bs): [dict(block_size=b, fetch_factor=f) for b, f in v] for bs, v in block.items()},
                  prefetch=a.prefetch,
                  seconds=a.seconds, peer_seconds=peer_seconds, warmup=a.warmup, repeats=a.repeats,
                  warm_s=warm_s[0] if warm_s else 0.0, all_warm_s=warm_s, scdataset_version=scds_version)
    result = dict(system=_report.system_info(), config=config, ceiling=ceiling, runs=runs,
                  targets=evaluate(runs, ceiling["cells_per_s"]), notes=notes)
    _report.write_outputs(result, markdown(result), a.json, a.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
