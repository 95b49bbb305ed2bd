"""``scdl-gpu bench | profile``: how fast the loader feeds the device, and where the time goes."""

from __future__ import annotations

import json
import sys

from ..loader._order import ORDERS
from ..backend._residency import RESIDENCIES


def _common(p, many: bool) -> None:
    p.add_argument("archive", help="an archive or an atlas directory")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="[%(default)s]")
    nargs = "+" if many else None
    p.add_argument("--shuffle", nargs=nargs, choices=ORDERS, default=["random", "block"] if many else "block",
                   help="sampling order(s) [%(default)s]")
    p.add_argument("--batch-size", nargs=nargs, type=int, default=[4096] if many else 4096, help="[%(default)s]")
    p.add_argument("--prefetch", nargs=nargs, type=int, default=[None] if many else None,
                   help="batches assembled ahead by the loader's thread [the loader's default: 2 on a GPU, 0 on the CPU]")
    p.add_argument("--residency", nargs=nargs, choices=RESIDENCIES, default=["auto"] if many else "auto",
                   help="where the loader keeps the archive: device memory, pinned host memory, streamed from "
                        "the page cache, or its choice (auto); on the CPU: auto or stream [%(default)s]")
    p.add_argument("--block-size", type=int, help="rows per block in block order [batch size // 64; a compressed archive's chunk size]")
    p.add_argument("--fetch-factor", type=int, help="batches read at once in block order [1]")
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per configuration [%(default)s]")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches before the window [%(default)s]")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON ('-': to stdout, no table)")
    p.add_argument("--plot", metavar="PNG", help="write a figure (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    p = sub.add_parser("bench", help="loader throughput (cells/s on the device) against this machine's ceilings")
    _common(p, many=True)
    p.add_argument("--no-ceilings", action="store_true", help="skip measuring read and copy bandwidths")
    p.add_argument("--no-cold", action="store_true",
                   help="skip the cold read (it drops the archive's files from the page cache first)")
    p.add_argument("--cold", action="store_true",
                   help="drop the archive's files from the page cache before each configuration's run, so batches "
                        "come from the disk (compare compressed and flat archives where I/O is the bound)")
    p.add_argument("--diversity-column", metavar="COL",
                   help="also report the mean distinct labels of obs column COL per batch, against the same "
                        "figure for uniformly random batches (how well each order mixes the archive's groups)")
    p.set_defaults(handler=bench)

    p = sub.add_parser("profile", help="per-stage time of one configuration (NVTX ranges for Nsight on the GPU)")
    _common(p, many=False)
    p.set_defaults(handler=profile)


def _loader_kwargs(args) -> dict:
    kw = {k: v for k, v in (("block_size", args.block_size), ("fetch_factor", args.fetch_factor)) if v is not None}
    if isinstance(args.residency, str) and args.residency != "auto":  # profile's one residency (bench grids them)
        kw["residency"] = args.residency
    return kw


def _check(args) -> None:
    if args.seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    from ..archive import open_arrays
    from ..atlas import archives_of

    for a in archives_of(args.archive):  # a missing or damaged archive (or atlas member) fails here, before any timing
        open_arrays(a)
    if args.plot:
        from ..profiling._plot import pyplot

        pyplot()  # so does a missing matplotlib


def _emit(args, result: dict, text: str, plot) -> int:
    if args.json == "-":
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def bench(args) -> int:
    from ..profiling import format_bench, plot_bench, run_bench

    _check(args)
    result = run_bench(args.archive, device=args.device, shuffles=args.shuffle, batch_sizes=args.batch_size,
                       prefetch=args.prefetch, residencies=args.residency, seconds=args.seconds, warmup=args.warmup,
                       ceilings=not args.no_ceilings, cold=not args.no_cold, progress=not args.quiet,
                       diversity_column=args.diversity_column, cold_runs=args.cold, **_loader_kwargs(args))
    return _emit(args, result, format_bench(result), plot_bench)


def profile(args) -> int:
    from ..profiling import format_profile, plot_profile, run_profile

    _check(args)
    result = run_profile(args.archive, device=args.device, shuffle=args.shuffle, batch_size=args.batch_size,
                         prefetch=args.prefetch, seconds=args.seconds, warmup=args.warmup, progress=not args.quiet,
                         **_loader_kwargs(args))
    return _emit(args, result, format_profile(result), plot_profile)
