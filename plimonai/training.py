"""Small helpers the training configs call (resume, fine-tuning: frozen modules, early stopping)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

__all__ = ["attach", "attach_early_stopping", "freeze", "latest_checkpoint", "load_weights", "report_rank",
           "trainable_parameters"]


def load_weights(path: str | os.PathLike, map_location="cpu") -> dict:
    """The network's state dict from ``path``: a plain state dict (``model.pt``) or a training checkpoint
    (``{"model": ..., "optimizer": ...}``), the two layouts MONAI's ``CheckpointLoader`` reads; loaded with
    ``weights_only=True`` onto ``map_location`` (CPU by default, so weights saved on a GPU open anywhere)."""
    import torch

    state = torch.load(path, map_location=map_location, weights_only=True)
    return state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state


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


def attach_early_stopping(handler, evaluator, trainer) -> None:
    """Attach MONAI's ``EarlyStopHandler`` to ``evaluator`` and let it stop ``trainer`` (done here, not in
    the handler's config, which would be a circular reference); ``None`` (disabled) is skipped."""
    if handler is not None:
        handler.set_trainer(trainer)
        handler.attach(evaluator)


class _KeepEval:
    """Forward pre-hook: put the named submodules in eval mode whenever the network runs in train mode
    (trainers call ``network.train()`` every iteration), so their batch-norm statistics stay frozen."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)

    def __call__(self, module, args) -> None:
        if module.training:
            for n in self.names:
                module.get_submodule(n).eval()


def freeze(network, modules: Sequence[str] = ("encoders",), freeze_bn_stats: bool = True):
    """Freeze the submodules of ``network`` named in ``modules`` (e.g. ``"encoders"`` of ``PLIUNet``):
    ``requires_grad=False`` on their parameters and, with ``freeze_bn_stats``, their batch norms kept
    in eval mode (running statistics unchanged, used in training too). Returns ``network``.

    Call before wrapping in DistributedDataParallel and before building the optimizer (see
    :func:`trainable_parameters`). Empty ``modules``: no change.
    """
    names = [str(m) for m in (modules or [])]
    for name in names:
        for p in network.get_submodule(name).parameters():
            p.requires_grad_(False)
    if names and freeze_bn_stats:
        network.register_forward_pre_hook(_KeepEval(names))
    return network


def trainable_parameters(network) -> list:
    """The parameters of ``network`` that still require gradients (for the optimizer)."""
    return [p for p in network.parameters() if p.requires_grad]


def report_rank(engine) -> str:
    """Print (and return) ``rank R/W: N iterations done`` for this DDP process."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    msg = f"rank {rank}/{world}: {engine.state.iteration} iterations done"
    print(msg, flush=True)
    return msg
