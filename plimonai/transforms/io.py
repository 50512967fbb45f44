"""Loading a slice as a (1, H, W) float32 MetaTensor, whatever its format."""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from plimonai.data.readers import H5_DATASET, HDF5Reader, SliceFormatError, TiffFileReader

__all__ = ["LoadSliced"]


class LoadSliced(LoadImaged):
    """``LoadImaged`` with the PLI readers registered, returning ``(1, H, W)`` per key.

    Registering (instead of passing ``reader=``) keeps MONAI's choice by suffix, so a corrupt file
    raises its reader's error naming the file rather than a fall-through through every reader.
    (H, W, 1) and (1, H, W) inputs are accepted; anything else raises ``SliceFormatError``.
    Meta gets ``original_dtype`` and ``spatial_shape``; HDF5 slices also ``h5_dataset`` and ``h5_attrs``.

    Args:
        h5_dataset: dataset read from ``.h5``/``.hdf5`` files (e.g. ``/pyramid/01`` for half
            resolution); a missing ``/Image`` falls back to the finest ``/pyramid/NN`` level.
    """

    def __init__(
        self,
        keys: KeysCollection,
        dtype=torch.float32,
        allow_missing_keys: bool = False,
        h5_dataset: str = H5_DATASET,
        **kwargs,
    ) -> None:
        super().__init__(keys, reader=None, dtype=dtype, image_only=True, allow_missing_keys=allow_missing_keys, **kwargs)
        self.register(TiffFileReader())
        self.register(HDF5Reader(dataset=h5_dataset))

    def __call__(self, data: Mapping[Hashable, str], reader=None) -> dict:
        d = super().__call__(data, reader)
        for key in self.key_iterator(d):
            img = d[key]
            name = img.meta.get("filename_or_obj", key) if isinstance(img, MetaTensor) else key
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            elif img.ndim == 3 and img.shape[0] == 1:
                img = img[0]
            if img.ndim != 2:
                raise SliceFormatError(f"{name}: expected a single-channel 2D slice (H, W), got shape {tuple(img.shape)}")
            if min(img.shape) < 1:
                raise SliceFormatError(f"{name}: empty image of shape {tuple(img.shape)}")
            img = img[None]
            if isinstance(img, MetaTensor):
                img.meta.setdefault("original_dtype", str(img.dtype))
                img.meta["original_channel_dim"] = "no_channel"
            d[key] = img
        return d
