"""``scdl-gpu bench`` and ``scdl-gpu profile`` on a small real archive: exit status, JSON, PNG."""

from __future__ import annotations

import json

import pytest

from scdl_gpu.cli import main

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_table_json_and_plot(bundled_archive, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["bench", str(bundled_archive), "--device", "cpu", "--shuffle", "random", "block", "--batch-size", "8", "64",
               "--seconds", "0.2", "--warmup", "1", "--json", str(out), "--plot", str(png), "--quiet", "--no-cold"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "cells/s" in text and "page cache read" in text
    r = json.loads(out.read_text())
    assert r["schema"] == "scdl-gpu-bench/1" and len(r["results"]) == 4 and "cold_read" not in r["ceilings"]
    assert all(x["cells_per_s"] > 0 and 0 < x["fraction_of_bound"] for x in r["results"])
    data = png.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000


def test_bench_json_to_stdout(bundled_archive, capsys):
    rc = main(["bench", str(bundled_archive), "--device", "cpu", "--shuffle", "sequential", "--batch-size", "16",
               "--seconds", "0.1", "--warmup", "0", "--json", "-", "--quiet", "--no-ceilings"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)  # nothing but the JSON on stdout
    assert r["results"][0]["shuffle"] == "sequential" and r["ceilings"] == {}


def test_profile_table_json_and_plot(bundled_archive, tmp_path, capsys):
    out, png = tmp_path / "profile.json", tmp_path / "profile.png"
    rc = main(["profile", str(bundled_archive), "--device", "cpu", "--shuffle", "block", "--batch-size", "32",
               "--block-size", "4", "--fetch-factor", "2", "--seconds", "0.3", "--json", str(out), "--plot", str(png),
               "--quiet"])
    assert rc == 0
    assert "consumer wait" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["schema"] == "scdl-gpu-profile/1" and r["settings"]["batch_size"] == 32
    assert r["settings"]["loader_kwargs"] == {"block_size": "4", "fetch_factor": "2"}
    assert {s["stage"] for s in r["stages"]} >= {"sample", "read", "collate"}  # plain CPU batches: one compiled gather, no kernels stage
    assert png.read_bytes().startswith(PNG)


@pytest.mark.parametrize("argv, status, message", [
    (["bench", "{missing}", "--device", "cpu"], 1, "error:"),
    (["bench", "{archive}", "--device", "cpu", "--seconds", "0"], 1, "--seconds must be positive"),
    (["profile", "{archive}", "--device", "cpu", "--warmup", "-1"], 1, "--warmup must be >= 0"),
    (["bench", "{archive}", "--shuffle", "sideways"], 2, "invalid choice"),
])
def test_bad_input(bundled_archive, tmp_path, capsys, argv, status, message):
    argv = [a.format(archive=bundled_archive, missing=tmp_path / "nope") for a in argv]
    if status == 2:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    else:
        assert main(argv) == status
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(bundled_archive, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = main(["profile", str(bundled_archive), "--device", "cpu", "--seconds", "0.1", "--plot", str(tmp_path / "p.png"),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "pip install matplotlib" in err and "scdl-gpu[" not in err  # scdl-gpu is not on the index


def test_bench_residencies(bundled_archive, tmp_path, capsys):
    # needs SingleCellLoader(residency=...) for "stream"; on the CPU only "auto" and "stream" apply
    out = tmp_path / "bench.json"
    rc = main(["bench", str(bundled_archive), "--device", "cpu", "--residency", "auto", "stream", "--shuffle", "block",
               "--batch-size", "8", "--seconds", "0.1", "--warmup", "0", "--json", str(out), "--quiet", "--no-ceilings"])
    assert rc == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if "cells/s" in line and "shuffle" in line)
    assert header.split()[0] == "residency" and "stream" in table
    r = json.loads(out.read_text())
    assert [x["residency"] for x in r["results"]] == ["auto", "stream"] and r["settings"]["residencies"] == ["auto", "stream"]


def test_profile_residency(bundled_archive, tmp_path):
    out = tmp_path / "profile.json"
    assert main(["profile", str(bundled_archive), "--device", "cpu", "--residency", "stream", "--batch-size", "8",
                 "--seconds", "0.1", "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["settings"]["loader_kwargs"]["residency"] == "'stream'"


def test_bench_residency_choices(bundled_archive, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", str(bundled_archive), "--residency", "hbm"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
