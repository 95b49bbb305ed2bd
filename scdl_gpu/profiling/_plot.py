"""Figures: throughput per configuration against the bounding ceiling; the stage breakdown."""

from __future__ import annotations

from pathlib import Path

from .._hints import PLOT


def pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError(f"plots need matplotlib: {PLOT}") from e
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _thousands(ax) -> None:
    from matplotlib.ticker import StrMethodFormatter

    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def plot_bench(result: dict, path) -> Path:
    """Bars of cells/s per configuration (label: runner or shuffle, batch, prefetch) with the ceiling."""
    plt = pyplot()
    runs = result["results"]
    labels = [f"{r.get('runner', 'scdl_gpu')}\n{r['shuffle']} @{r['batch_size']}"
              + (f" prefetch {r['prefetch']}" if r.get("prefetch") is not None else "") for r in runs]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(runs) + 2), 4.5), layout="constrained")
    bars = ax.bar(range(len(runs)), [r["cells_per_s"] for r in runs], color="#4C72B0")
    ax.bar_label(bars, labels=[f"{r['cells_per_s']:,.0f}" for r in runs], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(runs)), labels, fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("cells/s")
    _thousands(ax)
    b = result.get("bound") or {}
    if b.get("cells_per_s"):
        ax.axhline(b["cells_per_s"], color="#C44E52", ls="--", lw=1.2)
        ax.annotate(f"ceiling: {b['name'].replace('_', ' ')} ({b['cells_per_s']:,.0f} cells/s)", (0, b["cells_per_s"]),
                    xytext=(2, 3), textcoords="offset points", color="#C44E52", fontsize=8)
    s = result["system"]
    ax.set_title(f"{s['device']} ({s.get('gpu') or s['cpu']}), {result['archive']['n_rows']:,} cells; {s['date'][:10]}", fontsize=9)
    ax.set_ylim(0, max([r["cells_per_s"] for r in runs] + [b.get("cells_per_s") or 0]) * 1.25)
    out = Path(path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_profile(result: dict, path) -> Path:
    """One stacked bar of the stages' ms per batch, beside the consumer's wait and the wall time."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    bottom = 0.0
    colors = plt.get_cmap("tab10").colors
    for i, s in enumerate(result["stages"]):
        ax.bar(0, s["ms_per_batch"], bottom=bottom, color=colors[i % 10], label=s["stage"])
        bottom += s["ms_per_batch"]
    ax.bar(1, result["consumer_wait_ms_per_batch"], color="#8c8c8c", label="consumer wait")
    ax.bar(2, result["ms_per_batch"], color="#333333", label="wall")
    ax.set_xticks([0, 1, 2], ["producer stages", "consumer wait", "wall"])
    ax.set_ylabel("ms per batch")
    st, s = result["settings"], result["system"]
    ax.set_title(f"{st['shuffle']} @{st['batch_size']}, prefetch {st['prefetch']} on {s['device']} "
                 f"({s.get('gpu') or s['cpu']}); {s['date'][:10]}", fontsize=9)
    ax.bar_label(ax.containers[-2], fmt="%.2f", fontsize=8)
    ax.bar_label(ax.containers[-1], fmt="%.2f", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    out = Path(path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
