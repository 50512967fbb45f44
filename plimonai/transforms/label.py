"""Label checks for training data: binary values and matching sizes, with errors naming the file."""

from __future__ import annotations

import warnings
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = ["BinarizeLabel", "BinarizeLabeld", "CheckSameSized", "LabelValueError", "source_name"]


class LabelValueError(ValueError):
    """A label image with values other than the accepted ones."""


def source_name(img, fallback: str = "<array>") -> str:
    """The file an array came from (``meta['filename_or_obj']``), for error messages."""
    if isinstance(img, MetaTensor):
        return str(img.meta.get("filename_or_obj", fallback))
    return fallback


class BinarizeLabel(Transform):
    """Map a label of {0, 1} or {0, 255} to {0, 1} float32; any other value is an error.

    With ``ignore_value`` set (e.g. 255 for partial labels), that value is kept as the
    "unlabelled" marker instead and {0, 255} is no longer mapped. Shape unchanged.
    """

    def __init__(self, ignore_value: int | None = None) -> None:
        self.ignore_value = ignore_value

    def __call__(self, img):
        name = source_name(img)
        t = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
        values = torch.unique(t)
        allowed = {0.0, 1.0}
        if self.ignore_value is not None:
            allowed.add(float(self.ignore_value))
        vals = {float(v) for v in values.tolist()}
        if self.ignore_value is None and vals <= {0.0, 255.0} and 255.0 in vals:
            t = (t > 0).to(torch.float32)
        elif not vals <= allowed:
            bad = sorted(vals - allowed)[:5]
            raise LabelValueError(
                f"{name}: label values must be 0/1 (or 0/255), found {bad}"
                + (f" (unlabelled marker is {self.ignore_value})" if self.ignore_value is not None else "")
            )
        else:
            if self.ignore_value is not None and 1.0 not in vals and float(self.ignore_value) in vals:
                warnings.warn(f"{name}: label has {self.ignore_value} (unlabelled) and 0 but no tissue (1): a full label "
                              f"stored as 0/{self.ignore_value}? With partial labels on, store full labels as 0/1.")
            t = t.to(torch.float32)
        if isinstance(img, MetaTensor) and not isinstance(t, MetaTensor):
            t = MetaTensor(t, meta=img.meta)
        return t


class BinarizeLabeld(MapTransform):
    """Dictionary wrapper of :class:`BinarizeLabel`."""

    def __init__(self, keys: KeysCollection, ignore_value: int | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = BinarizeLabel(ignore_value)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d


class CheckSameSized(MapTransform):
    """Raise ``ValueError`` naming both files when the spatial sizes of ``keys`` differ."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        shapes = {k: tuple(d[k].shape[1:]) for k in self.key_iterator(d)}
        if len(set(shapes.values())) > 1:
            desc = ", ".join(f"{k}={source_name(d[k], k)} {s}" for k, s in shapes.items())
            raise ValueError(f"size mismatch between {desc}")
        return d
