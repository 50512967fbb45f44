"""Pixel size: resampling a slice to the pixel size the model was trained at, and its prediction back.

The model sees slices at one pixel size (``metadata.json``: ``network_data_format.inputs.image.pixel_size_um``,
64 um for the synthetic LAP training data). A slice scanned at another pixel size is resampled to it
before inference (:class:`ResampleToModelPixeld`) and the logits are resampled back to exactly the
slice's grid before thresholding (:class:`RestoreSliceGridd`), so masks always match the input pixel
for pixel. The slice's pixel size is what the user gives (``pixel_size_um``); the size stored in the
file (:func:`file_pixel_size_um`: TIFF resolution tags, NIfTI ``pixdim``, HDF5 attributes) is only
used when asked (``trust_file_pixel_size``), since real files often carry placeholders (1, 72 dpi).

Resampling runs on the *normalised* attenuation (after
:class:`~plimonai.transforms.intensity.NormalizeTransmittanced`): unscanned pixels are 0 there like
glass, whereas interpolating raw transmittance would blend 0 / NaN borders into tissue-dark values;
the valid-pixel mask stays in the slice's grid for post-processing.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize

__all__ = [
    "PixelSizeError",
    "H5_PIXEL_SIZE_ATTRS",
    "file_pixel_size_um",
    "format_pixel_pair",
    "ResampleToModelPixeld",
    "RestoreSliceGridd",
]

logger = logging.getLogger(__name__)

#: HDF5 attribute names read as the pixel size (dataset attributes first, then the file's).
H5_PIXEL_SIZE_ATTRS = ("pixel_size_um", "pixel_size", "PixelSize", "pixelsize", "PixelSizeUm", "spacing", "Spacing")
#: HDF5 attribute names giving the unit of a pixel-size attribute without ``_um`` (default: micrometres).
H5_UNIT_ATTRS = ("pixel_size_unit", "PixelSizeUnit", "unit", "Unit", "units")
_UNIT_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "micrometers": 1.0, "micrometres": 1.0, "nm": 1e-3, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6,
    "in": 25400.0, "inch": 25400.0,
}
_TIFF_UNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}  # ResolutionUnit: inch, cm, mm (tifffile), um (tifffile)
_NIFTI_UNIT_UM = {1: 1e6, 2: 1e3, 3: 1.0}  # xyzt_units & 7: metre, mm, micron; 0 (unknown) taken as mm

Pair = tuple[float, float]


class PixelSizeError(ValueError):
    """An implausible resampling (result too small or too large), or an unusable pixel size."""


def _pair(value: Any, what: str) -> Pair | None:
    """A pixel size given as a number or (row, col) -> (row, col) floats; None for None/""; checks > 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    vals = [float(v) for v in value] if isinstance(value, (list, tuple, np.ndarray)) else [float(value)]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise PixelSizeError(f"{what} must be a positive number or [row, col] pair of them, got {value!r}")
    return vals[0], vals[1]


def format_pixel_pair(p: Sequence[float] | None) -> str:
    """``"64"`` for an isotropic pair, ``"64x70"`` (row x col) otherwise, ``""`` for None."""
    if p is None:
        return ""
    a, b = (float(v) for v in p)
    return f"{a:.6g}" if math.isclose(a, b, rel_tol=1e-6) else f"{a:.6g}x{b:.6g}"


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v


def _unit_um(unit: Any) -> float | None:
    return _UNIT_UM.get(str(unit).strip().lower()) if unit not in (None, "") else None


def _tiff_pixel_size(path: str) -> Pair | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
        scale = _TIFF_UNIT_UM.get(unit)
        if scale is None and tif.is_imagej:  # ImageJ: unit "none" in the tag, the real one in its metadata
            scale = _unit_um((tif.imagej_metadata or {}).get("unit"))
        if scale is None:
            return None

        def size(tag: str) -> float:  # resolution = pixels per unit, as a rational
            v = tags[tag].value
            per_unit = v[0] / v[1] if isinstance(v, tuple) and v[1] else float(v[0] if isinstance(v, tuple) else v)
            return scale / per_unit if per_unit > 0 else float("nan")

        return _valid_pair((size("YResolution"), size("XResolution")))


def _valid_pair(p: Sequence[float]) -> Pair | None:
    p = (float(p[0]), float(p[1]))
    return p if all(math.isfinite(v) and v > 0 for v in p) else None


def _nifti_pixel_size(meta: Mapping) -> Pair | None:
    pixdim = np.asarray(_first(meta.get("pixdim")), dtype=np.float64).ravel()
    if pixdim.size < 3:
        return None
    units = meta.get("xyzt_units")
    code = int(np.asarray(_first(units)).ravel()[0]) & 7 if units is not None else 0
    scale = _NIFTI_UNIT_UM.get(code, 1e3)
    return _valid_pair((pixdim[1] * scale, pixdim[2] * scale))  # data axis 0 = rows, axis 1 = columns


def _h5_pixel_size(meta: Mapping) -> Pair | None:
    attrs = _first(meta.get("h5_attrs")) or {}
    dataset = str(_first(meta.get("h5_dataset", "")) or "")
    for where in ("dataset", "file"):
        a = attrs.get(where) or {}
        for name in H5_PIXEL_SIZE_ATTRS:
            if name not in a or a[name] in ("", None):
                continue
            try:
                vals = [float(v) for v in (a[name] if isinstance(a[name], (list, tuple)) else [a[name]])]
            except (TypeError, ValueError):
                continue
            vals = vals[:2] if len(vals) >= 2 else vals * 2
            unit_name = next((a[u] for u in H5_UNIT_ATTRS if u in a), None)
            scale = 1.0 if name.lower().endswith("um") else (_unit_um(unit_name) or 1.0)  # default unit: um
            p = _valid_pair((vals[0] * scale, vals[1] * scale))
            m = re.fullmatch(r"/pyramid/(\d+)", dataset)
            if p is not None and where == "file" and m and int(m.group(1)) > 0:
                # a file attribute describes /Image; pyramid level NN is 2**NN times coarser
                p = (p[0] * 2 ** int(m.group(1)), p[1] * 2 ** int(m.group(1)))
            if p is not None:
                return p
    return None


def file_pixel_size_um(img: Any, path: str | None = None) -> Pair | None:
    """The (row, col) pixel size in micrometres that a slice's file states, or None.

    TIFF: ``XResolution``/``YResolution`` with ``ResolutionUnit`` inch, cm, mm or um (ImageJ files:
    the ``unit`` of their metadata); unit "none" gives None. NIfTI: ``pixdim[1:3]`` in ``xyzt_units``
    (unknown units taken as mm). HDF5: the first of :data:`H5_PIXEL_SIZE_ATTRS` on the dataset read,
    else on the file (micrometres unless a ``*unit*`` attribute says otherwise; a file attribute is
    scaled by 2**NN for ``/pyramid/NN``). Never raises: an unreadable attribute gives None.
    """
    meta = img.meta if isinstance(img, MetaTensor) else {}
    path = path or str(_first(meta.get("filename_or_obj", "")) or "")
    lower = path.lower()
    try:
        if lower.endswith((".tif", ".tiff")) and os.path.isfile(path):
            return _tiff_pixel_size(path)
        if lower.endswith((".nii", ".nii.gz")):
            return _nifti_pixel_size(meta)
        if lower.endswith((".h5", ".hdf5")):
            return _h5_pixel_size(meta)
    except Exception as e:  # a strange tag is no reason to fail the slice: it is only reported
        logger.warning("%s: could not read the pixel size (%s: %s)", path, type(e).__name__, e)
    return None


def _resize(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(C, H, W) -> (C, *shape) float32: area averaging when shrinking, bilinear when enlarging (MONAI
    ``Resize``; both place pixel centres the same way, so a round trip lines up)."""
    shrink = all(n <= o for n, o in zip(shape, x.shape[1:]))
    mode = "area" if shrink else "bilinear"
    out = Resize(tuple(int(s) for s in shape), mode=mode, align_corners=None if shrink else False,
                 anti_aliasing=not shrink and any(n < o for n, o in zip(shape, x.shape[1:])))(x.float())
    return out.as_tensor() if isinstance(out, MetaTensor) else out


class ResampleToModelPixeld(MapTransform):
    """Resample ``data[key]`` (1, H, W) from the slice's pixel size to the model's.

    Args:
        keys: image key(s) (the normalised attenuation).
        model_pixel_size_um: pixel size the model was trained at (metadata ``pixel_size_um``).
        pixel_size_um: the slices' pixel size (a number or [row, col]); None: no resampling.
        trust_file_pixel_size: use the pixel size the file states (:func:`file_pixel_size_um`) when it
            has one (``pixel_size_um`` remains the fallback for files without one).
        min_side: refuse when the resampled short side would be below this (pixels).
        max_factor: refuse when the slice would be enlarged more than this many times.
        tolerance: relative difference of pixel sizes below which nothing is resampled.

    The image keeps its meta (describing the file's grid) plus ``file_pixel_size_um`` (str,
    ``""`` if none), ``pixel_size_um`` (the size used, NaN if none), ``resample_factor`` ([row, col],
    output size / input size) and ``resample_original_shape`` ([H, W]) for :class:`RestoreSliceGridd`.
    An implausible resampling raises :class:`PixelSizeError` naming the file and the numbers (the
    slice is then recorded as failed in ``summary.csv``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        model_pixel_size_um: float | Sequence[float] | None,
        pixel_size_um: float | Sequence[float] | None = None,
        trust_file_pixel_size: bool = False,
        min_side: int = 64,
        max_factor: float = 8.0,
        tolerance: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.model = _pair(model_pixel_size_um, "model_pixel_size_um")
        self.pixel_size = _pair(pixel_size_um, "pixel_size_um")
        self.trust_file = bool(trust_file_pixel_size)
        if self.model is None and (self.pixel_size is not None or self.trust_file):
            raise PixelSizeError("resampling needs the model's pixel size (metadata pixel_size_um / model_pixel_size_um)")
        self.min_side, self.max_factor, self.tolerance = int(min_side), float(max_factor), float(tolerance)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            name = str(_first(img.meta.get("filename_or_obj", key))) if isinstance(img, MetaTensor) else str(key)
            in_shape = tuple(int(s) for s in img.shape[-2:])
            file_px = file_pixel_size_um(img, name) if isinstance(img, MetaTensor) else None
            px = file_px if self.trust_file and file_px is not None else self.pixel_size
            factor = (1.0, 1.0) if px is None else (px[0] / self.model[0], px[1] / self.model[1])
            if all(abs(f - 1.0) <= self.tolerance for f in factor):
                factor, out_shape = (1.0, 1.0), in_shape
            else:
                out_shape = tuple(max(1, round(n * f)) for n, f in zip(in_shape, factor))
                source = "the file's" if px is file_px else "the given"
                numbers = (f"{source} pixel size {format_pixel_pair(px)} um, model {format_pixel_pair(self.model)} um: "
                           f"{in_shape[0]} x {in_shape[1]} px -> {out_shape[0]} x {out_shape[1]} px "
                           f"(factor {format_pixel_pair(factor)})")
                if max(factor) > self.max_factor:
                    raise PixelSizeError(f"{name}: refusing to resample, {numbers} enlarges the slice more than "
                                         f"{self.max_factor:g}x; check the pixel size")
                if min(out_shape) < self.min_side:
                    raise PixelSizeError(f"{name}: refusing to resample, {numbers} leaves a short side under "
                                         f"{self.min_side} px; check the pixel size")
            x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            if out_shape != in_shape:
                x = _resize(x, out_shape)
            meta = dict(img.meta) if isinstance(img, MetaTensor) else {}
            meta.update(file_pixel_size_um=format_pixel_pair(file_px),
                        pixel_size_um=float("nan") if px is None else float(px[0]),
                        resample_factor=[float(f) for f in factor], resample_original_shape=list(in_shape))
            d[key] = MetaTensor(x, meta=meta, applied_operations=getattr(img, "applied_operations", []))
        return d


class RestoreSliceGridd(MapTransform):
    """Resample ``data[keys]`` (C, h, w) back to the slice's grid recorded by :class:`ResampleToModelPixeld`.

    Meant for the logits (bilinear / area on logits, before thresholding, gives smoother borders than
    nearest on a mask) and the image (for the overlay). The target shape is the image's
    ``meta["resample_original_shape"]``, else the spatial shape of ``data[ref_key]`` (the valid mask,
    always in the slice's grid); items that were not resampled pass unchanged. Also stores
    ``data["file_pixel_size_um"]`` and ``data["resample_factor"]`` as strings for ``summary.csv``.
    """

    def __init__(
        self, keys: KeysCollection, image_key: str = "image", ref_key: str | None = "valid",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.ref_key = image_key, ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = d.get(self.image_key)
        meta = img.meta if isinstance(img, MetaTensor) else {}
        target = meta.get("resample_original_shape")
        if target is None and self.ref_key is not None and self.ref_key in d:
            target = d[self.ref_key].shape[-2:]
        factor = meta.get("resample_factor")
        d["file_pixel_size_um"] = str(_first(meta.get("file_pixel_size_um", "")) or "")
        d["resample_factor"] = format_pixel_pair([float(f) for f in factor]) if factor is not None else ""
        if target is None:
            return d
        target = tuple(int(t) for t in target)
        for key in self.key_iterator(d):
            v = d[key]
            if tuple(v.shape[-2:]) == target:
                continue
            x = v.as_tensor() if isinstance(v, MetaTensor) else torch.as_tensor(v)
            out = _resize(x, target)
            d[key] = MetaTensor(out, meta=v.meta, applied_operations=v.applied_operations) if isinstance(v, MetaTensor) else out
        return d
