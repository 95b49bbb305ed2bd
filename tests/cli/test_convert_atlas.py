"""``scdl-gpu convert --atlas``: its flags, and its messages in command-line words."""

from __future__ import annotations

from scdl_gpu.atlas import open_atlas
from scdl_gpu.cli import main
from tests.atlas.members import ALL_GENES, member_adata


def test_atlas_flags_and_messages(tmp_path, capsys):
    for k, genes in enumerate((ALL_GENES[:12], ALL_GENES[6:20])):
        member_adata(25, genes, seed=k).write_h5ad(tmp_path / f"p{k}.h5ad")
    inputs = [str(tmp_path / "p0.h5ad"), str(tmp_path / "p1.h5ad")]
    out = str(tmp_path / "atlas")

    assert main(["convert", *inputs, "-o", out, "--member-rows", "10", "--resume"]) == 1
    assert "--member-rows, --resume need --atlas" in capsys.readouterr().err
    assert main(["convert", *inputs, "-o", out, "--atlas", "--row-order", "shuffle"]) == 1
    assert "shuffle at load time" in capsys.readouterr().err
    assert main(["convert", *inputs, "-o", out, "--atlas", "--scheduler", "nowhere"]) == 1
    assert "scheduler must be 'local'" in capsys.readouterr().err

    assert main(["convert", inputs[0], "-o", out, "--atlas", "--use-X-not-raw", "--gene-vocab", "intersection", "-q"]) == 0
    assert main(["convert", inputs[1], "-o", out, "--atlas", "--use-X-not-raw", "-q"]) == 1
    assert "pass --append to add members, or pass --overwrite to convert anew" in capsys.readouterr().err
    assert main(["convert", inputs[1], "-o", out, "--atlas", "--append", "--use-X-not-raw", "--member-rows", "10"]) == 0
    err = capsys.readouterr().err
    assert "atlas of 4 members (3 converted)" in err and "50 cells" in err
    atlas = open_atlas(out)
    assert atlas.names == ["p0", "p1-0", "p1-1", "p1-2"] and atlas.vocab_mode == "intersection"
    assert list(atlas.genes) == ALL_GENES[6:12]  # the intersection shrinks to the genes both inputs have
