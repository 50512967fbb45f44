"""Iterable view of a ``SliceDataset`` whose slice order comes from a dispatcher, with a prefetch thread.

Replaces the DataLoader's worker processes under MPI: a forked worker must not use MPI, and with
dynamic dispatch the indices are only known one at a time. A background *thread* claims and loads
(reads + preprocesses) the next slice while the main thread runs the network on the current one.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

from torch.utils.data import IterableDataset, get_worker_info

__all__ = ["DispatchedSlices", "prefetched"]

_END = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(indices: Iterator[int], load: Callable[[int], Any]) -> Iterator[Any]:
    """``load(i) for i in indices``, the next item claimed and loaded in a thread while the caller
    works on the current one (one item ahead, so a slow slice never holds two claims idle).
    An exception in the thread is re-raised here."""
    q: queue.Queue = queue.Queue()
    slot = threading.Semaphore(1)  # released when the consumer takes an item: then claim the next
    stop = threading.Event()

    def work() -> None:
        try:
            while True:
                slot.acquire()
                if stop.is_set():
                    return
                i = next(indices, _END)
                if i is _END:
                    break
                q.put(load(i))
        except BaseException as e:  # hand it to the consumer
            q.put(_Raised(e))
            return
        q.put(_END)

    t = threading.Thread(target=work, name="slice-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, _Raised):
                raise item.exc
            slot.release()
            yield item
    finally:
        stop.set()
        slot.release()  # unblock the thread if it waits for a slot
    t.join()


class DispatchedSlices(IterableDataset):
    """The pending slices of ``dataset`` that ``dispatcher`` hands to this rank, as ``dataset[i]`` items.

    Args:
        dataset: a ``plimonai.data.SliceDataset`` (its ``pending`` list is the same on every rank).
        dispatcher: object with ``indices(n) -> Iterator[int]`` (see ``plimonai.distributed.dispatch``).
        prefetch: load the next slice in a background thread.

    Has no ``__len__`` (dynamic: unknown in advance), so the engine's epoch ends when it is exhausted.
    Use with ``num_workers=0``. One pass.
    """

    def __init__(self, dataset, dispatcher, prefetch: bool = True) -> None:
        super().__init__()
        self.dataset, self.dispatcher, self.prefetch = dataset, dispatcher, bool(prefetch)

    @property
    def skipped(self) -> list[dict]:
        return self.dataset.skipped

    @property
    def all_paths(self) -> list[str]:
        return self.dataset.all_paths

    def __iter__(self) -> Iterator[dict]:
        if get_worker_info() is not None:
            raise RuntimeError("DispatchedSlices needs num_workers=0 (MPI must not be used in DataLoader workers)")
        indices = self.dispatcher.indices(len(self.dataset))
        load = self.dataset.__getitem__
        items = prefetched(indices, load) if self.prefetch else map(load, indices)
        yield from items
