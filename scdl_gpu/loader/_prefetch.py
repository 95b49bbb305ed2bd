"""Run an iterator in a background thread, ``depth`` items ahead of the consumer.

A thread, not worker processes: nothing is pickled, the archive's memory maps and the backend are
shared, and NumPy, h5py-free reads and torch release the GIL for the heavy parts. Exceptions are
re-raised in the consumer; leaving the loop early stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(it: Iterator, depth: int) -> Iterator:
    if depth <= 0:
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer
            put(_Raised(e))

    t = threading.Thread(target=work, name="scdl-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        t.join(timeout=10)
