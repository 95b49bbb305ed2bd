"""Side-by-side: scdl_gpu and the peer loaders under ``scdl-gpu bench``'s protocol, one command.

Every runner streams the same cells (by default the 200,000-cell Tahoe-like data of
``bench_convert_dir.py``: ten h5ad files and their conversion into one archive) as full-width
``(B, n_genes)`` torch sparse CSR batches on ``--device``, and is measured by
:func:`scdl_gpu.profiling.measure`, the routine behind ``scdl-gpu bench``: time to first batch
(set-up included), ``--warmup`` untimed batches, then cells/s and batches/s over ``--seconds``
(device synchronised), host RSS / anonymous memory peaks. Ceilings come from
:func:`scdl_gpu.profiling.measure_ceilings` on the archive.

Runners (installed by the ``bench`` extra): ``scdl_gpu`` (``SingleCellLoader``, each ``--shuffle``),
``bionemo-scdl`` 0.1.3 (its ``DataLoader`` recipe, shuffle), anndata's ``AnnLoader`` over the backed
inputs (shuffle), ``scDataset`` (block mode with our default block size). Peers' batches are
re-wrapped to the archive's full width where narrower (bionemo-scdl's collate makes them
``max column + 1`` wide) and moved to the device; their value dtype is left as delivered. annbatch
needs Python >= 3.12 and is reported as not measured on older interpreters.

    PYTHONPATH=. python benchmarks/compare_peers.py --batch-sizes 64 4096 \\
        --json benchmarks/results/peers_cpu.json --markdown benchmarks/results/peers_cpu.md \\
        --plot benchmarks/results/peers_cpu.png
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
from pathlib import Path

import torch

try:  # imported as benchmarks.compare_peers
    from . import bench_loader as bl
except ImportError:  # run as a script
    import bench_loader as bl

PEERS = ("bionemo", "annloader", "scdataset", "annbatch")


def full_width(stream, n_genes: int, device: str):
    """Batches of a peer's ``(X, labels)`` stream as ``(B, n_genes)`` CSR tensors on ``device``."""
    for X, _ in stream:
        if X.shape[1] != n_genes:
            X = torch.sparse_csr_tensor(X.crow_indices(), X.col_indices(), X.values(), size=(X.shape[0], n_genes))
        yield X.to(device) if device != "cpu" else X


def ours(archive: Path, order: str, bs: int, device: str, prefetch: int):
    from scdl_gpu.profiling._bench import loader_factory

    return loader_factory(archive, device, order, bs, prefetch)


def plan_runners(a, archive: Path, inputs: Path | None, n_genes: int, device: str) -> tuple[list, list[str]]:
    """(runner, shuffle, batch size, settings, make_stream) for every measurement, and notes."""
    notes, runners, collection = [], [], None
    peers = list(a.peers)
    if {"annloader", "scdataset"} & set(peers):
        if inputs is None:
            notes.append("no --inputs: AnnLoader and scDataset not measured")
            peers = [p for p in peers if p not in ("annloader", "scdataset")]
        else:
            import anndata as ad
            from anndata.experimental import AnnCollection

            from scdl_gpu.convert import discover_inputs

            collection = AnnCollection([ad.read_h5ad(f, backed="r") for f in discover_inputs([inputs])])
    for name, module in (("bionemo", "bionemo.scdl.io.single_cell_memmap_dataset"), ("scdataset", "scdataset"),
                         ("annbatch", "annbatch")):
        if name in peers:
            try:
                importlib.import_module(module)
            except ImportError as e:
                why = "needs Python >= 3.12" if name == "annbatch" and sys.version_info < (3, 12) else str(e)
                notes.append(f"{name} not measured: {why}")
                peers.remove(name)
    if "annbatch" in peers:  # installed, but no runner is written for it yet: say so rather than guess its API
        notes.append("annbatch is installed but has no runner here yet: not measured")
        peers.remove("annbatch")
    for bs in a.batch_sizes:
        for order in a.shuffle:
            runners.append(("scdl_gpu", order, bs, f"prefetch={a.prefetch}", ours(archive, order, bs, device, a.prefetch)))
        wrap = lambda s: full_width(s, n_genes, device)  # noqa: E731
        if "bionemo" in peers:
            runners.append(("bionemo-scdl", "shuffle", bs, "DataLoader num_workers=0",
                            lambda b=bs: wrap(bl.stream_bionemo(archive, b, a.workdir))))
        if "annloader" in peers:
            runners.append(("AnnLoader", "shuffle", bs, "num_workers=0, no densify",
                            lambda b=bs: wrap(bl.stream_annloader(collection, b))))
        if "scdataset" in peers:
            bsz = max(1, bs // 64)
            runners.append(("scDataset", "block", bs, f"BlockShuffling(block_size={bsz}), fetch_factor=1",
                            lambda b=bs, s=bsz: wrap(bl.stream_scdataset(collection, b, s, 1, None))))
    return runners, notes


def markdown(result: dict) -> str:
    s, a, b = result["system"], result["archive"], result["bound"]
    lines = [f"# Loaders side by side ({s['date']})", "",
             f"- machine: {s['cpu']}, {s['cpus']} CPUs, {s['ram_gib']} GiB RAM; device **{s['device']}**"
             + (f" ({s['gpu']})" if s.get("gpu") else ""),
             f"- archive: `{a['path']}` ({a['n_rows']:,} cells, {a['values_per_cell']:,.0f} values per cell, "
             f"{a['bytes_per_cell']:,.0f} B/cell, dtypes {a['dtypes']})",
             f"- protocol: `scdl_gpu.profiling.measure` (as `scdl-gpu bench`): {result['settings']['seconds']} s per "
             f"measurement after {result['settings']['warmup']} warm-up batches, median of {result['settings']['repeats']} "
             "interleaved repeats; batches are full-width torch sparse CSR tensors on the device",
             f"- bound: {b['name'].replace('_', ' ')}, {b['cells_per_s']:,.0f} cells/s" if b.get("cells_per_s") else "- bound: –",
             "", "| runner | order | batch | cells/s | x bionemo-scdl | of bound | first batch ms | peak anon MiB | settings |",
             "|---|---|---|---|---|---|---|---|---|"]
    bio = {r["batch_size"]: r["cells_per_s"] for r in result["results"] if r["runner"] == "bionemo-scdl"}
    for r in result["results"]:
        vs = f"{r['cells_per_s'] / bio[r['batch_size']]:.1f}x" if r["batch_size"] in bio and r["runner"] != "bionemo-scdl" else "–"
        frac = f"{r['fraction_of_bound']:.1%}" if r.get("fraction_of_bound") is not None else "–"
        lines.append(f"| {r['runner']} | {r['shuffle']} | {r['batch_size']} | {r['cells_per_s']:,.0f} | {vs} | {frac} | "
                     f"{1e3 * r['first_batch_s']:,.0f} | {r['host_anon_peak_bytes'] / 2**20:,.0f} | {r['settings']} |")
    lines += ["", *(f"- note: {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", type=Path, help="archive (default: the 200k Tahoe-like conversion)")
    ap.add_argument("--inputs", type=Path, help="the h5ad files the archive holds (for AnnLoader and scDataset)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--shuffle", nargs="+", default=["random", "block"], help="scdl_gpu's orders")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS))
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-read ceiling")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--plot", type=Path)
    a = ap.parse_args(argv)
    bl._quiet()
    from scdl_gpu.profiling import format_bench, measure, measure_ceilings, plot_bench
    from scdl_gpu.profiling._bench import SCHEMA, archive_shape
    from scdl_gpu.profiling._ceilings import bound
    from scdl_gpu.profiling._system import system_info

    a.workdir.mkdir(parents=True, exist_ok=True)
    bl_args = argparse.Namespace(archive=a.archive, inputs=a.inputs, workdir=a.workdir)
    archive, inputs = bl.resolve_data(bl_args)
    shape = archive_shape(archive)
    from scdl_gpu.loader import SingleCellLoader

    probe = SingleCellLoader(archive, batch_size=1, device="cpu", prefetch=0)
    n_genes = probe.n_genes
    probe.close()
    runners, notes = plan_runners(a, archive, inputs, n_genes, a.device)
    ceil = measure_ceilings(archive, a.device, cold=not a.no_cold)
    bound_name, bound_bps = bound(ceil, a.device)
    runs: dict[tuple, list] = {}
    for rep in range(a.repeats):  # interleaved: a slow phase of a shared machine hits every runner
        for runner, order, bs, settings, make in runners:
            t = measure(make, a.device, a.seconds, a.warmup)
            runs.setdefault((runner, order, bs, settings), []).append(t.to_dict())
            print(f"r{rep} {runner} {order} {bs}: {t.cells_per_s:,.0f} cells/s", file=sys.stderr)
    results = []
    for (runner, order, bs, settings), ts in runs.items():
        med = sorted(ts, key=lambda t: t["cells_per_s"])[len(ts) // 2]
        rec = dict(runner=runner, shuffle=order, batch_size=bs, prefetch=a.prefetch if runner == "scdl_gpu" else None,
                   settings=settings, **med, all_cells_per_s=[t["cells_per_s"] for t in ts],
                   cells_per_s_stdev=statistics.stdev([t["cells_per_s"] for t in ts]) if len(ts) > 1 else None)
        rec["bytes_per_s"] = rec["cells_per_s"] * shape["bytes_per_cell"]
        rec["fraction_of_bound"] = rec["bytes_per_s"] / bound_bps if bound_bps else None
        results.append(rec)
    bpc = shape["bytes_per_cell"]
    result = dict(schema=SCHEMA, kind="compare_peers", system=system_info(a.device), archive=shape,
                  settings=dict(seconds=a.seconds, warmup=a.warmup, repeats=a.repeats), ceilings=ceil,
                  bound=dict(name=bound_name, bytes_per_s=bound_bps, cells_per_s=bound_bps / bpc if bound_bps else None),
                  results=results, notes=notes)
    print(format_bench(result))
    if a.json:
        import json

        a.json.write_text(json.dumps(result, indent=2) + "\n")
    if a.markdown:
        a.markdown.write_text(markdown(result))
    if a.plot:
        plot_bench(result, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
