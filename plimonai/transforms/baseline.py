"""Classical baseline: a global Otsu threshold of the attenuation image, to compare the network with.

MONAI has no Otsu transform, hence the small custom one (threshold from ``skimage.filters``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from skimage.filters import threshold_otsu

from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

__all__ = ["otsu_mask", "OtsuMask", "OtsuMaskd"]


def otsu_mask(attenuation: np.ndarray, valid: np.ndarray | None = None, nbins: int = 256) -> tuple[np.ndarray, float]:
    """Tissue mask of an attenuation image by Otsu's threshold over its valid pixels.

    Attenuation is ``1 - T / T_glass`` (glass ~ 0), so tissue is *above* the threshold.

    Args:
        attenuation: (H, W) float array.
        valid: (H, W) array, non-zero = scanned pixel; ``None`` = every finite pixel. Non-finite
            pixels are never valid.
        nbins: histogram bins of ``skimage.filters.threshold_otsu``.

    Returns:
        ``(mask, threshold)``: (H, W) bool mask (invalid pixels False) and the threshold, ``nan``
        when fewer than two distinct valid values exist (then the mask is empty).
    """
    a = np.asarray(attenuation, dtype=np.float32)
    ok = np.isfinite(a)
    if valid is not None:
        ok &= np.asarray(valid) > 0
    vals = a[ok]
    if vals.size == 0 or vals.min() == vals.max():  # no contrast: no threshold, all background
        return np.zeros(a.shape, dtype=bool), float("nan")
    thr = float(threshold_otsu(vals, nbins=nbins))
    return (a > thr) & ok, thr


class OtsuMask(Transform):
    """Otsu tissue mask of one channel of an attenuation image.

    Input: (C, H, W) float numpy/torch/MetaTensor (``NormalizeTransmittance`` output); optional
    ``valid_mask`` (1, H, W) or (H, W), non-zero = valid.
    Output: (1, H, W) ``uint8`` in {0, 1}, same container type as the input (a MetaTensor keeps the
    image meta, with ``otsu_threshold`` added).

    Args:
        channel: the attenuation channel.
        nbins: histogram bins for the threshold.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, channel: int = 0, nbins: int = 256) -> None:
        self.channel = channel
        self.nbins = nbins

    def __call__(self, img: NdarrayOrTensor, valid_mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        arr = convert_data_type(img, np.ndarray)[0]
        valid = None
        if valid_mask is not None:
            valid = convert_data_type(valid_mask, np.ndarray)[0].reshape(arr.shape[-2:])
        mask, thr = otsu_mask(arr[self.channel], valid, self.nbins)
        out = convert_to_dst_type(mask[None].astype(np.uint8), img, dtype=np.uint8)[0]
        if isinstance(out, MetaTensor):
            out.meta = dict(out.meta)  # own dict: do not add the threshold to the image's meta
            out.meta["otsu_threshold"] = thr
        return out


class OtsuMaskd(MapTransform):
    """Dictionary wrapper of :class:`OtsuMask`: the mask of ``data[key]`` is stored under ``mask_key``.

    Args:
        keys: the attenuation image key (one key; with several, the last one wins).
        mask_key: where the (1, H, W) uint8 mask goes, default ``"otsu"``.
        valid_key: optional valid-pixel mask key (see ``NormalizeTransmittanced``); when absent from
            the data, every finite pixel counts as valid.
        channel: the attenuation channel.
        nbins: histogram bins for the threshold.
    """

    backend = OtsuMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "otsu",
        valid_key: str | None = "valid",
        channel: int = 0,
        nbins: int = 256,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.valid_key = valid_key
        self.transform = OtsuMask(channel, nbins)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        valid = d.get(self.valid_key) if self.valid_key is not None else None
        for key in self.key_iterator(d):
            d[self.mask_key] = self.transform(d[key], valid)
        return d
