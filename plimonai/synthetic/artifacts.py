"""Non-tissue artifacts (mask 0): dust, air bubbles, cover-slip edges, marker ink, lint.

Small analytic primitives (dust specks, bubble rims, straight edges) are evaluated per output
window; ink and lint are thick curves/blobs stored as coarse level-set fields (see
:func:`ink_fields`). Sizes are given in "LAP pixels" times ``unit`` so the same draw works at PM
scale. Placement reads the section geometry: ink and edges stay off the tissue (closer in hard
cases), dust and lint may fall anywhere, including on tissue (the mask is unchanged there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .curves import CurveSet, curve_field, random_walk
from .fields import coarse_shape
from .geometry import SectionGeometry
from .shapes import FAR, Blob

__all__ = ["Artifacts", "draw_artifacts", "ink_fields"]


def _clipped_window(y: float, x: float, extent: float, y0: int, x0: int, h: int, w: int):
    """Bounds ``(ya, yb, xa, xb)`` of a primitive's square of half-size ``extent`` around ``(y, x)``
    clipped to the window ``[y0, y0 + h) x [x0, x0 + w)``, and the float32 offsets ``dy (n, 1)``,
    ``dx (1, m)`` of its pixels from the centre; None when it misses the window."""
    ya, yb = max(y0, int(y - extent)), min(y0 + h, int(y + extent) + 2)
    xa, xb = max(x0, int(x - extent)), min(x0 + w, int(x + extent) + 2)
    if ya >= yb or xa >= xb:
        return None
    dy = (np.arange(ya, yb, dtype=np.float32) - y)[:, None]
    dx = (np.arange(xa, xb, dtype=np.float32) - x)[None, :]
    return (ya, yb, xa, xb), dy, dx


@dataclass
class Artifacts:
    """Artifact primitives of one slice (output px).

    spots: (N, 7) dust specks y, x, radius, od, aspect, angle, power (profile exp(-d**power)).
    rings: (M, 6) bubbles y, x, radius, rim width, rim od, inner gain (> 0 brightens inside).
    edges: (K, 6) straight edges ny, nx, c (line n.p = c; band where n.p > c), line od, line width, band od.
    inks: curves (ink strokes, lint) and blobs (ink smudges/labels), rendered via :func:`ink_fields`.
    """

    spots: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    rings: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    ink_curves: CurveSet = field(default_factory=CurveSet)
    ink_blobs: list = field(default_factory=list)  # (Blob, od)

    def summary(self) -> dict:
        return {"dust": len(self.spots), "bubbles": len(self.rings), "edges": len(self.edges),
                "ink_curve_samples": len(self.ink_curves), "ink_blobs": len(self.ink_blobs)}

    def window(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Optical density (h, w) float32 of the window's primitives, and a gain (or None)."""
        od = np.zeros((h, w), dtype=np.float32)
        gain = None
        if len(self.spots):
            sp = self.spots
            # profile exp(-q**pw) < 1% beyond q = 4.6**(1/pw)
            e = sp[:, 2] * np.maximum(sp[:, 4], 1.0) * 4.6 ** (1 / sp[:, 6]) + 1.0
            hit = (sp[:, 0] + e > y0) & (sp[:, 0] - e < y0 + h) & (sp[:, 1] + e > x0) & (sp[:, 1] - e < x0 + w)
            for (y, x, r, d, asp, ang, pw), ee in zip(sp[hit], e[hit]):
                win = _clipped_window(y, x, ee, y0, x0, h, w)
                if win is None:
                    continue
                (ya, yb, xa, xb), dy, dx = win
                c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
                u = (dx * c + dy * s) * np.float32(1 / (r * asp))
                v = (-dx * s + dy * c) * np.float32(1 / r)
                q2 = u * u + v * v
                prof = np.exp(-q2) if pw == 2 else np.exp(-np.power(q2, np.float32(pw / 2)))
                od[ya - y0 : yb - y0, xa - x0 : xb - x0] += np.float32(d) * prof
        if len(self.rings):
            rg = self.rings
            e = rg[:, 2] + 4 * rg[:, 3] + 2
            hit = (rg[:, 0] + e > y0) & (rg[:, 0] - e < y0 + h) & (rg[:, 1] + e > x0) & (rg[:, 1] - e < x0 + w)
            for y, x, big_r, rw, d, g in rg[hit]:
                win = _clipped_window(y, x, big_r + 4 * rw + 2, y0, x0, h, w)
                if win is None:
                    continue
                (ya, yb, xa, xb), dy, dx = win
                rr = np.sqrt(dy * dy + dx * dx)
                sl = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
                od[sl] += d * np.exp(-np.square((rr - big_r) / rw))
                if g != 0:
                    if gain is None:
                        gain = np.ones((h, w), dtype=np.float32)
                    gain[sl] *= 1 + g * np.clip((big_r - rw - rr) / (2 * rw), 0, 1)
        if len(self.edges):
            yy = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
            xx = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
            for ny, nx, c, lod, lw, bod in self.edges:
                d = ny * yy + nx * xx - c
                # corners of the window bound d: skip windows far from this edge on the clear side
                if float(np.max(d)) < -6 * lw:
                    continue
                od += lod * np.exp(-np.square(d / lw)) + bod * 0.5 * (1 + np.tanh(d / (2 * lw)))
        return od, gain


def _depth_at(geom: SectionGeometry, pts: np.ndarray) -> np.ndarray:
    """Outer signed distance (px) at points (N, 2), nearest node; -FAR outside the canvas."""
    s = geom.scale
    n = np.rint(pts / s).astype(np.int64)
    ok = (n[:, 0] >= 0) & (n[:, 0] < geom.depth.shape[0]) & (n[:, 1] >= 0) & (n[:, 1] < geom.depth.shape[1])
    out = np.full(len(pts), -FAR)
    out[ok] = geom.depth[n[ok, 0], n[ok, 1]]
    return out


def _in_canvas(pts: np.ndarray, shape: tuple[int, int], margin: float) -> bool:
    return bool(np.all((pts >= margin) & (pts <= np.asarray(shape) - 1 - margin)))


def _handwriting(rng, start, angle, unit, n_letters) -> tuple[np.ndarray, float]:
    """A cursive-looking loopy stroke (N, 2) and its pen half width."""
    lh = unit * rng.uniform(30, 110)
    lw = lh * rng.uniform(0.4, 0.8)
    t = np.linspace(0, n_letters, max(8, int(n_letters * lh / max(0.5 * unit, 0.5))))
    f1, f2 = rng.uniform(0.8, 1.6), rng.uniform(1.0, 2.2)
    wob = np.interp(t, np.arange(n_letters + 1), rng.uniform(0.6, 1.4, n_letters + 1))
    x = lw * (t + 0.35 * np.sin(2 * np.pi * f1 * t + rng.uniform(0, 6)))
    y = lh * 0.5 * wob * np.sin(2 * np.pi * f2 * t + rng.uniform(0, 6)) + lh * 0.1 * rng.standard_normal() * t / n_letters
    c, s = np.cos(angle), np.sin(angle)
    pts = np.stack([start[0] + x * s + y * c, start[1] + x * c - y * s], axis=1)
    return pts, unit * rng.uniform(1.5, 4.0)


def draw_artifacts(rng: np.random.Generator, geom: SectionGeometry, unit: float, hard: bool) -> Artifacts:
    """Draw the artifacts of one slice; ``unit`` = output px per LAP px for artifact sizes."""
    h, w = geom.shape
    area = h * w / (unit * unit) / (2080 * 2776)  # in LAP-image areas
    s = geom.scale
    art = Artifacts()
    depth = geom.depth
    near_margin = unit * (rng.uniform(6, 30) if hard else rng.uniform(40, 150))

    # dust specks: many small, some up to ~30 px across, a few clustered
    n = int(rng.uniform(30, 250) * area)
    pts = rng.uniform([0, 0], [h, w], (n, 2))
    if hard:  # extra dust close to the tissue border
        band = (depth < -s) & (depth > -unit * 25)
        idx = np.flatnonzero(band)
        if len(idx):
            k = idx[rng.integers(0, len(idx), int(rng.uniform(20, 80) * max(area, 0.05)))]
            pts = np.vstack([pts, np.stack(np.unravel_index(k, band.shape), 1) * float(s)])
    n = len(pts)
    big = rng.random(n) < 0.15
    r = unit * np.where(big, rng.uniform(4, 15, n), rng.uniform(0.7, 3.0, n))
    od = np.where(big, rng.uniform(0.05, 0.8, n), rng.uniform(0.1, 1.2, n))
    spots = np.column_stack([pts, r, od, rng.uniform(1, 2.5, n), rng.uniform(0, np.pi, n), rng.uniform(1.2, 3.5, n)])
    sat = spots[rng.random(n) < 0.3]
    if len(sat):
        k = rng.integers(1, 4, len(sat))
        sat = np.repeat(sat, k, axis=0)
        sat[:, :2] += rng.normal(0, 1, (len(sat), 2)) * 1.5 * sat[:, 2:3]
        sat[:, 2] *= rng.uniform(0.3, 0.8, len(sat))
        spots = np.vstack([spots, sat])
    art.spots = spots

    # air bubbles: thin dark rims, slightly bright inside
    nb = int(rng.integers(1, 5)) if rng.random() < (0.6 if hard else 0.25) else 0
    rings = []
    for _ in range(nb):
        big_r = min(unit * rng.uniform(15, 150), 0.2 * min(h, w))
        for _try in range(20):
            c = rng.uniform([0, 0], [h, w])
            if hard or _depth_at(geom, c[None])[0] < -0.5 * big_r:
                break
        rings.append([c[0], c[1], big_r, max(unit * rng.uniform(1.2, 4.0), 0.8), rng.uniform(0.3, 1.2),
                      rng.uniform(0.02, 0.10)])
    art.rings = np.asarray(rings, dtype=np.float64).reshape(-1, 6)

    # cover-slip / slide edges: straight dark line near an image edge, darker band beyond it
    edges = []
    if rng.random() < (0.6 if hard else 0.3):
        for _try in range(10):
            side = int(rng.integers(0, 4))
            tilt = rng.normal(0, 0.015)
            dim = h if side in (0, 1) else w
            off = rng.uniform(0.01, 0.12) * dim
            nrm = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}[side]
            ny, nx = nrm[0] * np.cos(tilt) - nrm[1] * np.sin(tilt), nrm[1] * np.cos(tilt) + nrm[0] * np.sin(tilt)
            edge_pt = {0: (off, w / 2), 1: (h - 1 - off, w / 2), 2: (h / 2, off), 3: (h / 2, w - 1 - off)}[side]
            c = ny * edge_pt[0] + nx * edge_pt[1]
            ys = (np.arange(depth.shape[0]) * s)[:, None]
            xs = (np.arange(depth.shape[1]) * s)[None, :]
            beyond = ny * ys + nx * xs - c > -near_margin
            if np.any(beyond & (depth > -near_margin)):
                continue
            edges.append([ny, nx, c, rng.uniform(0.3, 1.5), max(unit * rng.uniform(1, 4), 0.8),
                          rng.uniform(-0.03, 0.3)])
            break
    art.edges = np.asarray(edges, dtype=np.float64).reshape(-1, 6)

    # marker ink (handwriting, marks, smudges) off the tissue; lint anywhere
    curves = CurveSet()
    free = depth < -near_margin
    n_words = int(rng.integers(1, 4)) if rng.random() < (0.6 if hard else 0.35) else 0
    n_marks = int(rng.integers(1, 4)) if rng.random() < 0.3 else 0
    n_blobs = int(rng.integers(1, 3)) if rng.random() < (0.35 if hard else 0.15) else 0
    for kind, count in (("word", n_words), ("mark", n_marks), ("blob", n_blobs)):
        for _ in range(count):
            for _try in range(20):
                idx = np.flatnonzero(free)
                if not len(idx):
                    break
                start = np.array(np.unravel_index(idx[rng.integers(0, len(idx))], free.shape), float) * s
                ang = rng.normal(0, 0.25) if rng.random() < 0.7 else rng.uniform(0, np.pi)
                ink_od = rng.uniform(0.8, 2.5)
                if kind == "blob":
                    size = unit * rng.uniform(10, 150)
                    b = Blob(start[0], start[1], size * rng.uniform(0.4, 1.0), size, ang, _ink_harm(rng))
                    bp, _ = b.border(256)
                    test = np.vstack([bp, start[None]])
                else:
                    if kind == "word":
                        pts, pen = _handwriting(rng, start, ang, unit, int(rng.integers(3, 10)))
                    else:
                        pts = random_walk(rng, start, rng.uniform(0, 2 * np.pi), unit * rng.uniform(20, 150),
                                          max(0.5 * s, 0.5), rng.uniform(0.0, 0.4), unit * 50)
                        pen = unit * rng.uniform(2, 6)
                    pen = max(pen, 0.9 * s)
                    test = pts
                if not _in_canvas(test, (h, w), 2 * s) or np.any(_depth_at(geom, test) > -near_margin):
                    continue
                if kind == "blob":
                    art.ink_blobs.append((b, ink_od))
                else:
                    curves.add(pts, pen, value=ink_od)
                break
    n_lint = int(rng.integers(2, 10) if hard else rng.integers(0, 6))
    n_lint = int(round(n_lint * max(area, 0.2)))
    for _ in range(n_lint):
        start = rng.uniform([0, 0], [h, w])
        pts = random_walk(rng, start, rng.uniform(0, 2 * np.pi), unit * rng.uniform(20, 200), max(0.5 * s, 0.5),
                          rng.uniform(1.0, 3.0), unit * 20)
        curves.add(pts, max(unit * rng.uniform(0.6, 1.5), 0.6 * s), value=rng.uniform(0.1, 0.6))
    art.ink_curves = curves
    return art


def _ink_harm(rng) -> np.ndarray:
    return np.array([(n, rng.uniform(0, 0.15) / n * 2, rng.uniform(0, 2 * np.pi)) for n in range(2, 7)])


def ink_fields(art: Artifacts, shape: tuple[int, int], scale: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Coarse (ink_in, ink_od) float32 fields: ink_in > 0 inside ink (px), od of the nearest ink.

    None when the slice has no ink or lint.
    """
    if len(art.ink_curves) == 0 and not art.ink_blobs:
        return None
    cs = coarse_shape(shape, scale)
    cf, val = curve_field(art.ink_curves, cs, scale, margin=4.0 * scale, per_curve=True)
    ink_in = -cf
    for b, od in art.ink_blobs:
        f = b.field(cs, scale)
        better = f > ink_in
        val[better] = od
        ink_in = np.maximum(ink_in, f)
    return ink_in.astype(np.float32), val.astype(np.float32)
