"""Backend throughput: cells/s delivered as a (synced) torch batch on the device, against ceilings and peers.

For each sampler (``random``: uniformly random rows; ``block``: one contiguous run of rows at a
random offset) and batch size, the backend assembles batches for ``--seconds`` after
``--warmup`` batches; a batch counts once its tensors exist on the device (``torch.cuda.synchronize``
on a GPU). Reported next to, in the same run:

* the read ceiling: on the CPU a plain ``memcpy`` of the same number of bytes (values + column
  indices) from the archive's page-cached files into a preallocated buffer; on a GPU a large
  sequential kvikio read from page cache into device memory;
* bionemo-scdl 0.1.3's ``SingleCellMemMapDataset`` in a torch ``DataLoader`` (its collate function,
  ``num_workers=0``) plus ``.to(device)``, with the same samplers and batch sizes.

The archive is the 200,000-cell Tahoe-like directory conversion (``bench_convert_dir.py``'s
inputs) unless ``--archive`` is given. Example::

    PYTHONPATH=. python benchmarks/bench_backend.py --json benchmarks/results/backend_cpu.json \\
        --markdown benchmarks/results/backend_cpu.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

try:  # imported as benchmarks.bench_backend
    from . import _report
except ImportError:  # run as a script
    import _report

SAMPLERS = ("random", "block")


def batches(sampler: str, n_rows: int, batch_size: int, seed: int):
    """An endless stream of row-id arrays."""
    rng = np.random.default_rng(seed)
    while True:
        if sampler == "random":
            yield rng.integers(0, n_rows, batch_size)
        else:
            start = int(rng.integers(0, max(1, n_rows - batch_size)))
            yield np.arange(start, min(n_rows, start + batch_size))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_loop(step, n_warmup: int, seconds: float, device: str) -> dict:
    """Run ``step() -> cells`` repeatedly; cells/s over the timed window after the warm-up."""
    for _ in range(n_warmup):
        step()
    _sync(device)
    cells = n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        cells += step()
        n += 1
    _sync(device)
    dt = time.perf_counter() - t0
    return dict(cells_per_s=cells / dt, batches=n, seconds=dt)


def bench_ours(path: Path, device: str, sampler: str, bs: int, seconds: float, warmup: int) -> dict:
    from scdl_gpu.backend import get_backend

    backend = get_backend(path, device=device)
    it = batches(sampler, backend.n_rows, bs, seed=1)
    nnz = []

    def step():
        b = backend.batch(next(it))
        nnz.append(b.values.numel())
        return b.shape[0]

    res = time_loop(step, warmup, seconds, device)
    res["mean_nnz_per_cell"] = float(np.sum(nnz) / (bs * len(nnz)))
    backend.close()
    return res


def bench_ceiling(path: Path, device: str, bytes_per_cell: float, seconds: float) -> dict:
    """Bytes/s of the plain read of the archive's values and columns, as cells/s."""
    from scdl_gpu.archive import open_arrays

    a = open_arrays(path)
    srcs = [a.data.view(np.ndarray), a.col_ptr.view(np.ndarray)]
    chunk = 64 << 20
    if device == "cuda":
        import cupy as cp
        import kvikio

        bufs = [cp.empty(chunk // s.itemsize, s.dtype) for s in srcs]
        files = [kvikio.CuFile(path / n, "r") for n in ("data.npy", "col_ptr.npy")]

        def step():
            total = 0
            for f, buf, src in zip(files, bufs, srcs):
                off = int(np.random.default_rng().integers(0, max(1, src.nbytes - chunk)))
                total += f.pread(buf, min(chunk, src.nbytes), file_offset=off).get()
            return total
    else:
        bufs = [np.empty(chunk // s.itemsize, s.dtype) for s in srcs]

        def step():
            total = 0
            for buf, src in zip(bufs, srcs):
                n = min(len(buf), len(src))
                off = int(np.random.default_rng().integers(0, max(1, len(src) - n)))
                np.copyto(buf[:n], src[off : off + n])
                total += n * src.itemsize
            return total

    res = time_loop(step, 2, seconds, device)
    bps = res.pop("cells_per_s")  # bytes here
    return dict(bytes_per_s=bps, cells_per_s=bps / bytes_per_cell, **res)


def bench_bionemo(path: Path, device: str, sampler: str, bs: int, seconds: float, warmup: int, workdir: Path) -> dict:
    from bionemo.scdl.io.single_cell_memmap_dataset import SingleCellMemMapDataset
    from bionemo.scdl.util.torch_dataloader_utils import collate_sparse_matrix_batch
    from torch.utils.data import DataLoader, RandomSampler, Sampler

    copy = workdir / "bionemo_copy"  # upstream maps archives read-write: give it its own copy
    if not copy.exists():
        shutil.copytree(path, copy)
    ds = SingleCellMemMapDataset(str(copy))

    class Blocks(Sampler):
        def __iter__(self):
            for rows in batches("block", len(ds), bs, seed=1):
                yield from rows.tolist()

        def __len__(self):
            return len(ds)

    smp = RandomSampler(ds, replacement=True, num_samples=10**9) if sampler == "random" else Blocks()
    loader = iter(DataLoader(ds, batch_size=bs, sampler=smp, collate_fn=collate_sparse_matrix_batch, num_workers=0))

    def step():
        b = next(loader)
        if device == "cuda":
            b = b.to("cuda")
        return b.shape[0]

    return time_loop(step, warmup, seconds, device)


def _median(results: list[dict]) -> dict | None:
    """The median run by cells/s, with every run's cells/s alongside."""
    if not results:
        return None
    ranked = sorted(results, key=lambda r: r["cells_per_s"])
    return dict(ranked[len(ranked) // 2], all_cells_per_s=[r["cells_per_s"] for r in results])


def default_archive(workdir: Path) -> Path:
    archive = workdir / "tahoe200k.scdl"
    if not archive.exists():
        from scdl_gpu.convert import convert_many

        inputs = workdir / "dir_10x20000_62710_nnz1450"
        if not inputs.exists():
            sys.path.insert(0, str(Path(__file__).parent))
            from bench_convert_dir import make_inputs

            make_inputs(inputs, 10, 20_000, 62_710, 1450)
        convert_many([inputs], archive, use_X_not_raw=True, data_dtype="auto", workers=2)
    return archive


def markdown(result: dict) -> str:
    s, c = result["system"], result["config"]
    lines = [
        f"# Backend throughput ({s['date']})", "",
        f"- machine: {s['cpu']}, {s['cpu_count']} CPUs, {s['ram_gib']} GiB RAM; device **{c['device']}**"
        + (f" ({c['gpu']})" if c.get("gpu") else ""),
        f"- archive: `{c['archive']}`: {c['n_rows']:,} cells, {c['n_cols']:,} genes, "
        f"~{c['nnz_per_cell']:.0f} stored values per cell, dtypes {c['dtypes']}",
        f"- method: warm page cache; {c['seconds']} s per measurement after {c['warmup']} warm-up batches, median of "
        f"{c['repeats']} interleaved repeats (all repeats in the JSON); a batch "
        "counts when its torch tensors exist on the device (synced on a GPU); `ceiling` = plain read of the same "
        "bytes (CPU: memcpy from the page-cached archive; GPU: sequential kvikio reads into device memory), as cells/s",
        "",
        "| sampler | batch | scdl_gpu cells/s | % of ceiling | bionemo-scdl cells/s | scdl_gpu / bionemo |",
        "|---|---|---|---|---|---|",
    ]
    ceil = result["ceiling"]["cells_per_s"]
    for r in result["runs"]:
        ours, bio = r["ours"]["cells_per_s"], (r.get("bionemo") or {}).get("cells_per_s")
        lines.append(
            f"| {r['sampler']} | {r['batch_size']} | {ours:,.0f} | {ours / ceil:.0%} | "
            f"{_report._fmt(bio, ',.0f')} | {'–' if not bio else f'{ours / bio:.1f}x'} |"
        )
    lines += ["", f"- ceiling: {result['ceiling']['bytes_per_s'] / 1e9:.2f} GB/s = {ceil:,.0f} cells/s"]
    lines += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", type=Path)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    ap.add_argument("--no-bionemo", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    from scdl_gpu.archive import open_arrays
    from scdl_gpu.backend import get_backend, resolve_device

    device = resolve_device(a.device)
    a.workdir.mkdir(parents=True, exist_ok=True)
    archive = a.archive or default_archive(a.workdir)
    backend = get_backend(archive, device="cpu")
    arrays = open_arrays(archive)
    nnz_per_cell = arrays.nnz / arrays.n_rows
    bytes_per_cell = nnz_per_cell * (arrays.data.itemsize + arrays.col_ptr.itemsize)
    config = dict(device=device, archive=str(archive), n_rows=arrays.n_rows, n_cols=backend.width,
                  nnz_per_cell=nnz_per_cell, dtypes={k: arrays.dtypes[k] for k in ("data.npy", "col_ptr.npy", "row_ptr.npy")},
                  seconds=a.seconds, warmup=a.warmup, repeats=a.repeats,
                  gpu=torch.cuda.get_device_name() if device == "cuda" else None)
    notes = []
    ceiling = bench_ceiling(archive, device, bytes_per_cell, a.seconds)
    print(f"ceiling: {ceiling['cells_per_s']:,.0f} cells/s", file=sys.stderr)
    runs = {(smp, bs): dict(sampler=smp, batch_size=bs, ours=[], bionemo=[]) for smp in a.samplers for bs in a.batch_sizes}
    for rep in range(a.repeats):  # interleaved, so slow phases of a shared machine hit every config
        for (sampler, bs), rec in runs.items():
            rec["ours"].append(bench_ours(archive, device, sampler, bs, a.seconds, a.warmup))
            if not a.no_bionemo:
                try:
                    rec["bionemo"].append(bench_bionemo(archive, device, sampler, bs, a.seconds, a.warmup, a.workdir))
                except ImportError as e:
                    notes.append(f"bionemo-scdl not measured: {e}")
            bio = rec["bionemo"][-1]["cells_per_s"] if rec["bionemo"] else None
            print(f"r{rep} {sampler} {bs}: ours {rec['ours'][-1]['cells_per_s']:,.0f} cells/s"
                  + (f", bionemo {bio:,.0f}" if bio else ""), file=sys.stderr)
    runs = [dict(r, ours=_median(r["ours"]), bionemo=_median(r["bionemo"])) for r in runs.values()]
    result = dict(system=_report.system_info(), config=config, ceiling=ceiling, runs=runs, notes=sorted(set(notes)))
    _report.write_outputs(result, markdown(result), a.json, a.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
