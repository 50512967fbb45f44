"""Process-level speed settings: glibc allocator tuning and thread counts.

Eager PyTorch on CPU allocates activations larger than glibc's mmap threshold with mmap and
returns them to the OS on free, so every layer of every window faults its memory in again.
Raising the mmap and trim thresholds keeps those blocks in the heap (measured 2-2.7x faster on
the 2-core development machine; see bundle/docs/bench_training.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["tune_allocator", "trim_heap", "peak_rss_mb", "available_cores", "configure_threads", "setup_runtime", "accelerator_settings", "window_bytes"]

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TUNED: bool | None = None


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 4 << 30) -> bool:
    """Tell glibc's malloc to keep large blocks (``mallopt`` via ctypes). Idempotent.

    Returns True when applied, False where glibc is absent (macOS, musl, jemalloc preloaded...).
    Set ``PLIMONAI_ALLOCATOR=default`` to skip.
    """
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = False
    if os.environ.get("PLIMONAI_ALLOCATOR", "").lower() in ("default", "off", "0"):
        return False
    if "jemalloc" in os.environ.get("LD_PRELOAD", "") or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return False  # another allocator is preloaded: leave it alone
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt caps M_MMAP_THRESHOLD at HEAP_MAX (32 MiB on 64-bit); ask for the max it accepts
    ok_mmap = bool(mallopt(_M_MMAP_THRESHOLD, min(mmap_threshold, 2**31 - 1))) or bool(
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    )
    ok_trim = bool(mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)))
    _TUNED = ok_mmap and ok_trim
    return _TUNED


def peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space, MB (``VmHWM``).

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not that on Linux: it keeps the parent's high-water mark across
    fork + exec, so a child started from a 1.7 GB pytest process reports >= 1.7 GB whatever it does.
    Falls back to ``ru_maxrss`` where ``/proc`` is absent.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_MALLOC_TRIM = None


def trim_heap() -> bool:
    """Hand freed heap pages back to the OS now (glibc ``malloc_trim(0)``; False where there is none).

    With :func:`tune_allocator`'s thresholds freed blocks stay in the heap; memory-bound work that frees
    large buffers between small long-lived objects (streamed PM slices) calls this after each window
    batch and band, or the fragmented heap keeps growing.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    return bool(_MALLOC_TRIM and _MALLOC_TRIM(0) is not None)


def available_cores() -> int:
    """Cores for this process's intra-op threads.

    ``PLIMONAI_NUM_THREADS`` if set; else the affinity mask, capped by ``SLURM_CPUS_PER_TASK``, and
    shared among the processes a launcher started on the same cores (torchrun ``LOCAL_WORLD_SIZE``,
    MPICH/Open MPI local rank counts). torch's own ``OMP_NUM_THREADS=1`` default under torchrun is
    deliberately ignored: it leaves CPU nodes idle.
    """
    explicit = os.environ.get("PLIMONAI_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit():
        cores = min(cores, int(slurm))
    for var in ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        local = os.environ.get(var, "")
        if local.isdigit() and int(local) > 1:
            return max(1, cores // int(local))
    return max(1, cores)


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch intra-op threads (default: :func:`available_cores`) and return the count."""
    import torch

    n = int(num_threads) if num_threads else available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def setup_runtime(num_threads: int | None = None, allocator: bool = True) -> dict:
    """Apply allocator and thread settings; returns what was applied (for logs and summaries)."""
    tuned = tune_allocator() if allocator else False
    threads = configure_threads(num_threads)
    info = {"allocator_tuned": tuned, "threads": threads}
    logger.info("plimonai runtime: %s", info)
    return info


def window_bytes(roi_size, channels, bytes_per_value: int = 2, factor: float = 6.0) -> int:
    """Rough peak activation bytes of one inference window of a U-Net with ``channels`` per level
    (each level's feature maps at 1 / 4**level of the pixels, ``factor`` live copies: convs, skips, concat)."""
    px = int(roi_size[0]) * int(roi_size[1])
    return int(factor * bytes_per_value * sum(c * px / 4**lvl for lvl, c in enumerate(channels)))


def accelerator_settings(device, roi_size=(1024, 1024), channels=(8, 16, 32, 64, 128), max_batch: int = 32,
                         memory_share: float = 0.5) -> dict:
    """GPU inference settings for ``device``; CPU gets the neutral values (and ``sw_batch_size`` None).

    CUDA: autocast in bf16 where the card supports it, else fp16; cuDNN autotuning on; pinned host
    memory and non-blocking copies; channels_last; the window batch sized so that ``memory_share`` of
    the free GPU memory holds its activations (:func:`window_bytes`), at most ``max_batch``.
    """
    import torch

    d = torch.device(device)
    if d.type != "cuda" or not torch.cuda.is_available():
        return {"amp": False, "amp_kwargs": {}, "channels_last": False, "pin_memory": False, "non_blocking": False,
                "sw_batch_size": None}
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    torch.backends.cudnn.benchmark = True  # fixed window size: autotuned kernels pay back at once
    free, _ = torch.cuda.mem_get_info(d)
    per = window_bytes(roi_size, channels, bytes_per_value=2)
    batch = int(max(1, min(max_batch, memory_share * free // max(per, 1))))
    info = {"amp": True, "amp_kwargs": {"dtype": dtype}, "channels_last": True, "pin_memory": True,
            "non_blocking": True, "sw_batch_size": batch}
    logger.info("plimonai GPU settings: %s", info)
    return info
