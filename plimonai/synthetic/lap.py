"""LAP (Large Area Polarimeter) transmittance slices with exact tissue masks."""

from __future__ import annotations

import numpy as np

from .render import RenderPlan, plan_slice, render_window
from .retardation import retardation_window

__all__ = ["LAP_SHAPE", "make_lap_slice", "render_plan", "render_retardation"]

LAP_SHAPE = (2080, 2776)


def render_plan(plan: RenderPlan, output_format: str = "uint16") -> tuple[np.ndarray, np.ndarray]:
    """Render a whole planned slice: image uint16 (H, W) (or float32 NTransmittance), mask uint8 (H, W) in {0, 1}."""
    return render_window(plan, 0, 0, plan.shape[0], plan.shape[1], output_format=output_format)


def render_retardation(plan: RenderPlan) -> np.ndarray:
    """The matching retardation image of a planned slice, float32 (H, W) in [0, 1]."""
    return retardation_window(plan, 0, 0, plan.shape[0], plan.shape[1])


def make_lap_slice(
    seed: int,
    shape: tuple[int, int] = LAP_SHAPE,
    hard: bool | None = None,
    section_class: str = "human",
    unscanned_border: float = 0.0,
    output_format: str = "uint16",
    retardation: bool = False,
    contrast: str = "standard",
) -> tuple[np.ndarray, ...]:
    """Synthetic LAP transmittance slice and its ground truth.

    Args:
        seed: non-negative integer; the same seed gives byte-identical outputs.
        shape: (H, W) in pixels; lengths scale with min(H, W) / 2080.
        hard: force a hard (True) or regular (False) slice; None draws it from the seed (p = 0.3).
        section_class: "human" (default), "mouse", "rat", "monkey", "human_hemisphere", "mixed" or a
            comma-separated list (see :mod:`plimonai.synthetic.classes`).
        unscanned_border: probability (True = 1) of zero-padded unscanned bands (image and mask 0 there).
        output_format: "uint16" camera counts (default) or "ntransmittance" (float32 in [0, 1]).
        retardation: also return the matching retardation image.
        contrast: "standard" (default) or "inverted" (grey matter darker than white matter, see
            :mod:`plimonai.synthetic.contrast`).

    Returns:
        image: uint16 (H, W), bright glass background (~40000-55000 counts), darker tissue
            (or float32 NTransmittance, glass ~0.9).
        mask: uint8 (H, W), 1 tissue, 0 background (holes, artifacts, glass, unscanned bands).
        retardation (only with ``retardation=True``): float32 (H, W) in [0, 1].
    """
    plan = plan_slice(seed, shape, "lap", hard, section_class=section_class, unscanned_border=unscanned_border,
                      contrast=contrast)
    image, mask = render_plan(plan, output_format)
    if retardation:
        return image, mask, render_retardation(plan)
    return image, mask
