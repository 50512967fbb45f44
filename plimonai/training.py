"""Small helpers the training configs call (resume)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["attach", "latest_checkpoint", "report_rank"]


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> str | None:
    """Newest complete ``*.pt`` in ``checkpoint_dir`` (by modification time), or None.

    Ignite writes checkpoints atomically (temp file + move), so any ``.pt`` present is whole.
    """
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    cands = [p for p in d.glob("*.pt") if p.is_file() and not p.name.startswith(".")]
    return str(max(cands, key=lambda p: p.stat().st_mtime)) if cands else None


def attach(engine, *handlers) -> None:
    """Attach handlers that reference the engine itself (resume/checkpoint: they cannot be in
    ``train_handlers`` without a circular config reference); ``None`` (disabled) entries are skipped."""
    for h in handlers:
        if h is not None:
            h.attach(engine)


def report_rank(engine) -> str:
    """Print (and return) ``rank R/W: N iterations done`` for this DDP process."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    msg = f"rank {rank}/{world}: {engine.state.iteration} iterations done"
    print(msg, flush=True)
    return msg
