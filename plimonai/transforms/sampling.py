"""Where training crops come from: a weight map that oversamples the tissue border, and the
seed's fixed section grid (overlapping 1024 sections covering the whole slice)."""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage as ndi

__all__ = ["border_band", "BorderWeightd", "section_starts", "SectionGridd"]


def border_band(label: np.ndarray, width: int, factor: int = 4) -> np.ndarray:
    """Bool (H, W) band of about ``width`` px on both sides of the 0/1 border of ``label`` (H, W).

    Computed on a ``factor``-times coarser grid (crop centres need no pixel precision).
    """
    h, w = label.shape
    f = max(1, int(factor))
    hh, ww = math.ceil(h / f), math.ceil(w / f)
    pad = np.zeros((hh * f, ww * f), dtype=bool)
    pad[:h, :w] = label > 0
    blocks = pad.reshape(hh, f, ww, f)
    anyfg, allfg = blocks.any(axis=(1, 3)), blocks.all(axis=(1, 3))
    r = max(1, round(width / f))
    band = ndi.binary_dilation(anyfg, iterations=r) & ~ndi.binary_erosion(allfg, iterations=r, border_value=1)
    return np.repeat(np.repeat(band, f, axis=0), f, axis=1)[:h, :w]


class BorderWeightd(MapTransform):
    """Add ``weight_key``: (1, H, W) float32 crop-centre weights, ``1 + border_weight`` in the border
    band of the label under ``keys`` and 1 elsewhere (for MONAI's ``RandWeightedCropd``)."""

    def __init__(
        self, keys: KeysCollection, weight_key: str = "crop_weight", width: int = 64, border_weight: float = 4.0
    ) -> None:
        super().__init__(keys)
        self.weight_key, self.width, self.border_weight = weight_key, width, border_weight

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        key = self.first_key(d)
        lab = np.asarray(d[key][0].detach().cpu().numpy() if isinstance(d[key], torch.Tensor) else d[key][0])
        band = border_band(lab == 1, self.width)
        d[self.weight_key] = torch.from_numpy((1.0 + self.border_weight * band).astype(np.float32))[None]
        return d


def section_starts(size: int, section: int) -> list[int]:
    """Evenly spaced starts of ``ceil(size / section)`` windows covering ``[0, size)`` (overlapping)."""
    if size <= section:
        return [0]
    n = math.ceil(size / section)
    return [round(i * (size - section) / (n - 1)) for i in range(n)]


class SectionGridd(MapTransform):
    """The seed's scheme: split each slice into overlapping ``section_size`` sections covering it
    (nine 1024 x 1024 sections for 2080 x 2776). Returns a list of dicts, one per section
    (``(C, h, w)`` crops of every key; slices smaller than a section are kept whole)."""

    def __init__(self, keys: KeysCollection, section_size: Sequence[int] = (1024, 1024)) -> None:
        super().__init__(keys)
        self.section_size = tuple(int(s) for s in section_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        d = dict(data)
        h, w = d[self.first_key(d)].shape[-2:]
        out = []
        for y in section_starts(h, self.section_size[0]):
            for x in section_starts(w, self.section_size[1]):
                item = dict(d)
                for k in self.key_iterator(d):
                    item[k] = d[k][..., y : y + self.section_size[0], x : x + self.section_size[1]]
                item["section_origin"] = (y, x)
                out.append(item)
        return out
