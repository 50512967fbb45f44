"""Folding the cortex: sulci carved into a piece as thick random-walk curves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .curves import CurveSet, random_walk
from .fields import smoothstep

if TYPE_CHECKING:
    from .geometry import GeometryParams
    from .shapes import Blob

__all__ = ["Occupancy", "carve", "carve_sulci"]


class Occupancy:
    """Coarse occupancy grid of existing sulci, so new ones stop before crossing or touching them."""

    def __init__(self, shape: tuple[int, int], cell: float):
        self.cell = max(float(cell), 1.0)
        self.grid = np.zeros((int(shape[0] / self.cell) + 3, int(shape[1] / self.cell) + 3), dtype=bool)

    def _cells(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = np.clip(np.rint(pts / self.cell).astype(np.int64) + 1, 0, np.array(self.grid.shape) - 1)
        return c[:, 0], c[:, 1]

    def add(self, pts: np.ndarray) -> None:
        self.grid[self._cells(pts)] = True

    def blocked(self, pts: np.ndarray, clearance: float) -> np.ndarray:
        cy, cx = self._cells(pts)
        k = int(np.ceil(clearance / self.cell))
        out = np.zeros(len(pts), dtype=bool)
        gh, gw = self.grid.shape
        for dy in range(-k, k + 1):
            for dx in range(-k, k + 1):
                if dy * dy + dx * dx <= k * k:
                    out |= self.grid[np.clip(cy + dy, 0, gh - 1), np.clip(cx + dx, 0, gw - 1)]
        return out


def carve_sulci(rng, kind: str, blob: Blob, cortex: float, gp: GeometryParams, shape, curves: CurveSet,
           occ: Occupancy, avoid: np.ndarray | None = None) -> None:
    """Carve sulci along the border of one piece into ``curves``."""
    pts, nrm = blob.border(4096)
    seg = np.hypot(*np.diff(np.vstack([pts, pts[:1]]), axis=0).T)
    arclen = np.concatenate([[0], np.cumsum(seg)])[:-1]
    perim = float(seg.sum())
    if kind == "cerebellum":
        spacing, depth, fmax, p_branch = rng.uniform(1.2, 2.0) * cortex, rng.uniform(1.5, 4.0), 0.35, 0.4
    else:
        spacing, depth, fmax, p_branch = gp.sulcus_spacing * cortex, gp.sulcus_depth, 0.5, 0.3
    step = 0.5 * gp.scale
    pos = rng.uniform(0, spacing)
    starts = []
    while pos < perim - 0.3 * spacing:
        starts.append(pos)
        pos += spacing * rng.uniform(0.6, 1.4)
    if kind == "cerebellum":  # a few deep fissures with many branches
        starts = [(-1.0, x) for x in rng.uniform(0, perim, rng.integers(2, 5))] + starts
    for s0 in starts:
        deep = isinstance(s0, tuple)
        i = int(np.searchsorted(arclen, s0[1] if deep else s0)) % len(pts)
        b, n_in = pts[i], nrm[i]
        if avoid is not None and np.hypot(*(b - avoid)) < 1.5 * spacing:
            continue
        r_deep = rng.uniform(*gp.sulcus_halfgap)
        if rng.random() < 0.08:  # an open, CSF-filled sulcus
            r_deep *= rng.uniform(3, 8)
        mouth = gp.sulcus_mouth * rng.lognormal(0, 0.5)
        lead = r_deep + mouth + 2 * gp.scale
        length = (depth * cortex * rng.lognormal(0, 0.35)) if not deep else 0.6 * min(blob.rx, blob.ry)
        f_stop = 0.62 if deep else fmax * rng.uniform(0.6, 1.1)
        carve(rng, curves, blob, b - n_in * lead, float(np.arctan2(n_in[0], n_in[1])) + rng.normal(0, 0.2),
               lead + length, lead, step, cortex, r_deep, mouth, f_stop,
               n_branch=int(rng.integers(2, 5)) if deep else int(rng.random() < p_branch), shape=shape, occ=occ)


def carve(rng, curves: CurveSet, blob: Blob, start, heading, length, lead, step, cortex, r_deep, mouth,
           f_stop, n_branch, shape, occ: Occupancy, turn=None, _top=True) -> list:
    """One sulcus (plus branches): random walk inward, stopped at depth ``f_stop``, on exit, or
    when it comes within ~1.2 cortex thicknesses of an earlier sulcus. Returns the paths."""
    path = random_walk(rng, start, heading, length, step, turn if turn is not None else rng.uniform(0.15, 0.45),
                       cortex)
    f = blob.value(path[:, 0], path[:, 1])
    stop = len(path)
    too_deep = np.flatnonzero(f > f_stop)
    if len(too_deep):
        stop = min(stop, int(too_deep[0]))
    entered = np.flatnonzero(f > 0.02)
    if len(entered):
        exited = np.flatnonzero((f < 0) & (np.arange(len(f)) > entered[0]))
        if len(exited):
            stop = min(stop, int(exited[0]))
    near = np.flatnonzero(occ.blocked(path, 1.2 * cortex) & (np.arange(len(path)) * step > lead + 0.5 * cortex))
    if len(near):
        stop = min(stop, int(near[0]))
    path = path[:stop]
    if len(path) < 3:
        return []
    paths = [path]
    s = np.arange(len(path)) * step - lead
    lm = cortex * rng.uniform(0.8, 2.0)
    r = r_deep + mouth * smoothstep((lm - np.maximum(s, 0)) / lm)
    curves.add(path, r)
    for _ in range(n_branch):
        if len(path) < 20:
            break
        k = int(rng.uniform(0.45, 0.9) * len(path))
        tan = path[min(k + 1, len(path) - 1)] - path[k - 1]
        ang = float(np.arctan2(tan[0], tan[1])) + rng.choice([-1, 1]) * rng.uniform(0.3, 0.7)
        rest = (len(path) - k) * step
        paths += carve(rng, curves, blob, path[k], ang, rng.uniform(0.3, 0.8) * max(rest, 2 * cortex), 0.0, step,
                        cortex, r_deep, 0.0, f_stop, 0, shape, occ, _top=False)
    if _top:
        for pth in paths:
            occ.add(pth)
    return paths
