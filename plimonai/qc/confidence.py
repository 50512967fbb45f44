"""Per-slice confidence from the network's logits (before they become a mask).

``slice_confidence`` measures how crisp the predicted tissue border is: a pixel is *uncertain* when
its two-class logit margin ``|logit_tissue - logit_background|`` is below ``margin`` (default 2.2,
i.e. a tissue probability between 0.1 and 0.9); the *border band* is every pixel within ``band_px``
of the predicted border. The uncertain share is ``uncertain / (band | uncertain)``: a clean slice
has only the few-pixel transition of its border uncertain (a low share), while a washed-out, noisy
or ambiguous slice has wide uncertain zones, inside the band or away from any border (a share near
1). ``confidence = 1 - share``; a slice without border and without uncertain pixels (plain glass
predicted confidently) has confidence 1.

:class:`SliceConfidenced` goes in the post-processing chain *before* ``LogitsToMaskd`` and stores
``confidence`` (and ``tta_dice``, the agreement between the flipped predictions that
:class:`~plimonai.inferers.PLISlidingWindowInferer` records with ``tta=True``) as floats in the data
dict, where the summary handler picks them up.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["logit_margin", "border_band", "slice_confidence", "SliceConfidenced"]


def logit_margin(logits: Any) -> torch.Tensor:
    """(C, H, W) / (H, W) logits -> (H, W) float32 tissue margin ``logit_1 - logit_0`` (one channel: itself)."""
    t = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    t = t.as_tensor() if hasattr(t, "as_tensor") else t
    if t.ndim == 2:
        return t.float()
    if t.ndim != 3:
        raise ValueError(f"logits must have shape (C, H, W) or (H, W), got {tuple(t.shape)}")
    return (t[1] - t[0]).float() if t.shape[0] >= 2 else t[0].float()


def _max_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Separable (2r+1) x (2r+1) max filter of (1, 1, H, W) (padding never wins: max_pool pads with -inf)."""
    k = 2 * r + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, r))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(r, 0))


def border_band(mask: torch.Tensor, band_px: int) -> torch.Tensor:
    """(H, W) bool -> (H, W) bool: pixels within ``band_px`` (Chebyshev distance) of a tissue/background border."""
    if band_px <= 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    m = mask.float()[None, None]
    dil = _max_filter(m, band_px)
    ero = -_max_filter(-m, band_px)
    return (dil > ero)[0, 0]


def slice_confidence(logits: Any, band_px: int = 8, margin: float = 2.2, valid: Any = None,
                     max_side: int = 1536, edge_band_depth: float = 0.0) -> dict[str, float]:
    """Confidence figures of one slice's logits.

    Args:
        logits: (2, H, W) two-class logits (or one tissue-logit channel), numpy or torch, any device.
        band_px: half width of the border band, in input pixels.
        margin: logit margin below which a pixel is uncertain.
        valid: optional (H, W) / (1, H, W) mask of scanned pixels (others are ignored).
        max_side: slices with a longer side are evaluated on every ``ceil(side / max_side)``-th pixel
            (the band scaled to match): the share is a statistic, full resolution adds nothing.
        edge_band_depth: the post-processing's side-band rule (:func:`~plimonai.transforms.post.remove_edge_bands`):
            bands of tissue or uncertain pixels (margin above ``-margin``) it would remove, and 2 % of the side
            around them, are left out (0: none), so a cover-slip band that the mask does not keep, or that stays
            just below the tissue threshold, does not lower the confidence.

    Returns:
        ``{"confidence": 1 - share, "uncertain_share": share, "uncertain_px": uncertain pixels (full-res estimate)}``.
    """
    d = logit_margin(logits)
    step = max(1, math.ceil(max(d.shape) / max_side)) if max_side else 1
    if step > 1:
        d = d[::step, ::step]
    uncertain = d.abs() < margin
    band = border_band(d > 0, max(1, round(band_px / step)))
    v = None
    if valid is not None:
        v = valid if isinstance(valid, torch.Tensor) else torch.as_tensor(np.asarray(valid))
        v = v.reshape(v.shape[-2:])
        if step > 1:
            v = v[::step, ::step]
        v = v.to(device=d.device) > 0
        uncertain &= v
        band &= v
    if edge_band_depth > 0:
        from plimonai.transforms.post import remove_edge_bands

        # tissue or uncertain: a band beyond a cover-slip edge may stay just below the tissue threshold
        near = d > -margin
        raw = (near & v if v is not None else near).cpu().numpy()
        kept, removed = remove_edge_bands(raw, None if v is None else v.cpu().numpy(), edge_band_depth)
        if removed:
            gone = torch.from_numpy(raw & ~kept).to(d.device).float()[None, None]
            skip = _max_filter(gone, max(1, round(0.02 * max(d.shape))))[0, 0] > 0
            uncertain &= ~skip
            band &= ~skip
    n_unc = int(uncertain.sum())
    denom = int((band | uncertain).sum())
    share = n_unc / denom if denom else 0.0
    return {"confidence": 1.0 - share, "uncertain_share": share, "uncertain_px": float(n_unc * step * step)}


class SliceConfidenced(MapTransform):
    """Store :func:`slice_confidence` of ``data[key]`` (logits) as ``data["confidence"]`` (float),
    ``data["tta_dice"]`` from ``inferer.last_tta_dice`` when the inferer recorded one (flip TTA on),
    and ``data["glass_level"]``, the glass level the normalisation found (``meta["glass_level"]`` of
    ``data[image_key]``, in the file's units: an over- or under-exposed scan stands out against its
    neighbours even when the network copes with it).

    Place it before ``LogitsToMaskd``; the logits are left unchanged. ``valid_key`` names the
    optional valid-pixel mask of the slice.
    """

    def __init__(
        self,
        keys: KeysCollection,
        inferer: Any = None,
        band_px: int = 8,
        margin: float = 2.2,
        valid_key: str | None = "valid",
        confidence_key: str = "confidence",
        tta_key: str = "tta_dice",
        image_key: str | None = "image",
        glass_key: str = "glass_level",
        allow_missing_keys: bool = False,
        edge_band_depth: float = 0.0,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.inferer, self.band_px, self.margin = inferer, int(band_px), float(margin)
        self.edge_band_depth = float(edge_band_depth)
        self.valid_key, self.confidence_key, self.tta_key = valid_key, confidence_key, tta_key
        self.image_key, self.glass_key = image_key, glass_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        valid = d.get(self.valid_key) if self.valid_key else None
        for key in self.key_iterator(d):
            res = slice_confidence(d[key], self.band_px, self.margin, valid, edge_band_depth=self.edge_band_depth)
            d[self.confidence_key] = res["confidence"]
        tta = getattr(self.inferer, "last_tta_dice", None)
        if tta is not None:
            d[self.tta_key] = float(tta)
        meta = getattr(d.get(self.image_key), "meta", None) if self.image_key else None
        glass = meta.get("glass_level") if isinstance(meta, Mapping) else None
        try:
            glass = float(np.asarray(glass.cpu() if isinstance(glass, torch.Tensor) else glass).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            glass = None
        if glass is not None and math.isfinite(glass):
            d[self.glass_key] = glass
        return d
