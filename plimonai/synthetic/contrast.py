"""Contrast regimes: the tissue's optical densities of another staining / imaging domain.

``"standard"`` (the default) is the unstained 3D-PLI transmittance the generator was built for:
pale grey matter, dark white matter; the drawn :class:`~plimonai.synthetic.render.RenderParams`
are returned unchanged, so default output stays byte-identical.

``"inverted"``: a stain-like inversion (as in a Nissl / cell-body stain): grey matter is darker
than white matter. Outer grey matter OD 0.45-1.1 (deeper layers 0.7-0.95 x that), white matter
pale, OD 0.10-0.30 (hard slices 0.07-0.15, so pale white matter is barely above glass), deep
nuclei in between; grey matter has the stronger texture. Geometry, artifacts, illumination and
sensor noise are those of the same seed; the new values come from their own random stream
(``child_rng(seed, 12)``). It serves as a domain the shipped model never saw
(``scripts/bench_finetune.py``).
"""

from __future__ import annotations

from dataclasses import replace

from .fields import child_rng

__all__ = ["CONTRASTS", "apply_contrast", "check_contrast"]

CONTRASTS = ("standard", "inverted")
_STREAM = 12  # child_rng(seed, 12): contrast-regime draws (1-11 are used by render, classes, unscanned, retardation)


def check_contrast(contrast: str) -> str:
    """``contrast`` if it is one of :data:`CONTRASTS`, else ``ValueError``."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    return contrast


def apply_contrast(rp, seed: int, contrast: str = "standard", hard: bool = False):
    """The :class:`~plimonai.synthetic.render.RenderParams` ``rp`` of slice ``seed`` in ``contrast``.

    ``"standard"``: ``rp`` itself (no random draw). ``"inverted"``: a copy with the optical densities
    (``od_gm``, ``gm_inner``, ``od_wm``, ``od_nuclei``) and texture strengths redrawn so grey matter is
    darker than white matter (see the module docstring); all other fields kept.
    """
    if check_contrast(contrast) == "standard":
        return rp
    rng = child_rng(seed, _STREAM)
    od_wm = rng.uniform(0.07, 0.15) if hard else rng.uniform(0.10, 0.30)
    od_gm = max(rng.uniform(0.45, 1.1), 2.5 * od_wm + 0.2)
    gm_inner = rng.uniform(0.7, 0.95)  # deeper layers a bit paler, still well above white matter
    od_nuclei = od_wm + rng.uniform(0.3, 0.7) * (od_gm * gm_inner - od_wm)
    return replace(rp, od_gm=float(od_gm), gm_inner=float(gm_inner), od_wm=float(od_wm), od_nuclei=float(od_nuclei),
                   tex_gm=float(rng.uniform(0.06, 0.15)), tex_wm=float(rng.uniform(0.02, 0.06)))
