"""MPI helpers for distributed inference: the communicator, node-local rank, per-rank device and
threads, the abort hook, the summary gather and the final failure check.

Every function takes ``comm=None`` (no MPI: one process) so the same config runs with or without
``mpiexec``. mpi4py is imported lazily: a plain ``python -m monai.bundle run`` without mpi4py works.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Callable

import torch

__all__ = [
    "SliceFailures", "world", "idle_barrier", "rank_of", "size_of", "local_rank_size", "cores_per_rank", "rank_device",
    "setup_rank_runtime", "install_abort_hook", "agree_on_pending", "row_gatherer", "raise_if_failed",
]

logger = logging.getLogger(__name__)

#: launcher variables giving the node-local rank / ranks per node when no communicator is available
_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK")
_LOCAL_SIZE_VARS = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE",
                    "LOCAL_WORLD_SIZE")


class SliceFailures(RuntimeError):
    """Some slices failed; raised after every collective operation, so it must not abort the job."""


def world() -> Any | None:
    """``MPI.COMM_WORLD``, or ``None`` when mpi4py is missing, MPI fails to start or ``PLIMONAI_MPI=0``.

    Without ``mpiexec`` MPI starts as a singleton (size 1); callers treat size 1 like no MPI.
    """
    if os.environ.get("PLIMONAI_MPI", "").lower() in ("0", "off", "false", "no"):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        if _env_int(("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"), 1) > 1:
            logger.warning("started by an MPI launcher but mpi4py is not installed: every rank runs all slices")
        return None
    except Exception as e:  # MPI_Init failed (e.g. broken launcher environment): run as one process
        logger.warning("mpi4py present but MPI did not start (%s); running as one process", e)
        return None
    return MPI.COMM_WORLD


def idle_barrier(comm: Any | None, poll_seconds: float = 0.01) -> None:
    """Barrier that sleeps while waiting (``Ibarrier`` + ``Test``): MPICH and Open MPI spin a core in
    blocking calls, which would slow down the ranks still computing on the same node."""
    if comm is None or comm.Get_size() == 1:
        return
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_seconds)


def rank_of(comm: Any | None) -> int:
    return comm.Get_rank() if comm is not None else 0


def size_of(comm: Any | None) -> int:
    return comm.Get_size() if comm is not None else 1


def _env_int(names: tuple[str, ...], default: int) -> int:
    for n in names:
        v = os.environ.get(n, "")
        if v.isdigit():
            return int(v)
    return default


def local_rank_size(comm: Any | None = None) -> tuple[int, int]:
    """(rank among the ranks on this node, number of ranks on this node).

    From ``comm.Split_type(COMM_TYPE_SHARED)`` (collective) when a communicator with more than one
    rank is given, else from launcher variables (Open MPI, MPICH/Hydra, Slurm, torchrun), else (0, 1).
    """
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()
    return _env_int(_LOCAL_RANK_VARS, 0), max(1, _env_int(_LOCAL_SIZE_VARS, 1))


def _affinity() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return frozenset(range(os.cpu_count() or 1))


def cores_per_rank(comm: Any | None = None) -> int:
    """CPU threads for this rank: its affinity mask shared among the node's ranks with the same mask.

    Ranks pinned by the launcher (``srun --cpus-per-task``, ``mpiexec -bind-to``) keep their own mask;
    unpinned ranks that all see the node's (or container's) cores split them evenly. Without a
    communicator (or with ``PLIMONAI_NUM_THREADS`` set) this is :func:`plimonai.runtime.available_cores`.
    """
    from plimonai.runtime import available_cores

    if comm is None or comm.Get_size() == 1 or os.environ.get("PLIMONAI_NUM_THREADS", "").isdigit():
        return available_cores()
    from mpi4py import MPI

    mask = _affinity()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        masks = node.allgather(mask)
    finally:
        node.Free()
    sharing = sum(m == mask for m in masks)
    cores = len(mask) // sharing
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit():
        cores = min(cores, int(slurm))
    return max(1, cores)


def rank_device(comm: Any | None = None) -> torch.device:
    """This rank's device: the node-local GPU ``local_rank % device_count`` (made current), else CPU.
    Collective (every rank takes part, with or without a GPU)."""
    local_rank, local_size = local_rank_size(comm)
    if not torch.cuda.is_available():
        dev = torch.device("cpu")
    else:
        n = torch.cuda.device_count()
        if local_size > n:
            logger.warning("%d ranks on this node share %d GPU(s)", local_size, n)
        dev = torch.device("cuda", local_rank % n)
        torch.cuda.set_device(dev)
    logger.info("plimonai rank %d/%d: local rank %d of %d, device %s", rank_of(comm), size_of(comm), local_rank,
                local_size, dev)
    return dev


def setup_rank_runtime(comm: Any | None = None, num_threads: int | None = None) -> dict:
    """:func:`plimonai.runtime.setup_runtime` with threads = this rank's share of the node's cores."""
    from plimonai.runtime import setup_runtime

    info = setup_runtime(num_threads or cores_per_rank(comm))
    info.update(rank=rank_of(comm), size=size_of(comm))
    logger.info("plimonai rank %d/%d: %d threads", info["rank"], info["size"], info["threads"])
    return info


def _caused_by(exc: BaseException | None, cls: type) -> bool:
    """``exc`` or an exception it chains (MONAI's config evaluation wraps errors in RuntimeError) is ``cls``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, cls):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def install_abort_hook(comm: Any | None = None) -> None:
    """Make an uncaught exception in any rank call ``comm.Abort(1)``, so ``mpiexec`` stops every rank
    instead of leaving the others waiting in a collective forever. :class:`SliceFailures` (raised after
    all collectives) exits normally. No-op without MPI or with one rank; idempotent.
    """
    if comm is None or comm.Get_size() == 1 or getattr(sys.excepthook, "_plimonai_abort", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb) -> None:
        previous(exc_type, exc, tb)  # the traceback first
        if not _caused_by(exc, SliceFailures):
            rank = comm.Get_rank()
            sys.stderr.write(f"plimonai: uncaught {exc_type.__name__} on rank {rank}: aborting the MPI job\n")
            sys.stderr.flush()
            sys.stdout.flush()
            comm.Abort(1)

    hook._plimonai_abort = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def agree_on_pending(comm: Any | None = None) -> Callable[[list[dict]], list[dict]]:
    """``SliceDataset(select=...)`` hook: every rank takes rank 0's pending list (identical lists even
    if a shared file system shows the ranks different states), after all ranks scanned (barrier)."""

    def select(pending: list[dict]) -> list[dict]:
        if comm is None or comm.Get_size() == 1:
            return pending
        pending = comm.bcast(pending, root=0)
        comm.Barrier()  # nobody writes a mask before every rank has checked which ones exist
        return pending

    return select


def row_gatherer(comm: Any | None = None, dispatch: str = "") -> Callable[[list[dict]], list[dict] | None]:
    """``SliceSummaryHandler(gather_fn=...)``: tag rows with the rank, gather them on rank 0 (``None``
    elsewhere) and print the number of slices each rank processed (``dispatch`` names the mode)."""

    def gather(rows: list[dict]) -> list[dict] | None:
        rank = rank_of(comm)
        for row in rows:
            row["rank"] = rank
        if comm is None or comm.Get_size() == 1:
            return rows
        idle_barrier(comm)  # ranks done early wait here without spinning
        parts = comm.gather(rows, root=0)
        if parts is None:
            return None
        mode = f" ({dispatch} dispatch)" if dispatch else ""
        print(f"plimonai: {len(parts)} ranks{mode}, slices per rank: {[len(p) for p in parts]}", flush=True)
        return [r for p in parts for r in p]

    return gather


def raise_if_failed(evaluator, comm: Any | None = None) -> None:
    """After the run: if any rank had a failed slice, rank 0 raises :class:`SliceFailures` naming them
    (so ``mpiexec``/``srun`` exit non-zero); the other ranks end normally. All collectives (the summary
    gather, this allgather and a barrier after rank 0's message) are done before anything raises."""
    if comm is None or comm.Get_size() == 1:
        from plimonai.handlers import raise_if_failed as _raise

        try:
            _raise(evaluator)
        except RuntimeError as e:
            raise SliceFailures(str(e)) from None
        return
    summary = getattr(evaluator.state, "summary", None)
    local = [r["slice"] for r in (summary.rows if summary is not None else []) if r["status"] == "failed"]
    failed = [name for part in comm.allgather(local) for name in part]
    if failed and comm.Get_rank() == 0:
        print(f"plimonai: {len(failed)} slice(s) FAILED: {', '.join(failed[:10])}", flush=True)
    comm.Barrier()  # rank 0 has written the summary and printed before any rank exits
    if failed and comm.Get_rank() == 0:
        where = f"{summary.output_dir / summary.filename}" if summary is not None else "summary.csv"
        raise SliceFailures(f"{len(failed)} slice(s) failed ({', '.join(failed[:10])}); reasons in {where}")
