"""Block order from object storage against local disk: one archive read by the CPU loader from a
local directory, through the range reader without a server (``file://``), and from a local S3
server (moto on 127.0.0.1) as it is and in upstream's chunked layout, in one run.

The archive: the first ``--files`` Tahoe-like inputs of ``bench_convert_dir.py`` (20,000 cells each,
62,710 genes, ~1,450 values per cell; generated if missing) converted once with
``convert_many(use_X_not_raw=True, data_dtype="auto")`` into ``--workdir``, and a chunked copy
(``--chunk-size`` rows per chunk, so each object holds a few MiB), both uploaded to a bucket of the
local server. Each measurement is :func:`scdl_gpu.profiling.measure` over ``SingleCellLoader(source,
batch_size=B, shuffle="block", block_size=b, device="cpu")`` (the first batch and one more untimed,
then cells/s over ``--seconds``), every source and block size interleaved in each of ``--repeats``
repeats, medians reported (every repeat in the JSON). The local archive's page cache is warm (read
once before each repeat); the server holds the objects in memory.

What it measures is the range reader's cost over a loopback link plus the server's own cost per
request, not a network: moto reads the whole object for every range request, so the flat archive's
two large objects cost it far more per request than the chunked copy's small ones. A real store
adds its latency to each request instead, which block order's few long ranges hide and random
order's one range per row does not.

    PYTHONPATH=. python benchmarks/bench_remote.py --repeats 3 --json benchmarks/results/remote_cpu.json \\
        --markdown benchmarks/results/remote_cpu.md
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:  # imported as benchmarks.bench_remote
    from . import _report
    from .bench_convert import warm_read
    from .bench_convert_dir import make_inputs
    from .bench_loader import DEFAULT_INPUTS, _build
except ImportError:  # run as a script
    import _report
    from bench_convert import warm_read
    from bench_convert_dir import make_inputs
    from bench_loader import DEFAULT_INPUTS, _build

#: (name, which archive, where, range cache MiB or None for the default): the small cache is below the
#: archive's size, so every epoch reads its ranges again (steady streaming); the default one holds it all
SOURCES = (("local", "flat", "disk", None), ("file://", "flat", "file", "small"), ("s3", "flat", "s3", "small"),
           ("s3 chunked", "chunked", "s3", "small"), ("s3 chunked, cache holds it", "chunked", "s3", None))


def start_server():
    """moto's S3 server on a free port of 127.0.0.1, with fake credentials; ``(server, endpoint)``."""
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true",
                 # objects in memory: moto spools those over 5 MiB to temporary files and reads them whole per request
                 "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(1 << 30)}.items():
        os.environ[k] = v
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def upload(archive: Path, options: dict) -> tuple[str, float]:
    """The archive copied into the bucket ``bench``; its URL and the seconds the upload took."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    if not fs.exists("bench"):
        fs.mkdir("bench")
    t0 = time.perf_counter()
    for f in sorted(archive.rglob("*")):
        if f.is_file():
            fs.put_file(str(f), f"bench/{archive.name}/{f.relative_to(archive).as_posix()}")
    return f"s3://bench/{archive.name}", time.perf_counter() - t0


def one_run(source, options: dict | None, order: str, batch: int, block: int, seconds: float, seed: int,
            cache_mib: int | None = None) -> dict:
    from scdl_gpu import SingleCellLoader
    from scdl_gpu.archive import RemoteArchive
    from scdl_gpu.profiling._measure import loader_stream, measure

    t0 = time.perf_counter()
    if cache_mib is not None:
        source = RemoteArchive(source, options, cache_bytes=cache_mib << 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random order's cost warning: this run measures it
        loader = SingleCellLoader(source, batch_size=batch, shuffle=order, block_size=block, device="cpu", seed=seed,
                                  **({"storage_options": options} if options and cache_mib is None else {}))
    opened = time.perf_counter() - t0
    try:
        t = measure(lambda: loader_stream(loader), "cpu", seconds, warmup=1)
        out = dict(cells_per_s=t.cells_per_s, batches=t.batches, seconds=t.seconds, open_s=opened,
                   first_batch_s=t.first_batch_s, host_rss_peak_mib=t.host_rss_peak_bytes / 2**20)
        remote = loader.backend.remote
        if remote is not None:
            out.update(requests=remote.cache.requests, fetched_mib=remote.cache.fetched_bytes / 2**20,
                       cache_held_mib=remote.cache.held_bytes / 2**20, cache_bound_mib=remote.cache.cache_bytes / 2**20)
        return out
    finally:
        loader.close()
        if cache_mib is not None:
            source.close()


def markdown(result: dict) -> str:
    c, s = result["config"], result["system"]
    lines = [f"# Block order from a local S3 server against local disk ({s['date']})", "",
             f"- machine: {s['cpu']}, {s['cpu_affinity']} CPUs usable, {s['ram_gib']} GiB RAM; repo git {s['git']}",
             f"- archive: {c['archive']} ({c['n_rows']:,} cells, {c['nnz']:,} values, {c['dtypes']}), "
             f"{c['archive_mib']:.0f} MiB of values and columns; chunked copy: {c['chunk_size']:,} rows per chunk "
             f"({c['chunk_object_mib']:.1f} MiB value objects); uploads took {c['upload_s']:.1f} s",
             f"- CPU loader, {c['order']} order at batch {c['batch']:,}, {c['repeats']} interleaved repeats of "
             f"{c['seconds']} s each, medians; S3: moto {c['moto']} on 127.0.0.1, s3fs {c['s3fs']}; range cache "
             f"of {c['block_mib']} MiB blocks: {c['small_cache_mib']} MiB (below the archive's size) or the default "
             f"{c['cache_mib']} MiB (holds it all)", "",
             "| block rows | source | cache MiB | cells/s (median) | every repeat | vs local | open s | requests/batch "
             "| MiB fetched/batch | MiB cached at the end |",
             "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in result["summary"]:
        remote = row["requests_per_batch"] is not None
        extra = (f"{row['cache_mib']} | " if remote else "– | ")
        tail = (f"{row['requests_per_batch']:.1f} | {row['fetched_mib_per_batch']:.1f} | {row['cache_held_mib']:.0f} |"
                if remote else "– | – | – |")
        lines.append(f"| {row['block_size']:,} | {row['source']} | {extra}{row['cells_per_s']:,.0f} | "
                     f"{', '.join(f'{v:,.0f}' for v in row['every'])} | {row['vs_local']:.2f} | {row['open_s']:.2f} | {tail}")
    lines += ["", *(f"- note: {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--files", type=int, default=2, help="Tahoe-like inputs of 20,000 cells [%(default)s]")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--block-sizes", type=int, nargs="+", default=None,
                    help="block order's rows per block [the loader's default, batch // 64, and 1024]")
    ap.add_argument("--chunk-size", type=int, default=1024, help="rows per chunk of the chunked copy [%(default)s]")
    ap.add_argument("--small-cache-mib", type=int, default=64, help="the cache below the archive's size [%(default)s]")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    import importlib.metadata as md

    from scdl_gpu.archive import open_arrays, partition_scdl
    from scdl_gpu.archive._remote import DEFAULT_BLOCK_BYTES, DEFAULT_CACHE_BYTES
    from scdl_gpu.convert import convert_many

    blocks = a.block_sizes or [max(1, a.batch_size // 64), 1024]
    a.workdir.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(a.workdir / DEFAULT_INPUTS, a.files, 20_000, 62_710, 1450)
    archive = _build(a.workdir / f"remote_{a.files}x20000.scdl",
                     lambda p: convert_many(inputs, p, use_X_not_raw=True, data_dtype="auto"))
    chunked = _build(a.workdir / f"remote_{a.files}x20000.chunk{a.chunk_size}.scdl",
                     lambda p: partition_scdl(archive, p, chunk_size=a.chunk_size))
    arrays = open_arrays(archive)
    one_run(archive, None, "block", a.batch_size, blocks[0], 0.5, 0)  # compiles the gather: no open pays for it
    server, endpoint = start_server()
    options = {"endpoint_url": endpoint}
    try:
        (url, up1), (curl, up2) = upload(archive, options), upload(chunked, options)
        where = {("flat", "disk"): (archive, None), ("flat", "file"): (f"file://{archive}", None),
                 ("flat", "s3"): (url, options), ("chunked", "s3"): (curl, options)}
        runs = []
        for rep in range(a.repeats):
            for f in ("data.npy", "col_ptr.npy"):
                warm_read(archive / f)
            for block in blocks:
                for name, kind, place, cache in SOURCES:
                    src, opts = where[kind, place]
                    mib = None if place == "disk" else a.small_cache_mib if cache == "small" else DEFAULT_CACHE_BYTES >> 20
                    r = one_run(src, opts, "block", a.batch_size, block, a.seconds, seed=rep, cache_mib=mib)
                    runs.append(dict(source=name, block_size=block, repeat=rep, cache_mib=mib, **r))
                    print(f"repeat {rep} block {block} {name}: {r['cells_per_s']:,.0f} cells/s", file=sys.stderr)
    finally:
        server.stop()
    summary = []
    for block in blocks:
        base = statistics.median(r["cells_per_s"] for r in runs if r["source"] == "local" and r["block_size"] == block)
        for name, *_ in SOURCES:
            rs = [r for r in runs if r["source"] == name and r["block_size"] == block]
            batches = sum(r["batches"] + 2 for r in rs)  # the untimed first and warm-up batches fetch too
            remote = name != "local"
            med = statistics.median(r["cells_per_s"] for r in rs)
            summary.append(dict(source=name, block_size=block, cache_mib=rs[0]["cache_mib"], cells_per_s=med,
                                vs_local=med / base,
                                cache_held_mib=statistics.median(r["cache_held_mib"] for r in rs) if remote else None,
                                every=[r["cells_per_s"] for r in rs], open_s=statistics.median(r["open_s"] for r in rs),
                                requests_per_batch=sum(r["requests"] for r in rs) / batches if remote else None,
                                fetched_mib_per_batch=sum(r["fetched_mib"] for r in rs) / batches if remote else None))
    value_bytes = sum((archive / f).stat().st_size for f in ("data.npy", "col_ptr.npy"))
    config = dict(archive=archive.name, n_rows=arrays.n_rows, nnz=arrays.nnz,
                  dtypes=f"{arrays.dtypes['data.npy']} values, {arrays.dtypes['col_ptr.npy']} columns",
                  archive_mib=value_bytes / 2**20, chunk_size=a.chunk_size,
                  chunk_object_mib=(chunked / "chunk_00000" / "data.npy").stat().st_size / 2**20, upload_s=up1 + up2,
                  order="block", batch=a.batch_size, block_sizes=blocks, repeats=a.repeats, seconds=a.seconds,
                  cache_mib=DEFAULT_CACHE_BYTES >> 20, small_cache_mib=a.small_cache_mib, block_mib=DEFAULT_BLOCK_BYTES >> 20, moto=md.version("moto"),
                  s3fs=md.version("s3fs"))
    notes = ["with a cache smaller than the archive, a span of block rows is read exactly (one request for its values, "
             "one for its columns, all of a batch at once) unless it fills at least half of the cache blocks it touches "
             "(then whole blocks, kept); with a cache that holds the archive, every read is by whole blocks, kept, so "
             "after the first epoch a batch costs no request",
             "moto is a pure-Python server sharing the 2 CPUs with the loader, and it copies the whole object for every "
             "range request: its cost per request grows with the object (the flat archive's objects are its whole value "
             "and column files); the chunked copy's small objects show the reader with a cheaper server",
             "file:// reads the same ranges through fsspec's local filesystem: the range reader's own cost (merging, "
             "one call per batch, a copy into the compact arrays the gather reads) without a server",
             "the machine was shared with other work while this ran: compare rows of one run, not with other files"]
    result = dict(system=_report.system_info(), config=config, runs=runs, summary=summary, notes=notes)
    _report.write_outputs(result, markdown(result), a.json, a.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
