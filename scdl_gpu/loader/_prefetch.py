"""Run an iterator in a background thread, ahead of the consumer.

A thread, not worker processes: nothing is pickled, the archive's memory maps and the backend are
shared, and NumPy and torch release the GIL for the heavy parts. Exceptions are re-raised in the
consumer; leaving the loop early stops the thread.

Two C-implemented ``SimpleQueue``s carry the items and the free slots (``depth`` tokens): a
bounded ``queue.Queue`` does its locking in Python, holding the GIL the producer needs.
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
    """Yield the items of ``it``, produced up to ``depth`` items ahead of the consumer."""
    if depth <= 0:
        yield from it
        return
    items: queue.SimpleQueue = queue.SimpleQueue()
    slots: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(depth):
        slots.put(None)
    stop = threading.Event()

    def free_slot() -> bool:
        while not stop.is_set():
            try:
                slots.get(timeout=0.1)
                return True
            except queue.Empty:
                continue
        return False

    def work() -> None:
        try:
            while free_slot():
                try:
                    item = next(it)
                except StopIteration:
                    items.put(_DONE)
                    return
                items.put(item)
        except BaseException as e:  # handed to the consumer
            items.put(_Raised(e))

    t = threading.Thread(target=work, name="scdl-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.exc
            slots.put(None)
            yield item
    finally:
        stop.set()
        t.join(timeout=10)
