"""Benchmark converting 10 inputs into an atlas on Dask (a 2-worker LocalCluster) against threads.

Runners, each a fresh subprocess calling ``scdl-gpu convert`` in-process with the flags a user
would type (the same method as ``bench_convert_dir.py``: warm page cache, runners interleaved):

* ``convert --workers 2``: the inputs into ONE archive (threads);
* ``convert --atlas --workers 2``: one member per input (threads);
* ``convert --atlas --scheduler local --workers 2``: one member per input on a Dask LocalCluster
  of 2 worker processes (one thread each); the cluster's start is inside the timer.

Peak RSS per worker is the peak resident set (``VmHWM``) of each process that converted a
member (the pids the conversion report names; for threads, the converting process itself),
polled with psutil over the process tree. Every archive (or member) is checked against its
input on sampled rows. Wall times are medians of ``--repeats`` interleaved repeats.

Example::

    PYTHONPATH=. python benchmarks/bench_atlas_convert.py --repeats 3 \\
        --json benchmarks/results/atlas_convert_cpu.json --markdown benchmarks/results/atlas_convert_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

try:  # imported as benchmarks.bench_atlas_convert
    from . import _report, _verify
    from .bench_convert import _CHILD, Runner, _child_env, warm_read
    from .bench_convert_dir import make_inputs
except ImportError:  # run as a script
    import _report
    import _verify
    from bench_convert import _CHILD, Runner, _child_env, warm_read
    from bench_convert_dir import make_inputs

_SETUP = "from scdl_gpu.cli import main\nimport scdl_gpu.convert  # imports outside the timer"
_ARGV = 'assert main(["convert", inp, "-o", out, "--use-X-not-raw", "-q", "--workers", "2"{extra}]) == 0'

#: name -> (runner, writes an atlas)
RUNNERS: dict[str, tuple[Runner, bool]] = {
    "convert --workers 2 (one archive)": (Runner(_SETUP, _ARGV.format(extra="")), False),
    "convert --atlas --workers 2 (threads)": (Runner(_SETUP, _ARGV.format(extra=', "--atlas", "--report", out + ".json"')), True),
    "convert --atlas --scheduler local --workers 2 (Dask)": (
        Runner(_SETUP, _ARGV.format(extra=', "--atlas", "--scheduler", "local", "--report", out + ".json"')), True),
}


def _hwm(pid: int) -> int:
    """Peak resident bytes of ``pid`` so far (``VmHWM``), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def run(name: str, inp: Path, out: Path, logs: Path, timeout: float, poll: float = 0.05) -> dict:
    """One timed run in a fresh child; peaks per process of its tree, and the summed tree RSS."""
    runner, atlas = RUNNERS[name]
    shutil.rmtree(out, ignore_errors=True)
    Path(str(out) + ".json").unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    result_file = logs / "result.json"
    result_file.unlink(missing_ok=True)
    code = _CHILD.format(setup=runner.setup, convert=runner.convert)
    peaks: dict[int, int] = {}
    tree = 0
    with open(logs / "stdout.txt", "wb") as so, open(logs / "stderr.txt", "wb") as se:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code, str(inp), str(out), str(result_file)], stdout=so, stderr=se,
                                 env=_child_env(), start_new_session=True)
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                pids = [child.pid, *(c.pid for c in root.children(recursive=True))]
            except psutil.Error:
                pids = []
            now = 0
            for pid in pids:
                peaks[pid] = max(peaks.get(pid, 0), _hwm(pid))
                try:
                    now += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    pass
            tree = max(tree, now)
            if time.perf_counter() - t0 > timeout:
                os.killpg(child.pid, 9)
            time.sleep(poll)
        wall = time.perf_counter() - t0
    rec = dict(runner=name, ok=False, error=None, rc=child.returncode, process_s=wall, tree_rss_bytes=tree)
    if child.returncode != 0 or not result_file.exists():
        rec["error"] = f"exit code {child.returncode}: {(logs / 'stderr.txt').read_text(errors='replace')[-600:]}"
        return rec
    res = json.loads(result_file.read_text())
    main_peak = max(res["hwm_kib"] * 1024, peaks.get(child.pid, 0))
    if atlas:
        report = json.loads(Path(str(out) + ".json").read_text())
        workers = sorted({m["pid"] for m in report["converted"]})
        rec["tasks_s"] = sum(m["seconds"] for m in report["converted"])
    else:
        workers = [child.pid]
    per_worker = [main_peak if pid == child.pid else peaks.get(pid, 0) for pid in workers]
    rec.update(convert_s=res["convert_s"], main_rss_bytes=main_peak, worker_pids=workers, worker_rss_bytes=per_worker)
    return rec


def check(name: str, out: Path, inputs: list[Path]) -> dict:
    if not RUNNERS[name][1]:
        return _verify.verify_archive(out, inputs, n_sample_rows=16)
    report = json.loads(Path(str(out) + ".json").read_text())
    by_name = {p.stem: p for p in inputs}
    assert len(report["converted"]) == len(inputs), report["converted"]
    for m in report["converted"]:
        _verify.verify_archive(m["member"], [by_name[m["name"]]], n_sample_rows=4)
    return {"members": len(report["converted"])}


def summarize(runs: list[dict]) -> dict:
    out = {}
    for name in RUNNERS:
        ok = [r for r in runs if r["runner"] == name and r["ok"]]
        med = (lambda k: statistics.median(r[k] for r in ok) if ok else None)
        out[name] = dict(
            n_ok=len(ok), n_failed=sum(r["runner"] == name and not r["ok"] for r in runs),
            convert_s_median=med("convert_s"), process_s_median=med("process_s"),
            tasks_s_median=med("tasks_s") if ok and "tasks_s" in ok[0] else None,
            worker_rss_mib_max=max((max(r["worker_rss_bytes"]) for r in ok), default=0) / 2**20 if ok else None,
            main_rss_mib_max=max(r["main_rss_bytes"] for r in ok) / 2**20 if ok else None,
            tree_rss_mib_max=max(r["tree_rss_bytes"] for r in ok) / 2**20 if ok else None,
            workers=len(ok[-1]["worker_pids"]) if ok else None,
        )
    return out


def markdown(result: dict) -> str:
    s, i = result["system"], result["input"]
    fmt = _report._fmt
    lines = [
        f"# Atlas conversion on Dask vs threads ({s['date']})", "",
        f"- machine: {s['cpu']}, {s['cpu_count']} CPUs ({s['cpu_affinity']} usable), {s['ram_gib']} GiB RAM; {s['platform']}",
        f"- python {s['python']}, numpy {s['versions']['numpy']}, h5py {s['versions']['h5py']}, "
        f"dask/distributed {result['dask']}, repo git {s['git']}",
        f"- input: {i['n_files']} synthetic Tahoe-like h5ad files x {i['n_cells_per_file']:,} cells = {i['n_cells']:,} cells, "
        f"{i['n_genes']:,} genes, nnz {i['nnz']:,}, float32 CSR, {i['bytes'] / 2**20:,.0f} MiB in all",
        f"- method: warm page cache; each run a fresh subprocess calling `scdl-gpu convert` in-process; median of "
        f"{result['config']['repeats']} interleaved repeats; `convert s` excludes interpreter start and imports (the "
        "LocalCluster's start is inside it), `process s` includes them; peak RSS per worker = the largest VmHWM of the "
        "processes that converted members (threads: the converting process, whose 2 threads share it); "
        "`member tasks s` = the time inside the member tasks, summed over members; tree = the polled RSS summed over the "
        "process tree (scheduler, nannies and workers included); every archive or member checked on sampled rows",
        "",
        "| runner | n | convert s (median) | process s (median) | member tasks s (sum) | worker processes | peak RSS per worker MiB | peak tree RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["summary"].items():
        n_runs = f"{r['n_ok']}" + (f" (+{r['n_failed']} failed)" if r["n_failed"] else "")
        lines.append(
            f"| `{name}` | {n_runs} | "
            f"{fmt(r['convert_s_median'], '.2f')} | {fmt(r['process_s_median'], '.2f')} | {fmt(r['tasks_s_median'], '.2f')} | "
            f"{fmt(r['workers'], 'd')} | "
            f"{fmt(r['worker_rss_mib_max'], ',.0f')} | {fmt(r['tree_rss_mib_max'], ',.0f')} |"
        )
    lines.append("")
    lines += [f"- note: {n}" for n in result["notes"]]
    lines += [f"- FAILED {r['runner']} repeat {r['repeat']}: {r['error']}" for r in result["runs"] if not r["ok"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-files", type=int, default=10)
    ap.add_argument("--n-cells", type=int, default=20_000, help="cells per file")
    ap.add_argument("--n-genes", type=int, default=62_710)
    ap.add_argument("--nnz-per-cell", type=float, default=1450)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--inputs", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench" / "atlas_inputs",
                    help="where the inputs are generated once and reused")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench" / "atlas_convert")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    inputs = make_inputs(a.inputs, a.n_files, a.n_cells, a.n_genes, a.nnz_per_cell)
    infos = [_verify.input_info(p) for p in inputs]
    for p in inputs:
        warm_read(p)
    runs: list[dict] = []
    for rep in range(a.repeats):
        for name in RUNNERS:
            slug = "".join(c if c.isalnum() else "_" for c in name)
            out, logs = a.workdir / "out" / slug, a.workdir / "logs" / f"{slug}-r{rep}"
            rec = run(name, a.inputs, out, logs, a.timeout)
            rec["repeat"] = rep
            if rec["error"] is None:
                try:
                    rec.update(check(name, out, inputs), ok=True)
                except (_verify.VerificationError, AssertionError) as exc:
                    rec["error"] = f"verification failed: {exc}"
            shutil.rmtree(out, ignore_errors=True)
            runs.append(rec)
            status = (f"{rec['convert_s']:.2f} s convert, {rec['process_s']:.2f} s process, peak RSS per worker "
                      f"{max(rec['worker_rss_bytes']) / 2**20:,.0f} MiB ({len(rec['worker_pids'])} workers)") if rec["ok"] else rec["error"]
            print(f"[{len(runs)}/{a.repeats * len(RUNNERS)}] {name} r{rep}: {status}", file=sys.stderr)
    import distributed

    result = dict(
        system=_report.system_info(), dask=distributed.__version__,
        input=dict(directory=str(a.inputs), n_files=len(inputs), n_cells_per_file=a.n_cells,
                   n_cells=sum(i["n_cells"] for i in infos), n_genes=a.n_genes, nnz=sum(i["nnz"] for i in infos),
                   bytes=sum(i["file_size"] for i in infos)),
        notes=[], config=dict(repeats=a.repeats, runner_code={n: r.convert for n, (r, _) in RUNNERS.items()}),
        runs=runs, summary=summarize(runs),
    )
    _report.write_outputs(result, markdown(result), a.json, a.markdown,
                          workdir={"<workdir>": a.workdir, "<inputs>": a.inputs})
    return 1 if any(not r["ok"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
