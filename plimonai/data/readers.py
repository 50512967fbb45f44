"""MONAI ``ImageReader`` for TIFF slices (MONAI has none based on tifffile), plus slice checks.

``LoadImage(d)(reader=TiffFileReader())`` picks it by suffix; NIfTI keeps MONAI's ``NibabelReader``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tifffile
from monai.config import PathLike
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["TiffFileReader", "SUPPORTED_DTYPES", "SliceFormatError", "check_slice_array"]

#: dtypes a PLI pipeline writes (transmittance/retardation): 8/16 bit counts or float.
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


class SliceFormatError(ValueError):
    """A slice file that cannot be used: wrong dimensionality, channels or dtype."""


def check_slice_array(arr: np.ndarray, filename: PathLike) -> np.ndarray:
    """Return ``arr`` as (H, W); raise :class:`SliceFormatError` naming ``filename`` otherwise.

    Accepts (H, W), (1, H, W) and (H, W, 1); dtype one of :data:`SUPPORTED_DTYPES`.
    """
    a = np.asarray(arr) if not hasattr(arr, "shape") else arr
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a[0] if a.shape[0] == 1 else a[..., 0]
    if a.ndim != 2:
        raise SliceFormatError(
            f"{filename}: expected a single-channel 2D slice (H, W), got shape {tuple(arr.shape)}"
        )
    if a.dtype.type not in SUPPORTED_DTYPES:
        names = ", ".join(np.dtype(d).name for d in SUPPORTED_DTYPES)
        raise SliceFormatError(f"{filename}: unsupported dtype {a.dtype} (supported: {names})")
    if min(a.shape) < 1:
        raise SliceFormatError(f"{filename}: empty image of shape {tuple(a.shape)}")
    return a


class TiffFileReader(ImageReader):
    """Read single-channel 2D TIFF slices with tifffile (level 0 of pyramidal files).

    ``get_data`` returns ``(array (H, W), meta)``; meta carries ``original_dtype`` and an
    identity affine (TIFF has no world coordinates).
    """

    suffixes: Sequence[str] = ("tif", "tiff")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return is_supported_format(filename, self.suffixes)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any):
        out = []
        for name in ensure_tuple(data):
            name = os.fspath(name)
            if not os.path.isfile(name):
                raise FileNotFoundError(f"{name}: slice file not found")
            try:
                with tifffile.TiffFile(name) as tif:
                    arr = tif.series[0].levels[0].asarray(**{**self.kwargs, **kwargs})
            except Exception as e:  # tifffile raises many types for corrupt files
                raise SliceFormatError(f"{name}: unreadable TIFF ({type(e).__name__}: {e})") from e
            out.append((check_slice_array(arr, name), name))
        return out if len(out) > 1 else out[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        items = img if isinstance(img, list) else [img]
        arrays, meta = [], {}
        for arr, name in items:
            arrays.append(arr)
            meta = {
                MetaKeys.SPATIAL_SHAPE: np.asarray(arr.shape),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
                MetaKeys.AFFINE: np.eye(3),
                MetaKeys.ORIGINAL_AFFINE: np.eye(3),
                "original_dtype": str(arr.dtype),
            }
        if len(arrays) > 1:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack(arrays), meta
        return arrays[0], meta
