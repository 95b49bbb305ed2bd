"""Benchmark h5ad -> SCDL memmap conversion: wall time, peak RSS and archive size per converter.

Every run is a fresh child process (``python -c <template>``) so imports, allocator state and
peak RSS never leak between runs. Peak RSS is the largest of: the child's own ``VmHWM`` (read from
``/proc/self/status`` just before it exits; exact, per address space), the ``ru_maxrss`` of the
child's own reaped children, and the summed ``VmRSS`` of the child's process tree polled every
50 ms by the parent. (``ru_maxrss`` of the child itself, as ``wait4``/``RUSAGE_CHILDREN`` give it, is
NOT used: Linux carries the forking parent's RSS into it, so it reads at least the parent's size.)
RSS counts file pages the process has mapped (memmaps), as the kernel does; the polled peak of
anonymous memory (``RssAnon``) is recorded alongside.

Timing: ``convert s`` is measured inside the child around the conversion statement (plus
``del``/``gc``), so it excludes interpreter start-up and imports; ``process s`` is the child's
whole life as seen by the parent. The page cache is warm (the input is read once, untimed, with
plain file reads; nothing is dropped, nothing is fsync'ed).

Each archive is verified against the input after its run (row count, nnz, every row length,
exact values of sampled rows; see ``_verify.py``) and the benchmark exits non-zero if any run fails.

Examples::

    PYTHONPATH=. python benchmarks/bench_convert.py --n-cells 20000 --runners 'bionemo-scdl*' scdl_gpu
    PYTHONPATH=. python benchmarks/bench_convert.py --repeats 3 --json benchmarks/results/convert.json \\
        --markdown benchmarks/results/convert.md
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

try:  # imported as benchmarks.bench_convert
    from . import _report, _verify
    from .make_synthetic import make_synthetic_h5ad
except ImportError:  # run as a script
    import _report
    import _verify
    from make_synthetic import make_synthetic_h5ad

REPO = Path(__file__).resolve().parent.parent
_BIONEMO = "from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset"


@dataclass(frozen=True)
class Runner:
    """A converter: ``setup`` (imports, untimed) and ``convert`` (timed; may use ``inp``, ``out``)."""

    setup: str
    convert: str


#: name -> Runner. Add an entry to benchmark another converter; ``ds`` is deleted inside the timer.
RUNNERS: dict[str, Runner] = {
    "scdl_gpu": Runner("from scdl_gpu import SingleCellMemMapDataset",
                       "ds = SingleCellMemMapDataset(out, h5ad_path=inp, use_X_not_raw=True)"),
    "bionemo-scdl regular": Runner(_BIONEMO, "ds = SingleCellMemMapDataset(out, h5ad_path=inp, use_X_not_raw=True)"),
    "bionemo-scdl paginated": Runner(
        _BIONEMO, "ds = SingleCellMemMapDataset(out, h5ad_path=inp, use_X_not_raw=True, paginated_load_cutoff=0)"),
    "bionemo-scdl paginated-100k": Runner(
        _BIONEMO, "ds = SingleCellMemMapDataset(out, h5ad_path=inp, use_X_not_raw=True, paginated_load_cutoff=0,"
                  " load_block_row_size=100_000)"),
}

_CHILD = """\
import gc, json, resource, sys, time
def _hwm_kib():
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
t0 = time.perf_counter()
{setup}
t1 = time.perf_counter()
hwm_import = _hwm_kib()
inp, out, result = sys.argv[1], sys.argv[2], sys.argv[3]
t2 = time.perf_counter()
{convert}
globals().pop("ds", None)
gc.collect()
t3 = time.perf_counter()
with open(result, "w") as fh:
    json.dump({{"import_s": t1 - t0, "convert_s": t3 - t2, "hwm_after_import_kib": hwm_import,
               "hwm_kib": _hwm_kib(), "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}}, fh)
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """Summed (VmRSS, RssAnon) bytes of ``proc`` and its descendants, from /proc/<pid>/status."""
    try:
        pids = [proc.pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return 0, 0
    rss = anon = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                fields = dict(ln.split(":", 1) for ln in fh if ln.startswith(("VmRSS:", "RssAnon:")))
        except OSError:
            continue
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
    return rss, anon


def run_child(code: str, args: list[str], log_dir: Path, timeout: float, poll: float = 0.05) -> dict:
    """Run ``python -c code *args``; return rc, wall, CPU times and the polled tree RSS peaks."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "stdout.txt", "wb") as out, open(log_dir / "stderr.txt", "wb") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err,
                                 env=_child_env(), start_new_session=True)
        try:
            ps = psutil.Process(child.pid)
        except psutil.NoSuchProcess:  # already gone; nothing to poll
            ps = None
        polled = anon = 0
        while True:
            pid, status, ru = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            rss_now, anon_now = _tree_rss(ps) if ps else (0, 0)
            polled, anon = max(polled, rss_now), max(anon, anon_now)
            if time.perf_counter() - t0 > timeout:
                try:
                    os.killpg(child.pid, 9)  # the child's own session: only what we started
                except ProcessLookupError:
                    pass
            time.sleep(poll)
        wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
    return dict(rc=child.returncode, process_s=wall, wait4_maxrss_bytes=ru.ru_maxrss * 1024,
                polled_rss_bytes=polled, polled_anon_bytes=anon,
                cpu_user_s=ru.ru_utime, cpu_sys_s=ru.ru_stime, timed_out=wall > timeout,
                stderr_tail=(log_dir / "stderr.txt").read_text(errors="replace")[-2000:])


def run_runner(runner: Runner, name: str, rep: int, inp: str, out: Path, logs: Path, timeout: float) -> dict:
    """One timed run of ``runner`` in a fresh child; the record has ``error`` set when it failed."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    result_file = logs / "result.json"
    result_file.unlink(missing_ok=True)
    code = _CHILD.format(setup=runner.setup, convert=runner.convert)
    r = run_child(code, [inp, str(out), str(result_file)], logs, timeout)
    rec = dict(runner=name, repeat=rep, ok=False, error=None, rc=r["rc"], process_s=r["process_s"],
               cpu_user_s=r["cpu_user_s"], cpu_sys_s=r["cpu_sys_s"], polled_rss_bytes=r["polled_rss_bytes"],
               polled_anon_bytes=r["polled_anon_bytes"], peak_rss_bytes=r["polled_rss_bytes"],
               wait4_maxrss_bytes=r["wait4_maxrss_bytes"], log_dir=str(logs))
    if r["rc"] != 0 or not result_file.exists():
        rec["error"] = ("timed out" if r["timed_out"] else f"exit code {r['rc']}") + \
            f"; stderr tail: {r['stderr_tail'][-600:].strip()}"
        return rec
    child = json.loads(result_file.read_text())
    rec.update(convert_s=child["convert_s"], import_s=child["import_s"],
               rss_after_import_bytes=child["hwm_after_import_kib"] * 1024, hwm_bytes=child["hwm_kib"] * 1024,
               children_maxrss_bytes=child["children_maxrss_kib"] * 1024,
               peak_rss_bytes=max(1024 * max(child["hwm_kib"], child["children_maxrss_kib"]), r["polled_rss_bytes"]))
    return rec


def probe(name: str, timeout: float = 300) -> str | None:
    """None if the runner's setup code imports in a fresh interpreter, else the error tail."""
    r = subprocess.run([sys.executable, "-c", RUNNERS[name].setup], capture_output=True, text=True,
                       env=_child_env(), timeout=timeout)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]


def select_runners(patterns: list[str] | None) -> list[str]:
    """Expand names / fnmatch patterns / comma lists (``all`` = every runner) in RUNNERS order."""
    if not patterns:
        return list(RUNNERS)
    chosen: list[str] = []
    for pat in (p.strip() for item in patterns for p in item.split(",") if p.strip()):
        hits = list(RUNNERS) if pat == "all" else fnmatch.filter(RUNNERS, pat)
        if not hits:
            raise SystemExit(f"unknown runner {pat!r}; expected one of {list(RUNNERS)} (or a pattern)")
        chosen += [h for h in hits if h not in chosen]
    return [r for r in RUNNERS if r in chosen]


def warm_read(path: Path, block: int = 16 << 20) -> float:
    """Read the whole file once with plain reads (pulls it into the page cache); returns seconds."""
    t0, buf = time.perf_counter(), bytearray(block)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-cells", type=int, default=200_000)
    ap.add_argument("--n-genes", type=int, default=62_710)
    ap.add_argument("--nnz-per-cell", type=float, default=1450)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64", "int32", "int64"),
                    help="dtype of the synthetic X/data")
    ap.add_argument("--input", type=Path, help="use this h5ad instead of the synthetic one")
    ap.add_argument("--runners", nargs="+", metavar="NAME",
                    help=f"names, patterns or comma lists from {list(RUNNERS)}; default: all that import")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the archives (default: delete after checks)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--markdown", type=Path, help="write the results table here")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {a.repeats}")

    names, notes = select_runners(a.runners), []
    if a.runners is None:  # default: skip runners whose imports fail, loudly
        for name in list(names):
            err = probe(name)
            if err:
                names.remove(name)
                notes.append(f"runner {name!r} skipped: its imports fail ({err})")
                print(f"WARNING: {notes[-1]}", file=sys.stderr)
    a.workdir.mkdir(parents=True, exist_ok=True)
    gen = None
    if a.input:
        inp = a.input.resolve()
    else:
        inp = a.workdir / f"synthetic_{a.n_cells}x{a.n_genes}_nnz{a.nnz_per_cell:g}_seed{a.seed}_{a.dtype}.h5ad"
        if not inp.exists():
            tmp = inp.with_name(inp.name + ".partial")
            gen = make_synthetic_h5ad(tmp, a.n_cells, a.n_genes, a.nnz_per_cell, a.seed, a.dtype)
            tmp.rename(inp)
            print(f"generated {inp} in {gen['seconds']:.1f} s", file=sys.stderr)
    info = _verify.input_info(inp)
    if info["file_size"] / 2**20 >= 10_000 and "bionemo-scdl regular" in names:
        notes.append("input >= 10,000 MB: 'bionemo-scdl regular' actually took the paginated path")
    warm_s = warm_read(inp)
    runs: list[dict] = []
    total = a.repeats * len(names)
    for rep in range(a.repeats):
        for name in names:
            slug = name.replace(" ", "_")
            out, logs = a.workdir / "out" / f"{slug}-r{rep}", a.workdir / "logs" / f"{slug}-r{rep}"
            rec = run_runner(RUNNERS[name], name, rep, str(inp), out, logs, a.timeout)
            if rec["error"] is None:
                try:
                    rec.update(_verify.verify_archive(out, inp), archive_bytes=_verify.archive_size(out), ok=True)
                except _verify.VerificationError as exc:
                    rec["error"] = f"verification failed: {exc}"
            if not a.keep:
                shutil.rmtree(out, ignore_errors=True)
            runs.append(rec)
            status = (f"{rec['convert_s']:.2f} s convert, {rec['process_s']:.2f} s process, "
                      f"peak RSS {rec['peak_rss_bytes'] / 2**20:,.0f} MiB, verified") if rec["ok"] else rec["error"]
            print(f"[{len(runs)}/{total}] {name} r{rep}: {status}", file=sys.stderr)

    summary = _report.summarize(runs, info["n_cells"])
    result = dict(system=_report.system_info(), input=info, generation=gen, warm_read_s=warm_s, notes=notes,
                  config=dict(repeats=a.repeats, runners=names, page_cache="warm", workdir=str(a.workdir),
                              keep=a.keep, runner_code={n: RUNNERS[n].convert for n in names}),
                  runs=runs, summary=summary, comparison=_report.compare(summary))
    _report.write_outputs(result, _report.markdown(result), a.json, a.markdown, workdir=a.workdir)
    failed = [r for r in runs if not r["ok"]]
    if failed:
        print(f"ERROR: {len(failed)} run(s) failed: " + "; ".join(f"{r['runner']} r{r['repeat']}" for r in failed),
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
