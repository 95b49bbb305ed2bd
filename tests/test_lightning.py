"""SCDLDataModule under a real Lightning Trainer on the CPU: batches per epoch, a new order each
epoch, a mid-epoch checkpoint resumed exactly, evaluation loaders, and a two-process DDP run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")  # the lightning extra; the test extra installs it
import lightning.pytorch as pl  # noqa: E402

from scdl_gpu import convert_h5ad  # noqa: E402
from scdl_gpu.lightning import SCDLDataModule  # noqa: E402
from tests.conftest import make_adata, random_csr  # noqa: E402

# Lightning 2.6's own notices with torch >= 2.10, not about our code
pytestmark = pytest.mark.filterwarnings("ignore:.*treespec, LeafSpec.*is deprecated:FutureWarning")

N, BATCH = 53, 8  # 7 batches per epoch, the last one partial


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    d = tmp_path_factory.mktemp("lightning")
    make_adata(random_csr(N, 12, density=0.3, seed=3), seed=3).write_h5ad(d / "x.h5ad")
    return convert_h5ad(d / "x.h5ad", d / "a", use_X_not_raw=True)


class Recorder(pl.LightningModule):
    """A linear model on dense X that keeps the rows of every batch it trains on, per epoch."""

    def __init__(self, n_genes: int = 12) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(n_genes, 1)
        self.seen: list[tuple[int, list[int]]] = []
        self.validated: list[int] = []

    def training_step(self, batch, idx):
        self.seen.append((self.current_epoch, batch["rows"].tolist()))
        return self.lin(batch["X"]).pow(2).mean()

    def validation_step(self, batch, idx):
        self.validated += batch["rows"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kw)


def _module(archive, **kw) -> SCDLDataModule:
    return SCDLDataModule(archive, val=archive, batch_size=BATCH, shuffle="random", output="dense", device="cpu", seed=7, **kw)


def test_two_epochs_every_row_once_a_new_order_each(archive, tmp_path):
    model = Recorder()
    _trainer(tmp_path, max_epochs=2).fit(model, _module(archive))
    for epoch in (0, 1):
        batches = [rows for e, rows in model.seen if e == epoch]
        assert len(batches) == -(-N // BATCH)
        assert sorted(sum(batches, [])) == list(range(N))
    orders = [[r for e, rows in model.seen if e == epoch for r in rows] for epoch in (0, 1)]
    assert orders[0] != orders[1]
    assert model.validated == list(range(N)) * 2  # evaluation: every row in order, each epoch


def test_a_shortened_epoch_still_moves_to_the_next_order(archive, tmp_path):
    model = Recorder()
    _trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=0).fit(model, _module(archive))
    first, second = ([rows for e, rows in model.seen if e == epoch] for epoch in (0, 1))
    assert len(first) == len(second) == 3 and first != second


class SaveAt(pl.Callback):
    """Saves a checkpoint after the given number of training steps, as ModelCheckpoint would."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


@pytest.mark.parametrize("stop_at", [3, 8, 13])  # mid-epoch 0, the first batch of epoch 1, mid-epoch 1
def test_mid_epoch_checkpoint_resumes_with_the_next_batch(archive, tmp_path, stop_at):
    weighted = dict(balance="cell_type", epoch_length=60)  # 8 batches per epoch
    whole = Recorder()
    ckpt = tmp_path / "mid.ckpt"
    _trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[SaveAt(stop_at, ckpt)]).fit(whole, _module(archive, **weighted))
    assert len(whole.seen) == 16
    resumed = Recorder()
    _trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(resumed, _module(archive, **weighted), ckpt_path=ckpt)
    assert whole.seen[:stop_at] + resumed.seen == whole.seen


def test_without_lightning_the_import_error_names_the_extra(monkeypatch):
    import importlib

    monkeypatch.delitem(sys.modules, "scdl_gpu.lightning")
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # as if not installed
    with pytest.raises(ImportError, match=r"scdl_gpu.lightning needs Lightning.*\[lightning\]"):
        importlib.import_module("scdl_gpu.lightning")


def test_rank_and_world_size_come_from_the_trainer(archive):
    with pytest.raises(ValueError, match="rank comes from the trainer"):
        SCDLDataModule(archive, rank=0)
    with pytest.raises(ValueError, match="given no test archive"):
        SCDLDataModule(archive).test_dataloader()


WORKER = r"""
import sys, json, torch, lightning.pytorch as pl
from scdl_gpu.lightning import SCDLDataModule
path, out = sys.argv[1:3]

class M(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin, self.seen = torch.nn.Linear(12, 1), []
    def training_step(self, batch, idx):
        self.seen.append([self.current_epoch] + batch["rows"].tolist())
        return self.lin(batch["X"]).pow(2).mean()  # DDP all-reduces the gradients: uneven batch counts would hang
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)

m = M()
dm = SCDLDataModule(path, batch_size=8, shuffle="random", output="dense", device="cpu")
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)
trainer.fit(m, dm)
json.dump({"rank": trainer.global_rank, "loader": [dm.loaders["train"].rank, dm.loaders["train"].world_size], "seen": m.seen},
          open(f"{out}.{trainer.global_rank}.json", "w"))
# gloo's worker threads must be joined before the interpreter exits, or libstdc++ aborts the process at
# exit now and then ("terminate called without an active exception"); Lightning leaves the group open.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_two_process_ddp_ranks_get_disjoint_rows_and_equal_batches(archive, tmp_path):
    import json

    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    repo = str(Path(__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, str(script), str(archive), str(tmp_path / "out")], cwd=repo, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / f"out.{rank}.json").read_text()) for rank in (0, 1)]
    assert [res["loader"] for res in results] == [[0, 2], [1, 2]]
    for epoch in (0, 1):
        per_rank = [[b[1:] for b in res["seen"] if b[0] == epoch] for res in results]
        assert len(per_rank[0]) == len(per_rank[1]) == -(-(-(-N // 2)) // BATCH)
        rows = [set(sum(batches, [])) for batches in per_rank]
        assert rows[0] | rows[1] == set(range(N)) and len(rows[0] & rows[1]) <= 1  # one row pads the odd count
