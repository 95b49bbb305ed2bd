"""``scdl-gpu``: one entry point, one module per group of subcommands.

Exit status: 0 on success, 1 when the command ran but failed (bad input, invalid archive),
2 for a usage error (argparse's convention), 130 after SIGINT and 143 after SIGTERM (a
conversion stops at its next row block and removes its partial output first), and 141 when
the reader of stdout went away (``scdl-gpu info a.scdl | head -1``): the status a shell shows
for a program SIGPIPE ended, without a traceback. Errors are one plain line on stderr, naming
command-line flags where the library's message names Python keywords; ``--debug`` (before or
after the subcommand) shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Sequence

from . import _archive, _atlas, _bench, _convert

COMMANDS = (_convert, _archive, _atlas, _bench)


class CommandError(Exception):
    """A failure to report as one line and exit status 1."""


# Library messages tell a Python caller which keyword to pass; the command line has a flag for it.
FLAGS = {
    "allow_lossy": "--allow-lossy",
    "allow_missing_neighbors": "--allow-missing-neighbors",
    "allow_nonfinite": "--allow-nonfinite",
    "append": "--append",
    "overwrite": "--overwrite",
    "resume": "--resume",
    "use_X_not_raw": "--use-X-not-raw",
}
_KEYWORD_HINT = re.compile(r"\b(?:set|pass) (\w+)=(True|False)\b")


def for_the_shell(message: str) -> str:
    """``message`` as a command-line user needs it: flags instead of keywords, no "Error: " prefix
    (upstream's messages carry one, and ours prints "error: ")."""

    def flag(m: re.Match) -> str:
        name = FLAGS.get(m.group(1))
        if name is None:
            return m.group(0)
        return f"pass {name}" if m.group(2) == "True" else f"leave out {name}"

    return _KEYWORD_HINT.sub(flag, re.sub(r"^Error:\s*", "", message))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="scdl-gpu", description="Single-cell archives for GPU training: convert, inspect, check.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    for command in sub.choices.values():  # also after the subcommand; SUPPRESS keeps one given before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logging")
    return parser


def run(handler, args, debug: bool) -> int:
    """Call a subcommand handler, turning expected failures into a message and exit status 1."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if not debug:  # a command-line user wants the message, not the source line that raised it
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {for_the_shell(str(message))}", file=sys.stderr)
    try:
        status = int(handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        if debug:
            raise
        # Python's recipe (signal module docs): point stdout at devnull so the exit flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as e:  # ConversionInterrupted says which signal; a bare one is Ctrl-C
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except (CommandError, ValueError, OSError, RuntimeError) as e:  # ConversionError/ArchiveError are ValueErrors
        if debug:
            raise
        print(f"error: {for_the_shell(str(e))}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.handler, args, args.debug)
