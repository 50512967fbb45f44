"""PLI-specific augmentations MONAI lacks: uneven illumination of the glass and slide artifacts
painted on the background. Inputs are attenuation images (glass ~ 0, tissue > 0; see
``intensity.py``); shapes ``(C, H, W)`` float, labels ``(1, H, W)`` with 1 = tissue."""

from __future__ import annotations

from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage as ndi

__all__ = ["RandIlluminationd", "RandBackgroundArtifactsd"]


def _smooth_field(rng: np.random.RandomState, h: int, w: int, strength: float) -> np.ndarray:
    """Multiplicative transmittance field ~1: linear gradient plus radial vignetting, (H, W) float32."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij")
    gy, gx = rng.uniform(-1, 1, 2) * strength * 0.5
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    vig = rng.uniform(0, strength) * ((yy - cy) ** 2 + (xx - cx) ** 2) / 2
    return (1.0 + gy * yy + gx * xx - vig).astype(np.float32)


class RandIlluminationd(RandomizableTransform, MapTransform):
    """Uneven illumination and vignetting: transmittance ``T' = v T``, i.e. attenuation
    ``a' = 1 - v (1 - a)`` with a smooth field ``v`` (MONAI's bias field would scale the attenuation,
    leaving the glass untouched, which is not what a lamp does)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.3, strength: float = 0.25) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.strength = strength

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            v = torch.from_numpy(_smooth_field(self.R, img.shape[-2], img.shape[-1], self.strength))
            img = img.clone()
            img[0] = 1.0 - v * (1.0 - img[0])
            d[key] = img
        return d


class RandBackgroundArtifactsd(RandomizableTransform, MapTransform):
    """Paint dust specks, air-bubble rims, ink strokes and slide-edge bands on the background only (label 0,
    at least ``margin`` px from tissue); the label is unchanged, so the network learns they are not tissue.

    A slide edge is a straight, nearly untextured dark band entering from a crop side (``edge_prob`` per
    call): the shipped model's most expensive false positive on the synthetic validation slices.
    An out-of-focus clump (``clump_prob`` per call, up to ``max_clumps``) is a soft cluster of Gaussian blobs
    tens of px across, as dust or debris off the focal plane looks: beside a rodent section of a few hundred
    px the shipped model took such clumps for tissue (``bundle/docs/evaluation_classes.md``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        prob: float = 0.5,
        max_dust: int = 40,
        max_bubbles: int = 3,
        max_strokes: int = 2,
        margin: int = 4,
        edge_prob: float = 0.0,
        clump_prob: float = 0.0,
        max_clumps: int = 2,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.max_dust, self.max_bubbles, self.max_strokes, self.margin = max_dust, max_bubbles, max_strokes, margin
        self.edge_prob = edge_prob
        self.clump_prob, self.max_clumps = clump_prob, max_clumps

    def _paint(self, h: int, w: int) -> np.ndarray:
        r = self.R
        yy, xx = np.ogrid[:h, :w]
        art = np.zeros((h, w), np.float32)
        for _ in range(r.randint(0, self.max_dust + 1)):
            cy, cx, rad = r.randint(h), r.randint(w), r.uniform(0.7, 6.0)
            y0, y1, x0, x1 = max(0, int(cy - rad - 2)), min(h, int(cy + rad + 3)), max(0, int(cx - rad - 2)), min(w, int(cx + rad + 3))
            dist = np.sqrt((yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2)
            art[y0:y1, x0:x1] = np.maximum(art[y0:y1, x0:x1], r.uniform(0.1, 0.7) * (dist <= rad))
        for _ in range(r.randint(0, self.max_bubbles + 1)):
            cy, cx, rad, thick = r.randint(h), r.randint(w), r.uniform(10, 120), r.uniform(1, 4)
            dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            art = np.maximum(art, r.uniform(0.1, 0.5) * (np.abs(dist - rad) <= thick))
        for _ in range(r.randint(0, self.max_strokes + 1)):
            pts = np.cumsum(r.normal(0, 8, (r.randint(20, 120), 2)), axis=0) + [r.randint(h), r.randint(w)]
            stroke = np.zeros((h, w), bool)
            ij = np.round(pts).astype(int)
            ok = (ij[:, 0] >= 0) & (ij[:, 0] < h) & (ij[:, 1] >= 0) & (ij[:, 1] < w)
            stroke[ij[ok, 0], ij[ok, 1]] = True
            stroke = ndi.binary_dilation(stroke, iterations=r.randint(1, 5))
            art = np.maximum(art, r.uniform(0.3, 0.9) * stroke)
        if r.uniform() < self.edge_prob:  # distance from a line near one crop side, soft 1-3 px ramp
            theta = r.uniform(-0.15, 0.15) + r.randint(4) * np.pi / 2
            ny, nx = np.sin(theta), np.cos(theta)
            depth = r.uniform(0.03, 0.3) * (h if abs(ny) > abs(nx) else w)
            cy, cx = (h - 1) / 2, (w - 1) / 2
            reach = abs(ny) * cy + abs(nx) * cx  # distance from the centre to the crop side along the normal
            dist = (yy - cy) * ny + (xx - cx) * nx - (reach - depth)
            band = np.clip(dist / r.uniform(1.0, 3.0) + 0.5, 0, 1).astype(np.float32)
            art = np.maximum(art, r.uniform(0.1, 0.6) * band)
        if self.clump_prob > 0 and r.uniform() < self.clump_prob:  # no draws when off: seeded streams unchanged
            for _ in range(r.randint(1, self.max_clumps + 1)):
                art = np.maximum(art, self._clump(h, w))
        return art

    def _clump(self, h: int, w: int) -> np.ndarray:
        """(H, W) attenuation of 1-6 overlapping Gaussian blobs (sigma 3-25 px) around a random centre."""
        r = self.R
        out = np.zeros((h, w), np.float32)
        cy, cx, spread, amp = r.randint(h), r.randint(w), r.uniform(3, 30), r.uniform(0.03, 0.5)
        for _ in range(r.randint(1, 7)):
            sy, sx = r.uniform(3, 25) * r.uniform(0.6, 1.0, 2)
            by, bx = cy + r.normal(0, spread), cx + r.normal(0, spread)
            y0, y1 = max(0, int(by - 3 * sy)), min(h, int(by + 3 * sy) + 1)
            x0, x1 = max(0, int(bx - 3 * sx)), min(w, int(bx + 3 * sx) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
            blob = amp * r.uniform(0.4, 1.0) * np.exp(-0.5 * (((yy - by) / sy) ** 2 + ((xx - bx) / sx) ** 2))
            out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], blob.astype(np.float32))
        return out

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        lab = d[self.label_key]
        lab_np = (lab[0].detach().cpu().numpy() if isinstance(lab, torch.Tensor) else np.asarray(lab[0])) == 1
        h, w = lab_np.shape
        allowed = ~ndi.binary_dilation(lab_np, iterations=self.margin) if lab_np.any() else np.ones((h, w), bool)
        art = torch.from_numpy(self._paint(h, w) * allowed)
        for key in self.key_iterator(d):
            img = d[key].clone()
            img[0] = torch.maximum(img[0], art.to(img.dtype))
            d[key] = img
        return d
