"""Compressed archives (issue 15), CPU side: what each codec saves, how fast the CPU decodes it, and
what it buys block-order loading where the disk is the bound.

Datasets: the 200,000-cell Tahoe-like archive of ``bench_loader.py`` (uint16 values and columns,
62,710 genes, ~1,450 values per cell; made from its h5ad directory when missing) and every input in
the shared real-data directory (``--real``), each converted with ``data_dtype="auto"`` (raw counts
when the file has them, else X). For each dataset and codec (zstd, lz4, zlib; ``scdl-gpu compress``
defaults otherwise: chunks of 1,024 rows, 256 KiB frames, delta + shuffle on columns, shuffle on
values):

* ratio: the flat archive's value + column bytes over the compressed frames' bytes, against the flat
  archive as converted (uint16 values for counts) and against the same values stored as float32;
  ``archive_bytes``: every file of each archive directory;
* CPU decode GB/s: decoded bytes over the time to decode every chunk once (the archive's pages
  cached, no decoded-chunk cache), the frames spread over the decode pool as the loader does;
* compression wall time.

Loading (Tahoe-like only; the flat archive against its zstd and lz4 compressions):
``SingleCellLoader(..., shuffle="block", batch_size=4096, device="cpu")`` at each archive's default
block (64 rows flat; one whole 1,024-row chunk compressed), timed over the first
``--batches`` batches of an epoch (loader construction included), cold (every file of the archive
dropped from the page cache with ``posix_fadvise(DONTNEED)`` first, as ``scdl-gpu bench --cold``)
and warm (read once beforehand), the archives interleaved, ``--repeats`` times, medians reported.
The flat archive is a private copy, so no other reader warms its pages. It is timed twice: as the
loader reads it here (it fits in half the available memory, so a background thread reads every page
ahead), and as the loader reads an archive larger than memory (``flat_on_demand``: pages come in as
batches touch them) — the case the issue's cold target is about. ``--archive`` replaces the
Tahoe-like archive with another flat one (the smoke test's).

Example (``make bench-compress``; about 5 minutes on 2 cores once the Tahoe-like archive exists)::

    PYTHONPATH=. python benchmarks/bench_compress.py --repeats 5 --json benchmarks/results/compress_cpu.json \\
        --markdown benchmarks/results/compress_cpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

try:  # imported as benchmarks.bench_compress
    from . import _report
    from .bench_convert import warm_read
    from .bench_loader import default_archive
except ImportError:  # run as a script
    import _report
    from bench_convert import warm_read
    from bench_loader import default_archive

CODECS = ("zstd", "lz4", "zlib")
LOADING_CODECS = ("zstd", "lz4")  #: zlib decodes slowest of the three: left out of the loading runs
REAL = _report.REPO.parent / "shared" / "data" / "real"
#: The issue's targets, reported for each codec timed (``<target>_<codec>``): no codec is the issue's
#: own choice, and the two trade ratio against decode speed.
TARGETS = {"tahoe_ratio_vs_uint16": 2.5, "cold_block4096_speedup": 1.5, "cold_block4096_speedup_larger_than_memory": 1.5}


def _archive_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def convert_real(src: Path, out: Path) -> Path:
    """``src`` (an h5ad, 10x .h5 or Matrix Market directory) as a flat archive, raw counts if present."""
    from scdl_gpu.convert import convert_many

    if not out.exists():
        try:
            convert_many([src], out, data_dtype="auto", progress=False)
        except ValueError as e:
            if "raw" not in str(e):
                raise
            convert_many([src], out, data_dtype="auto", use_X_not_raw=True, progress=False)
    return out


def decode_all(archive: Path) -> tuple[float, int]:
    """Seconds to decode every chunk once (cache off) and the decoded bytes."""
    from scdl_gpu.archive import open_arrays

    storage = open_arrays(archive).chunks
    storage.cache.limit = 0
    for p in archive.rglob("*.frames"):
        warm_read(p)
    t0 = time.perf_counter()
    nbytes = 0
    step = 8  # chunks decoded together, as a batch of block order touches several
    for k in range(0, storage.num_chunks, step):
        for v, c in storage.decode_many(range(k, min(k + step, storage.num_chunks))).values():
            nbytes += v.nbytes + c.nbytes
    return time.perf_counter() - t0, nbytes


def codec_rows(name: str, flat: Path, workdir: Path) -> list[dict]:
    """One row per codec: sizes, ratios, decode and compression speed."""
    from scdl_gpu.archive import open_arrays
    from scdl_gpu.archive._compressed import compress_archive
    from scdl_gpu.archive._summary import compression_summary

    a = open_arrays(flat)
    raw = a.data.nbytes + a.col_ptr.nbytes
    as_float32 = a.nnz * (4 + a.col_ptr.itemsize)
    rows = []
    for codec in CODECS:
        out = workdir / f"{name}.{codec}.scdl"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        compress_archive(flat, out, codec=codec)
        comp_s = time.perf_counter() - t0
        c = compression_summary(out)
        dec_s, dec_bytes = decode_all(out)
        rows.append(dict(dataset=name, codec=codec, n_rows=a.n_rows, nnz=a.nnz, dtypes=dict(a.dtypes),
                         flat_bytes=raw, float32_bytes=as_float32, stored_bytes=c["stored_bytes"],
                         ratio=raw / c["stored_bytes"], ratio_vs_float32=as_float32 / c["stored_bytes"],
                         data_ratio=c["arrays"]["data"]["ratio"], col_ratio=c["arrays"]["col_ptr"]["ratio"],
                         flat_archive_bytes=_archive_bytes(flat), archive_bytes=_archive_bytes(out),
                         decode_gb_per_s=dec_bytes / dec_s / 1e9, compress_s=comp_s, archive=out.name))
        print(f"{name:32s} {codec:5s} ratio {rows[-1]['ratio']:5.2f}x (vs float32 {rows[-1]['ratio_vs_float32']:5.2f}x) "
              f"decode {rows[-1]['decode_gb_per_s']:.2f} GB/s, compress {comp_s:.1f} s", file=sys.stderr)
    return rows


def time_block(archive: Path, batches: int, cold: bool, on_demand: bool = False) -> float:
    """Cells/s of the first ``batches`` block-order batches of a fresh loader (its set-up included).
    ``on_demand``: the loader reads a flat archive as it reads one larger than half the available
    memory (no background thread reading every page ahead; pages come in as batches touch them)."""
    from unittest import mock

    from scdl_gpu import SingleCellLoader
    from scdl_gpu.backend import _base
    from scdl_gpu.profiling._ceilings import drop_cached

    files = [p for p in archive.rglob("*") if p.is_file()]
    gc.collect()  # no map of the archive left in this process: mapped pages are never dropped
    if cold:
        drop_cached(files)
    else:
        for f in files:
            warm_read(f)
    t0 = time.perf_counter()
    with mock.patch.object(_base, "_fits_in_memory", lambda nbytes: False) if on_demand else contextlib.nullcontext():
        loader = SingleCellLoader(archive, batch_size=4096, shuffle="block", device="cpu", seed=0)
    cells = 0
    for i, b in enumerate(loader):
        cells += len(b["rows"])
        if i + 1 == batches:
            break
    dt = time.perf_counter() - t0
    del loader, b
    for t in threading.enumerate():  # the flat backend's page-warming thread: finished before the next run
        if t.name == "scdl-warm-maps":
            t.join()
    return cells / dt


ON_DEMAND = "flat_on_demand"  #: the flat archive read as one larger than memory would be


def loading(archives: dict[str, Path], batches: int, repeats: int) -> dict:
    """``archives``: name -> path, the flat one first (``ON_DEMAND``, if present, the same flat archive
    read as one larger than memory); speedups are the compressed ones' over each flat reading."""
    runs = {f"{kind}/{temp}": [] for kind in archives for temp in ("cold", "warm")}
    for r in range(repeats):  # interleaved: a slow moment of the shared machine hits every archive
        for temp in ("cold", "warm"):
            for kind, path in archives.items():
                runs[f"{kind}/{temp}"].append(time_block(path, batches, temp == "cold", on_demand=kind == ON_DEMAND))
                print(f"repeat {r}: {kind} {temp} {runs[f'{kind}/{temp}'][-1]:,.0f} cells/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    flat = next(iter(archives))
    packed = [k for k in archives if k not in (flat, ON_DEMAND)]
    speedup = {f"{k}/{t}": med[f"{k}/{t}"] / med[f"{flat}/{t}"] for k in packed for t in ("cold", "warm")}
    if ON_DEMAND in archives:
        speedup.update({f"{k}/{t}/vs_on_demand": med[f"{k}/{t}"] / med[f"{ON_DEMAND}/{t}"]
                        for k in packed for t in ("cold", "warm")})
    return dict(batches=batches, batch_size=4096, archives=list(archives), repeats=runs, median_cells_per_s=med,
                speedup=speedup)


def markdown(result: dict) -> str:
    from scdl_gpu.archive._summary import human_bytes

    s = result["system"]
    lines = [f"# Compressed archives, CPU ({s['date']}, {s['cpu']}, {s['cpu_affinity']} cores)", "",
             "Ratio: the flat archive's value + column bytes (as converted; and with float32 values) over the "
             "compressed frames. Decode: decoded bytes/s of every chunk, pages cached (tiny files: overhead-bound).", "",
             "| dataset | rows | dtypes (values/cols) | codec | ratio vs flat | vs float32 | values | columns | "
             "flat archive | compressed archive | decode GB/s | compress s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["codecs"]:
        lines.append(f"| {r['dataset']} | {r['n_rows']:,} | {r['dtypes']['data.npy']}/{r['dtypes']['col_ptr.npy']} | "
                     f"{r['codec']} | {r['ratio']:.2f}x | {r['ratio_vs_float32']:.2f}x | {r['data_ratio']:.2f}x | "
                     f"{r['col_ratio']:.2f}x | {human_bytes(r['flat_archive_bytes'])} | {human_bytes(r['archive_bytes'])} | "
                     f"{r['decode_gb_per_s']:.2f} | {r['compress_s']:.1f} |")
    ld = result.get("loading")
    if ld:
        m, sp = ld["median_cells_per_s"], ld["speedup"]
        lines += ["", f"Block order, batch 4,096, first {ld['batches']} batches of a fresh loader "
                  f"({ld['batches'] * 4096:,} cells), median of {len(ld['repeats']['flat/cold'])} interleaved repeats "
                  f"(cells/s; flat: 64-row blocks, compressed: whole 1,024-row chunks):", "",
                  "| archive | cold | warm | cold vs flat | warm vs flat | cold vs flat on demand |",
                  "|---|---:|---:|---:|---:|---:|"]
        labels = {"flat": "flat uint16", ON_DEMAND: "flat uint16, pages on demand (as an archive larger than memory)"}
        for k in ld["archives"]:
            packed = k not in labels
            rel = [f"{sp[k + '/cold']:.2f}x", f"{sp[k + '/warm']:.2f}x"] if packed else ["-", "-"]
            rel.append(f"{sp[k + '/cold/vs_on_demand']:.2f}x" if packed and k + "/cold/vs_on_demand" in sp else "-")
            lines.append(f"| {labels.get(k, 'compressed, ' + k)} | {m[k + '/cold']:,.0f} | {m[k + '/warm']:,.0f} | "
                         + " | ".join(rel) + " |")
        if "cold_read_bytes_per_s" in ld:
            lines.append(f"\nCold sequential read of the flat archive's files: {ld['cold_read_bytes_per_s'] / 1e6:,.0f} MB/s.")
    lines += ["", "Targets:"] + [f"- {k}: {v['value']:.2f} (target >= {v['target']}) {'met' if v['met'] else 'NOT met'}"
                                 for k, v in result["targets"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    p.add_argument("--real", type=Path, default=REAL, help="directory of real inputs [%(default)s]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, default=24, help="block-order batches timed per loading run [%(default)s]")
    p.add_argument("--no-tahoe", action="store_true", help="real files only (no 200k archive, no loading runs)")
    p.add_argument("--archive", type=Path, help="a flat archive instead of the Tahoe-like one (smoke tests)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    from scdl_gpu.archive._chunked import value_files
    from scdl_gpu.profiling._ceilings import read_bandwidth

    work = args.workdir / "compress"
    work.mkdir(parents=True, exist_ok=True)
    result = dict(system=_report.system_info(), codecs=[], loading=None)
    main_name = "tahoe200k" if args.archive is None else args.archive.name
    if not args.no_tahoe:
        src = default_archive(args.workdir) if args.archive is None else args.archive
        flat = work / f"{main_name}.flat.scdl"  # private: no other reader warms its pages
        if not flat.exists():
            shutil.copytree(src, flat.with_suffix(".partial"), dirs_exist_ok=True)
            flat.with_suffix(".partial").rename(flat)
        result["codecs"] += codec_rows(main_name, flat, work)
        archives = {"flat": flat, ON_DEMAND: flat, **{c: work / f"{main_name}.{c}.scdl" for c in LOADING_CODECS}}
        result["loading"] = loading(archives, args.batches, args.repeats)
        result["loading"]["cold_read_bytes_per_s"] = read_bandwidth(value_files(flat), cold=True)["bytes_per_s"]
    if args.real.is_dir():
        for src in sorted(p for p in args.real.iterdir() if p.suffix in (".h5ad", ".h5") or p.is_dir()):
            name = src.name.removesuffix(".h5ad").removesuffix(".h5")
            result["codecs"] += codec_rows(name, convert_real(src, work / f"{name}.flat.scdl"), work)
    targets = {}
    for codec in LOADING_CODECS if not args.no_tahoe else ():
        tahoe = [r for r in result["codecs"] if r["dataset"] == main_name and r["codec"] == codec]
        targets[f"tahoe_ratio_vs_uint16_{codec}"] = ("tahoe_ratio_vs_uint16", tahoe[0]["ratio"])
        targets[f"cold_block4096_speedup_{codec}"] = ("cold_block4096_speedup", result["loading"]["speedup"][f"{codec}/cold"])
        # the same target where the issue sets it: an archive larger than memory, read from disk
        targets[f"cold_block4096_speedup_larger_than_memory_{codec}"] = (
            "cold_block4096_speedup_larger_than_memory", result["loading"]["speedup"][f"{codec}/cold/vs_on_demand"])
    result["targets"] = {k: dict(value=v, target=TARGETS[t], met=v >= TARGETS[t]) for k, (t, v) in targets.items()}
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
