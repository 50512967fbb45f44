"""Section classes: mouse, rat, monkey, human hemisphere, whole human section (all at LAP pixel size).

A class is only a different :class:`~plimonai.synthetic.geometry.GeometryParams` draw for the same
:func:`~plimonai.synthetic.geometry.build_section`. ``"human"`` (whole human coronal section, 1-4
pieces, folded) is the original draw in :func:`~plimonai.synthetic.geometry.draw_geometry_params`
and stays byte-identical; the others are drawn here. Sizes are in LAP pixels (~64 um) at the
reference frame (short side 2080 px) and scale with the frame's short side like every other length,
so a small test frame shows a downsampled LAP image.

For rodents the grey-matter ribbon is thicker than the neocortex alone (it stands for cortex plus
the pale subcortical grey matter next to it) and 1-4 deep grey nuclei are placed, so the sections
are not mostly dark white matter; a midline fissure is carved in 40 % of them.

=================  ==============  ============  ==========================================
class              across (px)     cortex (px)   folding / pieces
=================  ==============  ============  ==========================================
mouse              150-230         16-30         smooth (lissencephalic, at most shallow
                                                 dimples), one piece, 0-2 small ventricles
rat                300-480         26-48         as mouse
monkey             800-1450        25-40         moderate folding, 1-3 pieces
human_hemisphere   fills 50-94 %   22-55         human folding, no midline fissure, 1-2 pieces
human              fills 45-94 %   22-55         the original: 1-4 pieces, fissure in 45 %
=================  ==============  ============  ==========================================
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .fields import child_rng
from .geometry import GeometryParams

__all__ = ["SECTION_CLASSES", "draw_class_geometry_params", "parse_section_class", "pick_section_class"]

SECTION_CLASSES = ("mouse", "rat", "monkey", "human_hemisphere", "human")
_CLASS_STREAM = 7  # child_rng(seed, 7): the class of a "mixed" slice (independent of every other draw)

# main-piece width range (LAP px at the reference frame), height / width ratio, cortex range
_SMALL = {
    "mouse": ((150.0, 230.0), (0.6, 0.9), (16.0, 30.0)),
    "rat": ((300.0, 480.0), (0.6, 0.9), (26.0, 48.0)),
    "monkey": ((800.0, 1450.0), (0.65, 0.95), (25.0, 40.0)),
}


def parse_section_class(section_class: str | Sequence[str]) -> tuple[str, ...]:
    """Classes a slice may be drawn from: one class, ``"mixed"`` (all of :data:`SECTION_CLASSES`) or a
    comma-separated list / sequence of classes (one of them drawn per seed)."""
    if isinstance(section_class, str):
        names = [s.strip() for s in section_class.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in section_class]
    if names == ["mixed"]:
        return SECTION_CLASSES
    bad = [s for s in names if s not in SECTION_CLASSES]
    if not names or bad:
        raise ValueError(f"section_class must be one of {SECTION_CLASSES}, 'mixed' or a comma-separated list, "
                         f"got {section_class!r}")
    return tuple(dict.fromkeys(names))


def pick_section_class(seed: int, section_class: str | Sequence[str] = "human") -> str:
    """The class of slice ``seed``: fixed for a single class, else drawn uniformly from its own seed."""
    choices = parse_section_class(section_class)
    if len(choices) == 1:
        return choices[0]
    return str(choices[int(child_rng(seed, _CLASS_STREAM).integers(0, len(choices)))])


def draw_class_geometry_params(rng: np.random.Generator, shape: tuple[int, int], section_class: str,
                               hard: bool = False) -> GeometryParams:
    """:class:`GeometryParams` of a LAP slice of ``section_class`` (not ``"human"``: that is
    :func:`~plimonai.synthetic.geometry.draw_geometry_params`)."""
    h, w = shape
    f = min(h, w) / 2080.0
    scale = 2 if min(h, w) >= 1024 else 1
    if section_class in ("mouse", "rat"):
        (w0, w1), (r0, r1), (c0, c1) = _SMALL[section_class]
        width = rng.uniform(w0, w1) * f
        hw = (width * rng.uniform(r0, r1), width)
        cortex = rng.uniform(c0, c1) * f
        # lissencephalic: half the slices perfectly smooth, the others a few shallow dimples
        spacing = 1e4 if rng.random() < 0.5 else rng.uniform(12.0, 30.0)
        depth = rng.uniform(0.3, 1.0)
        halfgap, mouth = (0.8, 1.6), rng.uniform(1, 4) * f
        n_pieces, fissure = 1, bool(rng.random() < 0.4)
        n_vent = int(rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25]))
        n_tears = int(rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1]) + (1 if hard else 0))
        rough = rng.uniform(0.3, 1.2) * f
        n_nuclei = int(rng.integers(1, 5))
        fold = bool(rng.random() < (0.15 if hard else 0.05))
    elif section_class == "monkey":
        (w0, w1), (r0, r1), (c0, c1) = _SMALL["monkey"]
        width = rng.uniform(w0, w1) * f
        hw = (min(width * rng.uniform(r0, r1), 0.9 * h), min(width, 0.9 * w))
        cortex = rng.uniform(c0, c1) * f
        spacing, depth = rng.uniform(4.0, 7.0), rng.uniform(2.5, 5.5)
        halfgap, mouth = ((0.8, 1.6) if hard else (0.9, 2.4)), rng.uniform(2, 8) * f
        n_pieces, fissure = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])), bool(rng.random() < 0.5)
        n_vent = int(rng.choice([0, 1, 2, 3], p=[0.25, 0.3, 0.3, 0.15]))
        n_tears = int(rng.choice([0, 1, 2, 3], p=[0.35, 0.35, 0.2, 0.1]) + (1 if hard else 0))
        rough = rng.uniform(0.5, 2.0) * f
        n_nuclei = int(rng.integers(0, 4))
        fold = bool(rng.random() < (0.3 if hard else 0.1))
    elif section_class == "human_hemisphere":
        n_pieces = int(rng.choice([1, 2], p=[0.6, 0.4]))
        if n_pieces == 1:
            hw = (h * rng.uniform(0.7, 0.94), w * rng.uniform(0.55, 0.92))
        else:
            hw = (h * rng.uniform(0.6, 0.85), w * rng.uniform(0.5, 0.72))
        cortex = rng.uniform(22, 55) * f
        spacing, depth = rng.uniform(2.5, 4.5), rng.uniform(4.5, 9.0)
        halfgap, mouth = ((0.8, 1.6) if hard else (0.9, 2.6)), rng.uniform(2, 10) * f
        fissure = False
        n_vent = int(rng.choice([0, 1, 2], p=[0.3, 0.5, 0.2]))
        n_tears = int(rng.choice([0, 1, 2, 3, 4], p=[0.25, 0.3, 0.2, 0.15, 0.1]) + (1 if hard else 0))
        rough = rng.uniform(0.5, 2.5) * f
        n_nuclei = int(rng.integers(0, 4))
        fold = bool(rng.random() < (0.35 if hard else 0.15))
    else:
        raise ValueError(f"no class-specific geometry for {section_class!r} (one of {SECTION_CLASSES[:-1]})")
    halfgap = (max(halfgap[0], 0.6 * scale), max(halfgap[1], 0.9 * scale))
    # place the main piece anywhere in the frame (small sections: far from the centre too)
    m = 0.03 * min(h, w)
    cy = rng.uniform(min(hw[0] / 2 + m, h / 2), max(h - hw[0] / 2 - m, h / 2))
    cx = rng.uniform(min(hw[1] / 2 + m, w / 2), max(w - hw[1] / 2 - m, w / 2))
    size = float(max(hw)) / (2000.0 * f)  # vessels and tears scale with the section, not the frame
    n_vessels = int(rng.integers(0, max(2, int(round(40 * size * size))) + 1))
    gap = (rng.uniform(3, 12) if hard else rng.uniform(6, 40)) * f
    return GeometryParams(
        section_hw=(float(hw[0]), float(hw[1])),
        center=(float(cy), float(cx)),
        n_pieces=n_pieces,
        cortex=float(max(cortex, 2.5)),
        cortex_var=float(rng.uniform(0.1, 0.3)),
        sulcus_spacing=float(spacing),
        sulcus_depth=float(depth),
        sulcus_halfgap=(float(halfgap[0]), float(halfgap[1])),
        sulcus_mouth=float(mouth),
        fissure=fissure,
        n_ventricles=n_vent,
        n_tears=n_tears,
        tear_halfwidth=float(max(rng.uniform(0.9, 2.5) * f, 0.7 * scale)),
        n_vessels=n_vessels,
        vessel_radius=float(max(rng.uniform(1.5, 4.0) * f, 0.8 * scale)),
        roughness=float(rough),
        piece_gap=float(max(gap, 2.0 * scale)),
        n_nuclei=n_nuclei,
        fold=fold,
        scale=int(scale),
    )
