"""``SingleCellLoader``: batches of archive rows for training, on one GPU, many, or the CPU."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..archive._constants import Backend
from ..archive._obsm import OBSM_DIR
from ..archive._reader import open_arrays, read_dtypes
from ..archive._remote import NEIGHBOR_FILES, RemoteArchive
from ..atlas import is_atlas, is_remote_atlas
from ..backend import Batch, BatchOptions, get_backend, remote_location, resolve_device
from ._csr import sort_rows, take_rows, to_scipy
from ._obs import ObsColumns, ObsmArrays, input_groups
from ._order import (ORDERS, Shard, epoch_order, fetch_permutation, resident_shard, resident_share, rng_for,
                     rows_and_batches_per_rank, shard)
from ._prefetch import prefetch as run_ahead
from ._weights import Weighting, build_weighting, class_codes

OUTPUTS = ("csr", "dense")
#: rows a loader with rows resident on the GPU gathers at once (``GPUBackend.batches``), in whole batches:
#: a device-resident batch is bound by its launches and host work, which a group pays once (the first GPU
#: run: ~0.7 ms of host time a batch at 4,096 rows and ~0.3 ms at 64, whatever the GPU did). The group's
#: outputs live until its last batch is released: 8 bytes a value in float32/int32 CSR, 0.4 GB for
#: 32,768 rows of ~1,450 values.
RESIDENT_GROUP_ROWS = 32768
MAX_GROUP = 512  #: batches per group at most (small batches: bounded host lists)


def resident_group(batch_size: int) -> int:
    """Batches per group of a loader with rows resident on the GPU (at least 1)."""
    return max(1, min(MAX_GROUP, RESIDENT_GROUP_ROWS // max(batch_size, 1)))


class SingleCellLoader:
    """Iterable over training batches of an SCDL archive; a replacement for a torch ``DataLoader``.

    Each batch is a dict: ``X`` (a ``(B, n_genes)`` torch sparse CSR tensor with sorted columns,
    or dense with ``output="dense"``), ``rows`` (int64 archive row ids), ``obs`` (a dict of
    tensors: the ``obs_columns``, categorical ones as integer codes into ``loader.categories``;
    rows from an input without a column read as NaN, or code -1 for a categorical one),
    with ``obsm_keys`` also ``obsm`` (a dict of ``(B, width)`` tensors: the batch's rows of each
    obsm array kept at conversion, in its stored dtype), and with ``neighbors=True`` also
    ``neighbor_rows`` and ``neighbor_X`` (one sampled neighbor
    per cell, the cell itself when it has none).

    Parameters
    ----------
    data
        An archive path, a :class:`~scdl_gpu.SingleCellMemMapDataset`, an atlas directory (many
        member archives in one gene vocabulary: global row ids, batches as wide as the vocabulary,
        obs columns aligned across members; block order keeps each block inside one member; read
        on the CPU), or an archive at a URL (``s3://``, ``gs://``, ``https://``, ``file://``; or an
        open :class:`~scdl_gpu.archive.RemoteArchive`), its rows read by byte range into host
        memory (random order warns: one range request per row), then as a local archive's; an
        atlas at a URL likewise (its members read by range).
    shuffle
        ``"sequential"``, ``"random"`` (a permutation per epoch) or ``"block"`` (shuffled blocks
        of ``block_size`` contiguous rows, default ``batch_size // 64``: each batch is read as a
        few long spans). With ``fetch_factor`` > 1, that many batches are read at once and their
        rows shuffled among them (more mixing, one more in-memory copy). A batch mixes only what
        the stored order puts side by side: on an archive whose rows are grouped (by plate,
        donor, drug) block batches hold fewer distinct groups than random ones. Convert with
        ``row_order="shuffle"`` (``scdl-gpu convert --row-order shuffle``) to get block order's
        speed with random order's batch variety. On a compressed archive (``scdl-gpu compress``)
        ``block_size`` defaults to its chunk size: each block is one whole chunk, decoded once.
        Random order works there too but is bound by decoding: every batch touches most chunks,
        which is fast only while the decoded archive fits ``cache_bytes``.
        ``True``/``False`` mean ``"random"``/``"sequential"``. Default: ``"block"``, or
        ``"random"`` with weights (the only order weighted sampling has).
    balance, class_weights
        Weighted sampling by an obs column: with ``balance`` alone every class (value) of the
        column is drawn equally often; ``class_weights`` (label → weight) sets each class's share
        of the draws instead (relative: ``{"T": 2, "B": 1}`` draws T twice as often as B), and a
        label left out of it is never drawn; a label the column lacks is an error. Rows without a
        value (code -1 or NaN) are a class of their own, labelled ``None``.
    group_weights
        Each group's share of the draws (name → weight; groups left out are never drawn). The
        groups are an atlas's members, or for one archive the inputs it records: its obs blocks
        (named by their label, an input's path, or ``input_<k>``; the writer merges consecutive
        inputs with the same obs columns into one block), or the ``source_file`` column of a
        shuffled conversion. A name may be given as the full name, the file name or its stem.
        With ``balance`` too, classes are balanced (or weighted) inside each group.
    epoch_length
        Rows drawn per epoch over all ranks with weights (default: the archive's row count).
        Weighted epochs draw with replacement: a pure function of (seed, epoch), dealt to ranks
        and cut into batches like any order (``drop_last`` as there), resumable with
        ``state_dict``. They stream rows, so on a GPU ``residency`` ``"auto"`` means
        ``"stream"`` and ``"device"``/``"pinned"`` are refused. Memory: the rows sorted by
        (group, class), 4 bytes per row (8 from 2**31 rows), and each epoch's draw while it is
        dealt (10^8 rows, 700 cells, 2 busy cores: 4.7 s to sort once, 9.5 s per epoch's draw,
        where a plain permutation took 5.9 s).
    seed, rank, world_size
        Every order is a pure function of (seed, epoch, rank, world_size). Rank and world size
        default to ``torch.distributed``'s when it is initialised, else 0 and 1. Rows are dealt to
        ranks disjointly and every rank gets the same number of batches (see ``drop_last``).
    drop_last
        Drop rows so that ranks are equal and batches full; otherwise pad the epoch with its first
        rows (every row at least once) and keep a last partial batch.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`scdl_gpu.backend.get_backend`).
    options
        A :class:`~scdl_gpu.backend.BatchOptions` (value dtype, ``target_sum``, ``log1p``,
        ``gene_remap``); ``output="dense"`` sets its ``dense``.
    transform
        Called on each batch dict (on the device) before it is yielded.
    residency
        On a GPU: ``"auto"`` (default), ``"device"``, ``"pinned"`` or ``"stream"`` — where the rows
        live (see :mod:`scdl_gpu.backend._residency`). ``device``/``pinned`` hold each rank's share
        of the rows once and gather batches from it with a CUDA kernel. The share is one seeded
        random partition of all rows into ``world_size`` equal parts, fixed for the run; each epoch
        permutes the rank's own part. Every row is still seen once per epoch across ranks and each
        batch is a uniform draw from its rank's part, but a rank never sees another rank's rows:
        unlike a global permutation, which rows share a batch is limited to one part (harmless for
        SGD in expectation; with ``world_size`` 1 it *is* a global permutation). The CPU reads the
        archive's maps (``"auto"``/``"stream"``); ``neighbors=True`` streams. With ``device``/``pinned``
        the loader gathers batches in groups of about 32,768 rows (8 batches of 4,096, 512 of 64), each
        batch a view of its group's arrays, its rows and obs read and moved once per group.
    storage_options
        For an archive or atlas at a URL: passed to fsspec (``endpoint_url``, ``anon``, ...);
        credentials otherwise come from the usual environment and configuration files. An atlas's
        members are read with them too (a member at a URL of another protocol, with its defaults).
    cache_bytes
        A compressed archive's decoded chunks kept in memory (default 128 MiB).
    prefetch
        Batches assembled ahead by a background thread (0: none). Default: 2 on a GPU (the host
        thread builds the next batches while the device trains), 0 on the CPU, where the compiled
        gather already uses every core for each batch and a second thread only competes for the
        GIL (measured on 2 cores: prefetch 0 was 10-50% faster at every batch size). With rows
        resident on the GPU the thread makes whole groups, so any ``prefetch`` > 0 is one group ahead
        (and the next one queued on the device).

    Memory: about ``(prefetch + 2) * batch_size * bytes per cell``, plus ``fetch_factor`` batches
    in ``block`` order with ``fetch_factor`` > 1 (with rows resident on the GPU, up to four groups of
    about 32,768 rows instead, 0.4 GB each at ~1,450 values a row: the one being read, the last batch
    of the one before, one made ahead and one queued on the device; a group's memory is freed with
    its last batch); on the CPU, outputs of 1 MiB
    or more are kept for reuse once released (up to 8 arrays, about 4 batches), which spares a page
    fault per 4 KiB.
    """

    def __init__(
        self,
        data,
        batch_size: int = 4096,
        shuffle: str | bool | None = None,
        *,
        block_size: int | None = None,
        fetch_factor: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        device: str = "auto",
        output: str = "csr",
        obs_columns: list[str] | None = None,
        obsm_keys: list[str] | None = None,
        transform: Callable[[dict], dict] | None = None,
        prefetch: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        neighbors: bool = False,
        options: BatchOptions | None = None,
        residency: str = "auto",
        balance: str | None = None,
        class_weights: dict | None = None,
        group_weights: dict[str, float] | None = None,
        epoch_length: int | None = None,
        storage_options: dict | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        source = getattr(data, "data_path", data)
        weighted = _check_weighting(balance, class_weights, group_weights, epoch_length)
        if isinstance(shuffle, bool):
            shuffle = "random" if shuffle else "sequential"
        if shuffle is None:
            shuffle = "random" if weighted else "block"
        if shuffle not in ORDERS:
            raise ValueError(f"shuffle must be one of {ORDERS} (or a bool), got {shuffle!r}")
        if weighted and shuffle != "random":
            raise ValueError(f"weighted sampling draws rows in random order; shuffle={shuffle!r} cannot apply (leave it unset)")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        chunk_rows = None if remote_location(source) else _compressed_chunk_rows(Path(source))
        if block_size is None:  # at least 64 blocks per batch: contiguous reads, yet well mixed
            block_size = chunk_rows or max(1, int(batch_size) // 64)
        for name, v in (("batch_size", batch_size), ("block_size", block_size), ("fetch_factor", fetch_factor)):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.order, self.batch_size, self.block_size, self.fetch_factor = shuffle, int(batch_size), int(block_size), int(fetch_factor)
        self.seed, self.drop_last, self.output, self.transform = int(seed), bool(drop_last), output, transform
        self.rank, self.world_size = _distributed(rank, world_size)
        opts = options or BatchOptions()
        if output == "dense" and not opts.dense:
            opts = BatchOptions(**{**opts.__dict__, "dense": True})
        self._own_remote = None  # a remote archive this loader opened (and closes)
        # an atlas at a URL stays a URL: its backend opens the members (and closes them)
        remote_atlas = isinstance(source, str) and is_remote_atlas(source, storage_options)
        if isinstance(source, str) and remote_location(source) and not remote_atlas:
            source = self._own_remote = RemoteArchive(source, storage_options)
        elif storage_options and not remote_location(source):
            raise ValueError(f"storage_options are for archives at a URL; {source} is a local path")
        source = source if remote_location(source) else Path(source)
        self._share = None
        atlas = remote_atlas or (not remote_location(source) and is_atlas(source))
        if atlas and (neighbors or obsm_keys):
            raise ValueError(f"{source} is an atlas: neighbors=True and obsm_keys are read from one archive; "
                             "load them from its members")
        if resolve_device(device) == "cuda" and residency != "stream" and not atlas:
            for asked, what in ((neighbors, "neighbors=True"), (weighted, "weighted sampling")):
                if asked and residency in ("device", "pinned"):
                    raise ValueError(f"{what} reads rows outside a rank's resident share; use residency='stream'")
            streams = neighbors or weighted
            n_rows = source.n_rows if remote_location(source) else open_arrays(source).n_rows
            share = None if streams else resident_share(n_rows, self.seed, self.rank, self.world_size, self.drop_last)
            residency = "stream" if streams else residency
            self.backend = get_backend(source, device=device, options=opts, residency=residency, resident_rows=share,
                                       cache_bytes=cache_bytes)
            if self.backend.residency in ("device", "pinned"):
                self._share = share
        else:
            self.backend = get_backend(source, device=device, options=opts, residency=residency, cache_bytes=cache_bytes,
                                       storage_options=storage_options if remote_atlas else None)
        self.path = self.backend.path  # a URL's with its credentials redacted
        remote = self.backend.remote
        if remote is not None and shuffle == "random":
            warnings.warn(f"random order over the remote {'atlas' if atlas else 'archive'} {remote.url} reads one range per row (a request "
                          "each, at the store's latency); block order reads a few long ranges per batch", UserWarning,
                          stacklevel=2)
        files = self.backend.files  # the archive, or a remote one's local mirror of its small files
        self.residency = getattr(self.backend, "residency", "stream")
        self.prefetch = int(prefetch) if prefetch is not None else (0 if self.backend.device == "cpu" else 2)
        self.n_rows = self.backend.n_rows
        self.n_genes = self.backend.width
        # an atlas's members: blocks stay inside one (the order sees row ranges, never members)
        self._segments = getattr(self.backend, "groups", (None, None))[1]
        with contextlib.nullcontext() if remote is None else remote.naming_url():  # errors name the URL
            self._open_per_cell(files, remote, obs_columns, obsm_keys, neighbors)
            self._files = files
            self.weighting = dict(balance=balance, class_weights=_plain(class_weights), group_weights=_plain(group_weights),
                                  epoch_length=None if epoch_length is None else int(epoch_length)) if weighted else None
            self._weights = self._build_weights() if weighted else None
        _silence_csr_beta_warning()
        self.epoch = 0
        self._resume_at = 0  # batches of the current epoch already consumed (from load_state_dict)
        self._done = 0

    def _open_per_cell(self, files, remote, obs_columns, obsm_keys, neighbors: bool) -> None:
        """obs columns, obsm arrays and the neighbor graph, from the archive's files (a remote
        archive's mirror, into which the arrays read whole are fetched first)."""
        self.obs = ObsColumns(files, list(obs_columns or []), self.n_rows)
        if remote is not None and (obsm_keys or neighbors):  # (an atlas has neither)
            remote.fetch([f"{OBSM_DIR}/{k}.npy" for k in obsm_keys or []] + list(NEIGHBOR_FILES if neighbors else ()))
        self.obsm = ObsmArrays(files, list(obsm_keys), self.n_rows) if obsm_keys else None
        self.neighbors = None
        if neighbors:
            arrays = open_arrays(files, load_neighbors=True)
            if arrays.neighbors is None:
                raise ValueError(f"neighbors=True but {self.path} has no neighbor arrays")
            self.neighbors = tuple(a.view(np.ndarray) for a in arrays.neighbors)

    @property
    def stages(self):
        """Per-stage timing hooks shared with the backend (``scdl-gpu profile`` sets a StageClock)."""
        return self.backend.stages

    @stages.setter
    def stages(self, clock) -> None:
        self.backend.stages = clock

    # -- sizes and state ------------------------------------------------------------------------
    @property
    def categories(self) -> dict[str, list]:
        """Category lists of the encoded obs columns: code ``k`` of column ``c`` is ``categories[c][k]``.

        Code -1 (not in the list) marks a row whose input lacks the column.
        """
        return self.obs.categories

    @property
    def epoch_rows(self) -> int:
        """Rows drawn per epoch over all ranks: ``epoch_length`` when weighted, else every row once."""
        return self.n_rows if self.weighting is None or self.weighting["epoch_length"] is None else self.weighting["epoch_length"]

    def _build_weights(self) -> Weighting:
        spec = self.weighting
        groups = None
        if spec["group_weights"] is not None:
            found = getattr(self.backend, "groups", None)  # an atlas: its members, by row offsets
            if found is not None:
                names, offsets = found
                sizes = np.diff(np.asarray(offsets, np.int64))
                if len(sizes) != len(names) or sizes.sum() != self.n_rows or (sizes < 0).any():
                    raise ValueError(f"{self.path}: the backend's groups ({len(names)} names, offsets {offsets!r}) "
                                     f"do not cover its {self.n_rows} rows")
                groups = list(names), np.repeat(np.arange(len(names), dtype=np.int32), sizes)
            else:
                groups = input_groups(self._files, self.n_rows)
        classes = None
        if spec["balance"] is not None:
            col = spec["balance"]
            obs = self.obs if col in self.obs.columns else ObsColumns(self._files, [col], self.n_rows)
            classes = class_codes(obs.values[col], obs.categories.get(col))
        return build_weighting(self.n_rows, groups, spec["group_weights"], classes, spec["class_weights"], spec["balance"] or "")

    def _shard(self, epoch: int) -> Shard:
        if self._weights is not None:  # a global draw with replacement, dealt to ranks like any order
            drawn = self._weights.draw(self.epoch_rows, rng_for(self.seed, epoch, 5))
            sh = shard(drawn, self.rank, self.world_size, self.batch_size, self.drop_last)
            return Shard(sh.rows.astype(np.int64), sh.batch_size, sh.n_batches)  # only this rank's part widened
        if self._share is not None:
            return resident_shard(self._share, self.order, self.seed, epoch, self.rank, self.batch_size,
                                  self.block_size, self.drop_last)
        order = epoch_order(self.n_rows, self.order, self.seed, epoch, self.block_size, segments=self._segments)
        return shard(order, self.rank, self.world_size, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank; computed without the order)."""
        n = self.epoch_rows
        return rows_and_batches_per_rank(n, self.world_size, self.batch_size, self.drop_last)[1] if n else 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows (as ``DistributedSampler``)."""
        self.epoch, self._resume_at, self._done = int(epoch), 0, 0

    def state_dict(self) -> dict:
        """Where the iteration stands: load it into a fresh loader to continue with the next batch."""
        return dict(epoch=self.epoch, batches_done=self._done, seed=self.seed, order=self.order,
                    batch_size=self.batch_size, world_size=self.world_size, rank=self.rank, n_rows=self.n_rows,
                    partition=self.partition, weighting=self.weighting)

    @property
    def partition(self) -> str:
        """``"resident"``: each rank draws from its own fixed share of the rows (GPU residency);
        ``"global"``: each epoch permutes all rows and deals them to ranks."""
        return "resident" if self._share is not None else "global"

    def load_state_dict(self, state: dict) -> None:
        defaults = {"partition": "global", "weighting": None}  # states saved before these keys existed
        for key in ("seed", "order", "batch_size", "world_size", "n_rows", "partition", "weighting"):
            if state.get(key, defaults.get(key)) != getattr(self, key):
                raise ValueError(f"state_dict was taken with {key}={state.get(key)!r}, this loader has {getattr(self, key)!r}")
        self.epoch, self._resume_at, self._done = int(state["epoch"]), int(state["batches_done"]), int(state["batches_done"])

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        epoch, start = self.epoch, self._resume_at
        self._resume_at = 0
        self._done = start
        group = self._group
        # the thread hands over whole groups (a queue hand-off costs a thread switch): ``prefetch`` batches ahead
        depth = -(-self.prefetch // group) if self.prefetch > 0 else 0
        for batches, ready in run_ahead(self._groups(epoch, start, group), depth):
            for batch in batches:
                if ready is not None:  # GPU: this thread's stream waits for the batch's
                    self.backend.handoff(ready, _tensors(batch))
                self._done += 1
                yield batch
        self.epoch, self._done = epoch + 1, 0  # a finished epoch moves on, as every rank does

    @property
    def _group(self) -> int:
        """Batches made at once: a group with rows resident on the GPU, else one."""
        return resident_group(self.batch_size) if self.residency in ("device", "pinned") else 1

    def _groups(self, epoch: int, start: int, group: int) -> Iterator[tuple[list[dict], object]]:
        """``(batches, ready)`` from batch ``start`` on, ``group`` batches at a time: the batch dicts and the
        event they are complete at (None on the CPU)."""
        with self.stages("sample"):
            sh = self._shard(epoch)
        if self.order == "block" and self.fetch_factor > 1 and self.backend.device == "cpu":
            yield from (([out], None) for out in self._fetched(sh, epoch, start))
            return
        if start < sh.n_batches:  # hinted first, so the first batch's reads are not queued behind the next's
            self.backend.will_need(sh.batch(start))
        queued = None  # a group on the device: finished once the next one is queued behind it
        for first in range(start, sh.n_batches, group):
            ks = range(first, min(first + group, sh.n_batches))
            with self.stages("sample"):
                rows = [sh.batch(k) for k in ks]
            if ks[-1] + 1 < sh.n_batches:  # the backend may start reading (decoding) the next batch's bytes now
                self.backend.will_need(sh.batch(ks[-1] + 1))
            # exited before each yield: the consumer's thread keeps its own stream
            with self.backend.producing():
                if group == 1:
                    made = [self._finish(self.backend.batch(rows[0]), epoch, ks[0])], self.backend.ready_event()
                else:
                    made, nxt = None, self._start_group(rows, ks)
            if made is not None:
                yield made
                continue
            if queued is not None:
                yield self._end_group(queued, epoch)
            queued = nxt
        if queued is not None:
            yield self._end_group(queued, epoch)

    def _start_group(self, rows: list, ks) -> tuple:
        """Queue a group's batches (``Backend.batches_ahead``) and its rows, obs and obsm on the device,
        in the producing context; what ``_end_group`` needs, with the event after all of it."""
        finish = self.backend.batches_ahead(rows)
        with self.stages("collate"):
            side = self._side(np.concatenate(rows), self.backend.tensor_device)
        return finish, ks, side, self.backend.ready_event()

    def _end_group(self, queued: tuple, epoch: int) -> tuple[list[dict], object]:
        """``(batch dicts, ready event)`` of a queued group (waits for its flag: may raise ``ArchiveError``)."""
        finish, ks, side, ready = queued
        with self.backend.producing():
            outs = self._finish_group(finish(), epoch, ks, side)
            if self.transform is not None:  # its device work, queued just now, is the batches' too
                ready = self.backend.ready_event()
        return outs, ready

    def _fetched(self, sh: Shard, epoch: int, start: int) -> Iterator[dict]:
        """Block order: read ``fetch_factor`` batches of rows at once (sorted: few long spans), shuffle
        them among those batches, and cut the batches from memory."""
        per_fetch = self.fetch_factor * self.batch_size
        for f in range(start // self.fetch_factor, -(-sh.n_batches // self.fetch_factor)):
            first = f * self.fetch_factor
            n_here = min(self.fetch_factor, sh.n_batches - first)
            with self.stages("sample"):
                rows = sh.rows[f * per_fetch : f * per_fetch + n_here * self.batch_size]
                by_position = np.argsort(rows, kind="stable")
                slot = np.empty(len(rows), np.int64)
                slot[by_position] = np.arange(len(rows))  # where each fetch row sits in the sorted read
                perm = fetch_permutation(len(rows), self.seed, epoch, self.rank, f)
            fetched = self.backend.batch(rows[by_position])
            with self.stages("collate"):
                m = None if fetched.dense is not None else to_scipy(fetched if fetched.sorted else sort_rows(fetched))
            for j in range(max(start - first, 0), n_here):
                pick = perm[j * self.batch_size : (j + 1) * self.batch_size]
                local, batch_rows = slot[pick], rows[pick]
                if m is None and fetched.dense is None:  # float16 values: no scipy; gather through the backend
                    b = self.backend.batch(batch_rows)
                else:
                    with self.stages("collate"):
                        b = (take_rows(m, local, batch_rows, fetched.crow.numpy().dtype) if m is not None else
                             type(fetched)(batch_rows, (len(local), fetched.shape[1]), dense=fetched.dense[torch.from_numpy(local)]))
                yield self._finish(b, epoch, first + j)

    def _finish_group(self, got: list, epoch: int, ks, side: dict) -> list[dict]:
        """The batch dicts of one group of batches, each taking views of ``side``: the group's rows, obs
        and obsm, read and moved to the device once (one copy per tensor, not per batch)."""
        with self.stages("collate"):
            cuts = np.cumsum([0] + [len(b.rows) for b in got]).tolist()
            parts = [_cut(side, a, z) for a, z in zip(cuts[:-1], cuts[1:])]
        return [self._finish(b, epoch, k, p) for b, k, p in zip(got, ks, parts)]

    def _side(self, rows: np.ndarray, device: torch.device) -> dict:
        """What a batch dict carries beside ``X`` for ``rows``: the row ids, obs and obsm, on ``device``."""
        out = {"rows": torch.from_numpy(np.asarray(rows, dtype=np.int64)), "obs": self.obs.take(rows)}
        if self.obsm is not None:
            out["obsm"] = self.obsm.take(rows)
        if device.type != "cpu":  # keep a batch on one device
            out["rows"] = _to_device(out["rows"], device)
            for part in ("obs", "obsm"):
                if part in out:
                    out[part] = {k: _to_device(v, device) for k, v in out[part].items()}
        return out

    def _finish(self, b, epoch: int, k: int, side: dict | None = None) -> dict:
        with self.stages("collate"):
            x = self._tensor(b)
            out = {"X": x, **(side if side is not None else self._side(b.rows, x.device))}
        if self.neighbors is not None:
            with self.stages("sample"):
                nrows = self._sample_neighbors(b.rows, epoch, k)
            out["neighbor_rows"] = torch.from_numpy(nrows)
            nb = self.backend.batch(nrows)
            with self.stages("collate"):
                out["neighbor_X"] = self._tensor(nb)
        return self.transform(out) if self.transform is not None else out

    def _tensor(self, b) -> torch.Tensor:
        if b.dense is not None:
            return b.dense
        return (b if b.sorted else sort_rows(b)).to_sparse_csr()

    def _sample_neighbors(self, rows: np.ndarray, epoch: int, k: int) -> np.ndarray:
        """One neighbor per cell, uniformly among its neighbors; the cell itself when it has none."""
        ptr, idx, _ = self.neighbors
        lo = ptr[rows].astype(np.int64)
        deg = ptr[rows + 1].astype(np.int64) - lo
        u = rng_for(self.seed, epoch, 2, self.rank, k).random(len(rows))
        pick = lo + np.minimum((u * deg).astype(np.int64), np.maximum(deg - 1, 0))
        return np.where(deg > 0, idx[np.minimum(pick, max(len(idx) - 1, 0))] if len(idx) else rows, rows).astype(np.int64)

    def close(self) -> None:
        self.backend.close()
        if self._own_remote is not None:
            self._own_remote.close()

    def __repr__(self) -> str:
        return (f"SingleCellLoader({str(self.path)!r}, batch_size={self.batch_size}, shuffle={self.order!r}, "
                f"rank={self.rank}/{self.world_size}, device={self.backend.device!r}, batches={len(self)})")


def _tensors(batch: dict) -> Iterator[torch.Tensor]:
    """Every dense tensor a batch dict holds (CSR tensors by their parts), lazily: a hand-off that
    finds the batch's group already handed over reads none of them."""
    for v in batch.values():
        if isinstance(v, dict):
            yield from _tensors(v)
        elif isinstance(v, torch.Tensor):
            yield from (v.crow_indices(), v.col_indices(), v.values()) if v.layout == torch.sparse_csr else (v,)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` copied to ``device`` without waiting: from pageable memory the driver may first wait for the
    stream (the group just queued on it) to stage the copy, so through torch's pinned block cache, which
    keeps a block until its copy is done."""
    return t.pin_memory().to(device, non_blocking=True)


def _cut(side: dict, a: int, z: int) -> dict:
    """Rows ``a:z`` of every tensor in ``side`` (nested dicts too), as views."""
    return {k: _cut(v, a, z) if isinstance(v, dict) else v[a:z] for k, v in side.items()}


def _silence_csr_beta_warning() -> None:
    """torch warns once per process that sparse CSR is in beta: let it do so here, silenced, rather
    than filter warnings around every batch (which costs ~8 us and races with other threads)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        Batch(np.zeros(0, np.int64), (0, 0), crow=torch.zeros(1, dtype=torch.int32), col=torch.zeros(0, dtype=torch.int32),
              values=torch.zeros(0)).to_sparse_csr()


def _check_weighting(balance, class_weights, group_weights, epoch_length) -> bool:
    """Whether the loader is weighted; errors for parameters that do not go together."""
    if balance is not None and not isinstance(balance, str):
        raise ValueError(f"balance must be the name of an obs column, got {balance!r}")
    if class_weights is not None and balance is None:
        raise ValueError("class_weights needs balance=COLUMN: the obs column whose values it weights")
    weighted = balance is not None or group_weights is not None
    if epoch_length is not None:
        if not weighted:
            raise ValueError("epoch_length applies to weighted sampling (balance= or group_weights=)")
        if isinstance(epoch_length, bool) or not isinstance(epoch_length, (int, np.integer)) or epoch_length < 1:
            raise ValueError(f"epoch_length must be a positive integer, got {epoch_length!r}")
    return weighted


def _plain(weights: dict | None) -> dict | None:
    """Weights as plain Python values (kept in state_dict, which checkpoints load without pickle)."""
    if weights is None or not isinstance(weights, dict):
        return weights
    def plain(x):
        return x.item() if isinstance(x, np.generic) else x

    return {plain(k): plain(v) for k, v in weights.items()}


def _compressed_chunk_rows(path: Path) -> int | None:
    """Rows per chunk of a compressed archive (its unit of decoding), None for any other."""
    header = read_dtypes(path)[1] if path.is_dir() and not is_atlas(path) else None
    if header is None or header.backend is not Backend.COMPRESSED_CHUNKED_V0:
        return None
    return header.chunked_info.chunk_size


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
    rank = 0 if rank is None else int(rank)
    world_size = 1 if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    return rank, world_size
