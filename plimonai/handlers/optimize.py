"""Ignite handler that prepares the loaded network for fast inference."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from torch import nn

from plimonai.networks.fusion import fuse_conv_bn

__all__ = ["FuseConvBN"]

logger = logging.getLogger(__name__)


class FuseConvBN:
    """At ``STARTED`` (attach it after ``CheckpointLoader``, so weights are loaded first) fold
    conv + batch norm pairs of ``engine.network`` for inference. ``enabled=False`` makes it a no-op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        net = getattr(engine, "network", None)
        if self.enabled and isinstance(net, nn.Module):
            fuse_conv_bn(net.module if hasattr(net, "module") else net)
            logger.info("conv + batch norm folded for inference")
