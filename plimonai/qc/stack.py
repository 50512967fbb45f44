"""Stack consistency: order the slices by section number and flag the ones that do not fit their neighbours.

Slices are ordered by the section number in their name (``..._s0123_...``, see
:func:`section_number`) when every slice has one, else kept in list order. Each usable slice (status
``ok`` or ``skipped`` with figures) is compared with up to ``window`` usable slices on each side
(failed and missing sections are stepped over). Rules, with thresholds from the ``qc`` section of
``inference.json`` (:data:`DEFAULT_QC`):

* ``failed``: the slice failed (the error is the reason);
* ``empty``: tissue area below ``empty_area_fraction`` x the neighbours' median (blank slide; such
  slides are then left out of the other slices' neighbourhoods);
* ``exposure``: glass level (the normalisation's, in file units) off the neighbours' median by more
  than ``exposure_tolerance`` (relative): an over- or under-exposed scan, even one the network copes with;
* ``area``: tissue area off the neighbours' running median by more than ``area_tolerance`` (relative);
* ``pieces``: number of pieces outside the range of the neighbours' counts (widened by
  ``pieces_slack``); a piece is a tissue component of at least ``piece_min_fraction`` of the slice's
  tissue area, counted on the mask thumbnail (crumbs and specks that come and go do not count); the
  ``components`` column of ``summary.csv`` (every kept component) when there is no thumbnail; or
  the largest piece's share of the tissue below the neighbours' median by more than
  ``largest_piece_drop`` (a section torn in two keeps its piece count when a neighbour has a crumb more);
* ``shape``: overlap with the best-matching neighbours below ``shape_iou_min``: soft IoU of the
  masks block-averaged to ``shape_size`` px (tissue fractions, so thin sulci do not count) after
  aligning them (the better of centroid alignment and the best shift by cross-correlation, sub-pixel);
  the second-best of the neighbours' overlaps is taken, so one bad neighbour does
  not make a good slice look bad;
* ``confidence``: confidence (:mod:`plimonai.qc.confidence`) below ``confidence_min``, or below the
  neighbours' median by more than ``confidence_drop``;
* ``tta``: agreement (Dice) of the flipped predictions below ``tta_dice_min`` (only with TTA on).

A rule whose inputs are missing (no neighbours, no thumbnail, no confidence column) is not applied.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_QC", "SECTION_RE", "section_number", "order_records", "aligned_iou", "piece_stats",
           "flag_stack", "qc_settings"]

#: default thresholds (the ``qc`` section of bundle/configs/inference.json overrides them)
DEFAULT_QC: dict[str, Any] = {
    "window": 3,
    "empty_area_fraction": 0.1,
    "area_tolerance": 0.2,
    "exposure_tolerance": 0.2,
    "pieces_slack": 0,
    "piece_min_fraction": 0.01,
    "largest_piece_drop": 0.25,
    "shape_iou_min": 0.85,
    "shape_size": 96,
    "confidence_min": 0.3,
    "confidence_drop": 0.25,
    "tta_dice_min": 0.9,
    "thumb_size": 1024,
    "sample_others": 12,
    "max_flagged_thumbnails": 200,
}

#: ``s`` + digits as a name token: ``PE-2021-00981-H_00_s0920_PM``, ``brain_s12``, ``s7.tif`` (case-insensitive)
SECTION_RE = re.compile(r"(?:^|[_\-.\s])[sS](\d+)(?=$|[_\-.\s])")


def section_number(name: str) -> int | None:
    """Section number of a slice name (the first ``s<digits>`` token), else ``None``.

    >>> section_number("PE-2021-00981-H_00_s0920_PM_Complete"), section_number("brain_s12"), section_number("slice12")
    (920, 12, None)
    """
    m = SECTION_RE.search(str(name))
    return int(m.group(1)) if m else None


def qc_settings(qc: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_QC` updated with ``qc`` (unknown keys raise ``KeyError`` naming them)."""
    out = dict(DEFAULT_QC)
    if qc:
        unknown = sorted(set(qc) - set(out))
        if unknown:
            raise KeyError(f"unknown qc setting(s) {unknown}; known: {sorted(out)}")
        out.update(qc)
    return out


def _num(v: Any) -> float | None:
    """A CSV/record value as float (``None`` for empty, missing, non-numeric or NaN)."""
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def order_records(records: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Copies of ``records`` (dicts with ``slice``) in stack order, each with ``section`` (int or
    ``None``) and ``position`` (0-based place in the stack): by section number when every slice has
    one (stable for equal numbers), else in the given order."""
    recs = [dict(r) for r in records]
    for r in recs:
        r["section"] = section_number(r.get("slice", ""))
    if recs and all(r["section"] is not None for r in recs):
        recs.sort(key=lambda r: r["section"])
    for i, r in enumerate(recs):
        r["position"] = i
    return recs


def _centroid(m: np.ndarray) -> np.ndarray:
    """Weighted centroid (y, x) of a mask of weights >= 0 (the centre for an empty one)."""
    total = float(m.sum())
    if total <= 0:
        return np.array([m.shape[0] / 2, m.shape[1] / 2])
    ys = np.arange(m.shape[0], dtype=np.float64)
    xs = np.arange(m.shape[1], dtype=np.float64)
    return np.array([float(m.sum(axis=1) @ ys) / total, float(m.sum(axis=0) @ xs) / total])


def aligned_iou(a: np.ndarray, b: np.ndarray, max_shift: float = 0.25) -> float:
    """Overlap of two masks after aligning ``b`` on ``a``: the better of centroid alignment and the
    shift that maximises their cross-correlation (sub-pixel: parabola through the peak), each applied
    bilinearly; shifts up to ``max_shift`` x the longer side.

    Masks are binary or tissue fractions in [0, 1] (soft IoU: sum of minima / sum of maxima, the IoU
    for binary masks). Masks of different sizes are compared on a common canvas; two empty masks
    give 1.0, one empty 0.0.
    """
    from scipy import ndimage as ndi

    a = np.clip(np.asarray(a, dtype=np.float32), 0, 1)
    b = np.clip(np.asarray(b, dtype=np.float32), 0, 1)
    na, nb = float(a.sum()), float(b.sum())
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    by_centroid = _centroid(a) - _centroid(b)
    pad = max(4, int(math.ceil(max_shift * max(h, w))), int(math.ceil(np.abs(by_centroid).max())) + 1)
    ca = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    cb = np.zeros_like(ca)
    ca[pad : pad + a.shape[0], pad : pad + a.shape[1]] = a
    cb[pad : pad + b.shape[0], pad : pad + b.shape[1]] = b

    def iou_at(shift) -> float:
        sb = ndi.shift(cb, shift, order=1, mode="constant", cval=0.0)
        union = float(np.maximum(ca, sb).sum())
        return float(np.minimum(ca, sb).sum()) / union if union > 0 else 1.0

    # the shift d of b that maximises sum_x a(x) b(x - d): the peak of IFFT(FFT(a) conj(FFT(b))),
    # searched where the circular correlation equals the linear one (|d| <= pad)
    cc = np.fft.irfft2(np.fft.rfft2(ca) * np.conj(np.fft.rfft2(cb)), s=ca.shape)
    cc = np.fft.fftshift(cc)
    cy, cx = ca.shape[0] // 2, ca.shape[1] // 2
    win = cc[cy - pad : cy + pad + 1, cx - pad : cx + pad + 1]
    py, px = np.unravel_index(int(np.argmax(win)), win.shape)

    def vertex(m1: float, c0: float, p1: float) -> float:  # sub-pixel offset of a parabola's peak
        den = m1 - 2 * c0 + p1
        return float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5)) if den < 0 else 0.0

    sy = vertex(*win[max(py - 1, 0) : py + 2, px]) if 0 < py < win.shape[0] - 1 else 0.0
    sx = vertex(*win[py, max(px - 1, 0) : px + 2]) if 0 < px < win.shape[1] - 1 else 0.0
    by_xcorr = (py - pad + sy, px - pad + sx)
    return max(iou_at(by_xcorr), iou_at(by_centroid))


def _downsample(mask: np.ndarray, size: int) -> np.ndarray:
    """Tissue fraction (float32 in [0, 1]) of blocks of an integer factor that brings the longer side
    of a binary mask to at most ``size``."""
    m = (np.asarray(mask) > 0).astype(np.float32)
    f = math.ceil(max(m.shape) / size) if size else 1
    if f <= 1:
        return m
    h, w = math.ceil(m.shape[0] / f) * f, math.ceil(m.shape[1] / f) * f
    p = np.zeros((h, w), np.float32)
    p[: m.shape[0], : m.shape[1]] = m
    return p.reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def piece_stats(mask: np.ndarray, min_fraction: float = 0.01) -> tuple[int, float]:
    """``(pieces, largest_share)``: the number of 8-connected tissue components of at least
    ``min_fraction`` of the mask's tissue area, and the largest component's share of the tissue
    (``(0, 1.0)`` for an empty mask)."""
    from scipy import ndimage as ndi

    m = np.asarray(mask) > 0
    total = int(m.sum())
    if total == 0:
        return 0, 1.0
    labels, n = ndi.label(m, structure=np.ones((3, 3), bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return int((areas >= max(1.0, min_fraction * total)).sum()), float(areas.max()) / total


def _neighbours(usable: list[int], i: int, window: int) -> list[int]:
    """Up to ``window`` usable positions on each side of position ``i`` (``usable`` sorted)."""
    left = [j for j in usable if j < i][-window:] if window > 0 else []
    right = [j for j in usable if j > i][:window] if window > 0 else []
    return left + right


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}%"


def flag_stack(
    records: Sequence[Mapping[str, Any]],
    thumbs: Mapping[str, np.ndarray] | None = None,
    qc: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Apply the QC rules to a stack.

    Args:
        records: one dict per slice, as in ``summary.csv``: ``slice``, ``status``, ``tissue_area_px``,
            ``components`` and optionally ``confidence``, ``tta_dice``, ``glass_level``, ``error``
            (strings or numbers).
        thumbs: ``{slice name: binary mask thumbnail}`` for the pieces and shape rules (missing names:
            the pieces rule uses ``components``, the shape rule is skipped).
        qc: thresholds overriding :data:`DEFAULT_QC`.

    Returns:
        The records in stack order (:func:`order_records`), each with ``section``, ``position``,
        ``usable``, ``area_ref`` (neighbours' median area), ``area_rel``, ``pieces``, ``pieces_range``,
        ``shape_iou``, ``flags`` (rule names) and ``reasons`` (one text per flag).
    """
    cfg = qc_settings(qc)
    recs = order_records(records)
    thumbs = thumbs or {}
    win = int(cfg["window"])
    area = [_num(r.get("tissue_area_px")) for r in recs]
    pieces = [_num(r.get("components")) for r in recs]
    share: list[float | None] = [None] * len(recs)
    for i, r in enumerate(recs):
        t = thumbs.get(r.get("slice", "")) if r.get("status", "ok") in ("ok", "skipped") else None
        if t is not None:
            n, share[i] = piece_stats(t, float(cfg["piece_min_fraction"]))
            pieces[i] = float(n)
    conf = [_num(r.get("confidence")) for r in recs]
    tta = [_num(r.get("tta_dice")) for r in recs]
    glass = [_num(r.get("glass_level")) for r in recs]
    usable = [i for i, r in enumerate(recs) if r.get("status", "ok") in ("ok", "skipped") and area[i] is not None]
    small: dict[int, np.ndarray] = {}
    for i in usable:
        t = thumbs.get(recs[i].get("slice", ""))
        if t is not None:
            small[i] = _downsample(t, int(cfg["shape_size"]))
    iou_cache: dict[tuple[int, int], float] = {}
    # blank slides first (against all usable neighbours); they are then left out of the other rules'
    # neighbourhoods, so that one blank slide does not widen its neighbours' piece range or overlap
    empty: dict[int, float] = {}
    for i in usable:
        nb = _neighbours(usable, i, win)
        ref = float(np.median([area[j] for j in nb])) if nb else None
        if ref and area[i] < float(cfg["empty_area_fraction"]) * ref:
            empty[i] = ref
    solid = [i for i in usable if i not in empty]

    def iou(i: int, j: int) -> float:
        key = (min(i, j), max(i, j))
        if key not in iou_cache:
            iou_cache[key] = aligned_iou(small[key[0]], small[key[1]])
        return iou_cache[key]

    for i, r in enumerate(recs):
        r.update(usable=i in usable, flags=[], reasons=[], area_ref=None, area_rel=None, pieces_range=None,
                 shape_iou=None, confidence_ref=None, pieces=None if pieces[i] is None else int(pieces[i]),
                 largest_share=share[i])

        def flag(rule: str, reason: str) -> None:
            r["flags"].append(rule)
            r["reasons"].append(f"{rule}: {reason}")

        if r.get("status") == "failed":
            flag("failed", str(r.get("error") or "the slice failed"))
            continue
        if i not in usable:
            continue
        nb_glass = [glass[j] for j in _neighbours([k for k in usable if glass[k]], i, win)]
        if glass[i] is not None and nb_glass:
            ref_g = float(np.median(nb_glass))
            rel = glass[i] / ref_g - 1.0 if ref_g > 0 else 0.0
            if abs(rel) > float(cfg["exposure_tolerance"]):
                kind = "over-exposed" if rel > 0 else "under-exposed"
                flag("exposure", f"glass level {glass[i]:.4g} vs the neighbours' median {ref_g:.4g} ({_pct(rel)}): "
                                 f"{kind} scan?")
        if i in empty:
            r["area_ref"], r["area_rel"] = empty[i], area[i] / empty[i] - 1.0
            flag("empty", f"{area[i]:.0f} px of tissue, neighbours' median {empty[i]:.0f} px (blank slide?)")
            continue
        nb = _neighbours(solid, i, win)
        if nb:
            ref = float(np.median([area[j] for j in nb]))
            r["area_ref"] = ref
            if ref > 0:
                r["area_rel"] = area[i] / ref - 1.0
        if r["area_rel"] is not None and abs(r["area_rel"]) > float(cfg["area_tolerance"]):
            flag("area", f"tissue area {_pct(r['area_rel'])} vs the neighbours' median ({area[i]:.0f} vs "
                         f"{r['area_ref']:.0f} px)")
        nb_pieces = [pieces[j] for j in nb if pieces[j] is not None]
        why = []
        if pieces[i] is not None and nb_pieces:
            lo, hi = min(nb_pieces), max(nb_pieces)
            r["pieces_range"] = (int(lo), int(hi))
            slack = float(cfg["pieces_slack"])
            if pieces[i] < lo - slack or pieces[i] > hi + slack:
                rng = f"{int(lo)}" if lo == hi else f"{int(lo)}-{int(hi)}"
                why.append(f"{int(pieces[i])} piece(s), neighbours have {rng}")
        nb_share = [share[j] for j in nb if share[j] is not None]
        if share[i] is not None and nb_share:
            ref_s = float(np.median(nb_share))
            if share[i] < ref_s - float(cfg["largest_piece_drop"]):
                why.append(f"the largest piece holds {share[i]:.0%} of the tissue, neighbours' median {ref_s:.0%} "
                           f"(torn or split?)")
        if why:
            flag("pieces", "; ".join(why))
        nb_shape = [j for j in nb if j in small]
        if i in small and nb_shape:
            ious = sorted((iou(i, j) for j in nb_shape), reverse=True)
            r["shape_iou"] = float(ious[1] if len(ious) > 1 else ious[0])
            if r["shape_iou"] < float(cfg["shape_iou_min"]):
                flag("shape", f"mask overlap with the best-matching neighbours {r['shape_iou']:.2f} (aligned IoU; "
                              f"minimum {float(cfg['shape_iou_min']):.2f})")
        if conf[i] is not None:
            nb_conf = [conf[j] for j in nb if conf[j] is not None]
            r["confidence_ref"] = float(np.median(nb_conf)) if nb_conf else None
            if conf[i] < float(cfg["confidence_min"]):
                flag("confidence", f"confidence {conf[i]:.2f} below {float(cfg['confidence_min']):.2f}")
            elif r["confidence_ref"] is not None and r["confidence_ref"] - conf[i] > float(cfg["confidence_drop"]):
                flag("confidence", f"confidence {conf[i]:.2f}, neighbours' median {r['confidence_ref']:.2f}")
        if tta[i] is not None and tta[i] < float(cfg["tta_dice_min"]):
            flag("tta", f"flipped predictions agree at Dice {tta[i]:.3f} (minimum {float(cfg['tta_dice_min']):.2f})")
    return recs
