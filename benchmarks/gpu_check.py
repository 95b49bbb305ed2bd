#!/usr/bin/env python3
"""Everything a lent GPU machine should run, in one go and in under 8 minutes: ``make gpu-check``.

Steps, in order; each prints PASS, FAIL or SKIP with a reason, a failure never stops the run, and
each runs in a child process under a timeout cut to what is left of ``--budget``:

  gpu            nvidia-smi: device, driver, memory
  wheels         the kit's wheels (``.whl/``, from ``make gpu-kit``) installed offline into /tmp/site
  project        this checkout pip-installed (editable, offline), so ``scdl_gpu.kernels`` imports as packaged
  import:*       numpy scipy h5py numba torch cupy kvikio anndata scdl_gpu scdl_gpu.kernels; the loader's residency
  kvikio-auto    kvikio's default AUTO mode opens and reads (45 s; a failure sets KVIKIO_COMPAT_MODE=ON)
  archive        the 200,000-cell Tahoe-like archive, uint16, written by our ArchiveWriter
  R0-R9, R2b     the first-GPU review's smoke checks (numbered as in docs/gpu-review/report.md)
  pytest         ``pytest -m gpu`` over the test files that carry the ``gpu`` marker: started in the background
                 before the archive, waited for (or stopped, keeping its summary) before the benchmarks
  bench:<res>    ``scdl-gpu bench --device cuda`` per residency: orders x batch sizes, with the ceilings
  profile        ``scdl-gpu profile --device cuda --residency device`` (random @4096)
  breakdown      where a device-resident batch's time goes: backend, launches (host and GPU), loader with and
                 without prefetch, cProfile's top functions (batches of 64 and 4,096)
  nvcomp         the archive compressed (zstd, lz4); nvCOMP's device decode in GB/s, and block order @4096
                 (stream residency, first 24 batches) cold and warm, compressed vs flat

Results go to ``$OUT`` when set, else ``benchmarks/results``: ``gpu_check.{json,md}`` (every step),
``gpu_bench.{json,md}``, ``gpu_profile.{json,md}``, ``gpu_nvcomp.json`` and ``gpu_check.log`` (all output). Exit status 1
when any step FAILed.

Without a usable GPU (no working nvidia-smi), or with ``--dry-run``, it does what it can here (wheel
presence, imports, the archive at ``--cells`` 2000, pytest's collection, a CPU bench of the tiny
archive), prints the commands it would run for the rest, and writes into a temporary folder unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PROTO = "@@gpu-check "  # a child's result line: PROTO + JSON
SMOKE = ["R1", "R2", "R0", "R6", "R6b", "R4", "R3", "R5", "R8", "R9"]  # the review's order; R2b is added last
EXPECTED_FAIL = {"R4": "review R4: pinned staging reused while its copy is queued", "R9": "review R9: CuPy's -ftz=true"}
RESIDENCIES = ("auto", "device", "pinned", "stream")
ORDERS = ("sequential", "random", "block")
BATCH_SIZES = (64, 4096)
KIT = ("anndata", "kvikio_cu13", "libkvikio_cu13", "rapids_logger", "zarr", "numcodecs",  # wheels the image lacks
       "nvidia_nvcomp_cu13", "nvidia_libnvcomp_cu13")
# step: (seconds it may take, seconds it needs to be worth starting), in run order. A step's timeout
# is cut so that every later step keeps what it needs (the bench needs its share per residency).
SMOKE_CHECK_S = 90  # the longest a smoke check may take (R6 compiles every kernel instantiation)
PLAN = {"wheels": (90, 20), "project": (120, 30), "imports": (120, 30), "kvikio-auto": (45, 10), "archive": (180, 60),
        "smoke": (200, 60), "pytest": (200, 45), "bench": (60, 25), "report": (60, 10), "profile": (45, 20),
        "breakdown": (60, 25), "nvcomp": (150, 45)}


# --------------------------------------------------------------------------------------------------
# the parent: steps, timeouts, the record
# --------------------------------------------------------------------------------------------------
class Check:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.t0 = time.monotonic()
        self.deadline = self.t0 + a.budget
        self.steps: list[dict] = []
        self.info: dict = {}
        self.out: Path = a.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.work: Path = a.workdir
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu_check.log", "w")
        # pip offline and quiet; PEP 668 (an "externally managed" system Python) must not stop the installs
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
                        PIP_BREAK_SYSTEM_PACKAGES="1")
        self.residency = False  # whether this checkout's SingleCellLoader takes residency=
        self._shown = None  # the last command printed
        self.n_bench = len(RESIDENCIES)  # bench runs still to come (one per residency)
        self.skip = set(getattr(a, "skip", None) or ())  # steps and checks not to run (--skip)

    # output ---------------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def raw(self, text: str) -> None:
        """Child output: the log only."""
        self.log.write(text if text.endswith("\n") else text + "\n")
        self.log.flush()

    def record(self, name: str, status: str, reason: str, seconds: float = 0.0, command=None, **data) -> dict:
        step = dict(name=name, status=status, reason=reason, seconds=round(seconds, 2), **data)
        if command is not None:
            step["command"] = command if isinstance(command, str) else " ".join(map(str, command))
        self.steps.append(step)
        self.say(f"{status:<4} {name:<24} {seconds:6.1f}s  {reason}")
        not_run = status == "SKIP" or "would run" in reason  # a dry run shows what the GPU run does
        if "command" in step and not_run and step["command"] != self._shown:
            self.say(f"       would run: {step['command']}")
            self._shown = step["command"]
        return step

    # time -----------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, step: str) -> float | None:
        """Seconds ``step`` may take (see PLAN): at most its own, leaving the later steps what they
        need; at least what it needs while the budget has that much; None when it has not."""
        names = list(PLAN)
        later = [n for n in names[names.index(step) + 1:] if n not in self.skip]
        reserve = sum(PLAN[n][1] * (self.n_bench if n == "bench" else 1) for n in later)
        if step == "bench":  # the bench runs of the residencies after this one
            reserve += self.n_bench * PLAN["bench"][1]
        wanted, need = PLAN[step]
        left = self.left()
        if left < need:
            return None
        if not later:  # nothing after it (the rest skipped): the whole budget, e.g. the GPU tests alone
            wanted = left
        return max(min(wanted, left - reserve), need)

    # processes ------------------------------------------------------------------------------------
    def spawn(self, cmd: list, timeout: float, per_check: float | None = None) -> tuple[int | None, list[str], list[dict], str | None]:
        """Run ``cmd`` in its own session for at most ``timeout`` s (and ``per_check`` s per protocol
        check). Returns (exit status or None when killed, output lines, the protocol results, the
        check that began and never ended)."""
        self.raw(f"$ {' '.join(map(str, cmd))}  (timeout {timeout:.0f}s)")
        p = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace", start_new_session=True)
        q: queue.Queue = queue.Queue()

        def pump():
            for line in p.stdout:
                q.put(line)
            q.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            return self._follow(p, q, timeout, per_check)
        finally:
            reader.join(5)  # the session is gone, so the pipe has reached its end
            p.stdout.close()

    def _follow(self, p, q, timeout, per_check):
        lines, results, current, end = [], [], None, time.monotonic() + timeout
        check_end = end
        while True:
            try:
                line = q.get(timeout=max(0.0, min(end, check_end) - time.monotonic()))
            except queue.Empty:
                os.killpg(p.pid, signal.SIGKILL)  # our own child's session: hung CUDA or kvikio calls included
                p.wait()
                return None, lines, results, current
            if line is None:
                break
            if line.startswith(PROTO):
                msg = json.loads(line[len(PROTO):])
                if "begin" in msg:
                    current = msg["begin"]
                    check_end = time.monotonic() + per_check if per_check else end
                else:
                    info = msg.pop("info", None) or {}
                    if msg["name"].startswith("import:"):
                        self.info.update(info)  # versions: facts of the machine, kept with the host
                    elif info:
                        msg["figures"] = info  # a check's own figures, kept with its record
                    results.append(msg)
                    current = None
                    self.record(**msg)
                continue
            lines.append(line.rstrip("\n"))
            self.raw(line)
        return p.wait(), lines, results, current

    def child(self, name: str, *args) -> list:
        return [PY, str(Path(__file__).resolve()), "--child", name, *map(str, args)]

    def budgeted(self, name: str, step: str, cmd: list):
        """``cmd`` under ``step``'s timeout: (exit status or None when killed, output lines, protocol
        results, the timeout, seconds taken); None, with ``name`` recorded as SKIP, when the budget is spent."""
        limit = self.timeout(step)
        if limit is None:
            self.record(name, "SKIP", "out of budget", command=cmd)
            return None
        t = time.monotonic()
        rc, lines, results, _ = self.spawn(cmd, limit)
        return rc, lines, results, limit, time.monotonic() - t

    # steps ----------------------------------------------------------------------------------------
    def gpu(self) -> bool:
        cmd = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        if shutil.which("nvidia-smi") is None:
            self.record("gpu", "SKIP", "no nvidia-smi (no NVIDIA driver here)", command=cmd)
            return False
        t = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            self.record("gpu", "FAIL", "nvidia-smi hung for 20 s", time.monotonic() - t, cmd)
            return False
        if r.returncode != 0 or not r.stdout.strip():
            self.record("gpu", "FAIL", f"nvidia-smi rc={r.returncode}: {(r.stderr or r.stdout).strip()[:300]}",
                        time.monotonic() - t, cmd)
            return False
        name, driver, mem = [x.strip() for x in r.stdout.strip().splitlines()[0].split(",")][:3]
        self.info.update(gpu=name, driver=driver, gpu_memory=mem)
        self.record("gpu", "PASS", f"{name}, driver {driver}, {mem}", time.monotonic() - t, cmd)
        return True

    def wheels(self, dry: bool) -> None:
        whl = sorted((ROOT / ".whl").glob("*.whl"))
        cmd = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target",
               str(self.a.site), *(str(w.relative_to(ROOT)) for w in whl)] if whl else \
            f"{PY} -m pip install --no-index --no-deps --target {self.a.site} .whl/*.whl"
        if not whl:
            kit = sorted((ROOT.parent / "shared" / "gpu-kit" / "wheels").glob("*.whl"))
            self.record("wheels", "FAIL" if not dry else "SKIP",
                        f"no .whl/*.whl ({len(kit)} in ../shared/gpu-kit/wheels): run `make gpu-kit`, then carry "
                        "[\".whl\"] to the GPU machine", command=cmd)
            return
        names = {w.name.split("-")[0].lower() for w in whl}
        missing = [k for k in KIT if k not in names]
        have = f"{len(whl)} wheels" + (f", missing {' '.join(missing)}" if missing else "")
        if dry:
            self.record("wheels", "FAIL" if missing else "PASS", f"{have}; would run the command (not here: cp312 wheels)",
                        command=cmd)
            return
        t = time.monotonic()
        rc, lines, _, _ = self.spawn(cmd, self.timeout("wheels") or 20)
        if rc == 0:
            self.env["PYTHONPATH"] = os.pathsep.join([str(self.a.site)] + [p for p in [self.env.get("PYTHONPATH")] if p])
            self.record("wheels", "FAIL" if missing else "PASS", f"{have} installed into {self.a.site}",
                        time.monotonic() - t, cmd)
        else:
            self.record("wheels", "FAIL", f"pip rc={rc}: {failure(lines, 3)}", time.monotonic() - t, cmd)

    def project(self, dry: bool) -> None:
        cmd = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", "-e", "."]
        probe = [PY, "-c", "import importlib.util as u; s = u.find_spec('scdl_gpu.kernels'); print(s.origin if s else '')"]
        t = time.monotonic()
        if dry:
            r = subprocess.run(probe, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60)
            origin = r.stdout.strip()
            if origin.startswith(str(ROOT / "kernels")):
                self.record("project", "PASS", f"scdl_gpu.kernels already resolves to {origin}; would run the command",
                            time.monotonic() - t, cmd)
            else:
                self.record("project", "SKIP", f"not installed here ({origin or r.stderr.strip()[-200:]}); would run the command",
                            time.monotonic() - t, cmd)
            return
        rc, lines, _, _ = self.spawn(cmd, self.timeout("project") or 30)
        r = subprocess.run(probe, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60)
        if rc == 0 and r.stdout.strip().startswith(str(ROOT / "kernels")):
            self.record("project", "PASS", f"editable install; scdl_gpu.kernels from {r.stdout.strip()}",
                        time.monotonic() - t, cmd)
            return
        # Without the install every GPU step would fail on `from .. import kernels`; map it for the
        # rest of the run (every Python imports sitecustomize from PYTHONPATH) and report the failure.
        alias = self.work / "alias"
        alias.mkdir(exist_ok=True)
        (alias / "sitecustomize.py").write_text(ALIAS.format(root=str(ROOT)))
        self.env["PYTHONPATH"] = os.pathsep.join([str(alias), str(ROOT)] + [p for p in [self.env.get("PYTHONPATH")] if p])
        self.env["SCDL_GPU_CHECK_ALIASED"] = "1"
        self.record("project", "FAIL", f"pip rc={rc}: {failure(lines, 3)}; scdl_gpu.kernels aliased to "
                    "kernels/ for the rest of the run", time.monotonic() - t, cmd)

    def imports(self, dry: bool) -> None:
        t = time.monotonic()
        limit = self.timeout("imports") or 30
        rc, lines, results, _ = self.spawn(self.child("imports", "--dry-run" if dry else "--gpu"), limit)
        self.residency = any(r["name"] == "import:residency" and r["status"] == "PASS" for r in results)
        self.n_bench = len(RESIDENCIES) if self.residency else 1
        if rc != 0 or not results:
            why = "timed out" if rc is None else f"rc={rc}: {failure(lines, 3)}"
            self.record("imports", "FAIL", why, time.monotonic() - t)

    def kvikio_probe(self) -> None:
        run = self.budgeted("kvikio-auto", "kvikio-auto", self.child("kvikio-probe"))
        if run is None:
            return
        rc, lines, results, limit, secs = run
        if rc == 0 and results:
            return
        # A hang in cuFile's handle registration under AUTO (review R3): compat mode for the rest.
        self.env["KVIKIO_COMPAT_MODE"] = "ON"
        why = f"hung past {limit:.0f}s" if rc is None else f"rc={rc}: {failure(lines, 2)}"
        if not results:
            self.record("kvikio-auto", "FAIL", f"{why}; KVIKIO_COMPAT_MODE=ON from here on", secs)
        else:
            self.say("     KVIKIO_COMPAT_MODE=ON from here on")

    def archive(self, cells: int) -> Path | None:
        path = self.work / f"tahoe{cells}_u16.scdl"
        run = self.budgeted("archive", "archive", self.child("archive", path, cells))
        if run is None:
            return None
        rc, lines, results, limit, secs = run
        if rc == 0 and results and results[-1]["status"] == "PASS":
            return path
        if not results:
            why = f"timed out after {limit:.0f}s" if rc is None else f"rc={rc}: {failure(lines, 3)}"
            self.record("archive", "FAIL", why, secs)
        return None

    def smoke(self, dry: bool) -> None:
        names = SMOKE + [f"R5:{r}" for r in RESIDENCIES[1:] if self.residency] + ["R2b"]
        for n in [n for n in names if n in self.skip]:
            self.record(n, "SKIP", "--skip")
        names = [n for n in names if n not in self.skip]
        if dry:
            for n in names:
                self.record(n, "SKIP", "no usable CUDA device", command=self.child("smoke", *names))
            return
        pending, limit = list(names), self.timeout("smoke")
        end = time.monotonic() + (limit or 0)
        while pending:
            left = end - time.monotonic()
            if left < 15:
                for n in pending:
                    self.record(n, "SKIP", "out of budget")
                return
            t = time.monotonic()
            # one child for all; a check that hangs (kvikio, a kernel) is killed, and a new child goes on
            rc, lines, results, current = self.spawn(self.child("smoke", *pending), left, per_check=SMOKE_CHECK_S)
            done = {r["name"] for r in results}
            if current is not None:  # hung or crashed inside a check: record it, go on with the rest
                why = (f"no result within {SMOKE_CHECK_S}s or the smoke budget: killed" if rc is None
                       else f"crashed rc={rc}: {failure(lines, 2)}")
                self.record(current, "FAIL", why, time.monotonic() - t)
                done.add(current)
            elif not results:  # died before its first check
                why = "timed out" if rc is None else f"rc={rc}: {failure(lines, 3)}"
                for n in pending:
                    self.record(n, "FAIL", f"smoke child: {why}")
                return
            pending = [n for n in pending if n not in done]

    def _pytest_cmd(self) -> list:
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                       if "pytest.mark.gpu" in p.read_text(errors="replace"))
        # --third-party-warnings=show: our warnings stay errors, CuPy/kvikio/torch notices do not (tests/conftest.py)
        return [PY, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rfEs", "--durations=5", "--maxfail=25",
                "--third-party-warnings=show", *files] if files else []

    def pytest_start(self, dry: bool) -> None:
        """On a GPU, start ``pytest -m gpu`` in the background now: it takes minutes, and runs beside the
        archive and the smoke checks. The ``pytest`` step waits for it before the benchmarks (or stops
        it), so it never shares the GPU with a timing."""
        cmd = self._pytest_cmd()
        if dry or not cmd or "pytest" in self.skip:
            return
        self._pytest_log = self.work / "pytest.log"
        self.raw(f"$ {' '.join(cmd)}  (in the background, output in {self._pytest_log})")
        with open(self._pytest_log, "w") as out:
            # SIGINT restored: a shell's background job ignores it, and its children would inherit that,
            # so the stop below could not give pytest the chance to print its summary
            self._pytest = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True,
                                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self._pytest_t0 = time.monotonic()

    def pytest(self, dry: bool) -> None:
        cmd = self._pytest_cmd()
        if not cmd:
            self.record("pytest", "FAIL", "no test file carries the gpu marker")
            return
        if dry:
            cmd_c = cmd[:3] + ["--collect-only"] + cmd[3:]
            limit = self.timeout("pytest") or 20
            t = time.monotonic()
            rc, lines, _, _ = self.spawn(cmd_c, limit)
            counted = next((ln.strip() for ln in reversed(lines) if "collected" in ln or "selected" in ln), "?")
            self.record("pytest", "PASS" if rc == 0 else "FAIL", f"{counted} (rc={rc}); would run the command",
                        time.monotonic() - t, cmd)
            return
        p = getattr(self, "_pytest", None)
        if p is None:
            self.record("pytest", "FAIL", "the background run never started", command=cmd)
            return
        limit = self.timeout("pytest") or 0
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:  # stopped as Ctrl-C would: pytest still prints its summary
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            rc = None
        secs = time.monotonic() - self._pytest_t0
        lines = self._pytest_log.read_text(errors="replace").splitlines()
        for ln in lines[-80:]:
            self.raw(ln)
        summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and ("passed" in ln or "failed" in ln
                        or "error" in ln or "skipped" in ln)), "")
        failed = [ln.split(" - ")[0] for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        if rc is None:  # what ran before the stop still counts: a failure there fails the step
            self.record("pytest", "FAIL" if failed or "failed" in summary else "SKIP",
                        f"stopped after {secs:.0f}s to keep the benchmarks' time: {summary or 'no summary'}"
                        + (f"; {', '.join(failed[:4])}" if failed else ""), secs, cmd)
            return
        ok = rc == 0 and "passed" in summary  # every test skipped: the tests saw no usable device
        self.record("pytest", "PASS" if ok else "FAIL", (summary or f"rc={rc}") + (f"; {', '.join(failed[:4])}" if failed else "")
                    + ("" if ok or failed else " (nothing passed)"), secs, cmd)

    def bench(self, archive: Path | None, dry: bool) -> None:
        if archive is None:
            self.record("bench", "SKIP", "no archive")
            return
        device = "cpu" if dry else "cuda"
        wanted = (("auto", "stream") if self.residency else ("auto",)) if dry else \
            (RESIDENCIES if self.residency else ("auto",))
        for res in [r for r in wanted if f"bench:{r}" in self.skip]:
            self.record(f"bench:{res}", "SKIP", "--skip")
        wanted = tuple(r for r in wanted if f"bench:{r}" not in self.skip)
        skipped = [r for r in (("stream",) if dry else RESIDENCIES) if r not in wanted]
        orders, sizes, secs = (("random", "block"), (64,), 0.2) if dry else (ORDERS, BATCH_SIZES, self.a.bench_seconds)
        parts = []
        for i, res in enumerate(wanted):
            part = self.work / f"bench_{device}_{res}.json"
            part.unlink(missing_ok=True)
            cmd = [PY, "-m", "scdl_gpu.cli", "bench", str(archive), "--device", device, "--residency", res,
                   "--shuffle", *orders, "--batch-size", *map(str, sizes), "--seconds", str(secs),
                   "--warmup", "1" if dry else "3", "--json", str(part), "--quiet"] + (["--no-cold"] if i or dry else [])
            self.n_bench = len(wanted) - i - 1
            run = self.budgeted(f"bench:{res}", "bench", cmd)
            if run is None:
                continue
            rc, lines, _, limit, took = run
            if rc == 0 and part.exists():
                r = json.loads(part.read_text())
                best = max(r["results"], key=lambda x: x["cells_per_s"])
                frac = best.get("fraction_of_bound")
                self.record(f"bench:{res}", "PASS",
                            f"{len(r['results'])} configs; best {best['shuffle']}@{best['batch_size']} "
                            f"{best['cells_per_s']:,.0f} cells/s"
                            + (f" = {frac:.0%} of {best['bound'].replace('_', ' ')}" if frac else ""), took, cmd)
                parts.append(part)
            else:
                why = f"timed out after {limit:.0f}s" if rc is None else f"rc={rc}: {failure(lines, 2)}"
                self.record(f"bench:{res}", "FAIL", why, took, cmd)
        for res in skipped:
            self.record(f"bench:{res}", "SKIP", "SingleCellLoader takes no residency= in this checkout yet")
        if parts:
            t = time.monotonic()
            rc, lines, results, _ = self.spawn(self.child("bench-report", "--gpu" if not dry else "--dry-run", self.out, *parts),
                                               self.timeout("report") or 10)
            if not results:
                why = "timed out" if rc is None else f"rc={rc}: {failure(lines, 2)}"
                self.record("bench:report", "FAIL", why, time.monotonic() - t)
            else:
                self.say("\n".join(lines))  # the table, for whoever reads the run's output

    def start_on_archive(self, step: str, cmd, archive: Path | None, dry: bool):
        """Run ``cmd`` as ``step`` within its budget (see :meth:`budgeted`); None, the step recorded as
        skipped, without a GPU or an archive (or when its budget is spent)."""
        if dry or archive is None:
            self.record(step, "SKIP", "no usable CUDA device" if dry else "no archive", command=cmd)
            return None
        return self.budgeted(step, step, cmd)

    def profile(self, archive: Path | None, dry: bool) -> None:
        cmd = [PY, "-m", "scdl_gpu.cli", "profile", str(archive or "ARCHIVE"), "--device", "cuda", "--residency", "device",
               "--shuffle", "random", "--batch-size", "4096", "--seconds", "2", "--json", str(self.out / "gpu_profile.json"),
               "--quiet"]
        run = self.start_on_archive("profile", cmd, archive, dry)
        if run is None:
            return
        rc, lines, _, limit, secs = run
        if rc == 0:
            r = json.loads((self.out / "gpu_profile.json").read_text())
            top = max(r["stages"], key=lambda s: s["ms_per_batch"]) if r["stages"] else None
            (self.out / "gpu_profile.md").write_text(
                f"# `scdl-gpu profile` on {self.info.get('gpu', 'cuda')} (driver {self.info.get('driver', '?')}, "
                f"{r['system']['date']})\n\nCommand: `{' '.join(cmd[2:])}` (via `benchmarks/gpu_check.py`)\n\n```\n"
                + "\n".join(lines) + "\n```\n")
            self.record("profile", "PASS", f"{r['cells_per_s']:,.0f} cells/s with stages timed"
                        + (f"; slowest stage {top['stage']} {top['ms_per_batch']:.2f} ms/batch" if top else ""), secs, cmd)
        else:
            why = f"timed out after {limit:.0f}s" if rc is None else f"rc={rc}: {failure(lines, 2)}"
            self.record("profile", "FAIL", why, secs, cmd)

    def breakdown(self, archive: Path | None, dry: bool) -> None:
        self.child_step("breakdown", archive, dry)

    def nvcomp(self, archive: Path | None, dry: bool) -> None:
        self.child_step("nvcomp", archive, dry, self.out / "gpu_nvcomp.json")

    def child_step(self, step: str, archive: Path | None, dry: bool, *args) -> None:
        """``step``'s child over the archive (its checks record themselves); FAIL if it reported none."""
        cmd = self.child(step, archive or "ARCHIVE", *args)
        run = self.start_on_archive(step, cmd, archive, dry)
        if run is None:
            return
        rc, lines, results, limit, secs = run
        if not results:
            why = f"timed out after {limit:.0f}s" if rc is None else f"rc={rc}: {failure(lines, 3)}"
            self.record(step, "FAIL", why, secs, cmd)

    # the run --------------------------------------------------------------------------------------
    def run(self) -> int:
        a = self.a
        self.say(f"gpu_check: {ROOT} with {PY} (Python {sys.version.split()[0]}); budget {a.budget:.0f}s; results in {self.out}")
        has_gpu = self.gpu()
        dry = a.dry_run or not has_gpu
        if dry:
            self.say(f"DRY RUN: {'--dry-run given' if a.dry_run else 'no usable NVIDIA GPU'}; GPU steps print what they would run")
        steps = [
            ("wheels", lambda: self.wheels(dry)),
            ("project", lambda: self.project(dry)),
            ("imports", lambda: self.imports(dry)),
            ("kvikio-auto", lambda: self.kvikio_probe() if not dry else self.record(
                "kvikio-auto", "SKIP", "no usable CUDA device", command=self.child("kvikio-probe"))),
        ]
        for name, fn in steps:
            self._guard(name, fn)
        self.pytest_start(dry)
        cells = a.cells or (2000 if dry else 200_000)
        archive = self._guard("archive", lambda: self.archive(cells))
        self._guard("smoke", lambda: self.smoke(dry))
        self._guard("pytest", lambda: self.pytest(dry))
        self._guard("bench", lambda: self.bench(archive, dry))
        self._guard("profile", lambda: self.profile(archive, dry))
        self._guard("breakdown", lambda: self.breakdown(archive, dry))
        self._guard("nvcomp", lambda: self.nvcomp(archive, dry))
        return self.finish(dry)

    def _guard(self, name: str, fn):
        """A bug in this script fails its step, not the run; a step named in ``--skip`` is recorded as skipped."""
        if name in self.skip:
            self.record(name, "SKIP", "--skip")
            return None
        try:
            return fn()
        except Exception as e:
            self.raw(traceback.format_exc())
            self.record(name, "FAIL", f"gpu_check error: {type(e).__name__}: {str(e)[:300]}")
            return None

    def finish(self, dry: bool) -> int:
        p = getattr(self, "_pytest", None)
        if p is not None and p.poll() is None:  # the run ended before its pytest step (a bug here): no orphan
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        counts = {s: sum(x["status"] == s for x in self.steps) for s in ("PASS", "FAIL", "SKIP")}
        wall = time.monotonic() - self.t0
        fails = [x["name"] for x in self.steps if x["status"] == "FAIL"]
        known = [x["name"] for x in self.steps if x["status"] == "FAIL" and x["name"] in EXPECTED_FAIL
                 and EXPECTED_FAIL[x["name"]] in x["reason"]]  # failed the way the review predicts
        date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        result = dict(schema="scdl-gpu-check/1", date=date, dry_run=dry, wall_s=round(wall, 1), budget_s=self.a.budget,
                      python=sys.version.split()[0], host=self.info, counts=counts, steps=self.steps)
        (self.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        md = [f"# `make gpu-check` on {self.info.get('gpu') or 'no GPU (dry run)'} ({date})", "",
              f"- driver {self.info.get('driver', '–')}, CUDA runtime {self.info.get('cuda_runtime') or '–'}, "
              f"torch {self.info.get('torch', '–')}, CuPy {self.info.get('cupy', '–')}, kvikio {self.info.get('kvikio', '–')}",
              f"- {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {wall:.0f} s"
              + (" (dry run)" if dry else ""), "",
              "| step | status | seconds | reason |", "|---|---|---|---|"]
        md += [f"| {x['name']} | {x['status']} | {x['seconds']:.1f} | {x['reason'].replace('|', '/')} |" for x in self.steps]
        if known:
            md += ["", "Known failures (the review's expectation until fixed): "
                   + "; ".join(f"{n}: {EXPECTED_FAIL[n]}" for n in known)]
        (self.out / "gpu_check.md").write_text("\n".join(md) + "\n")
        self.say("")
        self.say(f"SUMMARY {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in {wall:.0f}s"
                 + (" (dry run)" if dry else "") + (f"; failed: {' '.join(fails)}" if fails else "")
                 + (f" (expected by the review: {' '.join(known)})" if known else ""))
        self.say(f"results: {self.out}/gpu_check.{{json,md,log}}" + ("" if dry else ", gpu_bench.{json,md}, gpu_profile.{json,md}"))
        self.log.close()
        scrub_outputs(self.out, {"<checkout>": ROOT, "<out>": self.out, "<workdir>": self.work, "<site>": self.a.site,
                                 "<python>": sys.prefix, "<home>": Path.home()})
        return 1 if fails else 0


def scrub(text: str, roots: dict) -> str:
    """``text`` with each of ``roots``' paths (``{label: path}``, longest first) written as its label
    (``_report.portable``, as the other benchmarks write theirs) and any other temporary path as ``<tmp>/``:
    results get committed, and must not carry a machine's directories."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _report

    usable = {k: v for k, v in roots.items() if v and str(v) != "/"}  # "/" would label every path
    text = _report.portable(text, dict(sorted(usable.items(), key=lambda kv: -len(str(kv[1])))))
    return re.sub(r"(?<![\w<>.])/tmp/", "<tmp>/", text)


def scrub_outputs(out: Path, roots: dict) -> None:
    """Every result file in ``out`` scrubbed (see :func:`scrub`)."""
    for p in Path(out).iterdir():
        if p.is_file() and p.suffix in (".json", ".md", ".log"):
            p.write_text(scrub(p.read_text(errors="replace"), roots))


ALIAS = '''# Written by benchmarks/gpu_check.py because `pip install -e .` failed on this machine: maps
# scdl_gpu.kernels to the checkout's kernels/ (pyproject's package-dir) in every Python it starts.
import importlib.util as _u, sys as _s
try:
    _spec = _u.find_spec("scdl_gpu.kernels")
except ImportError:
    _spec = None
if _spec is None:
    _spec = _u.spec_from_file_location("scdl_gpu.kernels", {root!r} + "/kernels/__init__.py",
                                       submodule_search_locations=[{root!r} + "/kernels"])
    _m = _u.module_from_spec(_spec)
    _s.modules["scdl_gpu.kernels"] = _m
    _spec.loader.exec_module(_m)
'''


# --------------------------------------------------------------------------------------------------
# children: each prints PROTO lines (a check beginning, a check's result) and ordinary output
# --------------------------------------------------------------------------------------------------
def failure(lines: list[str], n: int = 2) -> str:
    """The telling part of a failed command's output: its most specific error line, else its last lines."""
    generic = ("subprocess-exited-with-error", "metadata-generation-failed", "originates from a subprocess",
               "Encountered error")
    errors = [ln.strip() for ln in lines if "error" in ln.lower() and not any(g in ln for g in generic)]
    return (errors[0] if errors else " | ".join(ln.strip() for ln in lines[-n:] if ln.strip()))[:300]


def emit(**msg) -> None:
    print(PROTO + json.dumps(msg), flush=True)


def run_checks(checks: list[tuple[str, callable]]) -> None:
    """Run each ``fn() -> (status, reason[, info])``; an exception is a FAIL with its message."""
    for name, fn in checks:
        emit(begin=name)
        t = time.perf_counter()
        try:
            out = fn()
            status, reason, info = (*out, None) if len(out) == 2 else out
        except BaseException as e:  # noqa: BLE001 - a check's failure, whatever it is, is its result
            status, reason, info = "FAIL", f"{type(e).__name__}: {str(e)[:400]}", None
            traceback.print_exc()
        msg = dict(name=name, status=status, reason=reason, seconds=time.perf_counter() - t)
        if info:
            msg["info"] = info
        emit(**msg)


def child_imports(gpu: bool) -> None:
    import importlib
    import inspect

    sys.path.insert(0, str(ROOT))
    info: dict = {}

    def version(mod, name):
        import importlib.metadata as md

        try:  # metadata first: anndata deprecates its __version__
            return md.version(name)
        except md.PackageNotFoundError:
            return getattr(mod, "__version__", "?")

    def one(name: str, gpu_only: bool = False, kit: bool = False):
        def check():
            try:
                mod = importlib.import_module(name)
            except Exception as e:
                missing = f"{type(e).__name__}: {str(e)[:200]}"
                if not gpu and (gpu_only or kit):
                    return "SKIP", f"not importable here ({missing}); the GPU machine needs it" + (" from the kit" if kit else "")
                return "FAIL", missing + (" (carry the kit's wheels: make gpu-kit, carry [\".whl\"])" if kit else "")
            v = version(mod, name.split(".")[0].replace("_", "-"))
            extra, ok = "", True
            if name == "torch":
                info["torch"] = v
                info["cuda_runtime"] = mod.version.cuda
                ok = mod.cuda.is_available() or not gpu
                extra = f"; CUDA {mod.version.cuda}, cuda.is_available() {mod.cuda.is_available()}"
            elif name == "cupy":
                info["cupy"] = v
                avail = bool(mod.is_available())
                if avail:
                    rt = mod.cuda.runtime
                    info["cupy_driver"] = rt.driverGetVersion()
                    extra = f"; driver API {rt.driverGetVersion()}, runtime {rt.runtimeGetVersion()}, nvrtc {mod.cuda.nvrtc.getVersion()}"
                elif gpu:
                    ok, extra = False, "; cupy.is_available() is False"
                else:
                    return "SKIP", f"{v} imports; no usable device here"
            elif name == "kvikio":
                info["kvikio"] = v
            elif name == "scdl_gpu.kernels":
                origin = Path(mod.__file__).resolve()
                aliased = os.environ.get("SCDL_GPU_CHECK_ALIASED") == "1"
                mine = origin == ROOT / "kernels" / "__init__.py"
                ok = mine or not gpu  # a GPU run must test this checkout's kernels; a dry run only imports
                extra = f"; from {origin}" + (" (aliased: the project is not installed)" if aliased else "") + (
                    "" if mine else " (not this checkout's)")
            return ("PASS" if ok else "FAIL"), f"{v}{extra}", dict(info)

        return f"import:{name}", check

    def residency():
        from scdl_gpu import SingleCellLoader

        has = "residency" in inspect.signature(SingleCellLoader).parameters
        return ("PASS", "SingleCellLoader(residency=...) exists: bench and R5 cover each residency") if has else \
            ("SKIP", "SingleCellLoader takes no residency= yet: bench runs auto only")

    run_checks([one("numpy"), one("scipy"), one("h5py"), one("numba"), one("torch"), one("cupy", gpu_only=True),
                one("kvikio", kit=True), one("anndata", kit=True), one("nvidia.nvcomp", kit=True), one("scdl_gpu"),
                one("scdl_gpu.kernels"),
                ("import:residency", residency)])


def child_kvikio_probe() -> None:
    """kvikio in its default AUTO mode: a read under 16 KiB (POSIX shortcut) and one over (thread
    pool), into offset slices of a CuPy array (review R3; a hang here is cuFile's handle registration)."""
    import numpy as np

    def probe():
        try:
            import kvikio
            import kvikio.defaults  # not imported by kvikio's __init__ (26.x)
        except Exception as e:
            return "SKIP", f"kvikio not importable: {e!r}"[:300]
        import cupy as cp

        p = os.path.join(tempfile.mkdtemp(), "x.bin")
        a = np.arange(1 << 20, dtype=np.uint16)
        a.tofile(p)
        b = cp.zeros(1 << 20, cp.uint16)
        with kvikio.CuFile(p, "r") as f:
            for fu in [f.pread(b[o:o + n], n * 2, file_offset=s * 2) for s, o, n in ((10, 100, 1000), (500000, 5000, 300000))]:
                fu.get()
        ok = (b[100:1100].get() == a[10:1010]).all() and (b[5000:305000].get() == a[500000:800000]).all()
        return ("PASS" if ok else "FAIL"), (f"preads into CuPy slices {'equal' if ok else 'DIFFER'}; compat_mode "
                                            f"{kvikio.defaults.get('compat_mode')}, preferred {kvikio.defaults.is_compat_mode_preferred()}")

    run_checks([("kvikio-auto", probe)])


# the archive ---------------------------------------------------------------------------------------
N_GENES, NNZ_PER_CELL, CELLS_PER_FILE = 62_710, 1450, 20_000


def _plate(job: tuple[int, int]):
    """One synthetic plate (seed, cells), as bench_convert_dir's inputs hold it, in the archive's dtypes."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_synthetic import iter_synthetic_rows

    seed, cells = job
    tiles = list(iter_synthetic_rows(cells, N_GENES, NNZ_PER_CELL, seed=seed, dtype="uint16"))
    return (np.concatenate([t.row_nnz for t in tiles]), np.concatenate([t.indices for t in tiles]).astype(np.uint16),
            np.concatenate([t.values for t in tiles]))


def plates(cells: int) -> list[tuple[int, int]]:
    """The 200k archive is 10 plates of 20,000 cells (seeds 0-9, one gene table): the cells of the
    CPU benchmarks' conversion (bench_loader.default_archive); a smaller one is fewer or smaller plates."""
    n = max(1, -(-cells // CELLS_PER_FILE))
    return [(k, cells // n + (k < cells % n)) for k in range(n)]


def child_archive(path: Path, cells: int) -> None:
    import multiprocessing as mp

    import numpy as np

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_synthetic import iter_synthetic_rows, synthetic_tables

    from scdl_gpu.archive import ArchiveWriter, open_arrays

    def verify(t0: float, reused: bool):
        a = open_arrays(path)
        if a.n_rows != cells or a.dtypes["data.npy"] != "uint16" or a.dtypes["col_ptr.npy"] != "uint16":
            return "FAIL", f"{path}: {a.n_rows} rows, dtypes {a.dtypes}; expected {cells} rows of uint16"
        first = next(iter_synthetic_rows(min(cells, 1000), N_GENES, NNZ_PER_CELL, seed=0, dtype="uint16"))
        n = int(first.row_nnz.sum())  # the first tile, regenerated, must be the archive's first rows
        if not (np.array_equal(a.data[:n], first.values) and np.array_equal(a.col_ptr[:n], first.indices)
                and int(a.row_ptr[len(first.row_nnz)]) == n):
            return "FAIL", "the archive's first rows differ from the generator's"
        size = (path / "data.npy").stat().st_size + (path / "col_ptr.npy").stat().st_size
        written = time.perf_counter() - t0
        # The CPU backend compiles its row gather for these dtypes now (numba's disk cache), so the
        # bench's loaders load it instead of compiling inside a timed configuration.
        from scdl_gpu.backend import get_backend

        t1 = time.perf_counter()
        b = get_backend(path, device="cpu").batch(np.arange(len(first.row_nnz)))
        if not np.array_equal(b.values.numpy(), first.values.astype(b.values.numpy().dtype)):
            return "FAIL", "the CPU backend's first rows differ from the generator's"
        return "PASS", (f"{'reused ' if reused else ''}{path}: {cells:,} cells x {N_GENES:,} genes, {a.nnz:,} values "
                        f"({a.nnz / cells:,.0f}/cell), uint16, {size / 1e9:.2f} GB"
                        + ("" if reused else f", written in {written:.1f}s")
                        + f"; CPU gather ready in {time.perf_counter() - t1:.1f}s")

    def make():
        t0 = time.perf_counter()
        if path.exists():
            status, why = verify(t0, True)
            if status == "PASS":
                return status, why
            shutil.rmtree(path)
        jobs = plates(cells)
        tables = synthetic_tables(N_GENES, 0)
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with mp.get_context("fork").Pool(workers) as pool, ArchiveWriter(path, n_vars=N_GENES, data_dtype="uint16") as w:
            for row_nnz, cols, vals in pool.imap(_plate, jobs):  # in seed order
                ip = np.zeros(len(row_nnz) + 1, np.int64)
                np.cumsum(row_nnz, out=ip[1:])
                w.append_rows(ip, cols.astype(w.col_dtype, copy=False), vals)
            w.add_var_block(cells, {"feature_id": np.array(tables["var_index"]),
                                    "feature_name": np.array(tables["gene_symbol"])}, "tahoe-like")
            w.commit()
        return verify(t0, False)

    run_checks([("archive", make)])


# the review's smoke checks ------------------------------------------------------------------------
def child_smoke(names: list[str]) -> None:
    import functools
    import itertools
    import warnings

    sys.path.insert(0, str(ROOT))
    seen: list[tuple[str, str, str]] = []
    ours = tuple(str(ROOT / d) for d in ("scdl_gpu", "kernels", "tests"))
    warnings.simplefilter("always")
    warnings.showwarning = lambda m, c, f, l, *a, **k: seen.append((c.__name__, f"{str(m)[:150]} ({os.path.basename(f)}:{l})", f))

    import numpy as np
    import scipy.sparse as sp
    import torch

    import cupy as cp
    from scdl_gpu import kernels
    from scdl_gpu.backend import BatchOptions as O
    from scdl_gpu.backend import _reference as ref
    from scdl_gpu.backend import get_backend, gpu_available, kvikio_available
    from tests.backend.archives import random_matrix, write_archive

    T = Path(tempfile.mkdtemp(prefix="scdl_smoke_"))

    def archive(dt_, rows=60, cols=300, density=0.05, seed=1):
        m = random_matrix(rows, cols, "float32" if dt_ == "float16" else dt_, seed=seed, density=density)
        if dt_ == "float16":
            m.data = m.data.astype(np.float16).astype(np.float32)
        return write_archive(T / f"{dt_}-{rows}-{cols}-{seed}", m, data_dtype=dt_)

    @functools.cache
    def A() -> dict:
        return {d: archive(d) for d in ("uint8", "uint16", "uint64", "float16", "float32", "float64")}

    def same(c, g, rtol=0.0):
        for nm in ("crow", "col", "values", "dense"):
            a, b = getattr(c, nm), getattr(g, nm)
            assert (a is None) == (b is None), nm
            if a is not None:
                assert b.device.type == "cuda" and a.dtype == b.dtype, (nm, a.dtype, b.dtype)
                torch.testing.assert_close(b.cpu(), a, rtol=rtol, atol=0)

    def equal_backends(p, opts, rtol=0.0, **kw):
        cpu = get_backend(p, device="cpu", options=opts)
        if opts.value_dtype == "float16" and np.abs(cpu.data.astype(np.float64)).max() > 65504:
            return
        with get_backend(p, device="cuda", options=opts, **kw) as g:
            for rows in (np.random.default_rng(0).integers(0, 60, 33), np.arange(5, 40), np.array([0, 0, 59]),
                         np.array([], np.int64)):
                same(cpu.batch(rows), g.batch(rows), rtol)

    def r1():
        origin = Path(kernels.__file__).resolve()
        aliased = os.environ.get("SCDL_GPU_CHECK_ALIASED") == "1"
        if aliased:
            return "FAIL", "aliased to kernels/: `pip install --no-deps --no-build-isolation -e .` failed here"
        return ("PASS" if origin == ROOT / "kernels" / "__init__.py" else "FAIL"), f"scdl_gpu.kernels from {origin}"

    def r2():
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        ok = gpu_available() and torch.cuda.is_available()
        return ("PASS" if ok else "FAIL"), (f"{name} cc{cp.cuda.Device().compute_capability} driver "
                                            f"{cp.cuda.runtime.driverGetVersion()} nvrtc {cp.cuda.nvrtc.getVersion()} "
                                            f"cupy {cp.__version__} torch {torch.__version__} kvikio {kvikio_available()}")

    def r0():
        return "PASS", f"{len(A())} test archives in {T}"

    def r6():
        from scdl_gpu.backend._cuda import CudaKernels

        n = 0
        for name in getattr(kernels, "SOURCES", ("csr_batch.cu",)):  # every kernel file, one module each
            ex = kernels.all_expressions(name) if hasattr(kernels, "SOURCES") else kernels.all_expressions()
            mod = cp.RawModule(code=kernels.source(name), options=("-std=c++17",), name_expressions=ex)
            for e in ex:
                mod.get_function(e)
            n += len(ex)
        k, g, ip = CudaKernels("uint16", "uint16"), np.random.default_rng(1), np.array([0, 4, 4, 12, 20], np.int64)
        cols, vals = g.integers(0, 50, 20).astype(np.uint16), g.integers(1, 900, 20).astype(np.uint16)
        remap = np.where(g.random(50) < .6, g.permutation(50), -1)
        d = [cp.asarray(x) for x in (vals, cols, ip, remap)]
        assert (k.keep_flags(d[1], d[3]).get() == ref.keep_flags(cols, remap)).all()
        for rm in (None, remap):  # None -> a NULL pointer argument
            assert (k.row_sums(*d[:3], None if rm is None else d[3]).get() == ref.row_sums(vals, cols, ip, rm)).all()
        pos = ref.exclusive_scan(ref.keep_flags(cols, remap))[:20]
        sc = ref.row_scale_from_sums(ref.row_sums(vals, cols, ip, remap), 1e4)
        gv, gc = k.emit(*d, cp.asarray(pos), cp.asarray(sc), False, "float32", "int64")
        rv, rc = ref.emit(vals, cols, ip, remap, pos, sc, False, "float32", "int64")
        assert (gv.get() == rv).all() and (gc.get() == rc).all()
        np.testing.assert_allclose(k.densify(*d, cp.asarray(sc), True, 50, "float64").get(),
                                   ref.densify(vals, cols, ip, remap, sc, True, 50, "float64"), rtol=1e-15)
        return "PASS", f"{n} instantiations compiled (one module per kernel file); uint16 launches == references"

    def r6b():
        remap = np.full(300, -1)
        remap[np.random.default_rng(0).choice(300, 100, replace=False)] = np.random.default_rng(1).permutation(100)
        bad = []
        opts = (O(), O(value_dtype="float64", index_dtype="int64"), O(value_dtype="float16"), O(dense=True),
                O(target_sum=1e4, log1p=True, dense=True), O(gene_remap=remap), O(gene_remap=remap, target_sum=100.0))
        for (dt_, p), o in itertools.product(A().items(), opts):
            try:
                equal_backends(p, o, 2.5e-7 if o.log1p or o.target_sum else 0, reader="host")
            except Exception as e:
                bad.append(f"{dt_}/{o}: {type(e).__name__} {str(e)[:120]}")
        return ("PASS" if not bad else "FAIL"), f"{len(bad)} mismatches of {len(A()) * len(opts)} " + "; ".join(bad[:3])

    def r4():  # pinned buffers return to CuPy's pool while their async H2D is queued; the next staging reuses one
        p, rows = archive("uint8", rows=80, cols=100, seed=4), np.arange(33)  # values, columns, in_ptr: one 512-byte class
        cpu, gpu = get_backend(p, device="cpu").batch(rows), get_backend(p, device="cuda", reader="host")
        same(cpu, gpu.batch(rows))  # control on an idle stream; leaves free blocks in both pools
        spin = cp.RawKernel(r'extern "C" __global__ void spin(long long c){long long t=clock64(); while(clock64()-t<c){}}', "spin")
        cp.cuda.Device().synchronize()
        spin((1,), (1,), (np.int64(1_500_000_000),))  # ~1 s of a busy legacy stream
        try:
            same(cpu, gpu.batch(rows))
            return "PASS", "equal to the CPU's with a busy stream (the race did not trigger; not proof of safety)"
        except AssertionError as e:
            return "FAIL", f"batch corrupted behind a busy stream ({EXPECTED_FAIL['R4']}): {str(e)[:150]}"

    def r3():
        if not kvikio_available():
            return "SKIP", "kvikio not installed"
        import kvikio.defaults  # not imported by kvikio's __init__ (26.x)

        n0 = kvikio.defaults.get("num_threads")
        with kvikio.defaults.set({"num_threads": 4, "task_size": 1 << 16}):
            n1 = kvikio.defaults.get("num_threads")
        assert (n1, kvikio.defaults.get("num_threads")) == (4, n0), (n0, n1)
        for dt_, o in itertools.product(("uint16", "float16", "float64"), (O(), O(target_sum=1e4, log1p=True, dense=True))):
            equal_backends(A()[dt_], o, 2.5e-7 if o.log1p else 0, reader="kvikio", kvikio_min_span=0, kvikio_threads=4)
        return "PASS", f"compat_mode={kvikio.defaults.get('compat_mode')}; defaults.set reverts; kvikio batches == CPU"

    def r5(residency: str | None):
        def check():
            from scdl_gpu import SingleCellLoader

            p, kw, n, seen_rows = A()["uint16"], dict(batch_size=16, shuffle="random", seed=3), 0, []
            extra = {} if residency is None else {"residency": residency}
            lc = SingleCellLoader(p, device="cpu", **kw)
            lg = SingleCellLoader(p, device="cuda", prefetch=2, **kw, **extra)
            cpu = get_backend(p, device="cpu", options=lg.backend.options)
            # a resident loader permutes its own share, not all rows: its rows differ from the CPU
            # loader's, so each batch is compared with the CPU backend's batch of the same rows
            glob = lg.partition == "global"
            ig = iter(lg)
            for bc, bg in zip(lc, ig):
                x, rows = bg["X"], bg["rows"].cpu()
                assert x.device.type == "cuda" and x.layout == torch.sparse_csr and bg["rows"].device.type == "cuda"
                crow, col = x.crow_indices().cpu().numpy(), x.col_indices().cpu().numpy()
                assert all((np.diff(col[crow[i]:crow[i + 1]]) > 0).all() for i in range(len(crow) - 1)), "unsorted row"
                want = cpu.batch(rows.numpy()).to_sparse_csr().to_dense()
                assert torch.equal(x.to_dense().cpu(), want), f"batch {n}: values differ from the CPU's for its rows"
                if glob:
                    assert torch.equal(rows, bc["rows"]) and torch.equal(x.to_dense().cpu(), bc["X"].to_dense()), n
                seen_rows.append(rows.numpy())
                n += 1
            ig.close()
            lg.close()
            got = np.sort(np.concatenate(seen_rows)) if seen_rows else np.array([])
            assert glob or np.array_equal(got, np.arange(len(got))), "a resident epoch is not a permutation of its share"
            return ("PASS" if n else "FAIL"), (f"{n} batches ({lg.residency}, {lg.partition} order): sorted CSR on cuda, "
                                               "equal to the CPU's for the same rows")
        return check

    def r8():
        from scdl_gpu.profiling import run_profile
        from scdl_gpu.profiling._ceilings import h2d_bandwidth, hbm_copy_bandwidth

        r = run_profile(A()["uint16"], device="cuda", shuffle="random", batch_size=16, prefetch=0, seconds=0.5, warmup=1)
        dev = {s["stage"]: round(s["device_ms_per_batch"], 3) for s in r["stages"]}
        h, d = h2d_bandwidth(64 << 20, 3)["bytes_per_s"], hbm_copy_bandwidth(256 << 20, 3)["bytes_per_s"]
        ok = r["batches"] > 0 and min(dev.values()) >= 0 and h > 1e9 and d > h and r["device_mem_peak_bytes"] > 0
        return ("PASS" if ok else "FAIL"), f"device ms/batch {dev}; h2d {h / 1e9:.1f} GB/s; hbm copy {d / 1e9:.0f} GB/s"

    def r9():
        p = write_archive(T / "ftz", sp.csr_matrix(np.array([[1e-40, 1.0, 0.0], [0.0, 3e-39, 2.0]])), data_dtype="float64")
        g, c = (get_backend(p, device=d).batch([0, 1]).values.cpu() for d in ("cuda", "cpu"))
        return ("PASS" if torch.equal(g, c) else "FAIL"), (f"gpu {g.tolist()} cpu {c.tolist()}"
                                                           + ("" if torch.equal(g, c) else f" ({EXPECTED_FAIL['R9']} flushes subnormals)"))

    def r2b():
        import re
        import tomllib

        # what pytest ignores (pyproject's "ignore:message:Category" filters) is no error there either
        filters = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["filterwarnings"]
        ignored = [f.split(":")[1:3] for f in filters if f.startswith("ignore:")]
        seen[:] = [(c, m, f) for c, m, f in seen if not any(c == cat and re.match(msg, m, re.I) for msg, cat in ignored)]
        mine = sorted({f"{c}: {m}" for c, m, f in seen if os.path.realpath(f).startswith(ours)})
        theirs = sorted({f"{c}: {m}" for c, m, f in seen if not os.path.realpath(f).startswith(ours)})
        for w in mine + theirs:
            print("   warning:", w)
        if mine:
            return "FAIL", f"{len(mine)} warnings from our code (errors under pytest): {mine[0]}"
        return "PASS", f"none from our code; {len(theirs)} third-party (shown, not errors, under pytest on the GPU)" + (
            f": {theirs[0]}" if theirs else "")

    table = dict(R1=r1, R2=r2, R0=r0, R6=r6, R6b=r6b, R4=r4, R3=r3, R5=r5(None), R8=r8, R9=r9, R2b=r2b)
    table.update({f"R5:{r}": r5(r) for r in RESIDENCIES[1:]})
    run_checks([(n, table[n]) for n in names])


def child_bench_report(out: Path, gpu: bool, parts: list[Path]) -> None:
    """One table over the per-residency runs: gpu_bench.json and gpu_bench.md (device, driver, date)."""
    run_checks([("bench:report", lambda: _bench_report(out, gpu, parts))])


def _bench_report(out: Path, gpu: bool, parts: list[Path]):
    sys.path.insert(0, str(ROOT))
    from scdl_gpu.profiling import format_bench

    runs = [json.loads(p.read_text()) for p in parts]
    merged = dict(runs[0])
    merged["results"] = [x for r in runs for x in r["results"]]
    merged["bounds"] = {k: v for r in runs for k, v in (r.get("bounds") or {}).items()}
    merged["runs"] = [dict(residencies=r["settings"].get("residencies"), ceilings=r["ceilings"], bound=r["bound"]) for r in runs]
    text = format_bench(merged)
    print(text)
    stem = "gpu_bench" if gpu else "gpu_bench_dryrun_cpu"
    (out / f"{stem}.json").write_text(json.dumps(merged, indent=2) + "\n")
    s = merged["system"]
    driver = ""
    if gpu:
        try:
            import cupy as cp

            driver = f", CUDA driver API {cp.cuda.runtime.driverGetVersion()}"
        except Exception:  # the table matters more than this detail
            pass
    (out / f"{stem}.md").write_text(
        f"# `scdl-gpu bench` on {s.get('gpu') or s['cpu']}{driver} ({s['date']})\n\n"
        f"One `scdl-gpu bench --device {s['device']} --residency R` per residency (via `benchmarks/gpu_check.py`); "
        "`bound`/`of bound`: the ceiling that bounds each residency (device: HBM copy; pinned: pinned H2D; "
        "stream and auto: the lesser of page-cache read and H2D; auto is where the loader chose, when it says).\n\n"
        f"```\n{text}\n```\n")
    return "PASS", f"{len(merged['results'])} results of {len(runs)} runs in {out / stem}.{{json,md}}"


# nvCOMP: device decode and block order over compressed copies of the archive -----------------------
NVCOMP_CODECS = ("zstd", "lz4")
DECODE_GROUP = 32  # chunks per timed decode: ~190 MB decoded of the Tahoe-like archive
BLOCK_BATCHES = 24  # as the CPU's compressed-archive benchmark (README, Compressed archives)


def child_nvcomp(flat: Path, out: Path) -> None:
    """Compress ``flat`` per codec (reused when present), then time the device decode of whole chunk groups
    (cold: nothing cached; after one group that compiles the kernels) and block order through the loader
    (stream residency, decode on the device) cold (files dropped from the page cache) and warm."""
    import torch

    sys.path.insert(0, str(ROOT))
    from scdl_gpu import SingleCellLoader
    from scdl_gpu.archive._compressed import compress_archive
    from scdl_gpu.backend import get_backend
    from scdl_gpu.profiling._ceilings import drop_cached

    result: dict = {"archive": str(flat), "decode": {}, "block": {}}

    def files(path: Path) -> list[Path]:
        return [p for p in path.rglob("*") if p.is_file()]

    def block(path: Path, label: str):
        for state in ("cold", "warm"):
            if state == "cold":
                drop_cached(files(path))
            t = time.perf_counter()
            loader = SingleCellLoader(path, batch_size=4096, shuffle="block", device="cuda", residency="stream", seed=0)
            cells = 0
            for i, b in enumerate(loader):
                cells += len(b["rows"])
                if i + 1 == BLOCK_BATCHES:
                    break
            torch.cuda.synchronize()
            result["block"].setdefault(label, {})[state] = round(cells / (time.perf_counter() - t))
            decoder = getattr(loader.backend, "decoder", None)
            if decoder is not None:
                result["block"][label]["decoder"] = "device"
        return result["block"][label]

    def codec(name: str):
        def check():
            packed = flat.parent / f"{flat.stem}_{name}.scdl"
            t = time.perf_counter()
            if not (packed / "header.sch").exists():
                compress_archive(flat, packed, codec=name)
            made = time.perf_counter() - t
            with get_backend(packed, device="cuda", residency="stream", decode="device") as gpu:
                dec, n = gpu.decoder, gpu.chunks.num_chunks
                dec.cache.limit = 0  # every group decoded, none kept
                dec.chunks(range(min(2, n)))  # compiles the kernels, starts nvCOMP
                before, secs = dec.decoded_bytes, dec.seconds
                z0 = dec.compressed_bytes
                for a in range(2, min(n, 2 + 3 * DECODE_GROUP), DECODE_GROUP):
                    dec.chunks(range(a, min(n, a + DECODE_GROUP)))
                gb = (dec.decoded_bytes - before) / 1e9
                took = dec.seconds - secs
                result["decode"][name] = dict(decoded_gb=round(gb, 3), seconds=round(took, 3),
                                              gb_per_s=round(gb / took, 2) if took else None,
                                              ratio=round((dec.decoded_bytes - before) / max(1, dec.compressed_bytes - z0), 2))
            b = block(packed, name)
            return "PASS", (f"{name}: decode {result['decode'][name]['gb_per_s']} GB/s (staging + nvCOMP + filters + "
                            f"CRC, {gb:.2f} GB); block@4096 {b['cold']:,} cold / {b['warm']:,} warm cells/s"
                            f"{'' if made < 1 else f'; compressed in {made:.0f}s'}")
        return f"nvcomp:{name}", check

    def flat_block():
        b = block(flat, "flat")
        return "PASS", f"flat: block@4096 {b['cold']:,} cold / {b['warm']:,} warm cells/s (stream residency)"

    try:
        run_checks([("nvcomp:flat", flat_block)] + [codec(c) for c in NVCOMP_CODECS])
    finally:
        out.write_text(json.dumps(result, indent=2) + "\n")


def child_breakdown(path: Path) -> None:
    """Where a device-resident batch's time goes (issue 11's 20M cells/s target): per batch size, the
    backend's wall per batch, the gather + assembly launches alone (host time to queue them, and CUDA
    events around them), the loader's wall per batch without and with its prefetch thread, and the
    functions that take the backend's and the loader's time (cProfile, printed)."""
    import cProfile
    import pstats

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from scdl_gpu import SingleCellLoader
    from scdl_gpu.backend import get_backend
    from scdl_gpu.backend._assemble import assemble
    from scdl_gpu.loader._loader import resident_group

    N_B = 200

    def top(prof: cProfile.Profile, label: str, n: int = 14) -> None:
        print(f"--- {label}: top {n} functions by own time")
        st = pstats.Stats(prof, stream=sys.stdout)
        st.sort_stats("tottime").print_stats(n)

    def per_batch(fn, n=N_B) -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / n * 1e3

    def backend_part():
        info = {}
        for residency, sizes in (("device", (64, 4096)), ("pinned", (4096,))):  # pinned: its kernel reads over the bus
            with get_backend(path, device="cuda", residency=residency) as be:
                rng = np.random.default_rng(0)
                for bs in sizes:
                    key = str(bs) if residency == "device" else f"{residency}@{bs}"
                    info[key] = backend_timings(be, bs, rng)
                    v = info[key]
                    print(f"{residency} batch {bs}: backend.batch {v['backend_ms']:.3f} ms, in groups of {v['group']} "
                          f"{v['grouped_ms']:.3f} ms a batch ({v['pipelined_ms']:.3f} with the next group queued first); "
                          f"gather+assemble queued in {v['launch_host_ms']:.3f} ms host, {v['launch_gpu_ms']:.3f} ms GPU "
                          f"({v['gather_gb_per_s']} GB/s of entries)")
                    if key == "4096":
                        prof = cProfile.Profile()
                        prof.enable()
                        for r in [rng.integers(0, be.n_rows, bs) for _ in range(100)]:
                            be.batch(r)
                        prof.disable()
                        top(prof, "backend.batch x100 @4096")
        return "PASS", "; ".join(f"@{b}: backend {v['backend_ms']:.3f} ms/batch ({v['grouped_ms']:.3f} grouped, {v['pipelined_ms']:.3f} pipelined), launches {v['launch_host_ms']:.3f} host / "
                                 f"{v['launch_gpu_ms']:.3f} GPU" for b, v in info.items()), info

    def backend_timings(be, bs: int, rng) -> dict:
        """ms per batch of ``bs`` random rows: ``backend.batch``, in the loader's groups (each finished at
        once, or once the next is queued), and the gather + assembly launches alone (host, and GPU by events)."""
        g = resident_group(bs)
        rows = [rng.integers(0, be.n_rows, bs) for _ in range(max(N_B, 4 * g))]
        for r in rows[:5]:
            be.batch(r)
        wall = per_batch(lambda i: be.batch(rows[i]))
        n_g = len(rows) // g
        grouped = per_batch(lambda i: be.batches(rows[i * g : (i + 1) * g]), n_g) / g
        queued = []  # as the loader runs them: each group finished once the next is queued

        def ahead(i):
            queued.append(be.batches_ahead(rows[i * g : (i + 1) * g]) if i < n_g else None)
            if len(queued) > 1:
                queued.pop(0)()

        pipelined = per_batch(ahead, n_g + 1) * (n_g + 1) / (n_g * g)
        # the launches alone: rows located and uploaded once, then gather + assembly queued N_B times
        with be.ctx.activate():
            starts, out_ptr = be.index.locate(rows[0])
            dev = be.ctx.upload("ptrs", np.concatenate([out_ptr, starts]))
            d_out, d_st = dev[: bs + 1], dev[bs + 1:]
            nnz = int(out_ptr[-1])

            def launches(_):
                v, c = be.kernels.gather(be._res_data, be._res_cols, d_st, d_out, nnz, be.archive_cols, be._err)
                return assemble(be.kernels, be.cp, v, c, d_out, be.options, be.width, be.remap, nnz=nnz)

            launches(0)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            be.ctx.torch_stream.synchronize()
            t = time.perf_counter()
            s.record(be.ctx.torch_stream)
            for i in range(N_B):
                launches(i)
            host = (time.perf_counter() - t) / N_B * 1e3
            e.record(be.ctx.torch_stream)
            e.synchronize()
            gpu = s.elapsed_time(e) / N_B
        return dict(backend_ms=round(wall, 4), grouped_ms=round(grouped, 4), pipelined_ms=round(pipelined, 4), group=g,
                    launch_host_ms=round(host, 4), launch_gpu_ms=round(gpu, 4), nnz=nnz,
                    gather_gb_per_s=round(nnz * (be.data.itemsize + be.col_ptr.itemsize) / gpu / 1e6, 1))

    def loader_part():
        info = {}
        for residency, bs, prefetch in [("device", b, p) for b in (64, 4096) for p in (0, 2)] + [("pinned", 4096, 2)]:
            lo = SingleCellLoader(path, batch_size=bs, shuffle="random", device="cuda", residency=residency,
                                  prefetch=prefetch, seed=0)

            def epochs():  # 48 batches of 4,096 make an epoch of the archive
                while True:
                    yield from lo

            it = epochs()
            for _ in range(5):
                next(it)
            prof = cProfile.Profile() if (residency, bs, prefetch) == ("device", 4096, 0) else None
            if prof:
                prof.enable()
            ms = per_batch(lambda i: next(it))
            if prof:
                prof.disable()
                top(prof, "loader batches @4096, prefetch 0")
            it.close()
            lo.close()
            key = f"{bs}/p{prefetch}" if residency == "device" else f"{residency}@{bs}/p{prefetch}"
            info[key] = round(ms, 4)
            print(f"loader {residency} @{bs} prefetch {prefetch}: {ms:.3f} ms/batch = {bs / ms * 1e3:,.0f} cells/s")
        return "PASS", "ms/batch " + ", ".join(f"@{k}: {v:.3f}" for k, v in info.items()), info

    run_checks([("breakdown:backend", backend_part), ("breakdown:loader", loader_part)])


# --------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="do only what needs no GPU, even on a GPU machine")
    ap.add_argument("--out", type=Path, help="results folder [$OUT, else benchmarks/results; a dry run: a temporary folder]")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scdl_gpu_check",
                    help="archive and scratch [%(default)s]")
    ap.add_argument("--site", type=Path, default=Path("/tmp/site"), help="where the kit's wheels go [%(default)s]")
    ap.add_argument("--cells", type=int, help="archive size [200000; a dry run: 2000]")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run [%(default)s]")
    ap.add_argument("--bench-seconds", type=float, default=2.0, help="timed window per bench configuration [%(default)s]")
    ap.add_argument("--skip", nargs="*", default=[], metavar="STEP",
                    help="steps not to run, by name (pytest, R6b, bench:auto, nvcomp, ...): a second run of the same day")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kids = {
            "imports": lambda: child_imports(a.gpu),
            "kvikio-probe": child_kvikio_probe,
            "archive": lambda: child_archive(Path(a.rest[0]), int(a.rest[1])),
            "smoke": lambda: child_smoke(a.rest),
            "bench-report": lambda: child_bench_report(Path(a.rest[0]), a.gpu, [Path(p) for p in a.rest[1:]]),
            "nvcomp": lambda: child_nvcomp(Path(a.rest[0]), Path(a.rest[1])),
            "breakdown": lambda: child_breakdown(Path(a.rest[0])),
        }
        kids[a.child]()
        return 0
    no_gpu = a.dry_run or shutil.which("nvidia-smi") is None
    if a.out is None:
        a.out = Path(tempfile.mkdtemp(prefix="gpu_check_")) if no_gpu else Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    return Check(a).run()


if __name__ == "__main__":
    sys.exit(main())
