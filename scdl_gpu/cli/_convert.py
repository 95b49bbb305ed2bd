"""``scdl-gpu convert``: files and directories into one archive, or into an atlas of member archives."""

from __future__ import annotations

import json
import logging
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
        "[without it: 2GiB for the shuffle]; it never changes the order. With --atlas --scheduler local: "
        "the memory limit of each Dask worker",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing archive at the output path (atomically, once complete)"
    )
    atlas = p.add_argument_group("atlas", "with --atlas: one member archive per input under DIR/members/, then the "
                                "manifest DIR/atlas.json (members keep their genes; --gene-vocab makes the atlas vocabulary)")
    atlas.add_argument("--atlas", action="store_true", help="write an atlas directory instead of one archive")
    atlas.add_argument("--member-rows", type=int, default=None, metavar="N",
                       help="cut inputs of more rows into members of N rows (NAME-0, NAME-1, ...) [no cut]")
    atlas.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                       help="run the member conversions on Dask: 'local' starts a LocalCluster of --workers processes "
                       "(--max-memory each), tcp://HOST:PORT uses a running cluster [threads or processes here]")
    atlas.add_argument("--append", action="store_true", help="add the inputs as new members of the atlas DIR")
    atlas.add_argument("--resume", action="store_true",
                       help="keep the members a failed run finished in DIR and convert only the rest")
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
    if args.atlas:
        if args.compress:
            raise CommandError("--compress writes one archive; compress an atlas's members with 'scdl-gpu compress'")
        return convert_atlas(args)
    given = [f for f, v in (("--member-rows", args.member_rows), ("--scheduler", args.scheduler),
                            ("--append", args.append), ("--resume", args.resume)) if v]
    if given:
        raise CommandError(f"{', '.join(given)} need --atlas")
    if os.path.exists(args.output) and not args.overwrite:
        raise CommandError(f"output {args.output} already exists; choose another path or pass --overwrite")
    target = args.output
    if args.compress:  # converted beside the output, compressed in place, then put at the output
        from ..archive._atomic import clean_leftovers, sibling_name

        clean_leftovers(Path(args.output))
        target = sibling_name(Path(args.output), "partial")
    try:
        options = shared_options(args) | dict(overwrite=args.overwrite and not args.compress)
        report = convert_many(args.inputs, target, row_order=args.row_order, seed=args.seed, **options)
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


def shared_options(args) -> dict:
    """The options of both ``convert`` and ``convert --atlas``, as keywords of the library calls."""
    return dict(
        workers=args.workers, use_processes=args.use_processes, data_dtype=args.data_dtype,
        use_X_not_raw=args.use_X_not_raw, neighbor_key=args.neighbor_key,
        allow_missing_neighbors=args.allow_missing_neighbors, gene_vocab=args.gene_vocab, gene_key=args.gene_key,
        genome=args.genome, keep_column_order=args.keep_column_order, allow_nonfinite=args.allow_nonfinite,
        obsm_keys=args.obsm_keys, max_memory=args.max_memory, overwrite=args.overwrite, progress=not args.quiet,
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
    if hasattr(report, "archive"):
        d["archive"] = str(report.archive)
        d["inputs_sorted"] = report.inputs_sorted
    else:
        d["atlas"] = str(report.atlas)
        for m in d["converted"]:
            m["warnings"] = [message for message, _ in m["warnings"]]
    with open(path, "w") as f:
        json.dump(d, f, indent=2)


def convert_atlas(args) -> int:
    from ..convert import convert_to_atlas
    from ._main import CommandError

    if args.row_order != "input" or args.seed is not None:
        raise CommandError("--atlas keeps each member in input order; shuffle at load time instead of --row-order/--seed")
    if args.scheduler is not None and not getattr(args, "debug", False):
        # distributed logs every worker and connection at INFO (set when it is imported); the progress bar says enough
        try:
            import distributed  # noqa: F401
        except ImportError:
            pass  # the conversion says what to install
        logging.getLogger("distributed").setLevel(logging.WARNING)
    report = convert_to_atlas(
        args.inputs, args.output, scheduler=args.scheduler, member_rows=args.member_rows, append=args.append,
        resume=args.resume, **shared_options(args),
    )
    if args.report:
        write_report(report, args.report)
    if not args.quiet:
        kept = f", {len(report.kept)} kept from the earlier run" if report.kept else ""
        print(
            f"wrote {report.atlas}: atlas of {report.n_members} members ({len(report.converted)} converted{kept}), "
            f"{report.n_rows:,} cells x {report.n_genes:,} genes ({report.vocab_mode}) in {report.seconds:.1f} s "
            f"on {report.scheduler}",
            file=sys.stderr,
        )
    return 0
