"""Tissue geometry of a synthetic brain section: pieces, folded cortex, holes.

Everything is a level set on a coarse node grid (see :mod:`plimonai.synthetic.fields`), in output
pixel units, so the same geometry serves a 2k LAP image (scale 2) and a 20k-60k PM image (scale
14-40): the output mask is ``upsample(phi) > 0``, exact at any resolution and tile layout.

Pieces are smooth star-shaped blobs (ellipse + Fourier harmonics). Cortex is folded by carving
sulci (narrow random-walk gaps, wider at the mouth, rounded crowns via a smooth minimum); the grey
matter ribbon is the band ``0 < depth < thickness`` below that folded "pial" border. Holes
(ventricles, tears, vessel lumina) cut the tissue but not the pial border, so no grey matter forms
around them. Section classes are just different :class:`GeometryParams` draws.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .curves import CurveSet, curve_field, random_walk
from .fields import coarse_shape, smin, smooth_noise, smoothstep, upsample_window
from .shapes import FAR, Blob, harmonics
from .sulci import Occupancy, carve, carve_sulci

__all__ = [
    "FAR",
    "Blob",
    "GeometryParams",
    "SectionGeometry",
    "build_section",
    "draw_geometry_params",
]

# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
@dataclass
class GeometryParams:
    """One slice's drawn geometry parameters; lengths in output pixels."""

    section_hw: tuple[float, float]  # main piece size (height, width)
    center: tuple[float, float]  # main piece centre (y, x)
    n_pieces: int  # requested pieces (fewer are placed if they do not fit)
    cortex: float  # mean cortex (grey-matter ribbon) thickness
    cortex_var: float  # relative smooth variation of the thickness
    sulcus_spacing: float  # mean spacing of sulci along the border, in cortex thicknesses
    sulcus_depth: float  # mean sulcus depth, in cortex thicknesses
    sulcus_halfgap: tuple[float, float]  # half width of a sulcal gap at depth (min, max)
    sulcus_mouth: float  # mean extra half width at the sulcal mouth
    fissure: bool  # deep interhemispheric fissure from the top of the main piece
    n_ventricles: int
    n_tears: int
    tear_halfwidth: float
    n_vessels: int
    vessel_radius: float
    roughness: float  # border roughness amplitude
    piece_gap: float  # minimum gap between pieces
    n_nuclei: int  # deep grey-matter nuclei in the main piece
    fold: bool  # a folded-over (double thickness) flap
    scale: int  # coarse grid step (output px per node)

    def to_dict(self) -> dict:
        return asdict(self)


def draw_geometry_params(
    rng: np.random.Generator, shape: tuple[int, int], kind: str = "lap", hard: bool = False
) -> GeometryParams:
    """Draw :class:`GeometryParams` for a ``kind`` ('lap': human whole coronal section at LAP
    resolution; 'pm': a smaller section, e.g. monkey, at polarizing-microscope resolution).

    Lengths are defined at the reference size (LAP 2080 px, PM 20000 px short side) and scaled
    with the actual short side, so small test images look like downsampled full ones.
    """
    h, w = shape
    if kind == "lap":
        f = min(h, w) / 2080.0
        scale = 2 if min(h, w) >= 1024 else 1
        cortex = rng.uniform(22, 55) * f
        halfgap = (0.8, 1.6) if hard else (0.9, 2.6)
        mouth = rng.uniform(2, 10) * f
        tear_hw, vessel_r = rng.uniform(0.9, 2.5) * f, rng.uniform(1.5, 4.0) * f
        rough = rng.uniform(0.5, 2.5) * f
        gap = (rng.uniform(3, 12) if hard else rng.uniform(6, 40)) * f
        spacing, depth = rng.uniform(2.5, 4.5), rng.uniform(4.5, 9.0)
    elif kind == "pm":
        f = min(h, w) / 20000.0
        scale = max(1, int(np.ceil(max(h, w) / 1500)))
        cortex = rng.uniform(0.035, 0.07) * min(h, w)
        halfgap = (7.0, 15.0) if hard else (8.0, 40.0)
        mouth = rng.uniform(30, 200) * f
        tear_hw, vessel_r = rng.uniform(6, 30) * f, rng.uniform(15, 60) * f
        rough = rng.uniform(5, 25) * f
        gap = (rng.uniform(30, 100) if hard else rng.uniform(60, 400)) * f
        spacing, depth = rng.uniform(3.0, 6.0), rng.uniform(1.5, 3.5)
        halfgap = tuple(x * max(f, 0.05) for x in halfgap)
    else:
        raise ValueError(f"unknown section kind {kind!r}")
    halfgap = (max(halfgap[0], 0.6 * scale), max(halfgap[1], 0.9 * scale))
    n_pieces = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
    if n_pieces == 1:
        hw = (h * rng.uniform(0.65, 0.94), w * rng.uniform(0.6, 0.92))
    else:
        hw = (h * rng.uniform(0.5, 0.78), w * rng.uniform(0.45, 0.7))
    center = (
        h / 2 + rng.uniform(-1, 1) * 0.8 * (h - hw[0]) / 2,
        w / 2 + rng.uniform(-1, 1) * 0.8 * (w - hw[1]) / 2,
    )
    return GeometryParams(
        section_hw=(float(hw[0]), float(hw[1])),
        center=(float(center[0]), float(center[1])),
        n_pieces=n_pieces,
        cortex=float(max(cortex, 2.5)),
        cortex_var=float(rng.uniform(0.1, 0.3)),
        sulcus_spacing=float(spacing),
        sulcus_depth=float(depth),
        sulcus_halfgap=(float(halfgap[0]), float(halfgap[1])),
        sulcus_mouth=float(mouth),
        fissure=bool(rng.random() < 0.45),
        n_ventricles=int(rng.choice([0, 1, 2, 3], p=[0.2, 0.3, 0.35, 0.15])),
        n_tears=int(rng.choice([0, 1, 2, 3, 4], p=[0.25, 0.3, 0.2, 0.15, 0.1]) + (1 if hard else 0)),
        tear_halfwidth=float(max(tear_hw, 0.7 * scale)),
        n_vessels=int(rng.integers(0, 40)),
        vessel_radius=float(max(vessel_r, 0.8 * scale)),
        roughness=float(rough),
        piece_gap=float(max(gap, 2.0 * scale)),
        n_nuclei=int(rng.integers(0, 4)),
        fold=bool(rng.random() < (0.35 if hard else 0.15)),
        scale=int(scale),
    )


# ----------------------------------------------------------------------------------------------
# result
# ----------------------------------------------------------------------------------------------
@dataclass
class SectionGeometry:
    """Coarse level sets of one section, float32 (Hc, Wc) on the node grid of ``scale``.

    phi: signed distance to the tissue border (px), > 0 tissue; holes are < 0.
    depth: signed distance to the outer (pial) border, ignoring holes.
    thickness: local cortex thickness (px); grey matter is 0 < depth < thickness.
    nuclei, fold: weights in [0, 1] (deep grey matter; folded double-thickness tissue).
    orient: (2, Hc, Wc) fibre orientation as doubled-angle vector (cos 2a, sin 2a) x coherence.
    pieces: int16 piece label (0 background) of the nearest piece.
    """

    shape: tuple[int, int]
    scale: int
    phi: np.ndarray
    depth: np.ndarray
    thickness: np.ndarray
    nuclei: np.ndarray
    fold: np.ndarray
    orient: np.ndarray
    pieces: np.ndarray
    params: GeometryParams
    blobs: list = field(default_factory=list)

    def mask_window(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Exact tissue mask of an output window, uint8 (h, w) in {0, 1}."""
        phi = upsample_window(self.phi[None], self.scale, y0, x0, h, w)[0]
        return (phi > 0).astype(np.uint8)

    def masks(self) -> dict[str, np.ndarray]:
        """Coarse boolean masks (Hc, Wc): 'tissue', 'grey_matter', 'holes'."""
        tissue = self.phi > 0
        return {
            "tissue": tissue,
            "grey_matter": tissue & (self.depth < self.thickness),
            "holes": (self.depth > 0) & ~tissue,
        }


# ----------------------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------------------
_PIECE_KINDS = ("lobe", "cerebellum", "stem")


def _place_pieces(rng, shape, gp: GeometryParams, main: Blob) -> list[tuple[str, Blob]]:
    """Main piece plus extra non-overlapping pieces (checked on a decimated grid)."""
    h, w = shape
    q = max(1.0, min(h, w) / 200.0)
    ys = (np.arange(int(h / q) + 1) * q)[:, None]
    xs = (np.arange(int(w / q) + 1) * q)[None, :]

    def approx(b: Blob) -> np.ndarray:
        return b.value(ys, xs) * min(b.rx, b.ry)

    union = approx(main)
    pieces = [("cerebrum", main)]
    rmain = min(main.rx, main.ry)
    margin = max(2.0 * gp.scale, 0.01 * min(h, w))
    for _ in range(gp.n_pieces - 1):
        kind = str(rng.choice(_PIECE_KINDS, p=[0.45, 0.35, 0.2]))
        rel, aspect = {"lobe": ((0.3, 0.6), (1.3, 2.2)), "cerebellum": ((0.3, 0.5), (1.0, 1.6)),
                       "stem": ((0.12, 0.25), (1.0, 1.8))}[kind]
        size = rng.uniform(*rel) * rmain * 2
        for _try in range(40):
            a = rng.uniform(1.0, aspect[1] if aspect[1] > aspect[0] else 1.0)
            b = Blob(rng.uniform(0, h), rng.uniform(0, w), size / 2, size / 2 * a, rng.uniform(0, np.pi),
                     harmonics(rng, 0.08 if kind != "stem" else 0.05))
            f = approx(b)
            edge = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
            if edge.max() > -margin or f.max() <= 0:
                size *= 0.93
                continue
            if np.any((f > -gp.piece_gap / 2) & (union > -gp.piece_gap / 2)):
                size *= 0.93
                continue
            union = np.maximum(union, f)
            pieces.append((kind, b))
            break
    return pieces


def _random_points_where(rng, mask: np.ndarray, n: int, scale: int) -> np.ndarray:
    """n random output-px positions (n, 2) of True nodes of ``mask`` (jittered within a cell)."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0 or n <= 0:
        return np.zeros((0, 2))
    pick = idx[rng.integers(0, len(idx), n)]
    yx = np.stack(np.unravel_index(pick, mask.shape), axis=1).astype(np.float64)
    return (yx + rng.uniform(-0.5, 0.5, yx.shape)) * scale


def _orientation(rng, outer: np.ndarray, thick: np.ndarray, gp: GeometryParams) -> np.ndarray:
    """Doubled-angle fibre orientation (2, Hc, Wc): along the depth gradient (fibres entering the
    cortex) near the grey matter, a smooth random field deeper. Built on a decimated grid and
    smoothed, then zoomed up (orientation varies on the scale of the cortex thickness)."""
    s, cs = gp.scale, outer.shape
    q = max(1, int(round(gp.cortex / (3 * s))))
    od, td = outer[::q, ::q], thick[::q, ::q]
    gy, gx = np.gradient(od, float(q * s))
    n2 = gy * gy + gx * gx + 1e-12
    rad = np.stack([(gx * gx - gy * gy) / n2, 2 * gx * gy / n2])
    u = np.stack([smooth_noise(rng, od.shape, max(2.0, 6 * gp.cortex / (q * s))) for _ in range(2)])
    mag = np.maximum(np.hypot(u[0], u[1]), 1e-6)
    u *= np.clip(mag / 0.7, 0, 1) / mag
    wr = np.exp(-np.clip(od - td, 0, None) / (0.6 * gp.cortex))
    v = wr * rad + (1 - wr) * u
    v = ndi.gaussian_filter(v, (0, 2.0, 2.0), mode="nearest")
    if q > 1:
        v = ndi.zoom(v, (1, cs[0] / v.shape[1], cs[1] / v.shape[2]), order=1, mode="nearest", grid_mode=True)
        v = np.pad(v, [(0, 0), (0, max(0, cs[0] - v.shape[1])), (0, max(0, cs[1] - v.shape[2]))], mode="edge")
        v = v[:, : cs[0], : cs[1]]
    return v.astype(np.float32)


def build_section(rng: np.random.Generator, shape: tuple[int, int], gp: GeometryParams) -> SectionGeometry:
    """Build the coarse level sets of one section (see :class:`SectionGeometry`)."""
    s = gp.scale
    cs = coarse_shape(shape, s)
    h, w = shape
    main = Blob(gp.center[0], gp.center[1], gp.section_hw[0] / 2, gp.section_hw[1] / 2,
                rng.normal(0, 0.12), harmonics(rng, 0.07, 0.012))
    # keep the main piece inside the canvas: shrink until its border is
    m = max(2.0 * s, 0.01 * min(h, w))
    for _ in range(100):
        pts, _ = main.border(512)
        if pts[:, 0].min() >= m and pts[:, 1].min() >= m and pts[:, 0].max() <= h - m and pts[:, 1].max() <= w - m:
            break
        main.ry *= 0.95
        main.rx *= 0.95
    pieces = _place_pieces(rng, shape, gp, main)

    # --- outer (pial) level set: union of pieces, carved by sulci --------------------------
    outer = np.full(cs, -FAR, dtype=np.float32)
    label = np.zeros(cs, dtype=np.int16)
    thick_of = [0.0]
    sulci = CurveSet()
    occ = Occupancy(shape, 0.4 * gp.cortex)
    fissure_at = None
    for k, (kind, blob) in enumerate(pieces, start=1):
        f = blob.field(cs, s, margin=gp.piece_gap)
        better = f > outer
        label[better] = k
        outer = np.maximum(outer, f)
        cortex = {"cerebrum": 1.0, "lobe": 1.0, "cerebellum": rng.uniform(0.4, 0.7), "stem": 0.0}[kind] * gp.cortex
        thick_of.append(cortex)
        if kind == "cerebrum" and gp.fissure:
            pts, nrm = blob.border(4096)
            i = int(np.argmin(pts[:, 0] + 0.3 * np.abs(pts[:, 1] - blob.cx)))  # top, near the midline
            fissure_at = pts[i]
            lead = gp.sulcus_halfgap[1] + 3 * gp.sulcus_mouth + 2 * s
            carve(rng, sulci, blob, pts[i] - nrm[i] * lead, float(np.arctan2(nrm[i][0], nrm[i][1])), lead + 2 * blob.ry,
                   lead, 0.5 * s, cortex, rng.uniform(*gp.sulcus_halfgap), 3 * gp.sulcus_mouth, rng.uniform(0.5, 0.75),
                   int(rng.integers(0, 3)), shape, occ, turn=0.1)
        if cortex > 0:
            carve_sulci(rng, kind, blob, cortex, gp, shape, sulci, occ, avoid=fissure_at if kind == "cerebrum" else None)
    if len(sulci):
        sf, _ = curve_field(sulci, cs, s, margin=4 * gp.cortex)
        outer = smin(outer, sf, max(2.0 * s, 0.3 * gp.cortex))
    if gp.roughness > 0:
        outer += gp.roughness * smooth_noise(rng, cs, max(2.0, 1.5 * gp.cortex / s))
    outer = outer.astype(np.float32)

    # --- cortex thickness ------------------------------------------------------------------
    thick = np.asarray(thick_of, dtype=np.float32)[label]
    thick *= np.clip(1 + gp.cortex_var * smooth_noise(rng, cs, max(2.0, 4 * gp.cortex / s)), 0.4, None)
    thick[label == 0] = gp.cortex

    # --- holes: ventricles (smooth), tears (thin cracks), vessels (dots) -------------------
    main_mask = (label == 1) & (outer > 0)
    holes_in = np.full(cs, -FAR, dtype=np.float32)
    rmin = min(main.rx, main.ry)
    placed = 0
    for _try in range(40 * max(gp.n_ventricles, 1)):
        if placed >= gp.n_ventricles:
            break
        rl = rng.uniform(0.08, 0.3) * rmin
        aspect = rng.uniform(1.5, 5.0)
        need = max(rl / aspect + 1.5 * gp.cortex, 3 * s)
        cand = _random_points_where(rng, main_mask & (outer > need), 1, s)
        if len(cand) == 0:
            break
        ang = rng.uniform(0, np.pi) if fissure_at is None else np.pi / 2 + rng.normal(0, 0.5)
        v = Blob(cand[0, 0], cand[0, 1], rl / aspect, rl, ang, harmonics(rng, 0.06, nmax=4), rng.uniform(-0.6, 0.6))
        vs = [v]
        if fissure_at is not None and rng.random() < 0.7:
            m = Blob(v.cy, 2 * fissure_at[1] - v.cx, v.ry, v.rx, np.pi - v.angle,
                     v.harm * np.array([1, 1, -1]), -v.bend)
            vs.append(m)
        fields = [b.field(cs, s) for b in vs]
        ok = all(np.all(outer[fv > -2 * s] > 1.5 * gp.cortex) and np.all(holes_in[fv > -2 * s] < -gp.cortex)
                 for fv in fields)
        if not ok:
            continue
        for fv in fields:
            holes_in = np.maximum(holes_in, fv)
        placed += len(vs)

    cracks = CurveSet()
    size = float(np.mean(gp.section_hw))
    for _ in range(gp.n_tears):
        kind, blob = pieces[int(rng.integers(0, len(pieces)))]
        length = rng.uniform(0.05, 0.35) * size
        if rng.random() < 0.6:
            pts, nrm = blob.border(1024)
            i = int(rng.integers(0, len(pts)))
            start = pts[i] - nrm[i] * 3 * gp.tear_halfwidth
            heading = float(np.arctan2(nrm[i][0], nrm[i][1])) + rng.normal(0, 0.5)
        else:
            c = _random_points_where(rng, outer > gp.cortex, 1, s)
            if len(c) == 0:
                continue
            start, heading = c[0], rng.uniform(0, 2 * np.pi)
        step = 0.5 * s
        path = random_walk(rng, start, heading, length, step, rng.uniform(0.2, 0.8), 0.2 * length, jitter=0.15)
        t = np.linspace(0, 1, len(path))
        r = gp.tear_halfwidth * rng.uniform(0.6, 1.4) * (0.35 + 0.65 * np.sqrt(np.clip(1 - t, 0, 1)))
        cracks.add(path, r)
    vpts = _random_points_where(rng, outer > 2 * s, gp.n_vessels, s)
    if len(vpts):
        cracks.add(vpts, rng.uniform(0.4, 1.0, len(vpts)) * gp.vessel_radius, dots=True)
    if len(cracks):
        cf, _ = curve_field(cracks, cs, s, margin=4 * gp.cortex)
        holes_in = np.maximum(holes_in, -cf)
    phi = np.minimum(outer, -holes_in).astype(np.float32)
    # drop crumbs (tiny islands cut off by sulci/tears) smaller than ~(0.75 cortex)^2
    lab, n = ndi.label(phi > 0)
    if n > 1:
        small = np.bincount(lab.ravel()) * float(s * s) < (0.75 * gp.cortex) ** 2
        small[0] = False
        kill = small[lab]
        phi[kill] = np.minimum(phi[kill], -1.0)

    # --- deep grey matter nuclei and folds -------------------------------------------------
    nuclei = np.zeros(cs, dtype=np.float32)
    for k, (kind, blob) in enumerate(pieces, start=1):
        n = gp.n_nuclei if k == 1 else (int(rng.integers(1, 3)) if kind == "stem" else 0)
        for _ in range(n):
            rr = rng.uniform(0.08, 0.25) * min(blob.rx, blob.ry)
            c = _random_points_where(rng, (label == k) & (outer > rr + 1.5 * thick_of[k]), 1, s)
            if len(c) == 0:
                break
            b = Blob(c[0, 0], c[0, 1], rr, rr * rng.uniform(1.0, 2.0), rng.uniform(0, np.pi), harmonics(rng, 0.1))
            edge = rng.uniform(0.2, 0.6) * max(gp.cortex, 4 * s)
            nuclei = np.maximum(nuclei, smoothstep(b.field(cs, s) / edge + 0.5))
    fold = np.zeros(cs, dtype=np.float32)
    if gp.fold:
        pts, nrm = main.border(1024)
        i = int(rng.integers(0, len(pts)))
        fs = rng.uniform(0.06, 0.15) * 2 * rmin
        c = pts[i] + nrm[i] * fs * rng.uniform(0.2, 0.7)
        b = Blob(c[0], c[1], fs / rng.uniform(1.5, 3.0), fs, float(np.arctan2(nrm[i][0], nrm[i][1])) + np.pi / 2,
                 harmonics(rng, 0.08))
        fold = smoothstep(b.field(cs, s) / max(2.0, s) + 0.5) * (outer > 0)

    # --- fibre orientation: radial near the cortex, smooth random in deep white matter -------
    orient = _orientation(rng, outer, thick, gp)

    return SectionGeometry(
        shape=(int(h), int(w)), scale=s, phi=phi, depth=outer, thickness=thick.astype(np.float32),
        nuclei=nuclei, fold=fold.astype(np.float32), orient=orient, pieces=label, params=gp,
        blobs=[b for _, b in pieces],
    )
