"""Writing a slice's mask and overlay in a background thread while the next slice runs.

On a CPU node the network keeps every core busy only while it runs; the single-threaded steps
around it (post-processing, TIFF/PNG compression) leave cores idle. ``BackgroundWriter`` moves the
file writes of slice N onto one worker thread that overlaps slice N+1 (zlib and PIL release the GIL).
It is bounded (``max_pending``), so memory holds at most that many extra masks, and failures are
not lost: each write's ``Future`` travels with the slice's record and the summary handler turns an
exception into a ``failed`` row (:func:`first_error`).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, MutableMapping

__all__ = ["PENDING_KEY", "BackgroundWriter", "first_error", "submit_write"]

PENDING_KEY = "pending_writes"  # list of Futures in a slice's record


class BackgroundWriter:
    """One worker thread running write jobs in submission order.

    Args:
        enabled: ``False`` runs every job at once in the caller (same results, no overlap).
        max_pending: jobs queued or running at most; ``submit`` blocks beyond that.
    """

    def __init__(self, enabled: bool = True, max_pending: int = 2) -> None:
        self.enabled = bool(enabled)
        self._slots = threading.BoundedSemaphore(max(1, int(max_pending)))
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` (in the worker when enabled); returns its ``Future``."""
        if not self.enabled:
            fut: Future = Future()
            try:
                fut.set_result(fn(*args, **kwargs))
            except Exception as e:  # reported through the Future like a background failure
                fut.set_exception(e)
            return fut
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plimonai-writer")
        self._slots.acquire()
        fut = self._pool.submit(fn, *args, **kwargs)
        fut.add_done_callback(lambda _: self._slots.release())
        return fut

    def shutdown(self) -> None:
        """Wait for every queued job and stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def submit_write(writer: BackgroundWriter, record: MutableMapping, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` through ``writer`` and keep its Future in ``record[PENDING_KEY]``."""
    record.setdefault(PENDING_KEY, []).append(writer.submit(fn, *args))


def first_error(futures: Iterable[Future]) -> str:
    """Wait for ``futures``; returns ``""`` or the first error as ``"Type: message"``."""
    for fut in futures:
        exc = fut.exception()
        if exc is not None:
            return f"{type(exc).__name__}: {exc}"
    return ""
