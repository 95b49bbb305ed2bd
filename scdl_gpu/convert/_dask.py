"""Atlas member tasks on Dask distributed: a ``LocalCluster`` of processes, or a running cluster.

One Dask task per member (:func:`~._atlas.convert_member`). A worker killed mid-member (out of
memory, preempted) leaves a hidden partial directory owned by its dead pid; the scheduler
retries the task elsewhere (``distributed.scheduler.allowed-failures`` times), and the retry's
writer removes that leftover before it starts. Results are released as they arrive, so losing a
worker does not make Dask recompute members that are already written.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence

from ._atlas import MemberResult, MemberTask, clean_members, convert_member

LOCAL = "local"

log = logging.getLogger(__name__)


def check_scheduler(scheduler: str) -> None:
    """``"local"`` or a scheduler address; and Dask distributed installed."""
    if not isinstance(scheduler, str) or (scheduler != LOCAL and "://" not in scheduler):
        raise ValueError(
            f"scheduler must be 'local', an address such as tcp://host:8786 or a Dask cluster, got {scheduler!r}"
        )
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "conversion on Dask needs dask[distributed]: pip install 'scdl_gpu[dask]' (or leave out the scheduler)"
        ) from e


def _client(scheduler: str, workers: int, memory: int | None):
    """A client, and the cluster it started (None when connecting to a running one)."""
    from distributed import Client, LocalCluster

    if scheduler != LOCAL:
        return Client(scheduler), None
    cluster = LocalCluster(
        # port 0: a free port (the default 8787 warns when taken, e.g. by a second run on this machine)
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
        memory_limit=memory if memory is not None else "auto",
    )
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def run_dask(tasks: Sequence[MemberTask], scheduler: str, workers: int, memory: int | None,
             done: Callable[[MemberResult], None]) -> list[tuple[MemberTask, BaseException]]:
    """Run ``tasks`` on the cluster, ``done(result)`` as each finishes (in this process); returns the failures.

    Every task runs even when another fails. On an interrupt the tasks not yet started are
    cancelled (one already running on a remote cluster finishes its member; a LocalCluster's
    workers are stopped with it, their partial directories removed by the caller).
    """
    from distributed import as_completed

    client, cluster = _client(scheduler, workers, memory)
    try:
        log.info("converting %d members on %s (dashboard: %s)", len(tasks), client.scheduler.address, client.dashboard_link)
        run = uuid.uuid4().hex[:8]
        futures = client.map(convert_member, list(tasks), [True] * len(tasks), pure=False,
                             key=[f"scdl-member-{t.name}-{run}" for t in tasks])
        by_key = {f.key: t for f, t in zip(futures, tasks)}
        failures = []
        try:
            for fut, result in as_completed(futures, with_results=True, raise_errors=False):
                task = by_key[fut.key]
                if fut.status == "error":
                    failures.append((task, fut.exception()))
                else:
                    done(result)
                fut.release()  # written: never recomputed if the worker holding the result is lost
        except BaseException:
            client.cancel(futures)
            raise
        if failures:  # leftovers of workers killed on other hosts: each worker cleans its own host's
            try:
                client.run(clean_members, [t.member for t, _ in failures])
            except Exception as e:  # the report of the failures matters more; the next writer cleans up too
                log.warning("could not ask the workers to remove partial members: %s", e)
        return failures
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
