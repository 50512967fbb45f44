"""Retardation as a second input channel: finding the retardation file of a slice and normalising it.

Retardation (the PLI pipeline's ``Retardation``, float32 in [0, 1]) is glass near 0, grey matter low,
white matter bright. The network gets ``[attenuation, retardation]`` as ``(2, H, W)``: the configs
(``bundle/configs/retardation_*.json``) load both images, normalise the retardation with
:class:`NormalizeRetardationd`, stack them with MONAI's ``ConcatItemsd`` and then run
``NormalizeTransmittanced``, which normalises channel 0 and sets every channel to 0 where the
transmittance is unscanned (0, NaN, inf).

File convention for inference (:func:`retardation_path_for`): the retardation image has the same file
name as the transmittance image and lies in a sibling folder named ``retardation`` (the generator's
layout: ``DATA/images/NAME.tif`` -> ``DATA/retardation/NAME.tif``); ``retardation_dir`` points to
one folder holding them instead, ``name_replace`` maps modality names in file names (e.g.
``["NTransmittance", "Retardation"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils.type_conversion import convert_to_tensor

from plimonai.transforms.label import source_name

__all__ = ["RETARDATION_FOLDER", "retardation_path_for", "AddRetardationPathd", "NormalizeRetardation",
           "NormalizeRetardationd"]

RETARDATION_FOLDER = "retardation"
_INT_FULL_SCALE = {"uint8": 255.0, "int8": 127.0, "uint16": 65535.0, "int16": 32767.0}


def retardation_path_for(
    image_path: str | os.PathLike,
    retardation_dir: str | os.PathLike | None = None,
    folder: str = RETARDATION_FOLDER,
    name_replace: Sequence[str] | None = None,
) -> Path:
    """The retardation file of the transmittance image ``image_path``.

    ``retardation_dir/NAME`` when ``retardation_dir`` is given, else ``<parent of the image's folder>/folder/NAME``
    (``DATA/images/x.tif`` -> ``DATA/retardation/x.tif``). ``NAME`` is the image's file name, with
    ``name_replace = [old, new]`` applied (every occurrence of ``old``) when given.
    """
    p = Path(image_path)
    name = p.name
    if name_replace:
        if len(name_replace) != 2:
            raise ValueError(f"name_replace must be [old, new], got {list(name_replace)}")
        name = name.replace(str(name_replace[0]), str(name_replace[1]))
    root = Path(retardation_dir) if retardation_dir else p.parent.parent / folder
    return root / name


class AddRetardationPathd(MapTransform):
    """Set ``data[retardation_key]`` to the retardation file of the image path in ``data[keys]``
    (:func:`retardation_path_for`); raise ``FileNotFoundError`` naming both files when it is missing (in
    inference, ``SliceDataset`` turns that into a failed row of ``summary.csv`` and the other slices run).

    Input: ``data[key]`` a path (or a loaded MetaTensor with ``filename_or_obj``); output: the same dict plus
    ``data[retardation_key]`` (str path), ready for ``LoadSliced``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        retardation_key: str = "retardation",
        retardation_dir: str | os.PathLike | None = None,
        folder: str = RETARDATION_FOLDER,
        name_replace: Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.retardation_key, self.retardation_dir = retardation_key, retardation_dir or None
        self.folder, self.name_replace = folder, name_replace or None

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key] if isinstance(d[key], (str, os.PathLike)) else source_name(d[key], str(key))
            path = retardation_path_for(image, self.retardation_dir, self.folder, self.name_replace)
            if not path.is_file():
                where = (f"retardation_dir {self.retardation_dir}" if self.retardation_dir
                         else f"sibling folder '{self.folder}' of the image's folder")
                raise FileNotFoundError(f"{path}: retardation file not found for {image} "
                                        f"(looked in the {where}; set --retardation_dir / --retardation_folder)")
            d[self.retardation_key] = str(path)
        return d


class NormalizeRetardation(Transform):
    """Retardation, any value range -> float32 in [0, 1] (glass near 0, tissue brighter), invalid pixels 0.

    Retardation is an absolute quantity (|sin| of the phase retardation), so it is scaled by the full
    scale of its encoding, not by per-slice statistics: a slice with only grey matter must not be
    stretched to look like white matter. The full scale is ``full_scale`` when given, else taken from the
    file's dtype (``meta['original_dtype']`` from ``LoadSliced``: uint8 255, uint16 65535, float 1.0); when
    that is unknown or float but the values are clearly integer-coded (99.9th percentile of valid pixels
    above 1.5), 255 or 65535 by that percentile. Then NaN / inf -> 0, clip to [0, 1], and pixels outside
    ``valid`` (e.g. the transmittance's valid mask, unscanned = 0) -> 0.

    ``__call__(img (1, H, W) or (H, W), valid=None (H, W) / (1, H, W) bool or 0/1)`` -> same shape float32
    (MetaTensor meta kept, ``retardation_full_scale`` added).
    """

    def __init__(self, full_scale: float | None = None, integer_guess_above: float = 1.5) -> None:
        self.full_scale = None if full_scale is None else float(full_scale)
        if self.full_scale is not None and not self.full_scale > 0:
            raise ValueError(f"full_scale must be > 0, got {full_scale}")
        self.integer_guess_above = float(integer_guess_above)

    def _scale(self, x: torch.Tensor, meta: Mapping | None) -> float:
        if self.full_scale is not None:
            return self.full_scale
        dtype = str((meta or {}).get("original_dtype", "")).replace("torch.", "")
        if dtype in _INT_FULL_SCALE:
            return _INT_FULL_SCALE[dtype]
        finite = x[torch.isfinite(x) & (x != 0)]
        if finite.numel() == 0:
            return 1.0
        step = max(1, finite.numel() // 1_000_000)  # strided subsample, as estimate_glass_level
        high = float(np.percentile(finite[::step].numpy(), 99.9))
        if high <= self.integer_guess_above:
            return 1.0
        return 255.0 if high <= 255.0 else 65535.0

    def __call__(self, img, valid=None):
        t = convert_to_tensor(img, track_meta=True)
        x = (t.as_tensor() if isinstance(t, MetaTensor) else t).to(torch.float32)
        meta = t.meta if isinstance(t, MetaTensor) else None
        scale = self._scale(x, meta)
        out = torch.nan_to_num(x / scale, nan=0.0, posinf=0.0, neginf=0.0).clamp_(0.0, 1.0)
        if valid is not None:
            v = torch.as_tensor(np.asarray(valid) if not isinstance(valid, torch.Tensor) else valid).to(out.device)
            out = out * v.reshape(out.shape[-2:]).to(torch.bool)
        if isinstance(t, MetaTensor):
            out = MetaTensor(out, meta=t.meta, applied_operations=t.applied_operations)
            out.meta["retardation_full_scale"] = scale
        return out


class NormalizeRetardationd(MapTransform):
    """Dictionary wrapper of :class:`NormalizeRetardation`; ``valid_key`` (optional) names the (1, H, W)
    valid mask to apply (e.g. the one ``NormalizeTransmittanced`` stores). The bundle configs stack the
    channels before ``NormalizeTransmittanced``, which zeroes both where the transmittance is unscanned."""

    def __init__(
        self,
        keys: KeysCollection,
        valid_key: str | None = None,
        full_scale: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.valid_key = valid_key
        self.normalizer = NormalizeRetardation(full_scale)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        valid = d[self.valid_key] if self.valid_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key], valid)
        return d
