"""Readable terminal tables of bench and profile results."""

from __future__ import annotations


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _mib(n) -> str:
    return "–" if n is None else f"{n / 2**20:,.0f}"


def _gbs(bps) -> str:
    return "–" if not bps else f"{bps / 1e9:.2f} GB/s"


def _describe(result: dict) -> list[str]:
    s, a = result["system"], result["archive"]
    where = s["gpu"] if s.get("gpu") else f"{s['cpu']} ({s['cpus']} CPUs)"
    return [
        f"archive  {a['path']}: {a['n_rows']:,} cells, {a['values_per_cell']:,.0f} values/cell, {a['bytes_per_cell']:,.0f} B/cell",
        f"device   {s['device']}: {where}; {s['date']}",
    ]


def format_bench(result: dict) -> str:
    lines = _describe(result)
    ceil = result["ceilings"]
    if ceil:
        parts = [f"{name.replace('_', ' ')} {_gbs(c.get('bytes_per_s'))}" for name, c in ceil.items()]
        b = result["bound"]
        lines.append("ceilings " + "; ".join(parts))
        bounds = {k: v for k, v in (result.get("bounds") or {}).items() if v.get("cells_per_s")}
        if len({v["name"] for v in bounds.values()}) > 1:  # residencies bounded by different ceilings
            lines.append("bounds   " + "; ".join(f"{k}: {v['name'].replace('_', ' ')} {v['cells_per_s']:,.0f} cells/s"
                                                 for k, v in bounds.items()))
        elif b["cells_per_s"]:
            lines.append(f"bound    {b['name'].replace('_', ' ')}: {b['cells_per_s']:,.0f} cells/s")
    if result.get("warmup_s") is not None:  # results written before the warm-up was separate lack it
        lines.append(f"warm-up  {1e3 * result['warmup_s']:,.0f} ms once, before the first configuration (compile and "
                     "cache loads, one loader set-up); 'first ms' is each configuration's own set-up and first batch")
    if any(r.get("cold") for r in result["results"]):
        lines.append("cold     each configuration started with the archive's files dropped from the page cache (--cold)")
    lines.append("")
    rows = []
    runs = result["results"]
    runners = any("runner" in r for r in runs)
    residency = any("residency" in r for r in runs)  # results written before the loader had a residency lack it
    for r in runs:
        frac = r.get("fraction_of_bound")
        pf = "–" if r.get("prefetch") is None else str(r["prefetch"])
        where = r.get("residency") or "–"
        if r.get("residency_used") and r["residency_used"] != where:
            where += f" ({r['residency_used']})"
        rows.append(([r.get("runner", "scdl_gpu")] if runners else []) + ([where] if residency else [])
                    + [r["shuffle"], str(r["batch_size"]), pf, f"{r['cells_per_s']:,.0f}",
                       f"{r['batches_per_s']:,.1f}", "–" if frac is None else f"{frac:.1%}",
                       f"{1e3 * r['first_batch_s']:,.0f}", _mib(r["host_rss_peak_bytes"]), _mib(r["host_anon_peak_bytes"]),
                       _mib(r.get("device_mem_added_bytes"))])
    labels = any("distinct_labels" in r for r in runs)
    if labels:
        for row, r in zip(rows, runs):
            row += [_distinct(r)]
    lines.append(_table((["runner"] if runners else []) + (["residency"] if residency else [])
                        + ["shuffle", "batch", "prefetch", "cells/s", "batches/s", "of bound", "first ms", "RSS MiB",
                           "anon MiB", "device MiB"] + ([f"distinct {runs[0]['diversity_column']} (random)"] if labels else []), rows))
    return "\n".join(lines)


def _distinct(r: dict) -> str:
    """Mean distinct labels per batch, the random-batch expectation, and their ratio."""
    seen, rand = r.get("distinct_labels"), r.get("random_distinct_labels")
    if seen is None or rand is None:
        return "–"
    return f"{seen:,.1f} ({rand:,.1f}, {seen / rand:.0%})"


def format_profile(result: dict) -> str:
    st = result["settings"]
    lines = _describe(result)
    lines.append(f"config   shuffle={st['shuffle']} batch_size={st['batch_size']} prefetch={st['prefetch']}: "
                 f"{result['batches']} batches, {result['cells_per_s']:,.0f} cells/s (stages timed)")
    lines.append("")
    gpu = st["device"] == "cuda"
    total = result["stages_ms_per_batch"] or 1.0
    rows = [[s["stage"], f"{s['ms_per_batch']:.3f}", f"{s['ms_per_batch'] / total:.0%}"]
            + ([f"{s['device_ms_per_batch']:.3f}"] if gpu else []) for s in result["stages"]]
    rows.append(["stages, all", f"{result['stages_ms_per_batch']:.3f}", "100%"] + (["–"] if gpu else []))
    rows.append(["consumer wait", f"{result['consumer_wait_ms_per_batch']:.3f}", "–"] + (["–"] if gpu else []))
    rows.append(["wall", f"{result['ms_per_batch']:.3f}", "–"] + (["–"] if gpu else []))
    lines.append(_table(["stage", "ms/batch", "share"] + (["GPU ms/batch"] if gpu else []), rows))
    return "\n".join(lines)
