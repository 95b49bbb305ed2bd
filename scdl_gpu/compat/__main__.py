"""``python -m scdl_gpu.compat script.py [args]``: run a script written for bionemo-scdl on scdl_gpu.

The script runs as ``__main__`` with ``sys.argv`` and ``sys.path[0]`` set as ``python script.py``
would set them, after :func:`scdl_gpu.compat.install`.
"""

from __future__ import annotations

import os
import runpy
import sys

from . import install


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0].strip("`"), file=sys.stderr)
        raise SystemExit(0 if args else 2)
    script = args[0]
    if not os.path.isfile(script):
        print(f"python -m scdl_gpu.compat: can't open file {script!r}", file=sys.stderr)
        raise SystemExit(2)
    install()
    sys.argv = list(args)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
