"""Seeded fault injection: every file of two archives damaged, each damaged copy read through every path.

Archives: a conversion of the bundled ``cxg_small_perturbations.h5ad`` and a small writer-built
archive with a neighbor graph and three var blocks, so that every kind of file an archive can hold
exists. For every file: truncated to 0 bytes, to half and to size - 1, extended with garbage,
replaced by garbage of the same size, deleted, and ``FLIPS`` seeded single-byte flips.

Each case runs in its own process: one child imports everything and reads the undamaged archives
once (the baseline, which also compiles the gathers), then forks one grandchild per case, so a
segfault or an abort fails only that case. The child uses numba's workqueue threading layer: GNU
OpenMP terminates a forked child of a process that has run it. A grandchild copies the archive, damages the copy and reads it: open, every row (``ds[i]``,
``get_row``), feature lookups, names, neighbors, one ``SingleCellLoader`` epoch on the CPU, then
``validate_archive``. Each stage's result is a digest of what it read, or the exception it raised.

Asserted: no case crashes or hangs; every exception is ours (``ArchiveError`` or a subclass, or
``FileNotFoundError``) and names the archive; no absurd allocation; and, once the checksum
manifest exists, that ``validate_archive`` reports every damage that changes what reads return.

Run it by hand for the figures: ``python -m tests.archive.test_fuzz [--flips N] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
H5AD = REPO / "tests" / "data" / "cxg_small_perturbations.h5ad"
SEED = 12
#: Flips per file: about 1,950 cases in all, ~2 minutes on 2 cores.
FLIPS = 32
#: A case that runs longer than this is a hang (each case takes well under a second).
CASE_TIMEOUT_S = 60
#: Peak resident memory a case may reach: a length field read as-is would allocate far more.
MAX_RSS_BYTES = 3 << 30
STRUCTURAL = ("truncate_0", "truncate_half", "truncate_minus_1", "extend", "replace", "delete")
OBS_COLUMNS = {"cxg": ["donor_id", "total_counts"], "blocks": ["kind", "score"]}


# -- the archives -----------------------------------------------------------------------------------
def build_archives(root: Path) -> dict[str, Path]:
    from scdl_gpu.archive import ArchiveWriter
    from scdl_gpu.convert import convert_h5ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cxg = convert_h5ad(H5AD, root / "cxg", use_X_not_raw=True)
    rng = np.random.default_rng(SEED)
    blocks = root / "blocks"
    # Three gene tables (two of the same width but other genes), so the var index holds three blocks.
    spans = [(0, 9, 30, "a"), (9, 21, 45, "b"), (21, 30, 30, "c")]
    with ArchiveWriter(blocks, n_vars=45, data_dtype="uint16") as w:
        for start, stop, genes, tag in spans:
            counts = rng.integers(0, 6, size=stop - start)
            counts[0] = 0  # an empty row in every block
            indptr = np.concatenate([[0], np.cumsum(counts)])
            cols = np.concatenate([rng.choice(genes, size=c, replace=False) for c in counts]).astype(w.col_dtype)
            vals = rng.integers(1, 60000, size=int(indptr[-1])).astype("uint16")
            w.append_rows(indptr, cols, vals)
            names = [f"{tag}_gene{i}" for i in range(genes)]
            w.add_var_block(stop - start, {"gene_symbol": np.array(names), "length": np.arange(genes) * 7}, f"input_{tag}", names=names)
        n = spans[-1][1]
        w.add_obs_block(
            {"kind": np.array([["T", "B", "NK"][i % 3] for i in range(n)]), "score": np.linspace(0, 1, n)},
            "cells",
            names=[f"cell{i:03d}" for i in range(n)],
        )
        degree = rng.integers(0, 4, size=n)
        nb_ptr = np.concatenate([[0], np.cumsum(degree)])
        w.append_neighbor_rows(nb_ptr, rng.integers(0, n, size=int(nb_ptr[-1])), rng.random(int(nb_ptr[-1])))
        w.commit()
    return {"cxg": cxg, "blocks": blocks}


def archive_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def make_cases(archives: dict[str, Path], flips: int, seed: int = SEED) -> list[dict]:
    """Every damage of every file, in a fixed order with seeded flip positions and masks."""
    rng = random.Random(seed)
    cases = []
    for name in sorted(archives):
        for rel in archive_files(archives[name]):
            size = (archives[name] / rel).stat().st_size
            for kind in STRUCTURAL:
                if (kind == "truncate_minus_1" and size < 1) or (kind in ("truncate_0", "truncate_half", "replace") and size < 2):
                    continue
                cases.append({"archive": name, "file": rel, "kind": kind})
            for _ in range(flips if size else 0):
                pos, mask = rng.randrange(size), rng.randrange(1, 256)
                cases.append({"archive": name, "file": rel, "kind": "flip", "pos": pos, "mask": mask})
    for i, case in enumerate(cases):
        case["id"] = i
        case["seed"] = rng.randrange(2**32)  # bytes of extend/replace
    return cases


def describe(case: dict) -> str:
    extra = f"@{case['pos']}^{case['mask']:#04x}" if case["kind"] == "flip" else ""
    return f"{case['archive']}/{case['file']} {case['kind']}{extra}"


def damage(path: Path, case: dict) -> None:
    f = path / case["file"]
    kind = case["kind"]
    garbage = random.Random(case["seed"]).randbytes
    if kind == "delete":
        f.unlink()
    elif kind == "extend":
        with open(f, "ab") as fh:
            fh.write(garbage(64))
    elif kind == "replace":
        f.write_bytes(garbage(f.stat().st_size))
    elif kind == "flip":
        with open(f, "r+b") as fh:
            fh.seek(case["pos"])
            byte = fh.read(1)[0]
            fh.seek(case["pos"])
            fh.write(bytes([byte ^ case["mask"]]))
    else:
        size = f.stat().st_size
        os.truncate(f, {"truncate_0": 0, "truncate_half": size // 2, "truncate_minus_1": size - 1}[kind])


# -- reading: the same for the baseline and every damaged copy -------------------------------------
def _update(h, *items) -> None:
    for x in items:
        if isinstance(x, np.ndarray) and x.dtype.kind not in "OUS":
            h.update(str((x.dtype.str, x.shape)).encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, np.ndarray):
            h.update(repr(x.tolist()).encode())
        elif isinstance(x, dict):
            for k in sorted(x):
                _update(h, k, x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            _update(h, *x)
            h.update(b"]")
        elif hasattr(x, "numpy"):  # a torch tensor
            _update(h, x.numpy())
        else:
            h.update(repr(x).encode())


def _stages(path: Path, archive: str):
    """``(name, callable returning what was read)`` for each read path; ``ds`` is shared."""
    from scdl_gpu import SingleCellLoader, SingleCellMemMapDataset

    has_neighbors = archive == "blocks"
    state = {}

    def open_():
        ds = state["ds"] = SingleCellMemMapDataset(str(path), load_neighbors=has_neighbors)
        return [len(ds), ds.number_nonzero_values(), ds.dtypes, ds.metadata]

    def rows():
        ds, out = state["ds"], []
        for i in range(len(ds)):
            (values, columns), _, _ = ds.get_row(i)
            out += [ds[i], values, columns]
        return out

    def features():
        ds, out = state["ds"], []
        var, obs = ds.var_features(), ds.obs_features()
        out += [var.column_dims(), var._labels, obs._labels, ds.shape()]
        starts = sorted({max(int(s), 0) for s in var._cumulative_sum_index[:-1]})
        out += [var.lookup(r) for r in starts if r < len(ds)]
        out += [obs.lookup(i) for i in range(len(ds))]
        out += [ds.get_row(i, return_var_features=True, return_obs_features=True)[1:] for i in (0, len(ds) - 1) if len(ds)]
        return out

    def names():
        ds = state["ds"]
        var = ds.var_features()
        starts = sorted({max(int(s), 0) for s in var._cumulative_sum_index[:-1]})
        return [ds.var_names(r) for r in starts if r < len(ds)] + [ds.obs_names()]

    def neighbors():
        ds = state["ds"]
        return [(ds.get_neighbor_indices_for_cell(i), ds.get_neighbor_weights_for_cell(i)) for i in range(len(ds))]

    def loader():
        out = []
        dl = SingleCellLoader(str(path), batch_size=64, shuffle="sequential", device="cpu",
                              obs_columns=OBS_COLUMNS[archive], neighbors=has_neighbors)
        try:
            for b in dl:
                x = b["X"]
                out += [x.crow_indices(), x.col_indices(), x.values(), b["rows"], b["obs"]]
                if has_neighbors:
                    nx = b["neighbor_X"]
                    out += [b["neighbor_rows"], nx.crow_indices(), nx.col_indices(), nx.values()]
        finally:
            dl.close()
        return out

    yield "open", open_, False
    yield "rows", rows, True
    yield "features", features, True
    yield "names", names, True
    if has_neighbors:
        yield "neighbors", neighbors, True
    yield "loader", loader, False


def _exception(e: BaseException, path: Path) -> dict:
    from scdl_gpu.errors import ArchiveError

    chain, seen = [], e
    while seen is not None and len(chain) < 8:
        chain.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return {
        "type": type(e).__name__,
        "message": str(e)[:600],
        "ours": isinstance(e, (ArchiveError, FileNotFoundError)),
        "names_archive": str(path) in str(e),
        "chain": chain,
    }


def read_everything(path: Path, archive: str) -> dict:
    """Each stage: ``{"digest": ...}`` or ``{"error": ...}``; then ``validate``'s problems."""
    from scdl_gpu.archive import validate_archive

    out = {}
    opened = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, stage, needs_open in _stages(path, archive):
            if needs_open and not opened:
                continue
            try:
                h = hashlib.blake2b(digest_size=16)
                _update(h, stage())
                out[name] = {"digest": h.hexdigest()}
            except Exception as e:  # what a user would see: recorded, classified by the parent
                out[name] = {"error": _exception(e, path)}
                opened = opened and name != "open"
        try:
            out["validate"] = {"problems": validate_archive(path)}
        except Exception as e:
            out["validate"] = {"error": _exception(e, path)}
    return out


# -- the child: baseline, then one forked grandchild per case --------------------------------------
def _grandchild(case: dict, archives: dict[str, Path], work: Path, results: Path) -> None:
    code = 0
    try:
        signal.alarm(CASE_TIMEOUT_S)  # SIGALRM ends a hang; the parent reports the signal
        fault = open(results / f"{case['id']}.fault", "w")
        faulthandler.enable(fault)
        copy = work / f"case{case['id']}" / case["archive"]
        shutil.copytree(archives[case["archive"]], copy)
        damage(copy, case)
        result = read_everything(copy, case["archive"])
        (results / f"{case['id']}.json").write_text(json.dumps(result))
        shutil.rmtree(copy.parent, ignore_errors=True)
    except BaseException:  # a harness failure, not the library's: reported by the missing result
        code = 3
    finally:
        os._exit(code)


def run_cases(cases: list[dict], archives: dict[str, Path], work: Path, jobs: int) -> list[dict]:
    results = work / "results"
    results.mkdir(exist_ok=True)
    pending, running, records = list(reversed(cases)), {}, []
    while pending or running:
        while pending and len(running) < jobs:
            case = pending.pop()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _grandchild(case, archives, work, results)
            running[pid] = (case, time.perf_counter())
        pid, status, usage = os.wait4(-1, 0)
        case, t0 = running.pop(pid)
        rec = dict(case, seconds=round(time.perf_counter() - t0, 3), max_rss=usage.ru_maxrss * 1024)
        rfile = results / f"{case['id']}.json"
        if os.WIFSIGNALED(status):
            rec["signal"] = signal.Signals(os.WTERMSIG(status)).name
            fault = results / f"{case['id']}.fault"
            # the Python stack at the fault, innermost frame first, without the loaded extension modules
            rec["fault"] = fault.read_text().split("\nExtension modules:")[0][:2000] if fault.exists() else ""
        elif rfile.exists():
            rec["result"] = json.loads(rfile.read_text())
        else:
            rec["harness_error"] = f"exit status {os.WEXITSTATUS(status)} without a result"
        records.append(rec)
    return sorted(records, key=lambda r: str(r["id"]).zfill(9))


def campaign(flips: int = FLIPS, jobs: int | None = None, work: Path | None = None) -> dict:
    """Build the archives, read them intact, run every case; returns the baseline and the records."""
    jobs = jobs or min(2, os.cpu_count() or 1)
    if "numba" not in sys.modules:  # read when numba first runs a parallel function
        os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    tmp = Path(tempfile.mkdtemp(prefix="scdl-fuzz-", dir=work))
    try:
        archives = build_archives(tmp / "archives")
        baseline = {name: read_everything(path, name) for name, path in archives.items()}
        cases = make_cases(archives, flips)
        t0 = time.perf_counter()
        records = run_cases(cases, archives, tmp, jobs)
        return {"baseline": baseline, "records": records, "seconds": round(time.perf_counter() - t0, 1),
                "flips": flips, "jobs": jobs, "files": {n: archive_files(p) for n, p in archives.items()}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- classification ---------------------------------------------------------------------------------
def classify(rec: dict, baseline: dict) -> dict:
    """What went wrong in one case: crash, foreign error, absurd allocation, changed reads, reported."""
    out = {"crash": None, "foreign": [], "unnamed": [], "alloc": None, "changed": False, "reported": False}
    if "signal" in rec:
        out["crash"] = rec["signal"] + (" (timeout)" if rec["signal"] == "SIGALRM" else "")
        return out
    if "harness_error" in rec:
        out["crash"] = rec["harness_error"]
        return out
    result, base = rec["result"], baseline[rec["archive"]]
    for stage, got in result.items():
        err = got.get("error")
        if err is None:
            continue
        if not err["ours"]:
            out["foreign"].append(f"{stage}: {err['type']}: {err['message'][:200]}")
        elif not err["names_archive"]:
            out["unnamed"].append(f"{stage}: {err['type']}: {err['message'][:200]}")
        if {"MemoryError", "ArrowMemoryError"} & set(err["chain"]):
            out["alloc"] = f"{stage}: {' <- '.join(err['chain'])}"
    if rec["max_rss"] > MAX_RSS_BYTES:
        out["alloc"] = f"peak RSS {rec['max_rss'] >> 20} MiB"
    out["changed"] = any(result.get(s) != base[s] for s in base if s != "validate")
    out["reported"] = bool(result["validate"].get("problems"))
    return out


def figures(report: dict) -> dict:
    """The issue's figures: cases tried, crashes, foreign errors, misses (and where)."""
    fig = Counter(cases=len(report["records"]))
    where = {k: Counter() for k in ("crash", "foreign", "unnamed", "alloc", "miss")}
    for rec in report["records"]:
        c = classify(rec, report["baseline"])
        key = f"{rec['archive']}/{rec['file']}"
        for k in ("crash", "alloc"):
            if c[k]:
                fig[k + "es" if k == "crash" else "absurd_allocations"] += 1
                where[k][key] += 1
        for k in ("foreign", "unnamed"):
            if c[k]:
                fig[f"{k}_errors"] += 1
                where[k][key] += 1
        fig["changed_reads"] += c["changed"]
        fig["reported_by_validate"] += c["reported"]
        if c["changed"] and not c["reported"] and not c["crash"]:
            fig["misses"] += 1
            where["miss"][key] += 1
    return {"figures": dict(fig), "where": {k: dict(v) for k, v in where.items() if v}}


def failures(report: dict, kind: str) -> list[str]:
    lines = []
    for rec in report["records"]:
        c = classify(rec, report["baseline"])
        if kind == "crash" and c["crash"]:
            lines.append(f"{describe(rec)}: {c['crash']}\n{rec.get('fault', '')[:600]}")
        elif kind in ("foreign", "unnamed") and c[kind]:
            lines.append(f"{describe(rec)}: " + " | ".join(c[kind]))
        elif kind == "alloc" and c["alloc"]:
            lines.append(f"{describe(rec)}: {c['alloc']}")
        elif kind == "miss" and c["changed"] and not c["reported"] and not c["crash"]:
            changed = [s for s, v in rec["result"].items() if s != "validate" and v != report["baseline"][rec["archive"]][s]]
            lines.append(f"{describe(rec)}: reads changed in {changed}, validate reported nothing")
    return lines


# -- the tests --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "report.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "tests.archive.test_fuzz", "--json", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"the fuzz child failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


def _assert_none(report: dict, kind: str, what: str) -> None:
    bad = failures(report, kind)
    summary = json.dumps(figures(report), indent=1)
    assert not bad, f"{len(bad)} of {len(report['records'])} cases {what}:\n" + "\n".join(bad[:40]) + f"\n{summary}"


pytestmark = pytest.mark.slow


def test_baseline_reads_and_validates(report):
    """The undamaged archives read through every stage and validate clean: the cases are not vacuous."""
    for name, result in report["baseline"].items():
        assert all("digest" in v for s, v in result.items() if s != "validate"), (name, result)
        assert result["validate"] == {"problems": []}, (name, result["validate"])
    files = {f.rsplit("/", 1)[-1] for fs in report["files"].values() for f in fs}
    for expected in ("header.sch", "data.npy", "row_ptr.npy", "col_ptr.npy", "metadata.json", "version.json",
                     "scdl_gpu.json", "neighbor_indptr.npy", "neighbor_indices.npy", "neighbor_values.npy",
                     "cumulative_sum_index.npy", "labels.json", "labels.npy", "version.npy",
                     "dataframe_0.parquet", "dataframe_2.parquet", "names_0.arrow", "names_2.arrow"):
        assert expected in files, expected
    assert len(report["records"]) > 500


def test_no_case_crashes_or_hangs(report):
    _assert_none(report, "crash", "crashed or hung")


def test_only_our_errors(report):
    _assert_none(report, "foreign", "raised an exception that is not ArchiveError or FileNotFoundError")


def test_errors_name_the_archive(report):
    _assert_none(report, "unnamed", "raised an error that does not name the archive")


def test_no_absurd_allocation(report):
    _assert_none(report, "alloc", "tried to allocate from a damaged length field")


def test_validate_reports_every_damage_that_changes_reads(report):
    if importlib.util.find_spec("scdl_gpu.archive._checksums") is None:
        pytest.skip("no checksum manifest yet (scdl_gpu.archive._checksums): without it validate cannot see a "
                    "flipped value; this assertion switches on when the module lands")
    _assert_none(report, "miss", "changed what reads return while validate reported nothing")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fault-injection campaign over SCDL archives (see the module docstring).")
    p.add_argument("--flips", type=int, default=FLIPS, help=f"seeded single-byte flips per file (default {FLIPS})")
    p.add_argument("--jobs", type=int, default=None, help="cases run at once (default: min(2, cores))")
    p.add_argument("--json", type=Path, help="write the full report here")
    args = p.parse_args(argv)
    rep = campaign(args.flips, args.jobs)
    if args.json:
        args.json.write_text(json.dumps(rep))
    summary = figures(rep)
    print(json.dumps({**summary, "seconds": rep["seconds"], "flips_per_file": rep["flips"]}, indent=1))
    for kind in ("crash", "foreign", "alloc", "unnamed", "miss"):
        for line in failures(rep, kind)[:15]:
            print(f"[{kind}] {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
