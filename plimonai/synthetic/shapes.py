"""Smooth star-shaped blobs as approximate signed distance fields (pieces, ventricles, nuclei, ink)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FAR", "Blob", "harmonics"]

FAR = 1e4  # "very far outside" level-set value


@dataclass
class Blob:
    """Star-shaped smooth blob: ellipse (semi-axes ry, rx, rotated by ``angle``) with radial
    harmonics ``harm`` rows (n, amplitude, phase) and a parabolic ``bend`` (crescents)."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float = 0.0
    harm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    bend: float = 0.0

    @property
    def extent(self) -> float:
        """Radius of a disc that contains the blob (px)."""
        rmax = 1.0 + float(np.abs(self.harm[:, 1]).sum())
        return max(self.rx, self.ry) * rmax * (1.0 + abs(self.bend) * rmax) + 1.0

    def _radius(self, th: np.ndarray) -> np.ndarray:
        r = np.ones_like(th)
        t = th.dtype.type
        for n, a, ph in self.harm:
            r += t(a) * np.cos(t(n) * th + t(ph))
        return r

    def value(self, py: np.ndarray, px: np.ndarray) -> np.ndarray:
        """Unnormalised level set (R(theta) - rho), > 0 inside, ~1 at the centre; broadcasts."""
        dt = np.result_type(py, px)
        c, s = dt.type(np.cos(self.angle)), dt.type(np.sin(self.angle))
        dy, dx = py - dt.type(self.cy), px - dt.type(self.cx)
        u = dx * c + dy * s
        v = -dx * s + dy * c + dt.type(self.bend / self.rx) * u * u
        un, vn = u * dt.type(1 / self.rx), v * dt.type(1 / self.ry)
        return self._radius(np.arctan2(vn, un)) - np.hypot(un, vn)

    def border(self, n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """Border points (n, 2) (y, x) and unit inward normals (n, 2)."""
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        rho = self._radius(th)
        u = rho * np.cos(th) * self.rx
        v = rho * np.sin(th) * self.ry - self.bend * u * u / self.rx
        c, s = np.cos(self.angle), np.sin(self.angle)
        pts = np.stack([u * s + v * c + self.cy, u * c - v * s + self.cx], axis=1)
        tan = np.roll(pts, -1, axis=0) - np.roll(pts, 1, axis=0)
        nrm = np.stack([tan[:, 1], -tan[:, 0]], axis=1)
        nrm /= np.maximum(np.hypot(nrm[:, 0], nrm[:, 1]), 1e-9)[:, None]
        probe = pts + nrm * 1e-3 * max(self.rx, self.ry)
        flip = self.value(probe[:, 0], probe[:, 1]) < 0
        nrm[flip] *= -1
        return pts, nrm

    def field(self, cshape: tuple[int, int], scale: int, margin: float = 0.0) -> np.ndarray:
        """Approximate signed distance (px, > 0 inside) on the node grid; FAR-negative outside the bbox."""
        out = np.full(cshape, -FAR, dtype=np.float32)
        e = self.extent + margin + 2 * scale
        j0, j1 = max(0, int((self.cy - e) // scale)), min(cshape[0], int((self.cy + e) // scale) + 2)
        i0, i1 = max(0, int((self.cx - e) // scale)), min(cshape[1], int((self.cx + e) // scale) + 2)
        if j1 - j0 < 2 or i1 - i0 < 2:
            return out
        ys = (np.arange(j0, j1, dtype=np.float32) * np.float32(scale))[:, None]
        xs = (np.arange(i0, i1, dtype=np.float32) * np.float32(scale))[None, :]
        f = self.value(ys, xs)
        gy, gx = np.gradient(f, float(scale))
        g = np.maximum(np.hypot(gy, gx), 0.3 / max(self.rx, self.ry))
        out[j0:j1, i0:i1] = f / g
        return out


def harmonics(rng: np.random.Generator, low: float, high: float = 0.0, nmax: int = 5) -> np.ndarray:
    """Random radial harmonics (rows n, amplitude, phase) for :class:`Blob`: n = 2..nmax, plus 3 small high ones."""
    rows = [(n, rng.uniform(0, low) * 2.0 / n, rng.uniform(0, 2 * np.pi)) for n in range(2, nmax + 1)]
    if high > 0:
        rows += [(n, rng.uniform(0, high), rng.uniform(0, 2 * np.pi)) for n in rng.integers(6, 14, 3)]
    return np.asarray(rows, dtype=np.float64)
