"""Conv + batch-norm folding for inference (one op less per layer; outputs unchanged in eval mode)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fuse_conv_bn"]


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` inside an ``nn.Sequential`` into
    that conv, in place (``torch.fx`` fusion cannot trace the U-Net's size-dependent padding).
    Puts the model in eval mode; returns it."""
    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model
