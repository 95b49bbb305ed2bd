"""Prompt cancel: SIGINT/SIGTERM stop a conversion at the next row block, and its partial output goes.

The main thread turns the signal into :class:`ConversionInterrupted` (a ``KeyboardInterrupt``,
so ``except Exception`` never swallows it); unwinding sets the conversion's cancel event, which
every worker checks between row blocks (:func:`check_cancelled`), so the pool shuts down within
one block instead of after the file in flight. The archive writer's abort then removes the
partial directory.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class ConversionInterrupted(KeyboardInterrupt):
    """A conversion stopped by a signal (``signum``; exit status ``128 + signum``) or by its cancel event."""

    def __init__(self, signum: int = signal.SIGINT, message: str | None = None) -> None:
        self.signum = int(signum)
        super().__init__(message or f"conversion interrupted by {signal.Signals(self.signum).name}")


_event: ContextVar = ContextVar("scdl_gpu_conversion_cancel", default=None)


@contextmanager
def cancel_scope(event) -> Iterator[None]:
    """Make ``event`` (a ``threading.Event`` or multiprocessing ``Event``) the one
    :func:`check_cancelled` looks at in this thread, for the block."""
    token = _event.set(event)
    try:
        yield
    finally:
        _event.reset(token)


def check_cancelled() -> None:
    """Raise :class:`ConversionInterrupted` if this thread's conversion was cancelled (between blocks)."""
    event = _event.get()
    if event is not None and event.is_set():
        raise ConversionInterrupted(message="conversion cancelled")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While a conversion runs in the main thread, SIGINT and SIGTERM raise ConversionInterrupted.

    Only default handlers are replaced (a handler the application installed is left to do its
    job), and only once per block: a second signal during cleanup is ignored, so the partial
    output is always removed. Elsewhere than the main thread, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise ConversionInterrupted(signum)

    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(s)
        if current in (signal.default_int_handler, signal.SIG_DFL):
            previous[s] = current
            signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interruptible(fn):
    """Run ``fn`` under :func:`signals_interrupt` (for the conversion entry points)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with signals_interrupt():
            return fn(*args, **kwargs)

    return run
