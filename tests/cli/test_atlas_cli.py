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
