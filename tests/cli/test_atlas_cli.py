"""``scdl-gpu atlas create | add | info``."""

from __future__ import annotations

import json

from scdl_gpu.cli import main
from tests.atlas.members import make_members


def test_create_add_info(tmp_path, capsys):
    members = make_members(tmp_path)
    root = tmp_path / "atlas"
    assert main(["atlas", "create", str(root), str(members[0][0]), str(members[1][0]), "--name", "a", "--name", "b"]) == 0
    assert "2 members, 47 rows" in capsys.readouterr().out
    assert main(["atlas", "add", str(root), str(members[2][0])]) == 0
    capsys.readouterr()
    assert main(["atlas", "info", str(root), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in s["members"]] == ["a", "b", "m2"] and s["n_rows"] == 70
    assert main(["atlas", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "rows:     70 in 3 members" in out and "union" in out
    assert main(["atlas", "create", str(root), str(members[0][0])]) == 1
    assert "already an atlas" in capsys.readouterr().err


def test_info_validate_and_bench_on_an_atlas(tmp_path, capsys):
    import shutil

    members = make_members(tmp_path)
    root = tmp_path / "atlas"
    assert main(["atlas", "create", str(root)] + [str(p) for p, _ in members]) == 0
    capsys.readouterr()
    assert main(["info", str(root)]) == 0
    assert "rows:     70 in 3 members" in capsys.readouterr().out
    assert main(["info", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_genes"] == 40

    assert main(["validate", str(root)]) == 0
    assert f"{root}: OK" in capsys.readouterr().out
    assert main(["validate", str(root), "--write-checksums"]) == 1
    assert "record checksums on each member" in capsys.readouterr().err

    out = tmp_path / "bench.json"
    assert main(["bench", str(root), "--device", "cpu", "--shuffle", "block", "random", "--batch-size", "16",
                 "--seconds", "0.1", "--warmup", "1", "--json", str(out), "--quiet", "--no-cold"]) == 0
    r = json.loads(out.read_text())
    assert r["archive"]["members"] == 3 and r["archive"]["n_rows"] == 70
    assert len(r["results"]) == 2 and all(x["cells_per_s"] > 0 for x in r["results"])
    capsys.readouterr()

    # a damaged member file and a replaced member are each a problem naming the member
    col = members[1][0] / "col_ptr.npy"
    raw = bytearray(col.read_bytes())
    raw[-1] ^= 0xFF
    col.write_bytes(bytes(raw))
    shutil.rmtree(members[2][0])
    shutil.copytree(members[0][0], members[2][0])
    assert main(["validate", str(root)]) == 1
    err = capsys.readouterr().err
    assert "[member m1]" in err and "col_ptr.npy" in err
    assert "[member m2]" in err and "replaced or changed" in err and "INVALID" in err
