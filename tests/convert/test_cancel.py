"""Prompt cancel: SIGINT/SIGTERM stop a conversion within about a second, remove its partial
output, and the command-line tools exit 130 (SIGINT) or 143 (SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from scdl_gpu.convert._cancel import ConversionInterrupted, cancel_scope, check_cancelled
from tests.conftest import make_adata, random_csr

BLOCK = 2000  # stored values per row block in the children: 250 blocks an input
LIMIT_S = 2.0  # from the signal to the exit, cleanup included; finishing would take 4 s more

CLI = """
    import sys
    import anndata, h5py, pandas, pyarrow.parquet  # before "ready": the clock is for the conversion
    import scdl_gpu.convert._many as many
    from tests.convert import _slow_blocks
    _slow_blocks.install()
    many._init_worker = _slow_blocks.init_worker  # worker processes too
    many.convert_many.__wrapped__.__kwdefaults__["max_block_values"] = int(sys.argv[1])
    import scdl_gpu.convert._atlas as atlas
    atlas.convert_to_atlas.__wrapped__.__kwdefaults__["max_block_values"] = int(sys.argv[1])
    if sys.argv[2] == "upstream":
        from scdl_gpu.cli.upstream import main
    else:
        from scdl_gpu.cli import main
    print("ready", flush=True)
    sys.exit(main(sys.argv[3:]))
"""

LIBRARY = """
    import sys
    import anndata, h5py, pandas, pyarrow.parquet
    from scdl_gpu.convert import convert_h5ad
    from tests.convert import _slow_blocks
    _slow_blocks.install()
    print("ready", flush=True)
    try:
        convert_h5ad(sys.argv[1], sys.argv[2], use_X_not_raw=True, max_block_values=int(sys.argv[3]))
    except KeyboardInterrupt as e:
        print(f"interrupted {getattr(e, 'signum', None)}", flush=True)
        sys.exit(3)
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two inputs of 250 blocks of BLOCK values: 5 s each with the slowed blocks."""
    d = tmp_path_factory.mktemp("cancel_inputs")
    for k in range(2):
        make_adata(random_csr(25_000, 400, density=0.05, seed=k), seed=k).write_h5ad(d / f"in{k}.h5ad")
    return d


def default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal would send it. A shell's background job (a test
    run started with ``&``) ignores SIGINT, its children inherit that, and Python then never raises
    ``KeyboardInterrupt``: the tests would measure how they were started, not the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _writing(out: Path) -> bool:
    """Whether the conversion into ``out`` has started writing rows (its partial directory has data)."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        if any(f.stat().st_size for f in partial.rglob("data.npy")):
            return True
    return False


def _interrupt(args: list[str], out: Path, sig: int) -> tuple[int, float, str, str]:
    """Start a child, signal it once it writes rows; returns (exit status, seconds to exit, stdout, stderr)."""
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(args[0]), *args[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        preexec_fn=default_sigint,
    )
    assert p.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while not _writing(out):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.02)
    time.sleep(0.3)  # well inside the conversion
    assert p.poll() is None, "the conversion finished before the signal: make the inputs larger"
    t0 = time.monotonic()
    p.send_signal(sig)
    try:
        stdout, stderr = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
        pytest.fail(f"no exit 30 s after {signal.Signals(sig).name}: {stderr[-2000:]}")
    return p.returncode, time.monotonic() - t0, stdout, stderr


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    "mode,sig,status",
    [
        pytest.param("threads", signal.SIGINT, 130, id="threads-SIGINT"),
        pytest.param("processes", signal.SIGTERM, 143, id="processes-SIGTERM"),
    ],
)
def test_scdl_gpu_convert_stops_promptly(inputs, tmp_path, mode, sig, status):
    out = tmp_path / "out.scdl"
    argv = [CLI, str(BLOCK), "scdl-gpu", "convert", str(inputs), "-o", str(out), "-q", "--workers", "2", f"--{mode}", "--use-X-not-raw"]
    rc, seconds, _, stderr = _interrupt(argv, out, sig)
    print(f"cancel figures: scdl-gpu convert --{mode}, {signal.Signals(sig).name}: exit {rc} after {seconds:.2f} s")
    assert rc == status, stderr[-2000:]
    assert seconds < LIMIT_S
    assert f"interrupted ({signal.Signals(sig).name})" in stderr
    _nothing_left(out)


def test_convert_atlas_stops_promptly(inputs, tmp_path):
    out = tmp_path / "atlas"
    argv = [CLI, str(BLOCK), "scdl-gpu", "convert", str(inputs), "-o", str(out), "--atlas", "-q", "--workers", "2", "--use-X-not-raw"]
    rc, seconds, _, stderr = _interrupt(argv, out / "members" / "in0.scdl", signal.SIGINT)
    print(f"cancel figures: scdl-gpu convert --atlas, SIGINT: exit {rc} after {seconds:.2f} s")
    assert rc == 130 and seconds < LIMIT_S, stderr[-2000:]
    assert not (out / "atlas.json").exists() and os.listdir(out / "members") == []  # no member, no partial one


def test_upstream_command_stops_promptly(inputs, tmp_path):
    out = tmp_path / "out.scdl"
    argv = [CLI, str(BLOCK), "upstream", "--data-path", str(inputs), "--save-path", str(out), "--num-workers", "1", "--use-X-not-raw"]
    rc, seconds, _, stderr = _interrupt(argv, out, signal.SIGINT)
    print(f"cancel figures: convert_h5ad_to_scdl, SIGINT: exit {rc} after {seconds:.2f} s")
    assert rc == 130 and seconds < LIMIT_S, stderr[-2000:]
    _nothing_left(out)


def test_convert_h5ad_stops_promptly(inputs, tmp_path):
    out = tmp_path / "out.scdl"
    rc, seconds, stdout, stderr = _interrupt([LIBRARY, str(inputs / "in0.h5ad"), str(out), str(BLOCK)], out, signal.SIGTERM)
    print(f"cancel figures: convert_h5ad, SIGTERM: {stdout.strip()} after {seconds:.2f} s")
    assert rc == 3 and stdout.strip() == f"interrupted {int(signal.SIGTERM)}", stderr[-2000:]
    assert seconds < LIMIT_S
    _nothing_left(out)


def test_workers_stop_at_the_next_block():
    event = threading.Event()
    with cancel_scope(event):
        check_cancelled()  # not set: nothing happens
        event.set()
        with pytest.raises(ConversionInterrupted):
            check_cancelled()
    check_cancelled()  # outside the scope the event is not consulted


def test_an_interrupted_in_process_conversion_leaves_nothing(inputs, tmp_path, monkeypatch):
    """A worker failing mid-way (here: the cancel event set under it) stops the others and the
    partial output goes, with threads as with the main thread converting."""
    from scdl_gpu.convert import _copy, convert_many

    real = _copy.check_cancelled
    calls = {"n": 0}

    def cancel_on_fifth():
        calls["n"] += 1
        if calls["n"] == 5:
            raise ConversionInterrupted(signal.SIGINT)
        real()

    monkeypatch.setattr(_copy, "check_cancelled", cancel_on_fifth)
    with pytest.raises(ConversionInterrupted):
        convert_many(inputs, tmp_path / "out", workers=2, max_block_values=BLOCK, use_X_not_raw=True)
    _nothing_left(tmp_path / "out")
