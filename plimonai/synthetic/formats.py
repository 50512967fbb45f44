"""Writing synthetic slices as HDF5 in the 3D-PLI layout (one file per modality and slice).

Layout (as read by :class:`plimonai.data.readers.HDF5Reader` and written for masks by
:mod:`plimonai.io.writers`)::

    /Image            (H, W) full resolution (uint16 counts or float32 NTransmittance / Retardation)
    /pyramid/00       hard link to /Image (stored once)
    /pyramid/01 ...   each level 2x smaller (ceil), 2 x 2 mean-pooled (odd sides: edge-padded),
                      while the short side stays >= 256

gzip-compressed (level 4, shuffle) chunks of up to 512 x 512, no timestamps (identical bytes per seed).
Attributes: on the file and on ``/Image``: ``modality`` ("Transmittance", "NTransmittance",
"Retardation"), ``pixel_size`` and ``pixel_size_um`` (um per pixel: 64 at the LAP reference frame,
larger for scaled-down frames), ``generator``, ``seed``, ``section_class``; on every pyramid level
``pixel_size`` / ``pixel_size_um`` and ``downsample`` (2**k).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

__all__ = ["H5_DATASET", "H5_PYRAMID", "LAP_PIXEL_UM", "PYRAMID_MIN_SIDE", "image_pyramid", "write_h5_image"]

H5_DATASET = "/Image"
H5_PYRAMID = "/pyramid"
PYRAMID_MIN_SIDE = 256
LAP_PIXEL_UM = 64.0  # LAP pixel size at the reference frame (short side 2080 px)


def _mean2(a: np.ndarray) -> np.ndarray:
    """2 x 2 block mean (ceil size, odd sides edge-padded); integers rounded, floats in float32."""
    h, w = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2)), mode="edge")
    acc = np.float64 if a.dtype.kind in "ui" else np.float32
    s = a[0::2, 0::2].astype(acc)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    s *= 0.25
    if a.dtype.kind in "ui":
        return np.rint(s).astype(a.dtype)
    return s.astype(a.dtype, copy=False)


def image_pyramid(image: np.ndarray, min_side: int = PYRAMID_MIN_SIDE) -> list[np.ndarray]:
    """``[image, image/2, ...]``, 2 x 2 mean-pooled, while the next level's short side stays ``>= min_side``."""
    levels = [image]
    while min(-(-n // 2) for n in levels[-1].shape) >= min_side:
        levels.append(_mean2(levels[-1]))
    return levels


def write_h5_image(path: str | os.PathLike, image: np.ndarray, attrs: dict | None = None,
                   pixel_size_um: float = LAP_PIXEL_UM, min_side: int = PYRAMID_MIN_SIDE) -> None:
    """Write ``image`` (H, W) to ``path`` in the layout above; ``attrs`` go to the file and ``/Image``."""
    attrs = dict(attrs or {})
    opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True, "track_times": False}
    with h5py.File(Path(path), "w", track_order=True) as f:
        for k, level in enumerate(image_pyramid(np.ascontiguousarray(image), min_side)):
            chunks = tuple(min(n, 512) for n in level.shape)
            ds = f.create_dataset(H5_DATASET if k == 0 else f"{H5_PYRAMID}/{k:02d}", data=level, chunks=chunks,
                                  **opts)
            px = float(pixel_size_um) * 2**k
            ds.attrs["pixel_size"] = px
            ds.attrs["pixel_size_um"] = px
            ds.attrs["downsample"] = int(2**k)
            if k == 0:
                for key, val in attrs.items():
                    ds.attrs[key] = val
        f[f"{H5_PYRAMID}/00"] = f[H5_DATASET]  # hard link: level 00 is /Image, stored once
        f.attrs["pixel_size"] = float(pixel_size_um)
        f.attrs["pixel_size_um"] = float(pixel_size_um)
        for key, val in attrs.items():
            f.attrs[key] = val
