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
    network). ``(B, C, h, w) -> (B, out, h, w)``; ``flips`` lists spatial-dim tuples, e.g. ``[(2,), (3,)]``.

    Also counts how well the flipped predictions agree with the unflipped one (tissue = logit 1 >
    logit 0): :meth:`dice` is the Dice between them over every window seen (pixels in overlapping
    windows count once per window), 1.0 when no window showed tissue.
    """

    def __init__(self, network: Callable, flips: Sequence[Sequence[int]] = ((2,), (3,))):
        self.network, self.flips = network, [tuple(f) for f in flips]
        self._inter: Any = 0
        self._total: Any = 0

    @staticmethod
    def _tissue(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 1] > logits[:, 0] if logits.shape[1] >= 2 else logits[:, 0] > 0

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.network(x, *args, **kwargs)
        ref = self._tissue(out)
        n_ref = ref.sum()
        for dims in self.flips:
            flipped = torch.flip(self.network(torch.flip(x, dims), *args, **kwargs), dims)
            m = self._tissue(flipped)
            self._inter = self._inter + (ref & m).sum()  # device tensors: no sync per window
            self._total = self._total + n_ref + m.sum()
            out = out + flipped
        return out / (1 + len(self.flips))

    def dice(self) -> float:
        """Dice between the unflipped and the flipped tissue masks, pooled over flips and windows."""
        total = float(self._total)
        return 2.0 * float(self._inter) / total if total > 0 else 1.0


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

    ``last_counts`` holds ``(windows_run, windows_skipped)`` of the latest call when skipping is on;
    ``last_tta_dice`` the agreement of the flipped predictions (:meth:`FlipTTAPredictor.dice`) of the
    latest call with ``tta`` on (``None`` otherwise), read by :class:`plimonai.qc.SliceConfidenced`.
    """

    def __init__(self, *args: Any, tta: bool = False, skip_glass_below: float | None = None, glass_pool: int = 8,
                 out_channels: int = 2, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tta, self.skip_glass_below = tta, skip_glass_below
        self.glass_pool, self.out_channels = glass_pool, out_channels
        self.last_counts = (0, 0)
        self.last_tta_dice: float | None = None

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any):
        tta = FlipTTAPredictor(network) if self.tta else None
        predictor: Callable = tta if tta is not None else network
        if self.skip_glass_below is not None:
            predictor = skipper = GlassSkipPredictor(predictor, self.skip_glass_below, self.glass_pool, self.out_channels)
        out = super().__call__(inputs, predictor, *args, **kwargs)
        if self.skip_glass_below is not None:
            self.last_counts = (skipper.windows_run, skipper.windows_skipped)
        self.last_tta_dice = tta.dice() if tta is not None else None
        return out
