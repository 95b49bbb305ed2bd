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


def epoch_order(n_rows: int, order: str, seed: int, epoch: int, block_size: int, key: tuple[int, ...] = (),
                segments: np.ndarray | None = None) -> np.ndarray:
    """All rows of one epoch, in the order they are dealt to ranks (int64).

    ``block``: contiguous blocks of ``block_size`` rows in shuffled order (rows inside a block stay
    contiguous here; :func:`fetches` mixes them). ``segments`` (sorted row ids from 0 to
    ``n_rows``) cuts the rows into runs no block straddles: each run is cut into blocks from its
    own start (without it, or with one run, the blocks are those of ``[0, n_rows)``). ``key``
    selects an independent stream (a rank's own order over its resident share).
    """
    if order == "sequential":
        return np.arange(n_rows, dtype=np.int64)
    rng = rng_for(seed, epoch, 0, *key)
    if order == "random":
        return rng.permutation(n_rows).astype(np.int64)
    if order == "block":
        first, ends = _block_starts(n_rows, block_size, segments)
        pick = rng.permutation(len(first)).astype(np.int64)
        starts = first[pick]
        lengths = np.minimum(block_size, ends[pick] - starts)
        return np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(n_rows, dtype=np.int64)
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def _block_starts(n_rows: int, block_size: int, segments) -> tuple[np.ndarray, np.ndarray]:
    """Each block's first row and the end of the run it lies in (int64)."""
    bounds = np.asarray([0, n_rows] if segments is None else segments, dtype=np.int64)
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != n_rows or np.any(np.diff(bounds) < 0):
        raise ValueError(f"segments must rise from 0 to n_rows={n_rows}, got {bounds[:4]}...{bounds[-2:]}")
    lo, hi = bounds[:-1], bounds[1:]
    counts = -(-(hi - lo) // block_size)
    run = np.repeat(np.arange(len(lo)), counts)
    first_block = np.concatenate([[0], np.cumsum(counts)[:-1]])
    starts = lo[run] + (np.arange(len(run)) - first_block[run]) * block_size
    return starts, hi[run]


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


def resident_share(n_rows: int, seed: int, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """This rank's rows when rows are resident on the GPU: part ``rank`` of one seeded random
    partition of all rows into ``world_size`` equal parts, the same in every epoch (sorted).

    Equal parts as :func:`shard` makes them: without ``drop_last`` the partition is padded with rows
    from its own start (a rank may hold one row twice), with it the rows beyond equal parts are
    left out for the whole run.
    """
    perm = rng_for(seed, 0, 3).permutation(n_rows).astype(np.int64)
    per_rank, _ = rows_and_batches_per_rank(n_rows, world_size, 1, drop_last)
    if not drop_last and n_rows and per_rank * world_size > n_rows:
        perm = np.concatenate([perm, np.resize(perm, per_rank * world_size - n_rows)])
    return np.sort(perm[rank * per_rank : (rank + 1) * per_rank])


def resident_shard(share: np.ndarray, order: str, seed: int, epoch: int, rank: int, batch_size: int,
                   block_size: int, drop_last: bool) -> Shard:
    """One epoch over a rank's resident share: its own order of its own rows (rank-keyed stream)."""
    rows = share[epoch_order(len(share), order, seed, epoch, block_size, key=(4, rank))]
    n_batches = len(rows) // batch_size if drop_last else -(-len(rows) // batch_size)
    return Shard(rows[: n_batches * batch_size] if drop_last else rows, batch_size, n_batches)
