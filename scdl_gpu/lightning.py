"""``SCDLDataModule``: SingleCellLoader for PyTorch Lightning, with sharding, epochs and resume wired.

Lightning (the ``lightning`` extra) is needed only here.
"""

from __future__ import annotations

from pathlib import Path

try:
    from lightning.pytorch import LightningDataModule
except ImportError as e:
    raise ImportError("scdl_gpu.lightning needs Lightning: pip install 'lightning>=2.3' "
                      "(from a scdl-gpu checkout: pip install -e '.[lightning]')") from e

from .loader import SingleCellLoader

WEIGHTING = ("balance", "class_weights", "group_weights", "epoch_length")
"""Loader parameters for training only: evaluation reads every row once, in order."""


class SCDLDataModule(LightningDataModule):
    """Archives for each stage as ``SingleCellLoader``\\ s, one per rank.

    ``train`` gets ``loader_kwargs`` as they are (order, weights, ``obs_columns``, ``device``...);
    ``val``, ``test`` and ``predict`` get them in ``"sequential"`` order without weights, with
    ``eval_batch_size`` (default ``batch_size``). Rank and world size come from the trainer, so
    under DDP each rank reads its own disjoint share with the same number of batches. Lightning
    leaves iterables that are not a ``DataLoader`` alone, so ``use_distributed_sampler`` does not
    matter; there are no worker processes (the loader's ``prefetch`` thread plays their part).

    Epochs: Lightning calls ``set_epoch`` on the train iterable's ``sampler`` at each epoch start
    (``trainer.current_epoch``); the loader also moves to the next epoch when one ends, so a
    shortened epoch (``limit_train_batches``) still leads to a new order.

    Checkpoints: Lightning (2.6 checked) saves the train iterable's ``state_dict`` with the fit loop
    and restores it on ``Trainer.fit(ckpt_path=...)``, so a run resumed from a mid-epoch
    checkpoint continues with the batch after the last one trained, in the same order (Lightning
    fetches no batch ahead from an iterable with a length, so the state counts batches trained).
    Evaluation loaders start over, as Lightning's evaluation loops do.
    """

    def __init__(self, train: str | Path | None = None, val: str | Path | None = None, test: str | Path | None = None,
                 predict: str | Path | None = None, *, batch_size: int = 4096, eval_batch_size: int | None = None,
                 **loader_kwargs) -> None:
        super().__init__()
        for key in ("rank", "world_size"):
            if key in loader_kwargs:
                raise ValueError(f"{key} comes from the trainer; do not pass it to SCDLDataModule")
        self.paths = {"train": train, "val": val, "test": test, "predict": predict}
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size or batch_size)
        self.loader_kwargs = loader_kwargs
        self.loaders: dict[str, SingleCellLoader] = {}
        self._train: TrainBatches | None = None

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for split in wanted.get(stage, tuple(self.paths)):
            if self.paths[split] is not None and split not in self.loaders:
                self.loaders[split] = self._loader(split)

    def _loader(self, split: str) -> SingleCellLoader:
        trainer = self.trainer  # None when used outside a Trainer: torch.distributed decides
        where = {} if trainer is None else {"rank": trainer.global_rank, "world_size": trainer.world_size}
        if split == "train":
            return SingleCellLoader(self.paths[split], batch_size=self.batch_size, **self.loader_kwargs, **where)
        kwargs = {k: v for k, v in self.loader_kwargs.items() if k not in WEIGHTING}
        kwargs["shuffle"] = "sequential"
        return SingleCellLoader(self.paths[split], batch_size=self.eval_batch_size, **kwargs, **where)

    def _stage_loader(self, split: str) -> SingleCellLoader:
        if split not in self.loaders:
            if self.paths[split] is None:
                raise ValueError(f"SCDLDataModule was given no {split} archive")
            self.setup(None)
        return self.loaders[split]

    def train_dataloader(self) -> "TrainBatches":
        loader = self._stage_loader("train")
        if self._train is None or self._train.loader is not loader:
            self._train = TrainBatches(loader)
        return self._train

    def val_dataloader(self) -> SingleCellLoader:
        return self._stage_loader("val")

    def test_dataloader(self) -> SingleCellLoader:
        return self._stage_loader("test")

    def predict_dataloader(self) -> SingleCellLoader:
        return self._stage_loader("predict")

    def teardown(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):  # fit's loaders stay open between validate/test calls otherwise
            return
        for split in {"validate": ("val",), "test": ("test",), "predict": ("predict",)}.get(stage, ()):
            loader = self.loaders.pop(split, None)
            if loader is not None:
                loader.close()


class TrainBatches:
    """The train loader as Lightning sees it: its batches and length, ``sampler.set_epoch`` (the
    hook Lightning calls each epoch) and the loader's ``state_dict``."""

    def __init__(self, loader: SingleCellLoader) -> None:
        self.loader = loader
        self.sampler = self  # Lightning looks for set_epoch on a dataloader's sampler

    def set_epoch(self, epoch: int) -> None:
        # Only a change of epoch restarts: Lightning also calls this at the start of an epoch
        # resumed from a checkpoint, which must keep its place.
        if int(epoch) != self.loader.epoch:
            self.loader.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
