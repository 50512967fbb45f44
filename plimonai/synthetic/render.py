"""Intensity model: geometry + artifacts -> transmittance -> camera counts, window by window.

Beer-Lambert model: transmittance T = exp(-OD) relative to clean glass (T = 1).
Grey matter has a low optical density (pale, deeper layers a bit darker), white matter a high
one with fibre-like anisotropic texture (periodic FFT noise at three orientations blended by the
local fibre orientation), deep nuclei in between. Artifacts add OD (dust, bubble rims, edges, ink)
or a gain (bubble interiors). The camera multiplies by illumination (vignetting, gradient,
mosaic shading for PM), adds an offset and Poisson-like + Gaussian read noise, and quantises to
uint16. Every random draw per window is seeded by (seed, window origin), so any tiling of the
same slice yields the same pixels except for the independent per-window sensor noise.

Options with defaults that reproduce the original output exactly (each uses its own random stream):
``section_class`` (:mod:`~plimonai.synthetic.classes`), ``unscanned_border``
(:mod:`~plimonai.synthetic.unscanned`), ``output_format="ntransmittance"`` (:func:`ntransmittance`)
and the matching retardation image (:mod:`~plimonai.synthetic.retardation`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .artifacts import Artifacts, draw_artifacts, ink_fields
from .fields import (
    child_rng,
    coarse_shape,
    smooth_noise,
    smoothstep,
    texture_bank,
    upsample_window,
    wrap_window,
)
from .classes import draw_class_geometry_params, parse_section_class, pick_section_class
from .contrast import apply_contrast
from .geometry import SectionGeometry, build_section, draw_geometry_params
from .unscanned import Unscanned, draw_unscanned

__all__ = ["RenderParams", "RenderPlan", "draw_render_params", "plan_slice", "render_window",
           "transmittance_window", "draw_hard", "ntransmittance", "OUTPUT_FORMATS"]

# random stream ids (child_rng(seed, id, ...))
_HARD, _GEOM, _PARAMS, _ART, _FIELDS, _NOISE = 1, 2, 3, 4, 5, 6
_NTRANS = 9  # NTransmittance normalisation (7: section class, 8: unscanned borders, 10-11: retardation)
OUTPUT_FORMATS = ("uint16", "ntransmittance")
FIBRE_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
_NT = 4 + len(FIBRE_ANGLES)  # tissue fields before the illumination field
CHUNK_PX = 1 << 19  # pixels rendered at once
NOISE_BANK_ABOVE = 64 << 20  # images with more pixels draw sensor noise from a per-slice bank


@dataclass
class RenderParams:
    """One slice's drawn intensity/acquisition parameters (lengths in output px)."""

    i0: float  # glass counts at the illumination peak
    offset: float  # dark counts
    od_gm: float  # optical density of outer grey matter
    gm_inner: float  # inner-layer / outer-layer grey-matter OD ratio
    od_wm: float  # white matter OD
    od_nuclei: float  # deep grey nuclei OD
    od_mod: float  # std of smooth log-OD variation across the section
    fold_od: float  # extra OD fraction in folded (double) tissue
    tex_wm: float  # std of log-OD texture in white matter
    tex_gm: float  # std of log-OD texture in grey matter
    gm_wm_width: float  # width of the grey/white transition
    rim_od: float  # dark rim at the tissue edge (0 = none)
    rim_width: float
    vignetting: float  # relative illumination loss at the farthest corner
    vig_center: tuple[float, float]  # optical centre, relative (y, x)
    gradient: float  # linear illumination gradient across the image
    gradient_angle: float
    illum_noise: float  # smooth illumination unevenness (relative std)
    mosaic: float  # PM tile shading depth (0 for LAP)
    mosaic_period: float
    noise_rel: float  # shot-noise std relative to the glass level
    read_noise: float  # Gaussian read noise, counts
    l_par: float  # fibre texture length along fibres
    l_perp: float  # ... across fibres
    l_iso: float  # isotropic (cell) texture length
    bank_size: int  # texture period
    unit: float  # artifact size unit (output px per LAP px)

    def to_dict(self) -> dict:
        return asdict(self)


def draw_hard(seed: int, fraction: float = 0.3) -> bool:
    """Slice-level hard flag of ``seed`` (true with probability ``fraction``)."""
    return bool(child_rng(seed, _HARD).random() < fraction)


def draw_render_params(rng: np.random.Generator, shape: tuple[int, int], kind: str, hard: bool) -> RenderParams:
    """Draw :class:`RenderParams`; hard slices get low grey-matter contrast, strong vignetting and noise."""
    h, w = shape
    if kind == "lap":
        f = min(h, w) / 2080.0
        tex = dict(l_par=rng.uniform(8, 25) * max(f, 0.3), l_perp=max(0.6, rng.uniform(1.0, 2.0) * f),
                   l_iso=max(0.6, rng.uniform(0.8, 2.0) * f))
        bank = int(min(768, max(128, 2 ** int(np.ceil(np.log2(max(h, w)))))))
        unit, gmw, rim_w, mosaic = f, rng.uniform(2, 8) * f, rng.uniform(1, 3) * f, 0.0
        i0 = rng.uniform(40000, 55000)
    else:
        f = min(h, w) / 20000.0
        tex = dict(l_par=rng.uniform(30, 100), l_perp=rng.uniform(1.5, 3.0), l_iso=rng.uniform(2.0, 4.0))
        bank = 1536 if max(h, w) > 2048 else 512
        unit, gmw, rim_w = max(1.0, 12 * f), rng.uniform(20, 80) * f, rng.uniform(5, 20) * f
        mosaic = rng.uniform(0.0, 0.1) if rng.random() < 0.5 else 0.0
        i0 = rng.uniform(30000, 55000)
    od_gm = rng.uniform(0.05, 0.12) if hard else rng.uniform(0.08, 0.3)
    gm_inner = rng.uniform(1.1, 1.7)
    od_in = od_gm * gm_inner
    od_wm = max(rng.uniform(0.4, 1.0) if hard else rng.uniform(0.6, 1.6), 1.6 * od_in + 0.15)
    return RenderParams(
        i0=float(i0), offset=float(rng.uniform(100, 1200)),
        od_gm=float(od_gm), gm_inner=float(gm_inner), od_wm=float(od_wm),
        od_nuclei=float(od_in + rng.uniform(0.35, 0.8) * max(od_wm - od_in, 0.05)),
        od_mod=float(rng.uniform(0.05, 0.2)), fold_od=float(rng.uniform(0.6, 1.0)),
        tex_wm=float(rng.uniform(0.03, 0.11)), tex_gm=float(rng.uniform(0.03, 0.12)),
        gm_wm_width=float(max(gmw, 0.8)),
        rim_od=float(rng.uniform(0.03, 0.2) if rng.random() < 0.35 else 0.0), rim_width=float(max(rim_w, 0.7)),
        vignetting=float(rng.uniform(0.25, 0.5) if hard else rng.uniform(0.03, 0.25)),
        vig_center=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
        gradient=float(rng.uniform(0.05, 0.2) if hard else rng.uniform(0.0, 0.08)),
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        illum_noise=float(rng.uniform(0.005, 0.03)),
        mosaic=float(mosaic), mosaic_period=float(rng.choice([2048.0, 2560.0]) * max(f, 0.1)),
        noise_rel=float(rng.uniform(0.008, 0.02) if hard else rng.uniform(0.004, 0.015)),
        read_noise=float(rng.uniform(20, 150)),
        bank_size=bank, unit=float(unit), **{k: float(v) for k, v in tex.items()},
    )


@dataclass
class RenderPlan:
    """Everything needed to render any window of one slice.

    fields: float32 (C, Hc, Wc) node fields: 0 phi, 1 depth - thickness, 2 od_gm, 3 od_wm,
    4-7 fibre orientation weights, 8 illumination, [9 ink_in, 10 ink_od when ``has_ink``].
    """

    seed: int
    kind: str
    hard: bool
    shape: tuple[int, int]
    scale: int
    geometry: SectionGeometry
    params: RenderParams
    artifacts: Artifacts
    fields: np.ndarray
    bank: list
    bank_offsets: np.ndarray
    bank_periods: list
    has_ink: bool
    info: dict = field(default_factory=dict)
    noise_bank: np.ndarray | None = None  # standard normal (P, P) for very large images
    section_class: str = "human"
    unscanned: Unscanned | None = None  # zero-padded bands (None: fully scanned, the default)


def _illumination(rng, cs, scale, shape, rp: RenderParams) -> np.ndarray:
    h, w = shape
    ys = (np.arange(cs[0]) * float(scale))[:, None]
    xs = (np.arange(cs[1]) * float(scale))[None, :]
    cy, cx = h * (0.5 + rp.vig_center[0]), w * (0.5 + rp.vig_center[1])
    rmax = max(np.hypot(max(cy, h - cy), max(cx, w - cx)), 1.0)
    r2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / rmax**2
    illum = 1 - rp.vignetting * r2
    diag = np.hypot(h, w)
    g = ((xs - w / 2) * np.cos(rp.gradient_angle) + (ys - h / 2) * np.sin(rp.gradient_angle)) / diag
    illum = illum * (1 + rp.gradient * 2 * g)
    illum = illum * (1 + rp.illum_noise * smooth_noise(rng, cs, max(2.0, 0.3 * min(h, w) / scale)))
    if rp.mosaic > 0:
        fy = 2 * ((ys / rp.mosaic_period) % 1.0) - 1
        fx = 2 * ((xs / rp.mosaic_period) % 1.0) - 1
        illum = illum * (1 - rp.mosaic * 0.5 * (fy**2 + fx**2))
    return illum.astype(np.float32)


def plan_slice(seed: int, shape: tuple[int, int], kind: str = "lap", hard: bool | None = None,
               hard_fraction: float = 0.3, section_class: str = "human",
               unscanned_border: float = 0.0, contrast: str = "standard") -> RenderPlan:
    """Draw geometry, parameters, artifacts and coarse fields of slice ``seed`` (no pixels yet).

    ``section_class``: "human" (default, the original whole human section), "mouse", "rat",
    "monkey", "human_hemisphere", "mixed" (one class per seed) or a comma-separated list (LAP only,
    see :mod:`~plimonai.synthetic.classes`). ``unscanned_border``: probability (True = 1) that the
    slice has zero-padded unscanned bands (:mod:`~plimonai.synthetic.unscanned`). ``contrast``:
    "standard" (default) or "inverted" (grey matter darker than white matter,
    :mod:`~plimonai.synthetic.contrast`).
    """
    if hard is None:
        hard = draw_hard(seed, hard_fraction)
    shape = (int(shape[0]), int(shape[1]))
    classes = parse_section_class(section_class)
    cls = pick_section_class(seed, classes)
    if cls != "human" and kind != "lap":
        raise ValueError(f"section_class {cls!r} is only available for kind='lap'")
    rng = child_rng(seed, _GEOM)
    gp = draw_geometry_params(rng, shape, kind, hard) if cls == "human" else draw_class_geometry_params(
        rng, shape, cls, hard)
    geom = build_section(rng, shape, gp)
    rp = apply_contrast(draw_render_params(child_rng(seed, _PARAMS), shape, kind, hard), seed, contrast, hard)
    art = draw_artifacts(child_rng(seed, _ART), geom, rp.unit, hard)
    unscanned = draw_unscanned(seed, geom, rp.unit, float(unscanned_border))
    s, cs = geom.scale, coarse_shape(shape, geom.scale)

    frng = child_rng(seed, _FIELDS)
    mod = np.exp(rp.od_mod * smooth_noise(frng, cs, max(2.0, 0.25 * min(shape) / s))).astype(np.float32)
    fold = 1 + rp.fold_od * geom.fold
    layer = smoothstep(np.clip(geom.depth, 0, None) / np.maximum(geom.thickness, 1e-3))
    od_gm = rp.od_gm * (1 + (rp.gm_inner - 1) * layer) * mod * fold
    od_wm = (rp.od_wm + (rp.od_nuclei - rp.od_wm) * geom.nuclei) * mod * fold
    # fibre orientation -> weights of the three oriented texture layers (sum of squares = 1)
    e = np.array([[np.cos(2 * a), np.sin(2 * a)] for a in FIBRE_ANGLES], dtype=np.float32)
    logits = 2.0 * np.einsum("kc,chw->khw", e, geom.orient)
    wts = np.exp(logits - logits.max(axis=0, keepdims=True))
    wts /= np.sqrt((wts * wts).sum(axis=0, keepdims=True))
    illum = _illumination(frng, cs, s, shape, rp)
    stack = [geom.phi, geom.depth - geom.thickness, od_gm, od_wm, *wts, illum]
    ink = ink_fields(art, shape, s)
    if ink is not None:
        stack += list(ink)
    fields = np.stack([np.asarray(a, dtype=np.float32) for a in stack])

    b = rp.bank_size
    sizes = (b, b * 17 // 16, b * 9 // 8, b * 15 // 16, b * 5 // 4)
    bank = texture_bank(frng, sizes, FIBRE_ANGLES, rp.l_par, rp.l_perp, rp.l_iso)
    offsets = frng.integers(0, b, (len(bank), 2))
    periods = [x.shape for x in bank]
    if kind == "pm":  # pad by one tile so tile-sized windows are views (no copies)
        bank = [np.pad(x, ((0, 1024), (0, 1024)), mode="wrap") for x in bank]
    info = {"seed": int(seed), "kind": kind, "hard": bool(hard), "shape": list(shape),
            "geometry": gp.to_dict(), "render": rp.to_dict(), "artifacts": art.summary(),
            "pieces_placed": len(geom.blobs)}
    if classes != ("human",):  # only with the option: default metadata stays byte-identical
        info["section_class"] = cls
    if unscanned is not None:
        info["unscanned"] = unscanned.summary()
    if contrast != "standard":
        info["contrast"] = contrast
    noise_bank = None
    if shape[0] * shape[1] > NOISE_BANK_ABOVE:
        noise_bank = frng.standard_normal((2039, 2039), dtype=np.float32)  # prime size: no tile-aligned repeats
        noise_bank = np.pad(noise_bank, ((0, 1024), (0, 1024)), mode="wrap")
    return RenderPlan(seed=int(seed), kind=kind, hard=bool(hard), shape=shape, scale=s, geometry=geom, params=rp,
                      artifacts=art, fields=fields, bank=bank, bank_offsets=offsets, bank_periods=periods,
                      has_ink=ink is not None, info=info, noise_bank=noise_bank, section_class=cls,
                      unscanned=unscanned)


def transmittance_window(plan: RenderPlan, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free transmittance (float32 (h, w), glass = 1, before illumination) and mask (uint8)."""
    s, rp = plan.scale, plan.params
    j0, j1 = y0 // s, (y0 + h - 1) // s + 2
    i0, i1 = x0 // s, (x0 + w - 1) // s + 2
    phi_sub = plan.fields[0, j0:j1, i0:i1]
    od = np.zeros((h, w), dtype=np.float32)
    if float(phi_sub.max()) > -0.5:  # some tissue in this window
        phi, d_rel, od_gm, od_wm, *wk = upsample_window(plan.fields[:_NT], s, y0, x0, h, w)
        mask = (phi > 0).astype(np.uint8)
        wm = smoothstep(d_rel / rp.gm_wm_width + 0.5)
        tex = [wrap_window(b, y0 + int(o[0]), x0 + int(o[1]), h, w, p)
               for b, o, p in zip(plan.bank, plan.bank_offsets, plan.bank_periods)]
        an = wk[0] * tex[0]
        for wt, tx in zip(wk[1:], tex[1:-1]):
            an += wt * tx
        iso = tex[-1]
        gm_tex = rp.tex_gm * 0.7 * (iso + an)
        logmod = gm_tex + wm * (rp.tex_wm * (0.8 * an + 0.6 * iso) - gm_tex)
        od_t = (od_gm + (od_wm - od_gm) * wm) * np.exp(logmod)
        if rp.rim_od > 0:
            od_t += rp.rim_od * np.clip(1 - phi / rp.rim_width, 0, 1)
        od = np.clip(phi + 0.5, 0, 1) * od_t
    else:
        mask = np.zeros((h, w), dtype=np.uint8)
    if plan.has_ink and float(plan.fields[_NT + 1, j0:j1, i0:i1].max()) > -0.5:
        ink_in, ink_od = upsample_window(plan.fields[_NT + 1 : _NT + 3], s, y0, x0, h, w)
        od += ink_od * np.clip(ink_in + 0.5, 0, 1)
    art_od, gain = plan.artifacts.window(y0, x0, h, w)
    od += art_od
    if plan.unscanned is not None:
        holder = plan.unscanned.od_window(y0, x0, h, w)
        if holder is not None:
            od += holder
        plan.unscanned.zero_window(mask, y0, x0)
    t = np.exp(-od)
    if gain is not None:
        t *= gain
    return t.astype(np.float32, copy=False), mask


def render_window(plan: RenderPlan, y0: int, x0: int, h: int, w: int,
                  output_format: str = "uint16") -> tuple[np.ndarray, np.ndarray]:
    """Camera image (uint16 (h, w)) and tissue mask (uint8 (h, w), {0, 1}) of one output window.

    Works in row chunks of ~0.5 Mpx (temporaries stay small); sensor noise is seeded by
    (seed, chunk origin), so a given window layout always gives the same bytes.
    ``output_format="ntransmittance"``: the image is float32 NTransmittance (:func:`ntransmittance`
    of the same counts).
    """
    if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > plan.shape[0] or x0 + w > plan.shape[1]:
        raise ValueError(f"window ({y0}, {x0}, {h}, {w}) outside the slice {plan.shape}")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    nt = output_format == "ntransmittance"
    image = np.empty((h, w), dtype=np.float32 if nt else np.uint16)
    mask = np.empty((h, w), dtype=np.uint8)
    rows = max(8, CHUNK_PX // max(w, 1))
    for r0 in range(0, h, rows):
        rh = min(rows, h - r0)
        counts, mask[r0 : r0 + rh] = _render_chunk(plan, y0 + r0, x0, rh, w)
        image[r0 : r0 + rh] = ntransmittance(plan, counts, y0 + r0, x0) if nt else counts
    return image, mask


def ntransmittance_params(plan: RenderPlan) -> tuple[float, float]:
    """(glass level 0.87-0.93, flat-field correction strength 0.7-1.0) of ``plan``'s NTransmittance."""
    rng = child_rng(plan.seed, _NTRANS)
    return float(rng.uniform(0.87, 0.93)), float(rng.uniform(0.7, 1.0))


def ntransmittance(plan: RenderPlan, counts: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """Camera counts (h, w) of the window at (y0, x0) -> float32 NTransmittance in [0, 1].

    ``glass * (counts - offset) / (i0 * illumination**k)``: dark offset removed, divided by the glass
    level and a flat field that corrects a fraction ``k`` of the (log) illumination, so glass reads
    ~0.87-0.93 with noise and a little residual vignetting; clipped to [1e-4, 1] and exactly 0 in
    unscanned bands (so 0 marks "not scanned", as in the PLI pipeline).
    """
    rp = plan.params
    h, w = counts.shape
    glass, k = ntransmittance_params(plan)
    illum = upsample_window(plan.fields[_NT : _NT + 1], plan.scale, y0, x0, h, w)[0]
    np.maximum(illum, np.float32(1e-3), out=illum)
    out = counts.astype(np.float32)
    out -= np.float32(rp.offset)
    out *= np.float32(glass / rp.i0)
    out /= illum if k == 1.0 else np.power(illum, np.float32(k))
    np.clip(out, 1e-4, 1.0, out=out)
    if plan.unscanned is not None:
        plan.unscanned.zero_window(out, y0, x0)
    return out


def _render_chunk(plan: RenderPlan, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rp = plan.params
    t, mask = transmittance_window(plan, y0, x0, h, w)
    illum = upsample_window(plan.fields[_NT : _NT + 1], plan.scale, y0, x0, h, w)[0]
    signal = illum
    signal *= np.float32(rp.i0)
    signal *= t
    rng = child_rng(plan.seed, _NOISE, y0, x0)
    gain_e = np.float32(rp.noise_rel**2 * rp.i0)  # shot-noise variance per count
    sigma = signal * gain_e
    sigma += np.float32(rp.read_noise**2)
    np.sqrt(sigma, out=sigma)
    if plan.noise_bank is None:
        sigma *= rng.standard_normal((h, w), dtype=np.float32)
    else:  # huge PM images: white noise from a random window of a per-slice bank (much cheaper)
        oy, ox = rng.integers(0, 2039, 2)
        sigma *= wrap_window(plan.noise_bank, int(oy), int(ox), h, w, (2039, 2039))
    sigma += signal
    sigma += np.float32(rp.offset + 0.5)  # + 0.5: truncation below rounds to nearest
    np.clip(sigma, 0, 65535, out=sigma)
    image = sigma.astype(np.uint16)
    if plan.unscanned is not None:
        plan.unscanned.zero_window(image, y0, x0)
    return image, mask
