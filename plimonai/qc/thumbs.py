"""Small mask thumbnails for the stack QC (``OUT/qc/thumbs/NAME.png``) and reading written masks back.

During a run :class:`~plimonai.handlers.QCReportHandler` saves each slice's thumbnail from the mask in
memory; for slices done by an earlier run (resume) or a run without the handler, the report makes
the thumbnail from the mask file (:func:`read_mask`; large TIFF / HDF5 masks are read at a
downsampled level).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["THUMB_DIR", "thumb_path", "mask_thumbnail", "save_thumbnail", "read_thumbnail", "read_mask",
           "mask_name"]

THUMB_DIR = Path("qc") / "thumbs"
_MASK_SUFFIX = "_mask"


def thumb_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / THUMB_DIR / f"{name}.png"


def mask_name(path: str | os.PathLike) -> str | None:
    """Slice name of a mask file ``NAME_mask.<ext>`` (``None`` for other files)."""
    from plimonai.io.writers import is_temp_path, split_image_name

    if is_temp_path(path):
        return None
    try:
        stem, _ = split_image_name(path)
    except ValueError:
        return None
    return stem[: -len(_MASK_SUFFIX)] if stem.endswith(_MASK_SUFFIX) and len(stem) > len(_MASK_SUFFIX) else None


def mask_thumbnail(mask: Any, size: int = 256) -> np.ndarray:
    """(H, W) / (1, H, W) binary mask (numpy/torch, any device) -> bool (h, w) with ``max(h, w) <= size``
    (block majority over an integer factor; the last partial block averages its own pixels)."""
    t = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    t = t.as_tensor() if hasattr(t, "as_tensor") else t
    t = t.reshape(t.shape[-2:])
    f = math.ceil(max(t.shape) / size) if size else 1
    if f <= 1:
        return (t > 0).cpu().numpy()
    small = F.avg_pool2d((t > 0).float()[None, None], f, stride=f, ceil_mode=True)[0, 0]
    return (small >= 0.5).cpu().numpy()


def save_thumbnail(path: str | os.PathLike, thumb: np.ndarray) -> Path:
    """Write a bool thumbnail as an 8-bit PNG (0 / 255), atomically."""
    from plimonai.io.writers import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray((np.asarray(thumb) > 0).astype(np.uint8) * 255).save(tmp, format="PNG")
    return path


def read_thumbnail(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def read_mask(path: str | os.PathLike, min_side: int | None = None) -> np.ndarray:
    """A written mask as (H, W) uint8; with ``min_side``, the coarsest stored level (TIFF sub-IFD /
    HDF5 ``/pyramid/NN``) whose longer side is still at least ``min_side`` (level 0 if none is stored)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".tif", ".tiff")):
        import tifffile

        with tifffile.TiffFile(p) as tf:
            levels = tf.series[0].levels
            pick = levels[0]
            if min_side:
                for lvl in levels[1:]:
                    if max(lvl.shape[-2:]) >= min_side:
                        pick = lvl
            arr = pick.asarray()
    elif name.endswith((".h5", ".hdf5")):
        import h5py

        from plimonai.data.readers import H5_PYRAMID, resolve_h5_dataset

        with h5py.File(p, "r") as f:
            key = resolve_h5_dataset(f)
            if min_side and isinstance(f.get(H5_PYRAMID), h5py.Group):
                for k in sorted((k for k in f[H5_PYRAMID] if k.isdigit()), key=int):
                    if max(f[H5_PYRAMID][k].shape[-2:]) >= min_side:
                        key = f"{H5_PYRAMID}/{k}"
            arr = f[key][()]
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        arr = np.asarray(nib.load(str(p)).dataobj)
    else:
        raise ValueError(f"not a mask file: {p}")
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return (arr > 0).astype(np.uint8)
