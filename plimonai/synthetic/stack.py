"""A synthetic stack: consecutive sections of one brain, with injected faults (QC test bed).

One LAP section geometry (:func:`plan_slice` of a base seed with at least two tissue pieces) is
warped slowly from section to section: a scale, rotation and drift plus a smooth elastic
displacement, all smooth functions of the section position, so neighbouring sections differ by a
fraction of a percent in area and keep their pieces. Every section gets its own artifacts (dust,
lint, bubbles...), exposure jitter and sensor noise.

Faults (``STACK_FAULTS``), each visible in the image and, where the tissue changes, in the label:

* ``tear``: a cut across the main piece, one side pulled away (label: background in the gap);
* ``overexposed`` / ``underexposed``: illumination x ``exposure[0]`` (saturates glass and pale grey
  matter) / x ``exposure[1]`` (dark, noisy scan); the label is the true tissue;
* ``missing_piece``: the largest extra piece is absent (image and label);
* ``blank``: a slide without tissue (artifacts only).

Public API::

    sp = plan_stack(n=60, shape=(2080, 2776), seed=0, faults=DEFAULT_FAULTS)
    image, mask = make_stack_section(sp, k)           # uint16, uint8 {0, 1}
    summary = write_stack(out_dir, n=60, shape=None, seed=0, faults=DEFAULT_FAULTS)

Section ``k`` (0-based) is named ``f"{prefix}_s{first_number + k:04d}_lap"``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import tifffile
from scipy import ndimage as ndi

from .artifacts import draw_artifacts, ink_fields
from .dataset import parse_shape, save_preview
from .fields import child_rng, smooth_noise
from .lap import LAP_SHAPE, render_plan
from .render import RenderPlan, plan_slice
from .shapes import FAR

__all__ = ["STACK_FAULTS", "DEFAULT_FAULTS", "StackPlan", "plan_stack", "section_plan", "make_stack_section",
           "write_stack"]

STACK_FAULTS = ("tear", "overexposed", "underexposed", "missing_piece", "blank")
#: the six faults of the benchmark stack (two tears), in the order they are placed along the stack
DEFAULT_FAULTS = ("tear", "overexposed", "missing_piece", "underexposed", "blank", "tear")

_STACK, _ART, _JITTER, _FAULT = 100, 1, 2, 3  # random streams: child_rng(seed, _STACK, k, stream)
_N_TISSUE = 8  # fields 0..7 move with the tissue (phi, depth - thickness, od_gm, od_wm, 4 fibre weights); 8 illumination


@dataclass
class StackPlan:
    """Everything needed to render any section of a stack (see :func:`plan_stack`)."""

    seed: int
    n: int
    shape: tuple[int, int]
    base: RenderPlan
    faults: dict[int, str]  # section index -> fault
    disp: np.ndarray  # (2, 2, Hc, Wc): two smooth displacement fields (dy, dx) in output px
    scale_range: float = 0.1  # relative size change over the stack
    rotation_deg: float = 4.0
    drift: float = 0.02  # drift of the centre over the stack, fraction of the short side
    elastic: float = 0.015  # elastic displacement amplitude, fraction of the short side
    exposure: tuple[float, float] = (2.0, 0.03)  # illumination factors of over-/under-exposed scans
    prefix: str = "synbrain"
    first_number: int = 1
    info: dict = field(default_factory=dict)

    def name(self, k: int) -> str:
        return f"{self.prefix}_s{self.first_number + k:04d}_lap"


def _place_faults(rng: np.random.Generator, n: int, faults: Sequence[str]) -> dict[int, str]:
    """Spread the faults along the stack (not at its ends, at least 3 sections apart where room)."""
    m = len(faults)
    if m == 0:
        return {}
    if m > n:
        raise ValueError(f"{m} faults do not fit in {n} sections")
    lo, hi = (2, n - 3) if n >= m + 4 else (0, n - 1)
    pos = np.linspace(lo, hi, m)
    gap = (hi - lo) / max(m - 1, 1)
    if gap >= 4:
        pos = pos + rng.uniform(-1, 1, m) * min(2.0, (gap - 3) / 2)
    idx = sorted({int(round(p)) for p in pos})
    k = 0
    while len(idx) < m:  # rounding collisions in tiny stacks: fill the first free positions
        if k not in idx:
            idx.append(k)
        k += 1
    return {i: str(f) for i, f in zip(sorted(idx), faults)}


def plan_stack(
    n: int = 60,
    shape: Sequence[int] | str | int | None = None,
    seed: int = 0,
    faults: Sequence[str] | Mapping[int, str] = DEFAULT_FAULTS,
    exposure: tuple[float, float] = (2.0, 0.03),
    prefix: str = "synbrain",
    first_number: int = 1,
) -> StackPlan:
    """Plan a stack of ``n`` sections of ``shape`` (default LAP 2080 x 2776).

    ``faults``: fault names spread along the stack in this order, or ``{section_index: fault}``.
    The base section is the first seed ``seed * 1000 + j`` whose geometry has at least two pieces.
    """
    n, seed = int(n), int(seed)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shp = parse_shape(shape, LAP_SHAPE)
    rng = child_rng(seed, _STACK)
    if isinstance(faults, Mapping):
        placed = {int(k): str(v) for k, v in faults.items()}
        if any(not 0 <= k < n for k in placed):
            raise ValueError(f"fault positions must be in [0, {n}), got {sorted(placed)}")
    else:
        placed = _place_faults(rng, n, list(faults))
    bad = sorted(set(placed.values()) - set(STACK_FAULTS))
    if bad:
        raise ValueError(f"unknown fault(s) {bad}; known: {STACK_FAULTS}")
    base = None
    for j in range(200):
        cand = plan_slice(seed * 1000 + j, shp, "lap", hard=False)
        if len(cand.geometry.blobs) >= 2 and _extra_piece(cand) is not None:
            base = cand
            break
    if base is None:  # pragma: no cover - 200 draws without two pieces
        raise RuntimeError("no base section with two tissue pieces found")
    cs = base.fields.shape[1:]
    corr = max(2.0, 0.35 * min(shp) / base.scale)
    disp = np.stack([np.stack([smooth_noise(rng, cs, corr) for _ in range(2)]) for _ in range(2)]).astype(np.float32)
    sp = StackPlan(seed=seed, n=n, shape=shp, base=base, faults=placed, disp=disp, exposure=tuple(exposure),
                   prefix=prefix, first_number=int(first_number))
    sp.info = {"generator": "plimonai.synthetic.stack", "seed": seed, "n": n, "shape": list(shp),
               "base_seed": base.seed, "pieces": len(base.geometry.blobs), "exposure": list(sp.exposure),
               "faults": {sp.name(k): f for k, f in sorted(placed.items())}}
    return sp


def _extra_piece(plan: RenderPlan) -> int | None:
    """Label of the largest tissue piece other than the main one (None if it has no tissue)."""
    labels, phi = plan.geometry.pieces, plan.fields[0]
    areas = np.bincount(labels[phi > 0].ravel(), minlength=int(labels.max()) + 1)
    if areas.size <= 2:
        return None
    areas[:2] = 0
    k = int(np.argmax(areas))
    return k if areas[k] > 0 else None


def _warp(sp: StackPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Source node coordinates (2, Hc, Wc) of section ``k`` and the node positions (2, Hc, Wc) in px."""
    base, s = sp.base, sp.base.scale
    cs = base.fields.shape[1:]
    t = k / max(sp.n - 1, 1)
    h, w = sp.shape
    size = float(min(h, w))
    zoom = 1.0 + sp.scale_range * (t - 0.5)
    ang = np.deg2rad(sp.rotation_deg) * np.sin(np.pi * t)
    shift = sp.drift * size * (t - 0.5) * np.array([0.6, 1.0])
    a = 1.5 * np.pi * t
    dy, dx = sp.elastic * size * (np.cos(a) * sp.disp[0] + np.sin(a) * sp.disp[1])
    yy, xx = np.meshgrid(np.arange(cs[0], dtype=np.float32) * s, np.arange(cs[1], dtype=np.float32) * s,
                         indexing="ij")
    cy, cx = h / 2.0, w / 2.0
    py, px = yy - cy - shift[0], xx - cx - shift[1]
    c, sn = np.cos(-ang), np.sin(-ang)
    sy = (c * py - sn * px) / zoom + cy + dy
    sx = (sn * py + c * px) / zoom + cx + dx
    return np.stack([sy / s, sx / s]).astype(np.float32), np.stack([yy, xx])


def _sample(fields: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear samples of (C, Hc, Wc) fields at node coordinates (2, ...); phi (channel 0) is far outside."""
    out = np.empty((fields.shape[0], *coords.shape[1:]), np.float32)
    for ch in range(fields.shape[0]):
        cval = -FAR if ch == 0 else 0.0
        mode = "constant" if ch == 0 else "nearest"
        out[ch] = ndi.map_coordinates(fields[ch], coords, order=1, mode=mode, cval=cval)
    return out


def _tear(sp: StackPlan, k: int, tissue: np.ndarray, labels: np.ndarray, coords: np.ndarray, pos: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut the main piece along a wobbly line through its centre, the far side pulled ``d`` px away."""
    s = sp.base.scale
    size = float(min(sp.shape))
    main = (labels == 1) & (tissue[0] > 0)
    cy, cx = (np.argwhere(main).mean(axis=0) * s) if main.any() else (sp.shape[0] / 2, sp.shape[1] / 2)
    th = rng.uniform(0, np.pi)
    ny, nx = np.sin(th), np.cos(th)
    wob = 0.012 * size * smooth_noise(rng, labels.shape, max(2.0, 0.15 * size / s))
    sd = (pos[0] - cy) * ny + (pos[1] - cx) * nx + wob
    g = max(1.5 * s, 0.005 * size)  # half width of the gap
    d = 0.03 * size  # how far the torn part moved
    shifted_coords = coords - np.array([ny * d / s, nx * d / s], np.float32)[:, None, None]
    moved = _sample(sp.base.fields[:_N_TISSUE], shifted_coords)
    moved_labels = ndi.map_coordinates(sp.base.geometry.pieces, shifted_coords, order=0, mode="constant", cval=0)
    phi = tissue[0]
    other = np.where(labels != 1, phi, -FAR)
    side_a = np.where(labels == 1, np.minimum(phi, -sd - g), -FAR)
    side_b = np.where(moved_labels == 1, np.minimum(moved[0], sd - d - g), -FAR)
    new_phi = np.maximum(np.maximum(other, side_a), side_b)
    out = np.where((side_b > np.maximum(other, side_a))[None], moved, tissue)
    out[0] = new_phi
    return out, np.where(side_b > np.maximum(other, side_a), moved_labels, labels)


def section_plan(sp: StackPlan, k: int) -> RenderPlan:
    """The :class:`RenderPlan` of section ``k`` (0-based) of the stack."""
    if not 0 <= k < sp.n:
        raise IndexError(f"section {k} outside the stack of {sp.n}")
    base = sp.base
    fault = sp.faults.get(k, "")
    coords, pos = _warp(sp, k)
    tissue = _sample(base.fields[:_N_TISSUE], coords)
    labels = ndi.map_coordinates(base.geometry.pieces, coords, order=0, mode="constant", cval=0)
    frng = child_rng(sp.seed, _STACK, k, _FAULT)
    if fault == "tear":
        tissue, labels = _tear(sp, k, tissue, labels, coords, pos, frng)
    elif fault == "missing_piece":
        piece = _extra_piece(base)
        tissue[0] = np.where(labels == piece, np.minimum(tissue[0], -1000.0), tissue[0])
    elif fault == "blank":
        tissue[0] = -FAR
    # the warped depth (distance to the pial border) guides where dust and ink may go
    depth = ndi.map_coordinates(base.geometry.depth, coords, order=1, mode="constant", cval=-FAR)
    if fault == "blank" or fault == "missing_piece" or fault == "tear":
        depth = np.minimum(depth, tissue[0]) if fault != "tear" else tissue[0]
    geom = dataclasses.replace(base.geometry, phi=tissue[0], depth=depth.astype(np.float32), pieces=labels)
    jrng = child_rng(sp.seed, _STACK, k, _JITTER)
    art = draw_artifacts(child_rng(sp.seed, _STACK, k, _ART), geom, base.params.unit, False)
    gain = float(jrng.uniform(0.96, 1.04))
    if fault == "overexposed":
        gain *= sp.exposure[0]
    elif fault == "underexposed":
        gain *= sp.exposure[1]
    params = dataclasses.replace(base.params, i0=base.params.i0 * gain)
    stack = [tissue, base.fields[_N_TISSUE : _N_TISSUE + 1]]
    ink = ink_fields(art, sp.shape, base.scale)
    if ink is not None:
        stack.append(np.stack(ink))
    fields = np.concatenate([np.asarray(a, np.float32) for a in stack])
    info = {"stack_seed": sp.seed, "section": k, "name": sp.name(k), "fault": fault, "gain": gain,
            "base_seed": base.seed}
    return dataclasses.replace(base, seed=sp.seed * 100_003 + k + 1, fields=fields, artifacts=art,
                               has_ink=ink is not None, geometry=geom, params=params, info=info)


def make_stack_section(sp: StackPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (uint16 (H, W)) and exact tissue mask (uint8 (H, W), {0, 1}) of section ``k``."""
    return render_plan(section_plan(sp, k))


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it onto ``path``."""
    from plimonai.io.writers import atomic_path

    with atomic_path(path) as tmp:
        write(tmp)


def write_stack(
    out_dir: str | os.PathLike,
    n: int = 60,
    shape: Sequence[int] | str | int | None = None,
    seed: int = 0,
    faults: Sequence[str] | Mapping[int, str] = DEFAULT_FAULTS,
    exposure: tuple[float, float] = (2.0, 0.03),
    preview: bool = False,
    prefix: str = "synbrain",
    first_number: int = 1,
) -> dict:
    """Write a stack as ``OUT/images/NAME.tif``, ``OUT/labels/NAME.tif``, ``OUT/slices.txt`` (stack order)
    and ``OUT/stack_info.json`` (``faults``: {name: fault}); ``preview`` adds ``OUT/previews/NAME.png``.

    Returns ``{"out_dir", "n", "shape", "names", "faults" ({name: fault}), "tissue_fraction", "seconds"}``.
    """
    t0 = time.perf_counter()
    sp = plan_stack(n, shape, seed, faults, exposure, prefix, first_number)
    out = Path(out_dir)
    for sub in ("images", "labels") + (("previews",) if preview else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names, fractions = [], []
    for k in range(sp.n):
        name = sp.name(k)
        image, mask = make_stack_section(sp, k)
        desc = f"plimonai.synthetic.stack seed={seed} section={k} fault={sp.faults.get(k, '') or 'none'}"
        for arr, sub in ((image, "images"), (mask, "labels")):
            _atomic(out / sub / f"{name}.tif",
                    lambda p, a=arr: tifffile.imwrite(p, a, compression="zlib", photometric="minisblack",
                                                      metadata=None, description=desc))
        if preview:
            save_preview(out / "previews" / f"{name}.png", image, mask)
        names.append(name)
        fractions.append(float(mask.mean()))
    _atomic(out / "slices.txt", lambda p: p.write_text("".join(f"images/{nm}.tif\n" for nm in names)))
    info = {**sp.info, "names": names, "tissue_fraction": fractions}
    _atomic(out / "stack_info.json", lambda p: p.write_text(json.dumps(info, indent=1) + "\n"))
    return {"out_dir": str(out), "n": sp.n, "shape": sp.shape, "names": names, "faults": dict(sp.info["faults"]),
            "tissue_fraction": fractions, "seconds": time.perf_counter() - t0}
