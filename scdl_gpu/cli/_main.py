"""``scdl-gpu``: one entry point, one module per group of subcommands.

Exit status: 0 on success, 1 when the command ran but failed (bad input, invalid archive),
2 for a usage error (argparse's convention), 130 after SIGINT and 143 after SIGTERM (a
conversion stops at its next row block and removes its partial output first). Errors are one
plain line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from collections.abc import Sequence

from . import _archive, _bench, _convert

COMMANDS = (_convert, _archive, _bench)


class CommandError(Exception):
    """A failure to report as one line and exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="scdl-gpu", description="Single-cell archives for GPU training: convert, inspect, check.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def run(handler, args, debug: bool) -> int:
    """Call a subcommand handler, turning expected failures into a message and exit status 1."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if not debug:  # a command-line user wants the message, not the source line that raised it
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt as e:  # ConversionInterrupted says which signal; a bare one is Ctrl-C
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except (CommandError, ValueError, OSError, RuntimeError) as e:  # ConversionError/ArchiveError are ValueErrors
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.handler, args, args.debug)
