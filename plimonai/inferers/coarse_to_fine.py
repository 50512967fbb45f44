"""Coarse-to-fine inference for huge slices: a low-resolution pass decides where full resolution is needed.

The slice, downsampled to about LAP scale (its TIFF pyramid level, see
:class:`~plimonai.inferers.streaming.StreamingSliceInferer`), goes through the network with MONAI's
``SlidingWindowInferer``; its tissue margin ``logit_tissue - logit_background`` is :class:`CoarsePrediction`.
The *uncertain band* is every coarse pixel whose margin is below ``uncertain_logit`` in magnitude, on the
border of the predicted tissue, or on the border of the scanned (valid) area, dilated by ``border_px``
full-resolution pixels; pieces, holes and uncertain blobs too small to survive the post-processing's
area rules are left out (they are removed or filled whatever full resolution says). Only the full-resolution windows whose *core* (the part of the window nearer to
its centre than to any other window's, i.e. where its blending weight dominates) meets the band run;
every pixel no running window covers takes the bilinearly upsampled coarse margin. Far from borders
both passes agree, so the mask matches the full-resolution one closely at a fraction of the windows.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from scipy import ndimage

from plimonai.runtime import trim_heap
from plimonai.transforms.intensity import bilinear_weights
from plimonai.transforms.post import TissueMaskPostprocess, remove_small_components

__all__ = ["CoarsePrediction", "window_cores", "coarse_margin"]


def window_cores(starts: Sequence[int], roi: int, size: int) -> list[tuple[int, int]]:
    """Along one axis: for each window ``[s, s + roi)`` the pixels nearer to its centre than to any other
    window's (a partition of ``[0, size)``), as ``(begin, end)``."""
    centres = [s + roi / 2.0 for s in starts]
    cuts = [0] + [int(math.floor((a + b) / 2.0)) for a, b in zip(centres[:-1], centres[1:])] + [size]
    return list(zip(cuts[:-1], cuts[1:]))


def coarse_margin(
    image: torch.Tensor,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    roi_size: Sequence[int],
    sw_batch_size: int = 2,
    overlap: float = 0.125,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, int]:
    """The network's tissue margin on a (LAP-scale) image, with MONAI's sliding-window inferer.

    ``image`` (h, w) float32 attenuation -> ``((h, w) float32 margin, windows run)``.
    """
    count = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        count[0] += x.shape[0]
        out = predictor(x)
        trim_heap()  # freed activations back to the OS (see plimonai.runtime.trim_heap)
        return out

    inferer = SlidingWindowInferer(roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode,
                                   sigma_scale=sigma_scale, padding_mode="constant", cval=0.0)
    x = image.to(device or "cpu", torch.float32)[None, None]
    logits = inferer(x, counted)[0].float().cpu()
    margin = (logits[1] - logits[0]) if logits.shape[0] >= 2 else logits[0]
    return margin.numpy().astype(np.float32, copy=False), count[0]


def _edges(a: np.ndarray) -> np.ndarray:
    """(h, w) bool -> pixels with a 4-neighbour of the other value."""
    e = np.zeros(a.shape, bool)
    dy, dx = a[1:] != a[:-1], a[:, 1:] != a[:, :-1]
    e[1:] |= dy
    e[:-1] |= dy
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    return e


def _axis_weights(start: int, stop: int, scale: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source indices and weights of output pixels [start, stop) on an axis ``scale`` times finer
    than the ``n`` source pixels, with half-pixel centres (``F.interpolate(align_corners=False)``)."""
    return bilinear_weights((np.arange(start, stop) + 0.5) / scale - 0.5, n)


class CoarsePrediction:
    """The coarse pass of one slice: tissue margin and valid mask on the coarse grid, mapped to the slice.

    Args:
        margin: (h, w) float32 tissue margin ``logit_1 - logit_0`` of the coarse pass.
        valid: (h, w) bool scanned pixels of the coarse image.
        shape: (H, W) of the full-resolution slice.
    """

    def __init__(self, margin: np.ndarray, valid: np.ndarray, shape: tuple[int, int]) -> None:
        self.margin, self.valid = np.asarray(margin, np.float32), np.asarray(valid, bool)
        self.shape = (int(shape[0]), int(shape[1]))
        self.scale = (self.shape[0] / self.margin.shape[0], self.shape[1] / self.margin.shape[1])

    def upsample(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Bilinear margin at full-resolution pixels [y0:y1, x0:x1] -> (y1 - y0, x1 - x0) float32."""
        h, w = self.margin.shape
        ya, yb, wy = _axis_weights(y0, y1, self.scale[0], h)
        xa, xb, wx = _axis_weights(x0, x1, self.scale[1], w)
        c0, c1 = int(xa.min()), int(xb.max()) + 1
        m = self.margin[:, c0:c1]
        rows = m[ya] * (1 - wy)[:, None] + m[yb] * wy[:, None]
        return rows[:, xa - c0] * (1 - wx) + rows[:, xb - c0] * wx

    def valid_at(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Nearest coarse valid mask at full-resolution pixels [y0:y1, x0:x1]."""
        h, w = self.valid.shape
        ys = np.minimum(((np.arange(y0, y1) + 0.5) / self.scale[0]).astype(np.int64), h - 1)
        xs = np.minimum(((np.arange(x0, x1) + 0.5) / self.scale[1]).astype(np.int64), w - 1)
        return self.valid[np.ix_(ys, xs)]

    def uncertain(self, uncertain_logit: float, border_px: float, min_component_area: int = 0,
                  max_hole_area: int = 0) -> np.ndarray:
        """(h, w) bool coarse uncertain band (see the module docstring).

        ``min_component_area`` / ``max_hole_area`` (full-resolution pixels, the post-processing's rules): coarse
        tissue pieces and holes smaller than half of them, and uncertain blobs smaller than half of both, are
        ignored: the post-processing removes or fills them whatever full resolution would say.
        """
        px = self.scale[0] * self.scale[1]  # full-resolution pixels per coarse pixel
        mask = (self.margin > 0) & self.valid
        clean = TissueMaskPostprocess(int(min_component_area / px / 2), int(max_hole_area / px / 2)).with_count(
            mask.astype(np.uint8), self.valid)[0] > 0
        unc = np.abs(self.margin) < uncertain_logit
        small = int(min(min_component_area, max_hole_area) / px / 2)
        if small > 1 and unc.any():
            unc = remove_small_components(unc, small)
        band = unc | _edges(clean) | _edges(self.valid)
        r = int(math.ceil(border_px / min(self.scale))) + 1  # + 1: a coarse pixel's own extent
        return ndimage.maximum_filter(band, size=2 * r + 1) if band.any() else band

    def active_windows(self, ys: Sequence[int], xs: Sequence[int], roi: Sequence[int], uncertain_logit: float,
                       border_px: float, min_component_area: int = 0, max_hole_area: int = 0) -> np.ndarray:
        """(len(ys), len(xs)) bool: full-resolution windows whose core meets the uncertain band."""
        band = self.uncertain(uncertain_logit, border_px, min_component_area, max_hole_area)
        integral = np.pad(band.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        (sy, sx), (h, w) = self.scale, band.shape
        rows = [(min(h - 1, int(a / sy)), min(h, max(int(a / sy) + 1, math.ceil(b / sy))))
                for a, b in window_cores(ys, roi[0], self.shape[0])]
        cols = [(min(w - 1, int(a / sx)), min(w, max(int(a / sx) + 1, math.ceil(b / sx))))
                for a, b in window_cores(xs, roi[1], self.shape[1])]
        out = np.zeros((len(rows), len(cols)), bool)
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                out[i, j] = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0] > 0
        return out
