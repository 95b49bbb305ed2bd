"""Which rows each rank sees in each epoch, and in which batches: pure functions of
``(n_rows, order, seed, epoch, rank, world_size, batch sizes)``, so every rank computes its share
alone and a resumed run recomputes exactly what it skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORDERS = ("sequential", "random", "block")


def rng_for(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """An independent generator per (seed, epoch, stream...) — no state carried between epochs."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), *map(int, stream)]))


def epoch_order(n_rows: int, order: str, seed: int, epoch: int, block_size: int) -> np.ndarray:
    """All rows of one epoch, in the order they are dealt to ranks (int64).

    ``block``: contiguous blocks of ``block_size`` rows in shuffled order (rows inside a block stay
    contiguous here; :func:`fetches` mixes them).
    """
    if order == "sequential":
        return np.arange(n_rows, dtype=np.int64)
    rng = rng_for(seed, epoch, 0)
    if order == "random":
        return rng.permutation(n_rows).astype(np.int64)
    if order == "block":
        n_blocks = -(-n_rows // block_size)
        starts = rng.permutation(n_blocks).astype(np.int64) * block_size
        lengths = np.minimum(block_size, n_rows - starts)
        return np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(n_rows, dtype=np.int64)
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


@dataclass(frozen=True)
class Shard:
    """One rank's rows for one epoch and how they are cut into batches."""

    rows: np.ndarray  # this rank's rows, in order (padding repeats rows from the start of the epoch)
    batch_size: int
    n_batches: int

    def batch(self, k: int) -> np.ndarray:
        return self.rows[k * self.batch_size : (k + 1) * self.batch_size]


def rows_and_batches_per_rank(n: int, world_size: int, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """Rows and batches every rank gets (the same on all ranks)."""
    if drop_last:
        n_batches = (n // world_size) // batch_size
        return n_batches * batch_size, n_batches
    per_rank = -(-n // world_size)
    return per_rank, -(-per_rank // batch_size)


def shard(order: np.ndarray, rank: int, world_size: int, batch_size: int, drop_last: bool) -> Shard:
    """Deal ``order`` to ``world_size`` ranks in contiguous, equal parts (so blocks stay together).

    Every rank gets the same number of rows and hence of batches, whatever ``n_rows``: with
    ``drop_last`` the rows beyond the largest equal share are dropped, and so is each rank's last
    partial batch; without it the epoch is padded with rows from its own start (as
    ``DistributedSampler`` does), so every row is seen at least once and at most twice.
    """
    n = len(order)
    per_rank, n_batches = rows_and_batches_per_rank(n, world_size, batch_size, drop_last)
    if not drop_last and n and per_rank * world_size > n:
        order = np.concatenate([order, np.resize(order, per_rank * world_size - n)])
    rows = order[rank * per_rank : (rank + 1) * per_rank] if n else order[:0]
    return Shard(rows, batch_size, n_batches if n else 0)


def fetch_permutation(n: int, seed: int, epoch: int, rank: int, fetch: int) -> np.ndarray:
    """How the rows of one fetch (``n`` rows) are shuffled among its batches (``block`` order)."""
    return rng_for(seed, epoch, 1, rank, fetch).permutation(n)
