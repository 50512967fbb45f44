"""The 3D-PLI U-Net: the seed's 2D U-Net adaptation as a MONAI-style ``nn.Module``."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBlock", "EncoderBlock", "DecoderBlock", "PLIUNet"]


class ConvBlock(nn.Sequential):
    """2 x [conv 3x3 (padding 1), batch norm, ReLU]. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class EncoderBlock(nn.Module):
    """Conv block then 2x2 max pool. Returns ``(skip (B, C_out, H, W), pooled (B, C_out, H/2, W/2))``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.conv(x)
        return skip, self.pool(skip)


class DecoderBlock(nn.Module):
    """2x2 transposed conv, concat skip, batch norm, ReLU, conv block.

    ``(B, C_in, H/2, W/2), skip (B, C_skip, H, W) -> (B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.norm = nn.BatchNorm2d(out_channels + skip_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), skip], dim=1)
        return self.conv(self.act(self.norm(x)))


class PLIUNet(nn.Module):
    """U-Net for 2D tissue/background segmentation of 3D-PLI sections.

    ``channels`` lists the widths from the first encoder block to the bottleneck, so
    ``len(channels) - 1`` is the depth (number of poolings). Input of any H, W is
    reflect/replicate-padded to a multiple of ``2 ** depth`` and the output cropped back.

    Args:
        in_channels: input channels (1: transmittance; 2: + retardation).
        out_channels: output channels (2: background / tissue logits).
        channels: widths per level, e.g. ``(16, 32, 64, 128, 256)``.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` (float logits).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.channels = tuple(int(c) for c in channels)
        self.depth = len(self.channels) - 1
        self.encoders = nn.ModuleList()
        prev = in_channels
        for c in self.channels[:-1]:
            self.encoders.append(EncoderBlock(prev, c))
            prev = c
        self.bottleneck = ConvBlock(prev, self.channels[-1])
        self.decoders = nn.ModuleList()
        prev = self.channels[-1]
        for c in reversed(self.channels[:-1]):
            self.decoders.append(DecoderBlock(prev, c, c))
            prev = c
        self.head = nn.Conv2d(prev, out_channels, 1)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes that need no internal padding are multiples of this."""
        return int(2**self.depth)  # int(): TorchScript types int ** int as float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = []
        for enc in self.encoders:
            s, x = enc(x)
            skips.append(s)
        x = self.bottleneck(x)
        for i, dec in enumerate(self.decoders):  # indexing, not reversed(): TorchScript-compatible
            x = dec(x, skips[len(skips) - 1 - i])
        x = self.head(x)
        return x[..., :h, :w] if (ph or pw) else x
