"""``scdl-gpu bench`` and ``scdl-gpu profile`` on the 200,000-cell Tahoe-like archive, written to results.

Runs the grid ``--shuffle`` x ``--batch-sizes`` through :func:`scdl_gpu.profiling.run_bench`
(with the machine's ceilings) and one :func:`~scdl_gpu.profiling.run_profile` per ``--profile``
configuration, then writes ``bench_<device>.{json,md,png}`` and ``profile_<device>.{json,md}`` plus
one ``profile_<device>_<shuffle><batch>.png`` each. The same numbers come from the CLI:

    scdl-gpu bench ARCHIVE --device cpu --shuffle sequential random block --batch-size 64 4096 --json b.json --plot b.png
    scdl-gpu profile ARCHIVE --device cpu --shuffle block --batch-size 4096 --plot p.png

    PYTHONPATH=. python benchmarks/bench_profiling.py --device cpu --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

try:  # imported as benchmarks.bench_profiling
    from .bench_backend import default_archive
except ImportError:  # run as a script
    from bench_backend import default_archive


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archive", type=Path, help="archive (default: the 200k Tahoe-like conversion, made if missing)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--shuffle", nargs="+", default=["sequential", "random", "block"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 4096])
    ap.add_argument("--profile", nargs="+", default=["block:4096", "random:64"], metavar="SHUFFLE:BATCH")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_bench")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = ap.parse_args(argv)
    from scdl_gpu.profiling import format_bench, format_profile, plot_bench, plot_profile, run_bench, run_profile

    archive = a.archive or default_archive(a.workdir)
    a.out.mkdir(parents=True, exist_ok=True)
    dev = a.device
    bench = run_bench(archive, device=dev, shuffles=a.shuffle, batch_sizes=a.batch_sizes, seconds=a.seconds, progress=True)
    text = format_bench(bench)
    print(text)
    stem = a.out / f"bench_{dev}"
    stem.with_suffix(".json").write_text(json.dumps(bench, indent=2) + "\n")
    plot_bench(bench, stem.with_suffix(".png"))
    cmd = (f"scdl-gpu bench ARCHIVE --device {dev} --shuffle {' '.join(a.shuffle)} --batch-size "
           f"{' '.join(map(str, a.batch_sizes))} --seconds {a.seconds:g}")
    stem.with_suffix(".md").write_text(f"# `scdl-gpu bench` on {dev} ({bench['system']['date']})\n\n"
                                       f"Command: `{cmd}` (via `benchmarks/bench_profiling.py`); figure: `{stem.name}.png`.\n\n"
                                       f"```\n{text}\n```\n")
    profiles, texts = [], []
    for spec in a.profile:
        shuffle, bs = spec.split(":")
        p = run_profile(archive, device=dev, shuffle=shuffle, batch_size=int(bs), seconds=a.seconds, progress=True)
        profiles.append(p)
        texts.append(f"`scdl-gpu profile ARCHIVE --device {dev} --shuffle {shuffle} --batch-size {bs} --seconds {a.seconds:g}`"
                     f" (figure: `profile_{dev}_{shuffle}{bs}.png`)\n\n```\n{format_profile(p)}\n```\n")
        print(texts[-1])
        plot_profile(p, a.out / f"profile_{dev}_{shuffle}{bs}.png")
    (a.out / f"profile_{dev}.json").write_text(json.dumps(profiles, indent=2) + "\n")
    (a.out / f"profile_{dev}.md").write_text(f"# `scdl-gpu profile` on {dev} ({profiles[0]['system']['date'] if profiles else ''})\n\n"
                                             + "\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
