"""``convert_h5ad_to_scdl``: bionemo-scdl's command, same flags, without its half-written outputs.

Upstream converts each file into a temporary collection and then concatenates; this one writes
the archive directly (same result, one pass) and refuses an existing ``--save-path`` unless
``--overwrite`` is given, instead of nesting into it and failing part-way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_h5ad_to_scdl", description="Convert a directory of AnnData files into one SCDL archive.")
    p.add_argument("--num-workers", type=int, default=4, help="The number of AnnData loaders to run in parallel [4].")
    p.add_argument("--use-mp", action="store_true", default=False, help="Use a subprocess for each worker rather than a lightweight OS thread [False].")
    p.add_argument("--data-path", type=str, required=True, help="A directory containing AnnData files (searched recursively). These will all be concatenated.")
    p.add_argument("--save-path", type=str, required=True, help="An output path where an SCDataset will be stored; must not exist.")
    p.add_argument(
        "--data-dtype",
        type=str,
        default=None,
        help="The data type to use for the SCDataset. Must be one of 'uint8', 'uint16', 'uint32', 'uint64', 'float16', 'float32', 'float64'.",
    )
    p.add_argument("--paginated-load-cutoff", type=int, default=10_000, help="The cutoff in MB for paginated loading of the AnnData files.")
    p.add_argument("--load-block-row-size", type=int, default=1_000_000, help="The number of rows to load into memory at a time for paginated loading of the AnnData files.")
    p.add_argument("--use-X-not-raw", action="store_true", default=False, help="Use .X instead of raw.X from the anndata file [False].")
    p.add_argument("--overwrite", action="store_true", default=False, help="Replace an existing archive at --save-path.")
    p.add_argument(
        "--allow-nonfinite", action="store_true", default=False, help="Store NaN and infinity values (refused by default)."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def convert(args) -> int:
    from ..convert import convert_many
    from ._main import CommandError

    data = Path(args.data_path)
    h5ads = sorted(data.rglob("*.h5ad")) if data.is_dir() else []
    if not h5ads:
        raise CommandError(f"There a no h5ad files in {data}.")
    save = Path(args.save_path)
    if save.exists() and not args.overwrite:
        raise CommandError(f"--save-path {save} already exists; remove it or pass --overwrite")
    convert_many(
        h5ads,
        save,
        workers=args.num_workers,
        use_processes=args.use_mp,
        data_dtype=args.data_dtype,
        paginated_load_cutoff=args.paginated_load_cutoff,
        load_block_row_size=args.load_block_row_size,
        use_X_not_raw=args.use_X_not_raw,
        keep_column_order=True,  # upstream's conversion keeps input order: same bytes as its collection
        allow_nonfinite=args.allow_nonfinite,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from ._main import run

    args = build_parser().parse_args(argv)
    return run(convert, args, args.debug)


if __name__ == "__main__":
    sys.exit(main())
