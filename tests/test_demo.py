"""The quick start's first command keeps working: ``python -m scdl_gpu.demo`` on the bundled file."""

from __future__ import annotations

from scdl_gpu.demo import main
from tests.conftest import BUNDLED


def test_demo_streams_one_epoch(tmp_path, capsys):
    main([str(BUNDLED / "cxg_small_perturbations.h5ad"), "--archive", str(tmp_path / "demo.scdl")])
    out = capsys.readouterr().out
    assert "archive: 500 cells x 2000 genes, 268478 stored values" in out
    assert "one shuffled epoch: 8 batches, 500 cells, 268478 values" in out
    assert "layout=torch.sparse_csr shape=(64, 2000)" in out
