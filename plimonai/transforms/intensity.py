"""Transmittance normalisation and the valid-pixel mask.

Network input is the *attenuation* ``a = 1 - T / T_glass``: glass ~ 0, tissue > 0 (white matter
highest), pixels outside the scan (exactly 0, NaN, inf) set to 0 like glass. Dividing by the glass
level makes uint8, uint16 and float [0, 1] (NTransmittance) versions of one slice identical, and a
0 background means zero padding (sliding window, affine augmentation) looks like glass.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

__all__ = [
    "valid_pixel_mask",
    "estimate_glass_level",
    "NormalizeTransmittance",
    "NormalizeTransmittanced",
]


def valid_pixel_mask(img: torch.Tensor, invalid_value: float | None = 0.0) -> torch.Tensor:
    """Bool mask of scanned pixels: finite and (if given) not equal to ``invalid_value``. Same shape."""
    valid = torch.isfinite(img)
    if invalid_value is not None:
        valid &= img != invalid_value
    return valid


def estimate_glass_level(
    img: torch.Tensor, valid: torch.Tensor, percentile: float = 99.0, max_samples: int = 1_000_000
) -> float:
    """Glass (background) transmittance: a high percentile of valid pixels (glass is the brightest).

    Uses a strided subsample of at most ``max_samples`` pixels; returns ``nan`` when no pixel is valid.
    """
    flat, vflat = img.reshape(-1), valid.reshape(-1)
    step = max(1, flat.numel() // max_samples)
    vals = flat[::step][vflat[::step]]
    if vals.numel() == 0:
        vals = flat[vflat]
    if vals.numel() == 0:
        return float("nan")
    return float(np.percentile(vals.detach().cpu().numpy(), percentile))


class NormalizeTransmittance(Transform):
    """Transmittance ``T`` -> attenuation ``1 - T / T_glass``, clipped, invalid pixels -> 0.

    Args:
        glass_percentile: percentile of valid pixels taken as the glass level.
        invalid_value: value marking unscanned pixels (NTransmittance writes 0); ``None`` to keep it.
        clip: output range.
        channel: the transmittance channel; other channels (e.g. retardation) are left unchanged
            except that invalid pixels are zeroed.

    Input ``(C, H, W)`` any real dtype; output ``(C, H, W)`` float32 (MetaTensor meta kept, with
    ``glass_level`` added). ``__call__(img, return_valid=True)`` also returns the (1, H, W) uint8 valid mask.
    A slice without a single valid pixel gives all zeros (all background).
    """

    def __init__(
        self,
        glass_percentile: float = 99.0,
        invalid_value: float | None = 0.0,
        clip: Sequence[float] = (-0.5, 1.0),
        channel: int = 0,
    ) -> None:
        self.glass_percentile = glass_percentile
        self.invalid_value = invalid_value
        self.clip = (float(clip[0]), float(clip[1]))
        self.channel = channel

    def __call__(self, img, return_valid: bool = False):
        t = convert_to_tensor(img, track_meta=True)
        x = t.as_tensor() if isinstance(t, MetaTensor) else t
        x = x.to(torch.float32)
        trans = x[self.channel]
        valid = valid_pixel_mask(trans, self.invalid_value)
        glass = estimate_glass_level(trans, valid, self.glass_percentile)
        out = torch.zeros_like(x)
        if np.isfinite(glass) and glass > 0:
            out[self.channel] = (1.0 - trans / glass).clamp_(*self.clip)
            for c in range(x.shape[0]):
                if c != self.channel:
                    out[c] = torch.nan_to_num(x[c], nan=0.0, posinf=0.0, neginf=0.0)
            out[:, ~valid] = 0.0
        else:
            valid = torch.zeros_like(valid)
        if isinstance(t, MetaTensor):
            out = MetaTensor(out, meta=t.meta, applied_operations=t.applied_operations)
            out.meta["glass_level"] = glass
        if return_valid:
            return out, valid[None].to(torch.uint8)
        return out


class NormalizeTransmittanced(MapTransform):
    """Dictionary wrapper of :class:`NormalizeTransmittance`; stores the (1, H, W) uint8 valid mask
    under ``valid_key`` (skipped when ``None``)."""

    def __init__(
        self,
        keys: KeysCollection,
        valid_key: str | None = "valid",
        glass_percentile: float = 99.0,
        invalid_value: float | None = 0.0,
        clip: Sequence[float] = (-0.5, 1.0),
        channel: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.valid_key = valid_key
        self.normalizer = NormalizeTransmittance(glass_percentile, invalid_value, clip, channel)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], valid = self.normalizer(d[key], return_valid=True)
            if self.valid_key is not None:
                d[self.valid_key] = valid
        return d
