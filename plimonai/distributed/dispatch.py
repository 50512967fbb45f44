"""Which pending slice each rank processes next: dynamic (shared counter), static (round-robin) or local.

The dynamic counter is an MPI one-sided window on rank 0 incremented with ``Fetch_and_op``: a free
rank takes the next index, no server loop needed. MPI implementations without hardware atomics only
apply it when rank 0 enters the MPI library, so rank 0 runs a tiny progress thread (an ``Iprobe``
every few milliseconds) while the counter is open; otherwise a rank would wait for rank 0's slice.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterator

import numpy as np

from .mpi import idle_barrier

__all__ = ["DISPATCH_MODES", "LocalDispatcher", "StaticDispatcher", "DynamicDispatcher", "make_dispatcher"]

logger = logging.getLogger(__name__)

DISPATCH_MODES = ("dynamic", "static")


class LocalDispatcher:
    """One process: every pending slice in list order."""

    mode = "local"

    def indices(self, n: int) -> Iterator[int]:
        yield from range(n)


class StaticDispatcher:
    """Round-robin: rank ``r`` of ``R`` takes slices ``r, r + R, r + 2R, ...``; no communication."""

    mode = "static"

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def indices(self, n: int) -> Iterator[int]:
        yield from range(self.rank, n, self.size)


class DynamicDispatcher:
    """Shared counter on rank 0: each call takes the next unclaimed index, so every index in
    ``range(n)`` goes to exactly one rank, to whichever is free first.

    Collective: every rank constructs it (``MPI.Win.Allocate``) and runs :meth:`indices` to exhaustion,
    which frees the window (also collective). One pass per instance.

    Args:
        comm: the communicator (duplicated, so its traffic never mixes with the caller's).
        poll_seconds: rank 0's progress-thread interval (bounds how long a claim waits on rank 0).
    """

    mode = "dynamic"

    def __init__(self, comm: Any, poll_seconds: float = 0.005) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm.Dup()
        self.rank = self.comm.Get_rank()
        itemsize = MPI.INT64_T.Get_size()
        self.win = MPI.Win.Allocate(itemsize if self.rank == 0 else 0, itemsize, comm=self.comm)
        if self.rank == 0:
            self.win.Lock(0)
            np.frombuffer(self.win.tomemory(), dtype=np.int64)[:] = 0
            self.win.Unlock(0)
        self.comm.Barrier()  # counter initialised before anyone reads it
        self._one, self._got = np.ones(1, np.int64), np.zeros(1, np.int64)
        self._stop = threading.Event()
        self._pump: threading.Thread | None = None
        if self.rank == 0 and self.comm.Get_size() > 1:
            if MPI.Query_thread() >= MPI.THREAD_MULTIPLE:
                self._pump = threading.Thread(target=self._progress, args=(poll_seconds,), name="mpi-progress",
                                              daemon=True)
                self._pump.start()
            else:
                logger.warning("MPI without THREAD_MULTIPLE: no progress thread; claims may wait for rank 0's "
                               "slices (set MPIR_CVAR_ASYNC_PROGRESS=1 or use --dispatch static)")

    def _progress(self, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            self.comm.Iprobe(self._MPI.ANY_SOURCE, self._MPI.ANY_TAG)  # drives the MPI progress engine

    def claim(self) -> int:
        """The next global index (may be past the end: then there is nothing left)."""
        self.win.Lock(0, self._MPI.LOCK_SHARED)
        self.win.Fetch_and_op(self._one, self._got, 0, 0, self._MPI.SUM)
        self.win.Unlock(0)
        return int(self._got[0])

    def indices(self, n: int) -> Iterator[int]:
        # no try/finally: closing (collective) while unwinding an error would hang; errors abort instead
        while (i := self.claim()) < n:
            yield i
        self.close()

    def close(self) -> None:
        """Free the window (collective) and stop the progress thread. Idempotent."""
        if self.win is None:
            return
        idle_barrier(self.comm)  # a blocking Free would spin a core beside this rank's last slice
        self.win.Free()
        self.win = None
        self._stop.set()
        if self._pump is not None:
            self._pump.join()
        self.comm.Free()


def make_dispatcher(mode: str = "dynamic", comm: Any | None = None):
    """``"dynamic"`` or ``"static"`` dispatcher for ``comm``; a :class:`LocalDispatcher` without MPI or
    with one rank. Collective for ``"dynamic"``."""
    mode = str(mode).lower()
    if mode not in DISPATCH_MODES:
        raise ValueError(f"dispatch must be one of {DISPATCH_MODES}, got {mode!r}")
    if comm is None or comm.Get_size() == 1:
        return LocalDispatcher()
    if mode == "static":
        return StaticDispatcher(comm.Get_rank(), comm.Get_size())
    return DynamicDispatcher(comm)
