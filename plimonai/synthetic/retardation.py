"""Retardation images matching a planned slice (float32 in [0, 1], like the PLI pipeline's Retardation).

Not PLI physics, but the appearance: glass near 0 (0.005-0.03 plus sensor noise), grey matter low
(0.05-0.15, deeper layers up to 2x brighter), white matter bright (0.45-0.85) and modulated by a
smooth "inclination" field (steep fibres look dark, factor 0.4-1), by the coherence of the
renderer's fibre orientation field (crossing / incoherent regions darker) and by the same oriented
fibre texture as the transmittance; deep nuclei in between; folded flaps brighter. Dust adds a
little (0-0.1 per unit OD), ink, lint, bubbles and holder edges add nothing. Unscanned bands are
exactly 0; elsewhere values are clipped to [1e-4, 1], so 0 means unscanned.

Everything comes from the slice's :class:`~plimonai.synthetic.render.RenderPlan` (its geometry,
fields and texture bank) plus two new random streams, so the transmittance image does not change
when a retardation image is made, and windows / tiles agree like the transmittance does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .fields import child_rng, smooth_noise, smoothstep, upsample_window, wrap_window

__all__ = ["RetardationParams", "plan_retardation", "retardation_window"]

_PARAMS, _NOISE = 10, 11  # child_rng(seed, 10) parameters and fields, (seed, 11, y0, x0) sensor noise
_CHUNK_PX = 1 << 19


@dataclass
class RetardationParams:
    r_glass: float  # glass (background) level
    noise: float  # Gaussian noise std
    r_gm: float  # outer grey matter
    gm_inner: float  # inner / outer grey-matter ratio
    r_wm: float  # white matter before modulation
    r_nuclei: float  # deep grey nuclei
    incl_amp: float  # depth of the inclination modulation (0 none, 0.6: steep fibres at 0.4x)
    tex: float  # log-std of the fibre texture
    fold_gain: float  # relative increase in folded (double) tissue
    dust_gain: float  # retardation per unit dust OD

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RetardationPlan:
    params: RetardationParams
    fields: np.ndarray  # (2, Hc, Wc): grey-matter level, white-matter level


def plan_retardation(plan) -> RetardationPlan:
    """Parameters and coarse level fields of the retardation of ``plan`` (cached on the plan)."""
    cached = getattr(plan, "_retardation", None)
    if cached is not None:
        return cached
    geom = plan.geometry
    rng = child_rng(plan.seed, _PARAMS)
    r_gm = rng.uniform(0.05, 0.15)
    r_wm = rng.uniform(0.45, 0.85)
    rp = RetardationParams(
        r_glass=float(rng.uniform(0.005, 0.03)), noise=float(rng.uniform(0.005, 0.02)),
        r_gm=float(r_gm), gm_inner=float(rng.uniform(1.2, 2.0)), r_wm=float(r_wm),
        r_nuclei=float(r_gm + rng.uniform(0.15, 0.45) * (r_wm - r_gm)),
        incl_amp=float(rng.uniform(0.25, 0.6)), tex=float(rng.uniform(0.05, 0.15)),
        fold_gain=float(rng.uniform(0.2, 0.6)), dust_gain=float(rng.uniform(0.0, 0.1)),
    )
    s, cs = geom.scale, geom.phi.shape
    cortex = geom.params.cortex
    layer = smoothstep(np.clip(geom.depth, 0, None) / np.maximum(geom.thickness, 1e-3))
    gm = rp.r_gm * (1 + (rp.gm_inner - 1) * layer)
    incl = 1 - rp.incl_amp * smoothstep(0.5 + 0.35 * smooth_noise(rng, cs, max(2.0, 4 * cortex / s)))
    coh = np.clip(np.hypot(geom.orient[0], geom.orient[1]), 0, 1)
    wm = rp.r_wm * incl * (0.6 + 0.4 * coh)
    wm = wm + (rp.r_nuclei - wm) * geom.nuclei
    fold = 1 + rp.fold_gain * geom.fold
    out = RetardationPlan(rp, np.stack([gm * fold, wm * fold]).astype(np.float32))
    plan._retardation = out
    return out


def retardation_window(plan, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Retardation float32 (h, w) in [0, 1] of an output window of ``plan`` (row chunks of ~0.5 Mpx;
    noise seeded by (seed, chunk origin), like :func:`~plimonai.synthetic.render.render_window`)."""
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > plan.shape[0] or x0 + w > plan.shape[1]:
        raise ValueError(f"window ({y0}, {x0}, {h}, {w}) outside the slice {plan.shape}")
    rplan = plan_retardation(plan)
    out = np.empty((h, w), dtype=np.float32)
    rows = max(8, _CHUNK_PX // max(w, 1))
    for r0 in range(0, h, rows):
        rh = min(rows, h - r0)
        out[r0 : r0 + rh] = _chunk(plan, rplan, y0 + r0, x0, rh, w)
    return out


def _chunk(plan, rplan: RetardationPlan, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    from .render import _NT  # tissue fields: phi, depth - thickness, od_gm, od_wm, 4 orientation weights

    rp, s = rplan.params, plan.scale
    j0, j1 = y0 // s, (y0 + h - 1) // s + 2
    i0, i1 = x0 // s, (x0 + w - 1) // s + 2
    r = np.full((h, w), rp.r_glass, dtype=np.float32)
    if float(plan.fields[0, j0:j1, i0:i1].max()) > -0.5:
        phi, d_rel, *wk = upsample_window(plan.fields[[0, 1, *range(4, _NT)]], s, y0, x0, h, w)
        gm, wmv = upsample_window(rplan.fields, s, y0, x0, h, w)
        wm = smoothstep(d_rel / plan.params.gm_wm_width + 0.5)
        tex = [wrap_window(b, y0 + int(o[0]), x0 + int(o[1]), h, w, p)
               for b, o, p in zip(plan.bank, plan.bank_offsets, plan.bank_periods)]
        an = wk[0] * tex[0]
        for wt, tx in zip(wk[1:], tex[1:-1]):
            an += wt * tx
        r_t = (gm + (wmv - gm) * wm) * np.exp(np.float32(rp.tex) * (0.3 * tex[-1] + wm * an))
        np.clip(r_t, 0, 0.98, out=r_t)
        r += np.clip(phi + 0.5, 0, 1) * (r_t - np.float32(rp.r_glass))
    if rp.dust_gain > 0 and len(plan.artifacts.spots):
        from .artifacts import Artifacts

        dust = Artifacts(spots=plan.artifacts.spots).window(y0, x0, h, w)[0]
        r += np.float32(rp.dust_gain) * np.minimum(dust, 1)
    r += np.float32(rp.noise) * child_rng(plan.seed, _NOISE, y0, x0).standard_normal((h, w), dtype=np.float32)
    np.clip(r, 1e-4, 1.0, out=r)
    if plan.unscanned is not None:
        plan.unscanned.zero_window(r, y0, x0)
    return r
