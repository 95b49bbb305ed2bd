"""``scdl-gpu info | validate | cast | chunk | compress``: inspect, check, re-type, partition and compress
an existing archive."""

from __future__ import annotations

import sys

from ..archive._constants import FLOAT_ORDER, INT_ORDER


def register(sub) -> None:
    p = sub.add_parser("info", help="rows, genes, values, dtypes, files and feature columns of an archive (or an atlas)")
    p.add_argument("archive", nargs="?", help="the archive or atlas directory (not needed with --device)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--device", action="store_true",
                   help="what this machine offers: CuPy, kvikio, torch's CUDA build, the driver, the GPUs, and what "
                   "device='auto' picks")
    p.set_defaults(handler=info)

    p = sub.add_parser(
        "validate",
        help="full integrity check; exit status 1 when anything is wrong",
        description="Verify every file against the checksums recorded when the archive was written, and "
        "check the structure of every file. Problems go to stderr (exit status 1); notes, which do not "
        "make an archive invalid, go to stderr as 'note:' lines (exit status 0). On an atlas: every member, every "
        "column map, and each member against the manifest (rows, values, dtype, genes, recorded checksum).",
    )
    p.add_argument("archive", help="the archive or atlas directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="structure only: compare file sizes with the checksum manifest, not contents")
    mode.add_argument(
        "--write-checksums",
        action="store_true",
        help="after a full validation finds no problem, record checksums of every file (for an archive you trust "
        "that has none, such as one written by bionemo-scdl)",
    )
    p.set_defaults(handler=validate)

    p = sub.add_parser(
        "cast",
        help="change the stored value type in place (safely: all or nothing)",
        description="Rewrite the archive's values as DTYPE, replacing the archive whole once done. Values DTYPE "
        "cannot hold are an error; so is a cast that changes values (normalised floats into integers) unless "
        "--allow-lossy is given. On an error the archive is left as it was.",
    )
    p.add_argument("archive")
    p.add_argument("dtype", choices=(*INT_ORDER, *FLOAT_ORDER))
    p.add_argument("--allow-lossy", action="store_true", help="cast even when values change (by more than --tolerance); warns")
    p.add_argument("--tolerance", type=float, default=1e-08, help="the largest change that is not a loss [%(default)s]")
    p.set_defaults(handler=cast)

    p = sub.add_parser(
        "chunk",
        help="write an archive in bionemo-scdl's chunked layout (chunk_NNNNN/ directories of N rows)",
        description="Partition a flat archive into chunks of --chunk-size rows (upstream's partition_scdl). "
        "The output is written beside its destination and renamed into place when complete.",
    )
    p.add_argument("archive")
    p.add_argument("-o", "--output", required=True, help="the chunked archive to create (must not exist)")
    p.add_argument("--chunk-size", type=int, default=100_000, help="rows per chunk [%(default)s]")
    p.add_argument("--delete-original", action="store_true", help="remove the input once the output is complete")
    p.set_defaults(handler=chunk)

    from ..archive._codecs import CODECS, DEFAULT_CODEC
    from ..archive._compressed import DEFAULT_COMPRESSED_CHUNK

    p = sub.add_parser(
        "compress",
        help="write a compressed archive (chunks of zstd, lz4 or zlib frames; decoded when read)",
        description="Write the archive's rows as chunks of --chunk-size rows whose values and columns are stored "
        "as compressed frames (columns delta-coded and byte-shuffled, values byte-shuffled), with the CRC-32C of "
        "every decoded array. The loader decodes chunks into a bounded cache; block order reads whole chunks. "
        "bionemo-scdl refuses such an archive. The output is written beside its destination and renamed into "
        "place when complete.",
    )
    p.add_argument("archive")
    p.add_argument("-o", "--output", required=True, help="the compressed archive to create (must not exist)")
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC, help="[%(default)s]")
    p.add_argument("--level", type=int, default=None, help="compression level (zstd -5..22 [1], zlib 0..9 [6])")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_COMPRESSED_CHUNK,
                   help="rows per chunk: the unit of decoding and of block order [%(default)s]")
    p.add_argument("--delete-original", action="store_true", help="remove the input once the output is complete")
    p.set_defaults(handler=compress)


def info(args) -> int:
    import json

    from ..archive import archive_summary, format_summary

    if args.device:
        from ..backend._detect import device_report, format_device_report

        report = device_report()
        print(json.dumps(report, indent=2) if args.json else format_device_report(report))
        if args.archive is None:
            return 0
    elif args.archive is None:
        from ._main import CommandError

        raise CommandError("info needs an archive (or --device)")
    from ..atlas import is_atlas, is_remote_atlas

    if is_atlas(args.archive) or is_remote_atlas(args.archive):
        from ._atlas import show

        return show(args.archive, args.json)
    summary = archive_summary(args.archive)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    return 0


def validate(args) -> int:
    from ..archive._checksums import write_manifest
    from ..archive._validate import validation_report

    from ..atlas import is_atlas

    if is_atlas(args.archive):
        if args.write_checksums:
            from ._main import CommandError

            raise CommandError(f"{args.archive} is an atlas: record checksums on each member archive (atlas add "
                               "records them in the manifest)")
        from ..atlas._validate import validate_atlas

        report = validate_atlas(args.archive, quick=args.quick)
    else:
        report = validation_report(args.archive, quick=args.quick)
    problems = report.problems
    for line in report.notes:
        print(f"note: {line}", file=sys.stderr)
    if problems:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        print(f"{args.archive}: INVALID ({len(problems)} problem{'s' if len(problems) > 1 else ''})", file=sys.stderr)
        if args.write_checksums:
            print(f"{args.archive}: checksums not recorded: the archive is not valid", file=sys.stderr)
        return 1
    if args.write_checksums:
        manifest = write_manifest(args.archive)
        print(f"{args.archive}: OK; checksums recorded in {manifest}")
        return 0
    print(f"{args.archive}: OK")
    return 0


def cast(args) -> int:
    from ..archive._cast import cast_archive_data

    old = cast_archive_data(args.archive, args.dtype, args.tolerance, allow_lossy=args.allow_lossy)
    print(f"{args.archive}: data {old} -> {args.dtype}")
    return 0


def compress(args) -> int:
    import os

    from ..archive._compressed import compress_archive

    if os.path.lexists(args.output):  # compress_archive(path, None) rewrites in place; the command never does
        raise FileExistsError(f"Output path already exists: {args.output}")
    header = compress_archive(args.archive, args.output, args.codec, args.chunk_size, args.level,
                              delete_original=args.delete_original)
    print(compressed_line(args.output, header, args.codec) + (f"; {args.archive} deleted" if args.delete_original else ""))
    return 0


def compressed_line(path, header, codec: str) -> str:
    """One line on a compressed archive just written: rows, chunks, codec, size against flat."""
    from ..archive._summary import compression_summary

    info, c = header.chunked_info, compression_summary(path)
    return (f"{path}: {info.total_rows:,} rows in {info.num_chunks:,} {codec} chunk{'' if info.num_chunks == 1 else 's'} "
            f"of {info.chunk_size:,}; values and columns {c['raw_bytes'] / 1e6:,.1f} MB -> "
            f"{c['stored_bytes'] / 1e6:,.1f} MB ({c['ratio']:.2f}x)")


def chunk(args) -> int:
    from ..archive._partition import partition_scdl

    header = partition_scdl(args.archive, args.output, args.chunk_size, args.delete_original)
    info = header.chunked_info
    print(f"{args.output}: {info.total_rows:,} rows in {info.num_chunks:,} chunk{'' if info.num_chunks == 1 else 's'} "
          f"of {info.chunk_size:,}" + (f"; {args.archive} deleted" if args.delete_original else ""))
    return 0
