"""Partial labels from a full mask, as a person would scribble them: a thin band along the tissue
border plus a few brush strokes and blobs inside the tissue and on the glass; the rest unlabelled."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .curves import random_walk

__all__ = ["IGNORE_VALUE", "partial_label"]

IGNORE_VALUE = 255


def _paint_disk(sel: np.ndarray, region: np.ndarray, cy: float, cx: float, r: float) -> int:
    """Add the disc (cy, cx, r) clipped to ``region`` to ``sel`` in place; return the new pixel count."""
    h, w = sel.shape
    y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 2)
    if y0 >= y1 or x0 >= x1:
        return 0
    yy, xx = np.ogrid[y0:y1, x0:x1]
    disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & region[y0:y1, x0:x1] & ~sel[y0:y1, x0:x1]
    sel[y0:y1, x0:x1] |= disk
    return int(disk.sum())


def partial_label(
    mask: np.ndarray,
    seed: int,
    fraction: float = 0.1,
    band: int | None = None,
    ignore_value: int = IGNORE_VALUE,
) -> np.ndarray:
    """Partial label of ``mask`` (H, W; > 0 tissue): uint8 (H, W) with 0/1 where labelled (equal to the
    mask there) and ``ignore_value`` elsewhere. Deterministic for a given ``seed``.

    Labelled: pixels within ``band`` px of the tissue border on both sides (default
    ``max(2, min(H, W) // 400)``, narrowed while the band alone exceeds 60 % of the target), then
    brush strokes and blobs alternately inside the tissue and on the background (away from the band)
    until about ``fraction`` of all pixels are labelled. Each class present in the mask gets at least
    one stroke or blob.
    """
    m = np.asarray(mask) > 0
    h, w = m.shape
    rng = np.random.default_rng([int(seed), 0x5EED_9A27])
    target = float(fraction) * h * w
    b = int(band) if band is not None else max(2, min(h, w) // 400)
    sel = np.zeros((h, w), bool)
    if m.any() and not m.all():
        d_in, d_out = ndi.distance_transform_edt(m), ndi.distance_transform_edt(~m)
        while True:
            sel = (m & (d_in <= b)) | (~m & (d_out <= b))
            if b <= 1 or sel.sum() <= 0.6 * target:
                break
            b -= 1
        regions = [m & (d_in > b), ~m & (d_out > b)]  # stroke interiors: tissue, background
    else:
        regions = [m, ~m]
    count = int(sel.sum())
    pixels = [np.flatnonzero(r) for r in regions]
    need = [len(p) > 0 for p in pixels]  # a class still without a stroke
    for k in range(400):
        if count >= target and not any(need):
            break
        c = k % 2
        if len(pixels[c]) == 0:
            continue
        need[c] = False
        cy, cx = divmod(int(pixels[c][rng.integers(len(pixels[c]))]), w)
        if rng.random() < 0.3:  # blob
            count += _paint_disk(sel, regions[c], cy, cx, rng.uniform(3.0, 8.0) * b)
        else:  # brush stroke
            r = rng.uniform(1.5, 4.0) * b
            path = random_walk(rng, (cy, cx), rng.uniform(0, 2 * np.pi), length=r * rng.uniform(8, 40),
                               step=r * 0.5, turn=1.0, corr=r * 6)
            for py, px in path:
                count += _paint_disk(sel, regions[c], py, px, r)
    out = np.full((h, w), ignore_value, np.uint8)
    out[sel] = m[sel]
    return out
