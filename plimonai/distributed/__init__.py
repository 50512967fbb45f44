"""Distributed (MPI) inference over slice lists: dispatch, prefetch and rank helpers."""

from .dataset import DispatchedSlices, prefetched
from .dispatch import DISPATCH_MODES, DynamicDispatcher, LocalDispatcher, StaticDispatcher, make_dispatcher
from .mpi import (
    SliceFailures, agree_on_pending, cores_per_rank, install_abort_hook, local_rank_size, raise_if_failed,
    rank_device, rank_of, row_gatherer, setup_rank_runtime, size_of, world,
)

__all__ = [
    "DISPATCH_MODES", "DispatchedSlices", "DynamicDispatcher", "LocalDispatcher", "SliceFailures", "StaticDispatcher",
    "agree_on_pending", "cores_per_rank", "install_abort_hook", "local_rank_size", "make_dispatcher", "prefetched",
    "raise_if_failed", "rank_device", "rank_of", "row_gatherer", "setup_rank_runtime", "size_of", "world",
]
