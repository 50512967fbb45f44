"""Ignite handlers that keep a fine-tuned network close to the model it starts from.

MONAI has no L2-SP regulariser or batch-norm statistics freeze for its trainers; both are one-liners around
``engine.network`` once the trainer runs, so they are handlers (no change to the loss or the network config).
"""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events
from torch import nn

__all__ = ["AnchorToInit", "KeepBatchNormStats"]

logger = logging.getLogger(__name__)


class AnchorToInit:
    """L2-SP, decoupled: after every optimiser step pull each parameter towards its starting value,
    ``p -= min(1, lr * strength) * (p - p0)`` (``lr``: the optimiser's current rate, as AdamW decays towards 0).

    Args:
        path: weights to anchor to (the fine-tuning's ``init_ckpt``, so a resumed run keeps the same anchor);
            empty: the network's weights at its first iteration.
        strength: pull per unit learning rate; 0 (default) turns the handler off. With Adam-like steps of about
            ``lr`` per iteration, each parameter settles within about ``1 / strength`` of its anchor.
    """

    def __init__(self, path: str = "", strength: float = 0.0) -> None:
        self.path, self.strength = str(path or ""), float(strength)
        self.anchor: list[torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        if self.strength > 0:
            engine.add_event_handler(Events.ITERATION_STARTED, self._snapshot)  # after every STARTED loader
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._pull)

    def _snapshot(self, engine: Engine) -> None:
        if self.anchor is not None:
            return
        params = list(_unwrap(engine.network).named_parameters())
        if self.path:
            from plimonai.training import load_weights

            ref = load_weights(self.path)
            missing = [n for n, _ in params if n not in ref]
            if missing:
                raise KeyError(f"AnchorToInit: {self.path} lacks {missing[:3]}{'...' if len(missing) > 3 else ''}")
            self.anchor = [ref[n].to(p.device, p.dtype).clone() for n, p in params]
        else:
            self.anchor = [p.detach().clone() for _, p in params]
        logger.info("L2-SP anchor set (%s), strength %g", self.path or "weights at the first iteration", self.strength)

    @torch.no_grad()
    def _pull(self, engine: Engine) -> None:
        k = min(1.0, float(engine.optimizer.param_groups[0]["lr"]) * self.strength)  # > 1 would overshoot
        for p, a in zip(_unwrap(engine.network).parameters(), self.anchor or []):
            p.sub_((p - a) * k)


class KeepBatchNormStats:
    """Keep every batch norm of ``engine.network`` in eval mode during training (``enabled``): its running
    statistics stay those of the starting model and normalise the training batches too; affine weights
    still train. Trainers call ``network.train()`` every iteration, so a forward pre-hook re-applies it
    (:func:`plimonai.training.freeze`'s)."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self._hook)

    def _hook(self, engine: Engine) -> None:
        from plimonai.training import _KeepEval  # the pre-hook freeze() uses for frozen submodules

        net = _unwrap(engine.network)  # DDP's forward calls it, so its pre-hook runs under DDP too
        names = [n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        net.register_forward_pre_hook(_KeepEval(names))
        logger.info("batch-norm statistics frozen (%d layers)", len(names))


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
