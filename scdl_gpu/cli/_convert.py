"""``scdl-gpu convert``: files and directories into one archive."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..archive._constants import FLOAT_ORDER, INT_ORDER


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert h5ad files, 10x outputs or directories of them into one archive",
        description="Convert .h5ad files, Cell Ranger .h5 files and Matrix Market directories (or directories "
        "holding them, searched recursively) into one SCDL archive. Rows are stored input after input.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or directories")
    p.add_argument("-o", "--output", required=True, metavar="ARCHIVE", help="archive directory to create")
    p.add_argument("--workers", type=int, default=default_workers(), help="inputs converted at once [%(default)s]")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--threads", dest="use_processes", action="store_false", default=False, help="workers are threads (default)")
    mode.add_argument("--processes", dest="use_processes", action="store_true", help="workers are processes")
    p.add_argument(
        "--data-dtype",
        default=None,
        choices=(*INT_ORDER, *FLOAT_ORDER, "auto"),
        help="stored value type [float32]; auto: the smallest that holds every value exactly",
    )
    p.add_argument("--use-X-not-raw", action="store_true", help="convert X instead of raw.X (h5ad inputs)")
    p.add_argument(
        "--neighbor-key", default=None, metavar="KEY", help="also store the obsp[KEY] cell graph (an input without it is an error)"
    )
    p.add_argument(
        "--allow-missing-neighbors",
        action="store_true",
        help="with --neighbor-key: convert anyway when an input lacks the key (no graph is stored; a warning names the inputs)",
    )
    p.add_argument(
        "--obsm-key",
        dest="obsm_keys",
        action="append",
        default=None,
        metavar="KEY",
        help="also keep the obsm[KEY] array (an embedding, coordinates) as obsm/KEY.npy; repeat for more keys "
        "(inputs without KEY get NaN rows)",
    )
    p.add_argument(
        "--gene-vocab",
        default=None,
        metavar="VOCAB",
        help="align columns onto one gene list: 'union', 'intersection', or a file of feature ids (one per line)",
    )
    p.add_argument("--gene-key", default=None, metavar="COLUMN", help="var column genes are matched by [the var index]")
    p.add_argument("--genome", default=None, help="genome group of a multi-genome Cell Ranger 2 .h5 file")
    p.add_argument(
        "--keep-column-order",
        action="store_true",
        help="store each row's entries in input order, as bionemo-scdl does (byte parity with its conversion); "
        "by default rows are stored by increasing column, so loading needs no per-batch sort",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="store NaN and infinity in a float archive (by default they are an error naming the input and row)",
    )
    p.add_argument(
        "--row-order",
        choices=("input", "shuffle"),
        default="input",
        help="input: rows input after input [default]; shuffle: every row at a uniformly random position (all "
        "inputs mixed), so block-order loading gets the batch variety of random order; obs gains source_row "
        "(and source_file) to find each row's origin",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the shuffle [drawn, and recorded in the archive]")
    p.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory the converting process may hold during the shuffle, in bytes or as '1GB', '512MiB' "
        "[without it: 2GiB for the shuffle]; it never changes the order",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing archive at the output path (atomically, once complete)"
    )
    p.add_argument("--compress", nargs="?", const="zstd", default=None, choices=("zstd", "lz4", "zlib"), metavar="CODEC",
                   help="write a compressed archive (as 'scdl-gpu compress' with its defaults; CODEC zstd, lz4 or "
                        "zlib [zstd]); the archive appears only once compressed")
    p.add_argument("--report", default=None, metavar="FILE", help="also write the per-input report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(handler=convert)


def convert(args) -> int:
    from ..convert import convert_many
    from ._main import CommandError

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    if os.path.exists(args.output) and not args.overwrite:
        raise CommandError(f"output {args.output} already exists; choose another path or pass --overwrite")
    target = args.output
    if args.compress:  # converted beside the output, compressed in place, then put at the output
        from ..archive._atomic import clean_leftovers, sibling_name

        clean_leftovers(Path(args.output))
        target = sibling_name(Path(args.output), "partial")
    try:
        report = _convert(args, convert_many, target)
        if args.compress:
            report.archive = _compressed_into_place(target, args)
    except BaseException:
        if args.compress:
            from ..archive._atomic import remove_tree

            remove_tree(Path(target))
        raise
    if args.report:
        write_report(report, args.report)
    if not args.quiet:
        print(summary_line(report), file=sys.stderr)
        print(report.row_order(), file=sys.stderr)
        if report.shuffle_seed is not None:
            print(f"row order: shuffled, seed {report.shuffle_seed} ({report.shuffle_buckets} bucket(s))", file=sys.stderr)
        if report.vocabulary_size is not None:
            print(report.alignment_table(), file=sys.stderr)
    return 0


def _compressed_into_place(target: str | Path, args) -> Path:
    from ..archive._atomic import exchange
    from ..archive._compressed import compress_archive
    from ._archive import compressed_line

    header = compress_archive(target, None, args.compress)
    exchange(target, args.output, replace=args.overwrite)
    if not args.quiet:
        print(compressed_line(args.output, header, args.compress), file=sys.stderr)
    return Path(args.output)


def _convert(args, convert_many, output):
    return convert_many(
        args.inputs,
        output,
        workers=args.workers,
        use_processes=args.use_processes,
        data_dtype=args.data_dtype,
        use_X_not_raw=args.use_X_not_raw,
        neighbor_key=args.neighbor_key,
        allow_missing_neighbors=args.allow_missing_neighbors,
        gene_vocab=args.gene_vocab,
        gene_key=args.gene_key,
        genome=args.genome,
        keep_column_order=args.keep_column_order,
        allow_nonfinite=args.allow_nonfinite,
        obsm_keys=args.obsm_keys,
        row_order=args.row_order,
        seed=args.seed,
        max_memory=args.max_memory,
        overwrite=args.overwrite and not args.compress,
        progress=not args.quiet,
    )


def summary_line(report) -> str:
    rate = report.n_rows / report.seconds if report.seconds else float("inf")
    return (
        f"wrote {report.archive}: {report.n_rows:,} cells x {report.n_vars:,} genes, {report.nnz:,} values "
        f"({report.data_dtype}) from {len(report.inputs)} input(s) in {report.seconds:.1f} s ({rate:,.0f} cells/s)"
    )


def write_report(report, path: str) -> None:
    from dataclasses import asdict

    d = asdict(report)
    d["archive"] = str(report.archive)
    d["inputs_sorted"] = report.inputs_sorted
    with open(path, "w") as f:
        json.dump(d, f, indent=2)
