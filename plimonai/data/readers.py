"""MONAI ``ImageReader``s for TIFF and HDF5 slices (MONAI has neither), plus slice checks.

``LoadImage(d)(reader=TiffFileReader())`` (or ``HDF5Reader()``) picks it by suffix; NIfTI keeps
MONAI's ``NibabelReader``. :class:`~plimonai.transforms.io.LoadSliced` registers both.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import h5py
import numpy as np
import tifffile
from monai.config import PathLike
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = [
    "TiffFileReader", "HDF5Reader", "SUPPORTED_DTYPES", "SliceFormatError", "check_slice_array",
    "H5_DATASET", "H5_PYRAMID", "h5_attrs_to_python", "resolve_h5_dataset",
]

#: dtypes a PLI pipeline writes (transmittance/retardation): 8/16 bit counts or float.
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)



def _data_and_meta(items: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    """(H, W) arrays with extra meta -> MONAI reader output: the array (stacked (N, H, W) for several)
    and the meta of the last one (identity affine: slices have no physical frame here)."""
    arrays, meta = [], {}
    for arr, extra in items:
        arrays.append(arr)
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(arr.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.AFFINE: np.eye(3),
            MetaKeys.ORIGINAL_AFFINE: np.eye(3),
            "original_dtype": str(arr.dtype),
            **extra,
        }
    if len(arrays) > 1:
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays), meta
    return arrays[0], meta

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


class _SliceFileReader(ImageReader):
    """What the slice readers share: suffix check, existing-file iteration, MONAI's (data, meta) output."""

    suffixes: Sequence[str] = ()

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return is_supported_format(filename, self.suffixes)

    @staticmethod
    def _existing(data: Sequence[PathLike] | PathLike):
        """The file names of ``data``; a missing one raises ``FileNotFoundError`` naming it."""
        for name in ensure_tuple(data):
            name = os.fspath(name)
            if not os.path.isfile(name):
                raise FileNotFoundError(f"{name}: slice file not found")
            yield name


class TiffFileReader(_SliceFileReader):
    """Read single-channel 2D TIFF slices with tifffile (level 0 of pyramidal files).

    ``get_data`` returns ``(array (H, W), meta)``; meta carries ``original_dtype`` and an
    identity affine (TIFF has no world coordinates).
    """

    suffixes: Sequence[str] = ("tif", "tiff")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any):
        out = []
        for name in self._existing(data):
            try:
                with tifffile.TiffFile(name) as tif:
                    arr = tif.series[0].levels[0].asarray(**{**self.kwargs, **kwargs})
            except Exception as e:  # tifffile raises many types for corrupt files
                raise SliceFormatError(f"{name}: unreadable TIFF ({type(e).__name__}: {e})") from e
            out.append((check_slice_array(arr, name), name))
        return out if len(out) > 1 else out[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        items = img if isinstance(img, list) else [img]
        return _data_and_meta([(arr, {}) for arr, _ in items])


#: Default HDF5 image dataset and the group holding the downsampled levels (``00`` finest).
H5_DATASET = "/Image"
H5_PYRAMID = "/pyramid"


def _pyramid_levels(f: h5py.File) -> list[str]:
    """Paths of the datasets ``/pyramid/NN`` in ``f``, finest (lowest NN) first."""
    group = f.get(H5_PYRAMID)
    if not isinstance(group, h5py.Group):
        return []
    names = [k for k in group if k.isdigit() and isinstance(group.get(k), h5py.Dataset)]
    return [f"{H5_PYRAMID}/{k}" for k in sorted(names, key=int)]


def resolve_h5_dataset(f: h5py.File, dataset: str = H5_DATASET) -> str:
    """Path of the image dataset to read from ``f``: ``dataset`` if present, else the finest pyramid level.

    No fallback when ``dataset`` is itself a pyramid level (an explicit resolution must not change
    silently). Raises :class:`SliceFormatError` naming the file and the paths tried.
    """
    dataset = "/" + dataset.strip("/")
    if isinstance(f.get(dataset), h5py.Dataset):
        return dataset
    tried = [dataset]
    if not dataset.startswith(H5_PYRAMID + "/"):
        levels = _pyramid_levels(f)
        if levels:
            return levels[0]
        tried.append(f"{H5_PYRAMID}/NN (finest level)")
    found: list[str] = []
    f.visititems(lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
    raise SliceFormatError(
        f"{f.filename}: no image dataset; tried {', '.join(tried)}; datasets in the file: {found or 'none'}"
    )


def _to_python(value: Any) -> Any:
    """An HDF5 attribute value as plain python (str, int, float, bool, lists of those)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_to_python(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return _to_python(value.item())
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, h5py.Empty) or value is None:
        return ""  # None would break DataLoader collation of the meta dict
    return value


def h5_attrs_to_python(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """Attributes of an HDF5 file/group/dataset as a dict of plain python values."""
    return {str(k): _to_python(attrs[k]) for k in attrs}


class HDF5Reader(_SliceFileReader):
    """Read single-channel 2D slices from HDF5 files (one file per modality and slice) with h5py.

    Reads ``dataset`` (default ``/Image``); when it is missing, the finest level ``/pyramid/NN``
    (see :func:`resolve_h5_dataset`). ``get_data`` returns ``(array (H, W), meta)``; meta carries
    ``original_dtype``, an identity affine, ``h5_dataset`` (the path read) and ``h5_attrs``:
    ``{"file": {...}, "dataset": {...}}`` with the file's and the dataset's attributes as plain python.
    """

    suffixes: Sequence[str] = ("h5", "hdf5")

    def __init__(self, dataset: str = H5_DATASET, **kwargs: Any) -> None:
        super().__init__()
        self.dataset = dataset
        self.kwargs = kwargs

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any):
        out = []
        for name in self._existing(data):
            try:
                f = h5py.File(name, "r")
            except OSError as e:  # not HDF5 / truncated
                raise SliceFormatError(f"{name}: unreadable HDF5 ({e})") from e
            with f:
                path = resolve_h5_dataset(f, kwargs.get("dataset", self.dataset))
                ds = f[path]
                arr = check_slice_array(ds, f"{name}:{path}")  # checks shape/dtype before reading
                arr = arr[()] if isinstance(arr, h5py.Dataset) else arr
                meta = {
                    "h5_dataset": path,
                    "h5_attrs": {"file": h5_attrs_to_python(f.attrs), "dataset": h5_attrs_to_python(ds.attrs)},
                }
            out.append((arr.astype(arr.dtype.newbyteorder("="), copy=False), name, meta))  # torch needs native order
        return out if len(out) > 1 else out[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        items = img if isinstance(img, list) else [img]
        return _data_and_meta([(arr, h5_meta) for arr, _, h5_meta in items])
