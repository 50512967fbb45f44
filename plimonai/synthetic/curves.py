"""Thick random curves (sulci, tears, handwriting, lint) as signed distance fields on a coarse grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = ["CurveSet", "random_walk", "curve_field"]


@dataclass
class CurveSet:
    """Densely sampled curves: points (y, x) in output px, unit tangents, half widths, values.

    ``h`` is the half length of the segment each sample stands for (0 for isolated dots).
    ``val`` is an attribute (e.g. optical density) carried to the nearest grid nodes.
    """

    p: list = field(default_factory=list)
    t: list = field(default_factory=list)
    r: list = field(default_factory=list)
    h: list = field(default_factory=list)
    val: list = field(default_factory=list)

    def add(self, pts: np.ndarray, radius: np.ndarray | float, value: float = 1.0, dots: bool = False) -> None:
        """Add one polyline (N, 2) with per-point (or scalar) half width; ``dots`` = isolated discs."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        n = len(pts)
        if n == 0:
            return
        if dots or n == 1:
            tan = np.tile([0.0, 1.0], (n, 1))
            half = np.zeros(n)
        else:
            tan = np.gradient(pts, axis=0)
            tan /= np.maximum(np.hypot(tan[:, 0], tan[:, 1]), 1e-9)[:, None]
            seg = np.hypot(*np.diff(pts, axis=0).T)
            half = np.full(n, 0.75 * float(np.max(seg)))
        self.p.append(pts)
        self.t.append(tan)
        self.r.append(np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,)).copy())
        self.h.append(half)
        self.val.append(np.full(n, float(value)))

    def __len__(self) -> int:
        return int(sum(len(p) for p in self.p))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """Concatenated (p, t, r, h, val)."""
        return tuple(np.concatenate(a) for a in (self.p, self.t, self.r, self.h, self.val))


def random_walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    step: float,
    turn: float,
    corr: float,
    jitter: float = 0.0,
) -> np.ndarray:
    """Smoothly bending path (N, 2) of (y, x) points from ``start``; ``heading`` in radians (0 = +x).

    ``turn``: typical heading change (rad) over ``corr`` px; ``jitter``: white heading noise (rad per step).
    """
    n = max(2, int(np.ceil(length / step)) + 1)
    k = ndi.gaussian_filter1d(rng.standard_normal(n), sigma=max(1.0, corr / step), mode="nearest")
    k /= max(float(k.std()), 1e-9)
    ang = heading + np.cumsum(k) * (turn * step / max(corr, step))
    if jitter > 0:
        ang = ang + rng.normal(0.0, jitter, n)
    d = np.stack([np.sin(ang), np.cos(ang)], axis=1) * step
    d[0] = 0.0
    return np.asarray(start, dtype=np.float64)[None, :] + np.cumsum(d, axis=0)


def curve_field(
    curves: CurveSet,
    cshape: tuple[int, int],
    scale: int,
    margin: float,
    far: float = 1e4,
    per_curve: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (px) to the union of thick curves on the node grid, and the nearest curve's value.

    Returns (dist - radius, value), both float32 ``cshape``; negative inside the curves. Nodes farther
    than ``margin`` px beyond the curves' bounding box get ``far`` (and value 0).
    The nearest sample is found with one Euclidean distance transform; the exact distance to the
    short segment that sample stands for keeps thin curves smooth between nodes.
    ``per_curve``: one small transform per curve (faster for few, scattered curves).
    """
    out = np.full(cshape, far, dtype=np.float32)
    val = np.zeros(cshape, dtype=np.float32)
    if len(curves) == 0:
        return out, val
    groups = [tuple(a[i] for a in (curves.p, curves.t, curves.r, curves.h, curves.val)) for i in range(len(curves.p))]
    if not per_curve:
        groups = [curves.arrays()]
    for p, t, r, h, v in groups:
        res = _box_field(p, t, r, h, v, cshape, scale, margin)
        if res is None:
            continue
        (y0, y1, x0, x1), d, vv = res
        cur = out[y0:y1, x0:x1]
        better = d < cur
        cur[better] = d[better]
        val[y0:y1, x0:x1][better] = vv[better]
    return out, val


def _box_field(p, t, r, h, v, cshape, scale, margin):
    node = np.rint(p / scale).astype(np.int64)
    pad = int(np.ceil((margin + r.max()) / scale)) + 1
    lo = np.maximum(node.min(axis=0) - pad, 0)
    hi = np.minimum(node.max(axis=0) + pad + 1, cshape)
    if np.any(hi <= lo):
        return None
    keep = np.all((node >= lo) & (node < hi), axis=1)
    if not keep.any():
        return None
    idx = np.flatnonzero(keep)
    sub = tuple(int(x) for x in hi - lo)
    marks = np.full(sub, -1, dtype=np.int32)
    # the widest sample wins where several fall on one node (sorted so it is written last)
    idx = idx[np.argsort(r[idx], kind="stable")]
    marks[node[idx, 0] - lo[0], node[idx, 1] - lo[1]] = idx
    _, (iy, ix) = ndi.distance_transform_edt(marks < 0, return_indices=True)
    k = marks[iy, ix]
    del iy, ix, marks
    f32 = np.float32
    p, t, r, h = p.astype(f32), t.astype(f32), r.astype(f32), h.astype(f32)
    yy = ((np.arange(sub[0], dtype=f32) + f32(lo[0])) * f32(scale))[:, None]
    xx = ((np.arange(sub[1], dtype=f32) + f32(lo[1])) * f32(scale))[None, :]
    vy = yy - p[k, 0]
    vx = xx - p[k, 1]
    ty, tx = t[k, 0], t[k, 1]
    along = np.abs(vy * ty + vx * tx)
    along -= h[k]
    np.maximum(along, 0, out=along)
    perp = vy * tx
    perp -= vx * ty
    del vy, vx, ty, tx
    d = np.sqrt(perp * perp + along * along)
    d -= r[k]
    return (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])), d, v[k].astype(f32)
