"""Result tables of ``bench_convert.py``: system info, per-runner summary, comparison, markdown."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import statistics
import subprocess
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
RSS_LIMIT_BYTES = 1.5e9  #: "scdl_gpu peak RSS < 1.5 GB" (decimal GB)


def system_info() -> dict:
    def ver(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return dict(date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), host=platform.node(),
                platform=platform.platform(), cpu=cpu, cpu_count=os.cpu_count(),
                cpu_affinity=len(os.sched_getaffinity(0)), ram_gib=round(psutil.virtual_memory().total / 2**30, 1),
                python=platform.python_version(), git=git.stdout.strip() or None,
                versions={p: ver(p) for p in ("numpy", "scipy", "h5py", "anndata", "pandas", "pyarrow", "torch",
                                              "bionemo-scdl", "scdl-gpu")})


def summarize(runs: list[dict], n_cells: int) -> dict:
    out = {}
    for name in dict.fromkeys(r["runner"] for r in runs):
        ok = [r for r in runs if r["runner"] == name and r["ok"]]
        conv = [r["convert_s"] for r in ok]
        proc = [r["process_s"] for r in ok]
        out[name] = dict(
            n_ok=len(ok), n_failed=sum(r["runner"] == name and not r["ok"] for r in runs),
            convert_s_mean=statistics.mean(conv) if conv else None,
            convert_s_stdev=statistics.stdev(conv) if len(conv) > 1 else None,
            process_s_mean=statistics.mean(proc) if proc else None,
            cells_per_s=n_cells / statistics.mean(conv) if conv else None,
            peak_rss_mib=max(r["peak_rss_bytes"] for r in ok) / 2**20 if ok else None,
            import_rss_mib=max(r["rss_after_import_bytes"] for r in ok) / 2**20 if ok else None,
            peak_anon_mib=max(r["polled_anon_bytes"] for r in ok) / 2**20 if ok else None,
            archive_mib=ok[-1]["archive_bytes"] / 2**20 if ok else None,
            dtypes=ok[-1]["dtypes"] if ok else None)
    return out


def compare(summary: dict) -> dict:
    """Speedup of scdl_gpu over the fastest bionemo-scdl mode, and its RSS against 1.5 GB."""
    bio = {k: v for k, v in summary.items() if k.startswith("bionemo-scdl") and v["convert_s_mean"]}
    gpu = summary.get("scdl_gpu") or {}
    res = dict(fastest_bionemo=None, speedup=None, process_speedup=None, scdl_gpu_peak_rss_mib=gpu.get("peak_rss_mib"),
               rss_limit_mib=RSS_LIMIT_BYTES / 2**20, scdl_gpu_rss_below_limit=None)
    if bio:
        res["fastest_bionemo"] = best = min(bio, key=lambda k: bio[k]["convert_s_mean"])
        if gpu.get("convert_s_mean"):
            res["speedup"] = bio[best]["convert_s_mean"] / gpu["convert_s_mean"]
            res["process_speedup"] = bio[best]["process_s_mean"] / gpu["process_s_mean"]
    if gpu.get("peak_rss_mib") is not None:
        res["scdl_gpu_rss_below_limit"] = gpu["peak_rss_mib"] * 2**20 < RSS_LIMIT_BYTES
    return res


def _fmt(v, spec: str, none: str = "–") -> str:
    return none if v is None else format(v, spec)


def markdown(result: dict) -> str:
    s, i, c = result["system"], result["input"], result["comparison"]
    v = s["versions"]
    lines = [
        f"# h5ad -> SCDL conversion benchmark ({s['date']})", "",
        f"- machine: {s['cpu']}, {s['cpu_count']} CPUs ({s['cpu_affinity']} usable), {s['ram_gib']} GiB RAM; "
        f"{s['platform']}",
        f"- python {s['python']}, numpy {v['numpy']}, h5py {v['h5py']}, anndata {v['anndata']}, scipy {v['scipy']}, "
        f"torch {v['torch']}, bionemo-scdl {v['bionemo-scdl']}, repo git {s['git']}",
        f"- input: `{Path(i['path']).name}` {i['n_cells']:,} cells x {i['n_genes']:,} genes, nnz {i['nnz']:,} "
        f"({i['nnz'] / i['n_cells']:.0f}/cell), {i['dtype']} data, compression {i['compression']}, "
        f"{i['file_size'] / 2**20:,.1f} MiB",
        f"- method: warm page cache (one untimed plain read of the input, {result['warm_read_s']:.1f} s; nothing "
        f"dropped, no fsync); each run a fresh subprocess; {result['config']['repeats']} repeat(s), runners "
        "interleaved; `convert s` = inside the child, excluding imports; `process s` = whole child incl. "
        "interpreter start and imports; peak RSS = max(child VmHWM, its children's ru_maxrss, polled "
        "process-tree RSS), file-backed (memmap) pages included; anon = polled peak RssAnon of the tree; "
        "every archive verified against the input", "",
        "| runner | n | convert s (mean ± sd) | cells/s | process s | peak RSS MiB | peak anon MiB "
        "| RSS after imports MiB | archive MiB | data/col/row dtypes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["summary"].items():
        dts = r["dtypes"] or {}
        conv = "FAILED" if r["convert_s_mean"] is None else (
            f"{r['convert_s_mean']:.2f} ± {_fmt(r['convert_s_stdev'], '.2f')}")
        n_runs = f"{r['n_ok']}" + (f" (+{r['n_failed']} failed)" if r["n_failed"] else "")
        mib = " | ".join(_fmt(r[k], ",.0f") for k in ("peak_rss_mib", "peak_anon_mib", "import_rss_mib"))
        lines.append(f"| {name} | {n_runs} | {conv} | {_fmt(r['cells_per_s'], ',.0f')} | "
                     f"{_fmt(r['process_s_mean'], '.2f')} | {mib} | {_fmt(r['archive_mib'], ',.1f')} | "
                     f"{'/'.join(dts.get(k, '?') for k in ('data.npy', 'col_ptr.npy', 'row_ptr.npy'))} |")
    lines.append("")
    if c["speedup"] is not None:
        lines.append(f"- scdl_gpu vs fastest bionemo-scdl mode ({c['fastest_bionemo']}): **{c['speedup']:.2f}x** "
                     f"(convert s), {c['process_speedup']:.2f}x (process s)")
    if c["scdl_gpu_rss_below_limit"] is not None:
        lines.append(f"- scdl_gpu peak RSS {c['scdl_gpu_peak_rss_mib']:,.0f} MiB "
                     f"{'<' if c['scdl_gpu_rss_below_limit'] else '>='} 1.5 GB ({c['rss_limit_mib']:,.0f} MiB): "
                     f"**{'yes' if c['scdl_gpu_rss_below_limit'] else 'NO'}**")
    lines += [f"- note: {n}" for n in result["notes"]]
    failures = [r for r in result["runs"] if not r["ok"]]
    lines += [f"- FAILED {r['runner']} repeat {r['repeat']}: {r['error']}" for r in failures]
    return "\n".join(lines) + "\n"


def portable(value, roots) -> object:
    """``value`` with every path under one of ``roots`` (``{"<workdir>": path, ...}``, or one path
    meaning ``<workdir>``) written under its label: committed results must not carry the measuring
    machine's directories."""
    if not isinstance(roots, dict):
        roots = {"<workdir>": roots}
    if isinstance(value, str):
        for label, root in roots.items():
            if root is not None and Path(root).is_absolute():  # relative paths name no machine
                value = value.replace(str(root).rstrip("/"), label)
        return value
    if isinstance(value, dict):
        return {k: portable(v, roots) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, roots) for v in value]
    return value


def write_outputs(result: dict, text: str, json_path=None, markdown_path=None, workdir=None) -> None:
    """Print the markdown table and write the JSON and markdown files asked for (paths under
    ``workdir`` written as ``<workdir>``; ``workdir`` may be a mapping as :func:`portable` takes)."""
    import json

    if workdir is not None:
        result, text = portable(result, workdir), portable(text, workdir)
    print(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(text)
