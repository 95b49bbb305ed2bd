"""``benchmarks/gpu_check.py`` (``make gpu-check``) without a GPU: its dry run end to end, and the
orchestration a GPU run depends on (a hung check killed, the budget kept for later steps)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def check(gpu_check, tmp_path):
    a = argparse.Namespace(budget=300.0, out=tmp_path / "out", workdir=tmp_path / "work", site=tmp_path / "site")
    c = gpu_check.Check(a)
    yield c
    c.log.close()


def test_dry_run(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--cells", "1500", "--out", str(out),
                        "--workdir", str(tmp_path / "work"), "--budget", "120"],
                       cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    status = {ln.split()[1]: ln.split()[0] for ln in r.stdout.splitlines() if ln[:4] in ("PASS", "FAIL", "SKIP")}
    # what runs here: imports, the archive at a tiny size, pytest's collection of the GPU tests, a CPU bench
    for step in ("import:numpy", "import:torch", "import:scdl_gpu.kernels", "archive", "pytest", "bench:auto", "bench:report"):
        assert status[step] == "PASS", (step, r.stdout)
    assert status["wheels"] in ("PASS", "SKIP") and status["project"] in ("PASS", "SKIP")  # .whl/ is git-ignored
    # what needs a GPU: skipped, each smoke check by name, with the command it would run
    for step in ("kvikio-auto", "R1", "R4", "R6b", "R9", "R2b", "profile"):
        assert status[step] == "SKIP", step
    assert "FAIL" not in status.values()
    assert "would run: " in r.stdout and "-m pytest -m gpu" in r.stdout and "scdl_gpu.cli profile" in r.stdout
    assert "1,500 cells x 62,710 genes" in r.stdout and "uint16" in r.stdout
    assert "SUMMARY" in r.stdout and "0 FAIL" in r.stdout and "(dry run)" in r.stdout

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["counts"]["FAIL"] == 0
    assert {s["name"]: s["status"] for s in report["steps"]} == status
    benches = [s["command"] for s in report["steps"] if s["name"] in ("bench:auto", "bench:stream")]
    assert len(benches) == 2 and all(c.split()[c.split().index("--seconds") + 1] == "0.2" for c in benches)  # each its own window
    bench = json.loads((out / "gpu_bench_dryrun_cpu.json").read_text())
    assert bench["archive"]["n_rows"] == 1500 and bench["archive"]["dtypes"]["data.npy"] == "uint16"
    assert {x["residency"] for x in bench["results"]} <= {"auto", "stream"}
    assert all(x["cells_per_s"] > 0 and x["device"] == "cpu" for x in bench["results"])
    assert "| archive | PASS |" in (out / "gpu_check.md").read_text()
    assert "PASS archive" in (out / "gpu_check.log").read_text()  # the log has the console and every child's output
    for f in out.iterdir():  # committed results name no directory of the machine that wrote them
        text = f.read_text()
        assert str(ROOT) not in text and str(tmp_path) not in text and sys.prefix not in text, f.name
    assert "<checkout>/benchmarks/gpu_check.py" in (out / "gpu_check.log").read_text()


def test_hung_check_is_killed_and_reported(gpu_check, check):
    c = check
    hang = (f"import json, time; print({gpu_check.PROTO!r} + json.dumps(dict(begin='X')), flush=True); "
            "print('working', flush=True); time.sleep(60)")
    t = time.monotonic()
    rc, lines, results, current = c.spawn([sys.executable, "-c", hang], timeout=30, per_check=1.0)
    assert time.monotonic() - t < 10  # killed at the per-check limit, not the step's
    assert (rc, lines, results, current) == (None, ["working"], [], "X")

    done = f"import json; print({gpu_check.PROTO!r} + json.dumps(dict(name='Y', status='PASS', reason='ok')), flush=True)"
    rc, _, results, current = c.spawn([sys.executable, "-c", done], timeout=30)
    assert rc == 0 and current is None and [s["name"] for s in c.steps] == ["Y"]


def test_versions_describe_the_host_and_a_checks_figures_stay_with_it(gpu_check, check):
    said = [dict(name="import:torch", status="PASS", reason="2.11", info={"torch": "2.11"}),
            dict(name="breakdown:backend", status="PASS", reason="ok", info={"4096": {"backend_ms": 0.5}})]
    script = "import json\n" + "".join(f"print({gpu_check.PROTO!r} + json.dumps({m!r}), flush=True)\n" for m in said)
    rc, _, results, _ = check.spawn([sys.executable, "-c", script], timeout=30)
    assert rc == 0 and check.info == {"torch": "2.11"}
    assert check.steps[1]["figures"] == {"4096": {"backend_ms": 0.5}} and "figures" not in check.steps[0]


@pytest.mark.parametrize("script, status, says", [
    ("print('3 passed in 0.2s')", "PASS", "3 passed"),
    ("print('FAILED tests/x.py::t - boom'); print('1 failed, 2 passed in 0.2s'); raise SystemExit(1)", "FAIL", "tests/x.py::t"),
    # still running when its time is up: stopped with SIGINT, as Ctrl-C, so its summary still comes
    ("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('4 passed in 9.0s')", "SKIP", "stopped after"),
])
def test_pytest_runs_in_the_background_until_the_benchmarks(check, monkeypatch, script, status, says):
    c = check
    monkeypatch.setattr(c, "_pytest_cmd", lambda: [sys.executable, "-c", script])
    monkeypatch.setattr(c, "timeout", lambda step: 3.0)
    c.pytest_start(dry=False)
    t = time.monotonic()
    c.pytest(dry=False)
    assert time.monotonic() - t < 15
    (step,) = [s for s in c.steps if s["name"] == "pytest"]
    assert step["status"] == status and says in step["reason"], step
    assert c._pytest.poll() is not None  # nothing left running


def test_timeouts_leave_later_steps_what_they_need(gpu_check, check):
    plan, c = gpu_check.PLAN, check
    c.n_bench = 4
    later = plan["pytest"][1] + 4 * plan["bench"][1] + plan["report"][1] + plan["profile"][1]
    assert c.timeout("smoke") <= 300 - later
    assert c.timeout("profile") == pytest.approx(min(plan["profile"][0], c.left()), abs=1)  # the last step: all it wants
    c.skip = {"bench", "report", "profile", "breakdown", "nvcomp"}  # the GPU tests alone: all the budget
    assert c.timeout("pytest") == pytest.approx(c.left(), abs=1) and c.left() > plan["pytest"][0]
    c.skip = set()
    c.deadline = time.monotonic() + plan["pytest"][1] - 5  # less left than pytest needs
    assert c.timeout("pytest") is None


def test_archive_has_the_cpu_benchmarks_cells(gpu_check):
    # bench_loader.default_archive converts 10 plates of 20,000 cells, seeds 0-9: the same cells here
    assert gpu_check.plates(200_000) == [(k, 20_000) for k in range(10)]
    assert gpu_check.plates(1500) == [(0, 1500)]
    assert sum(n for _, n in gpu_check.plates(45_001)) == 45_001
