"""Pre-shuffled archives (issue 16): what the shuffle costs at conversion, what it buys block order.

On the 200,000-cell Tahoe-like directory of ``bench_loader.py`` (10 files x 20,000 cells, 62,710
genes, ~1,450 values per cell; rows grouped by plate, then by drug), in one run, ``--repeats``
interleaved repeats, medians reported (every repeat in the JSON):

(a) conversion: ``scdl-gpu convert DIR --use-X-not-raw --data-dtype auto`` against the same with
    ``--row-order shuffle --seed 0 --max-memory BUDGET``, each run a fresh child (``bench_convert``'s
    method: warm page cache, peak RSS of the process tree). Targets: shuffled wall time <= 2x
    plain; shuffled peak RSS under the budget.
(b) loading: ``scdl-gpu bench``'s measurement (CPU, full-width torch CSR batches, ``--seconds`` per
    configuration) of block order at batch 4,096 and 64, and random order for reference, on both
    archives, with the ``--label`` diversity figure (mean distinct labels per batch against the
    exact expectation for random batches). Targets, per batch size: block order on the shuffled
    archive >= 95% of random batches' diversity, and >= 90% of block order's cells/s on the
    input-ordered archive.
(c) ``--big N``: one shuffled conversion of an N-cell synthetic h5ad (``--big-nnz`` values per cell)
    under the same budget: wall time and peak RSS (run once; the machine may be shared). With
    ``--big-only`` that run alone is added to the results already in ``--json``.

Block order's default block is ``batch // 64`` rows: 64 rows at batch 4,096, but one row at batch
64, where block and random order read alike on either archive.

Example (``make bench-shuffle``)::

    PYTHONPATH=. python benchmarks/bench_shuffle.py --repeats 3 --json benchmarks/results/shuffle_cpu.json \\
        --markdown benchmarks/results/shuffle_cpu.md
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:  # imported as benchmarks.bench_shuffle
    from . import _report
    from .bench_convert import Runner, run_runner, warm_read
    from .bench_loader import default_inputs
    from .make_synthetic import make_synthetic_h5ad
except ImportError:  # run as a script
    import _report
    from bench_convert import Runner, run_runner, warm_read
    from bench_loader import default_inputs
    from make_synthetic import make_synthetic_h5ad

_SETUP = "from scdl_gpu.cli import main\nimport scdl_gpu.convert  # imports outside the timer"
_CONVERT = 'assert main(["convert", inp, "-o", out, "--use-X-not-raw", "--data-dtype", "auto", "-q"{extra}]) == 0'
ORDERS = (("block", 4096), ("block", 64), ("random", 4096), ("random", 64))


def runners(budget: str) -> dict[str, Runner]:
    shuffle = f', "--row-order", "shuffle", "--seed", "0", "--max-memory", "{budget}"'
    return {"input order": Runner(_SETUP, _CONVERT.format(extra="")), "shuffled": Runner(_SETUP, _CONVERT.format(extra=shuffle))}


def _num(v, fmt: str = ".1f") -> str:
    return "–" if v is None else format(v, fmt)  # no full batch: a batch larger than the archive


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def convert_runs(inputs: Path, outdir: Path, repeats: int, budget: str, timeout: float) -> list[dict]:
    """Interleaved conversions in fresh children; the last repeat's archives are kept for (b)."""
    runs = []
    for rep in range(repeats):
        for name, runner in runners(budget).items():
            for f in sorted(inputs.glob("*.h5ad")):
                warm_read(f)
            out = outdir / ("shuffled.scdl" if name == "shuffled" else "input.scdl")
            rec = run_runner(runner, name, rep, str(inputs), out, outdir / "logs" / f"{name.replace(' ', '_')}_{rep}", timeout)
            rec["ok"] = rec["error"] is None
            runs.append(rec)
            print(f"convert {name} #{rep}: {rec.get('convert_s', float('nan')):.1f} s, "
                  f"peak {rec['peak_rss_bytes'] / 2**20:,.0f} MiB {rec['error'] or ''}", file=sys.stderr)
    return runs


def loader_runs(archives: dict[str, Path], repeats: int, seconds: float, label: str) -> list[dict]:
    from scdl_gpu.profiling import run_bench

    runs = []
    for rep in range(repeats):
        for name, path in archives.items():
            for order, bs in ORDERS:
                r = run_bench(path, device="cpu", shuffles=[order], batch_sizes=[bs], seconds=seconds, warmup=3,
                              ceilings=False, diversity_column=label)["results"][0]
                runs.append(dict(archive=name, repeat=rep, order=order, batch_size=bs, cells_per_s=r["cells_per_s"],
                                 distinct_labels=r["distinct_labels"], random_distinct_labels=r["random_distinct_labels"],
                                 diversity_batches=r["diversity_batches"], host_rss_peak_bytes=r["host_rss_peak_bytes"]))
                print(f"load {name} {order}@{bs} #{rep}: {r['cells_per_s']:,.0f} cells/s, "
                      f"{_num(r['distinct_labels'])} of {_num(r['random_distinct_labels'])} {label}s", file=sys.stderr)
    return runs


def big_run(workdir: Path, outdir: Path, n_cells: int, nnz: float, budget: str, timeout: float) -> dict:
    """One shuffled conversion of an ``n_cells`` synthetic file (generated once, kept in ``workdir``)."""
    src = workdir / f"synthetic_{n_cells}_nnz{nnz:g}.h5ad"
    if not src.exists():
        t0 = time.perf_counter()
        make_synthetic_h5ad(src.with_suffix(".partial"), n_cells, nnz_per_cell=nnz, seed=0, progress=False)
        src.with_suffix(".partial").rename(src)
        print(f"generated {src} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    warm_read(src)
    out = outdir / "big_shuffled.scdl"
    rec = run_runner(runners(budget)["shuffled"], "shuffled", 0, str(src), out, outdir / "logs" / "big", timeout)
    rec.update(ok=rec["error"] is None, n_cells=n_cells, nnz_per_cell=nnz, input_bytes=src.stat().st_size)
    if out.exists():
        rec["archive_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        shutil.rmtree(out)  # tens of GB at scale: not kept
    return rec


def summarize(conv: list[dict], load: list[dict], budget_bytes: int) -> dict:
    c = {name: dict(convert_s=_median([r.get("convert_s") for r in conv if r["runner"] == name and r["ok"]]),
                    peak_rss_mib=max((r["peak_rss_bytes"] for r in conv if r["runner"] == name and r["ok"]), default=0) / 2**20,
                    all_convert_s=[r.get("convert_s") for r in conv if r["runner"] == name])
         for name in dict.fromkeys(r["runner"] for r in conv)}
    loads = {}
    for key in dict.fromkeys((r["archive"], r["order"], r["batch_size"]) for r in load):
        rs = [r for r in load if (r["archive"], r["order"], r["batch_size"]) == key]
        loads["{} {}@{}".format(*key)] = dict(cells_per_s=_median([r["cells_per_s"] for r in rs]),
                                              all_cells_per_s=[r["cells_per_s"] for r in rs],
                                              distinct_labels=_median([r["distinct_labels"] for r in rs]),
                                              random_distinct_labels=rs[0]["random_distinct_labels"])
    targets = []
    if c.get("shuffled", {}).get("convert_s") and c.get("input order", {}).get("convert_s"):
        ratio = c["shuffled"]["convert_s"] / c["input order"]["convert_s"]
        targets.append(dict(name="convert time shuffled / input order <= 2x", value=ratio, met=ratio <= 2.0))
        peak = c["shuffled"]["peak_rss_mib"] * 2**20
        targets.append(dict(name=f"shuffled conversion peak RSS <= budget ({budget_bytes / 1e9:g} GB)", value=peak,
                            met=peak <= budget_bytes))
    for bs in sorted({r["batch_size"] for r in load}, reverse=True):
        shuf, plain = loads.get(f"shuffled block@{bs}"), loads.get(f"input order block@{bs}")
        if shuf and plain and shuf["distinct_labels"] is not None:
            div = shuf["distinct_labels"] / shuf["random_distinct_labels"]
            speed = shuf["cells_per_s"] / plain["cells_per_s"]
            targets.append(dict(name=f"block@{bs} on shuffled: diversity >= 95% of random batches'", value=div, met=div >= 0.95))
            targets.append(dict(name=f"block@{bs} on shuffled: cells/s >= 90% of block on input order", value=speed,
                                met=speed >= 0.90))
    return dict(conversion=c, loading=loads, targets=targets)


def markdown(result: dict) -> str:
    s, a = result["system"], result["settings"]
    sm = result["summary"]
    lines = [f"# Pre-shuffled archives: conversion cost and block-order batch quality ({s['date']})", "",
             f"- machine: {s['cpu']}, {s['cpu_count']} CPUs ({s['cpu_affinity']} usable), {s['ram_gib']} GiB RAM; "
             f"load average {result.get('load_before', '?')} before, {result.get('load_after', '?')} after; repo git {s['git']}",
             f"- input: {a['inputs']} (10 files x 20,000 cells, rows grouped by plate then drug); "
             f"budget `--max-memory {a['max_memory']}`; {a['repeats']} interleaved repeats, medians; "
             f"loading: CPU, {a['seconds']:g} s per configuration, labels `{a['label']}`; block order's default "
             "block is batch // 64 rows (1 row at batch 64, where block and random order read alike)", "",
             "| conversion | wall s (median) | every repeat | peak RSS MiB (max) |", "|---|---:|---|---:|"]
    for name, c in sm["conversion"].items():
        every = ", ".join(f"{v:.1f}" for v in c["all_convert_s"] if v is not None)
        lines.append(f"| {name} | {c['convert_s']:.1f} | {every} | {c['peak_rss_mib']:,.0f} |")
    lines += ["", f"| archive | order@batch | cells/s (median) | every repeat | distinct {a['label']}s per batch | random batches |",
              "|---|---|---:|---|---:|---:|"]
    for key, v in sm["loading"].items():
        arc, conf = key.rsplit(" ", 1)
        every = ", ".join(f"{x:,.0f}" for x in v["all_cells_per_s"])
        lines.append(f"| {arc} | {conf} | {v['cells_per_s']:,.0f} | {every} | {_num(v['distinct_labels'])} | "
                     f"{_num(v['random_distinct_labels'])} |")
    lines += ["", "| target | value | met |", "|---|---:|---|"]
    for t in sm["targets"]:
        value = f"{t['value'] / 2**20:,.0f} MiB" if "RSS" in t["name"] else f"{t['value']:.2f}"
        lines.append(f"| {t['name']} | {value} | {'yes' if t['met'] else 'no'} |")
    big = result.get("big")
    if big:
        lines += ["", f"Large input, run once: {big['n_cells']:,} cells x {big['nnz_per_cell']:g} values per cell "
                      f"({big['input_bytes'] / 2**30:.1f} GiB h5ad) shuffled under `--max-memory {a['max_memory']}`: "
                      + (f"{big['convert_s']:.0f} s, peak RSS {big['peak_rss_bytes'] / 2**20:,.0f} MiB"
                         if big["ok"] else f"failed: {big['error']}")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from scdl_gpu.convert._shuffle import parse_memory

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--inputs", type=Path, help="directory of h5ad inputs [bench_loader's default, generated if missing]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed window per loading configuration")
    ap.add_argument("--max-memory", default="1GB")
    ap.add_argument("--label", default="drug", help="obs column for the diversity figure")
    ap.add_argument("--big", type=int, default=0, metavar="N", help="also shuffle an N-cell synthetic input once")
    ap.add_argument("--big-nnz", type=float, default=1450)
    ap.add_argument("--big-only", action="store_true", help="only (c), added to the results in --json")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.big_only:
        if not (a.big and a.json and a.json.exists()):
            ap.error("--big-only needs --big N and an existing --json result")
        result = json.loads(a.json.read_text())
        outdir = a.workdir / "shuffle"
        outdir.mkdir(exist_ok=True)
        result["big"] = big_run(a.workdir, outdir, a.big, a.big_nnz, result["settings"]["max_memory"], a.timeout)
        return _write(result, a)
    inputs = a.inputs or default_inputs(a.workdir)
    outdir = a.workdir / "shuffle"
    outdir.mkdir(exist_ok=True)
    load_before = _loadavg()
    conv = convert_runs(inputs, outdir, a.repeats, a.max_memory, a.timeout)
    archives = {"input order": outdir / "input.scdl", "shuffled": outdir / "shuffled.scdl"}
    load = loader_runs(archives, a.repeats, a.seconds, a.label) if all(p.exists() for p in archives.values()) else []
    result = dict(system=_report.system_info(),
                  settings=dict(inputs=inputs.name, repeats=a.repeats, seconds=a.seconds, max_memory=a.max_memory,
                                label=a.label),
                  conversions=conv, loading=load, summary=summarize(conv, load, parse_memory(a.max_memory)),
                  load_before=load_before, load_after=_loadavg())
    if a.big:
        result["big"] = big_run(a.workdir, outdir, a.big, a.big_nnz, a.max_memory, a.timeout)
    return _write(result, a)


def _loadavg() -> str:
    """The 1/5/15-minute load averages: whether the machine was quiet while measured."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _write(result: dict, a) -> int:
    _report.write_outputs(result, markdown(result), a.json, a.markdown, workdir=a.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
