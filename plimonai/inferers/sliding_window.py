"""MONAI's sliding-window inference plus two options per window: flip test-time augmentation, and
no network pass on windows of plain glass."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer

__all__ = ["FlipTTAPredictor", "GlassSkipPredictor", "PLISlidingWindowInferer"]


class FlipTTAPredictor:
    """Mean of the network's logits over the identity and the given flips (each undone after the
    network). ``(B, C, h, w) -> (B, out, h, w)``; ``flips`` lists spatial-dim tuples, e.g. ``[(2,), (3,)]``."""

    def __init__(self, network: Callable, flips: Sequence[Sequence[int]] = ((2,), (3,))):
        self.network, self.flips = network, [tuple(f) for f in flips]

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.network(x, *args, **kwargs)
        for dims in self.flips:
            out = out + torch.flip(self.network(torch.flip(x, dims), *args, **kwargs), dims)
        return out / (1 + len(self.flips))


class GlassSkipPredictor:
    """Windows whose mean-pooled attenuation never exceeds ``threshold`` (plain glass: no tissue, no
    artifact) get constant background logits instead of a network pass. Counts ``windows_run`` and
    ``windows_skipped``. ``(B, C, h, w)`` attenuation (channel 0) -> ``(B, out_channels, h, w)``."""

    def __init__(self, network: Callable, threshold: float, pool: int = 8, out_channels: int = 2, logit: float = 20.0):
        self.network, self.threshold, self.pool = network, threshold, pool
        self.out_channels, self.logit = out_channels, logit
        self.windows_run = self.windows_skipped = 0

    def is_glass(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) bool: window b is plain glass."""
        k = max(1, min(self.pool, x.shape[-2], x.shape[-1]))
        pooled = F.avg_pool2d(x[:, :1].float(), k, ceil_mode=True)
        return pooled.amax(dim=(1, 2, 3)) < self.threshold

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        glass = self.is_glass(x)
        n_glass = int(glass.sum())
        self.windows_skipped += n_glass
        self.windows_run += x.shape[0] - n_glass
        if n_glass == 0:
            return self.network(x, *args, **kwargs)
        out = x.new_zeros((x.shape[0], self.out_channels, *x.shape[2:]))
        out[glass, 0] = self.logit  # background
        if n_glass < x.shape[0]:
            out[~glass] = self.network(x[~glass], *args, **kwargs).to(out.dtype)
        return out


class PLISlidingWindowInferer(SlidingWindowInferer):
    """``SlidingWindowInferer`` (same arguments) with per-window options MONAI lacks:

    - ``tta``: average over horizontal and vertical flips (nnU-Net-style mirroring), 3x the compute;
    - ``skip_glass_below``: threshold of :class:`GlassSkipPredictor` (``None``: every window runs).

    ``last_counts`` holds ``(windows_run, windows_skipped)`` of the latest call when skipping is on.
    """

    def __init__(self, *args: Any, tta: bool = False, skip_glass_below: float | None = None, glass_pool: int = 8,
                 out_channels: int = 2, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tta, self.skip_glass_below = tta, skip_glass_below
        self.glass_pool, self.out_channels = glass_pool, out_channels
        self.last_counts = (0, 0)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):
        predictor: Callable = FlipTTAPredictor(network) if self.tta else network
        if self.skip_glass_below is not None:
            predictor = skipper = GlassSkipPredictor(predictor, self.skip_glass_below, self.glass_pool, self.out_channels)
        out = super().__call__(inputs, predictor, *args, **kwargs)
        if self.skip_glass_below is not None:
            self.last_counts = (skipper.windows_run, skipper.windows_skipped)
        return out
