"""Unscanned borders: zero-padded bands along image edges (or a whole frame) and the dark edge of the
sample holder next to them.

Real 3D-PLI slices are padded with exact zeros where the scan did not cover the canvas. Here a slice
gets, with the requested probability, either 1-2 bands along random sides (1-10 % of the image
dimension) or a frame on all four sides (0.5-5 %). Pixels in a band are exactly 0 in every output
(counts, NTransmittance, retardation) and 0 in the label: nothing was imaged there, so it is never
tissue, even where a band cuts through the section. A band is narrowed (and dropped after a few
tries) while it would remove more than 30 % of the tissue. Half of the bands get a dark holder edge
(OD 0.4-2, 3-15 LAP px) along their inner side; it is placed only where it stays off the tissue, so
the label stays exact. Everything is drawn from its own random stream, so slices without the option
(the default) are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fields import child_rng
from .geometry import SectionGeometry

__all__ = ["Unscanned", "draw_unscanned"]

_STREAM = 8  # child_rng(seed, 8)


@dataclass
class Unscanned:
    """Zero bands ``rects`` (K, 4) rows y0, y1, x0, x1 (half-open, output px) and holder edges
    ``strips`` (M, 5) rows side (0 top, 1 bottom, 2 left, 3 right), boundary (px), width, od, soft."""

    rects: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    strips: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))

    def summary(self) -> dict:
        return {"bands": self.rects.tolist(), "holder_edges": len(self.strips)}

    def zero_window(self, arr: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """Set the unscanned pixels of ``arr`` (a window at ``(y0, x0)`` of the slice) to 0, in place."""
        h, w = arr.shape[-2:]
        for ya, yb, xa, xb in self.rects:
            ya, yb = max(int(ya), y0), min(int(yb), y0 + h)
            xa, xb = max(int(xa), x0), min(int(xb), x0 + w)
            if ya < yb and xa < xb:
                arr[..., ya - y0 : yb - y0, xa - x0 : xb - x0] = 0
        return arr

    def od_window(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        """Optical density (h, w) float32 of the holder edges in the window, or None."""
        out = None
        for side, b, wid, od, soft in self.strips:
            side = int(side)
            coords = np.arange(y0, y0 + h, dtype=np.float32) if side < 2 else np.arange(x0, x0 + w, dtype=np.float32)
            d = coords - np.float32(b) if side in (0, 2) else np.float32(b) - 1 - coords  # px into the scanned area
            prof = np.float32(od) * np.clip((np.float32(wid) - d) / np.float32(soft), 0, 1)
            if not np.any(prof > 0):
                continue
            if out is None:
                out = np.zeros((h, w), dtype=np.float32)
            out += prof[:, None] if side < 2 else prof[None, :]
        return out


def draw_unscanned(seed: int, geom: SectionGeometry, unit: float, probability: float) -> Unscanned | None:
    """Unscanned bands of slice ``seed`` (present with ``probability``); None when it has none."""
    if probability <= 0:
        return None
    rng = child_rng(seed, _STREAM)
    if rng.random() >= probability:
        return None
    h, w = geom.shape
    s = geom.scale
    tissue = geom.phi > 0
    total = max(int(tissue.sum()), 1)
    if rng.random() < 0.4:  # a frame on all sides
        sides = [0, 1, 2, 3]
        fracs = rng.uniform(0.005, 0.05, 4)
    else:
        sides = sorted(rng.choice(4, size=int(rng.integers(1, 3)), replace=False).tolist())
        fracs = rng.uniform(0.01, 0.10, len(sides))
    rects, strips = [], []
    for side, frac in zip(sides, fracs):
        dim = h if side < 2 else w
        width = max(1, int(round(frac * dim)))
        for _try in range(6):
            b = width if side in (0, 2) else dim - width  # band [0, b) or [b, dim)
            nb = int(np.ceil(b / s)) if side in (0, 2) else int(b // s)
            cut = (tissue[:nb] if side == 0 else tissue[nb:] if side == 1 else
                   tissue[:, :nb] if side == 2 else tissue[:, nb:])
            if cut.sum() <= 0.3 * total:
                break
            width //= 2
        else:
            continue
        if width < 1:
            continue
        rects.append((0, width, 0, w) if side == 0 else (h - width, h, 0, w) if side == 1 else
                     (0, h, 0, width) if side == 2 else (0, h, w - width, w))
        if rng.random() < 0.5:  # the dark edge of the sample holder along the band
            sw = max(1.0, unit * rng.uniform(3, 15))
            od = rng.uniform(0.4, 2.0)
            soft = max(1.0, 0.3 * sw)
            reach = sw + soft + 2 * s + unit * 10  # keep the edge off the tissue
            lo = int(np.floor((b - reach) / s)) if side in (1, 3) else int(np.floor(b / s))
            hi = int(np.ceil((b + reach) / s)) + 1 if side in (0, 2) else int(np.ceil(b / s)) + 1
            lo, hi = max(lo, 0), max(hi, 0)
            near = geom.depth[lo:hi] if side < 2 else geom.depth[:, lo:hi]
            if near.size == 0 or float(near.max()) < -unit * 5:
                strips.append((side, float(b), float(sw), float(od), float(soft)))
    if not rects:
        return None
    return Unscanned(rects=np.asarray(rects, dtype=np.int64).reshape(-1, 4),
                     strips=np.asarray(strips, dtype=np.float64).reshape(-1, 5))
