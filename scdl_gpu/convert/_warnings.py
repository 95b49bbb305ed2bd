"""Warning filters that are safe in conversion worker threads.

``warnings.catch_warnings`` saves and restores the process-wide filter list, so two threads
inside it at once restore each other's filters (a thread can then see a warning it meant to
silence raised as an error, or silence another thread's). Holding one lock for the whole block
keeps such blocks nested, and only the named categories are touched.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()


@contextmanager
def filtered_warnings(action: str, *categories: type[Warning]) -> Iterator[None]:
    """Apply ``action`` ("ignore", "error", …) to ``categories`` inside the block, thread-safely."""
    with _LOCK, warnings.catch_warnings():
        for category in categories:
            warnings.filterwarnings(action, category=category)
        yield
