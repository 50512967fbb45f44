"""LAP (Large Area Polarimeter) transmittance slices with exact tissue masks."""

from __future__ import annotations

import numpy as np

from .render import RenderPlan, plan_slice, render_window

__all__ = ["LAP_SHAPE", "make_lap_slice", "render_plan"]

LAP_SHAPE = (2080, 2776)


def render_plan(plan: RenderPlan) -> tuple[np.ndarray, np.ndarray]:
    """Render a whole planned slice: image uint16 (H, W), mask uint8 (H, W) in {0, 1}."""
    return render_window(plan, 0, 0, plan.shape[0], plan.shape[1])


def make_lap_slice(
    seed: int, shape: tuple[int, int] = LAP_SHAPE, hard: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic LAP transmittance slice and its ground truth.

    Args:
        seed: non-negative integer; the same seed gives byte-identical outputs.
        shape: (H, W) in pixels; lengths scale with min(H, W) / 2080.
        hard: force a hard (True) or regular (False) slice; None draws it from the seed (p = 0.3).

    Returns:
        image: uint16 (H, W), bright glass background (~40000-55000 counts), darker tissue.
        mask: uint8 (H, W), 1 tissue, 0 background (holes, artifacts and glass).
    """
    return render_plan(plan_slice(seed, shape, "lap", hard))
