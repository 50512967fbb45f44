"""Conv + batch-norm folding for inference (one op less per layer; outputs unchanged in eval mode)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fuse_conv_bn", "split_decoders", "SplitDecoder"]


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


class SplitDecoder(nn.Module):
    """Inference form of :class:`~plimonai.networks.unet.DecoderBlock` without the concatenation.

    ``conv(relu(bn(cat(up(x), skip))))`` equals ``conv_up(relu(up'(x))) + conv_skip(relu(bn_skip(skip)))``, with the
    batch norm's transposed-conv half folded into ``up'`` and the first conv split by input channels. Same outputs
    (up to float rounding); ONNX Runtime then fuses the sum into the second conv instead of copying both inputs
    into a concatenated tensor (the concat, BN and ReLU on it took ~17 % of a window's operator time).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        up, bn, convs = block.up, block.norm, block.conv
        c_up = up.out_channels
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        self.up = nn.ConvTranspose2d(up.in_channels, c_up, up.kernel_size, stride=up.stride)
        with torch.no_grad():
            self.up.weight.copy_(up.weight * scale[:c_up].view(1, -1, 1, 1))
            b = up.bias if up.bias is not None else torch.zeros(c_up)
            self.up.bias.copy_(b * scale[:c_up] + shift[:c_up])
        c_skip = bn.num_features - c_up
        self.skip_norm = nn.BatchNorm2d(c_skip).eval()
        with torch.no_grad():
            self.skip_norm.running_mean.copy_(bn.running_mean[c_up:])
            self.skip_norm.running_var.copy_(bn.running_var[c_up:])
            self.skip_norm.weight.copy_(bn.weight[c_up:])
            self.skip_norm.bias.copy_(bn.bias[c_up:])
        self.skip_norm.eps = bn.eps
        first = convs[0]
        self.conv_up = nn.Conv2d(c_up, first.out_channels, first.kernel_size, padding=first.padding, bias=True)
        self.conv_skip = nn.Conv2d(c_skip, first.out_channels, first.kernel_size, padding=first.padding, bias=False)
        with torch.no_grad():
            self.conv_up.weight.copy_(first.weight[:, :c_up])
            self.conv_skip.weight.copy_(first.weight[:, c_up:])
            self.conv_up.bias.copy_(first.bias if first.bias is not None else torch.zeros(first.out_channels))
        self.rest = nn.Sequential(*list(convs)[1:])
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = self.conv_up(self.act(self.up(x))) + self.conv_skip(self.act(self.skip_norm(skip)))
        return self.rest(y)


def split_decoders(model: nn.Module) -> nn.Module:
    """Replace every decoder block of a PLIUNet (conv + BN fused by :func:`fuse_conv_bn` or not) by a
    :class:`SplitDecoder`, in place; returns the model. For inference only (eval mode)."""
    from .unet import DecoderBlock

    model.eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DecoderBlock):
                setattr(parent, name, SplitDecoder(child).eval())
    return model
