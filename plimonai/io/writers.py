"""Atomic writers for binary tissue masks (TIFF, NIfTI and HDF5).

Output contract: for an input ``.../NAME.tif`` (``.tiff``, ``.nii``, ``.nii.gz``, ``.h5``, ``.hdf5``)
the mask is ``OUT/NAME_mask.<same extension>``: (H, W) ``uint8``, 1 = tissue, 0 = background, same
height and width as the input (as the dataset read, for HDF5: ``/pyramid/01`` gives a half-size mask).

Pixel order: mask row ``r``, column ``c`` is stored as TIFF row ``r``, column ``c`` (``tifffile.imread``
order), as NIfTI voxel ``[r, c]`` (nibabel / MONAI ``NibabelReader`` order, no transpose), with the
input's affine, and as HDF5 ``/Image[r, c]`` (h5py order); so a mask reloaded the same way as its
input lines up pixel for pixel.

HDF5 masks mirror the 3D-PLI slice layout: ``/Image`` plus ``/pyramid/00`` (a hard link to the same
data), ``/pyramid/01``, ... each 2x smaller (ceil) by 2 x 2 max-pooling, so a tissue pixel stays
visible at every level (a conservative mask for low-resolution use), down to a short side of
``H5_PYRAMID_MIN_SIDE``; gzip-compressed 512 x 512 chunks; the input's file and dataset attributes copied.

Every file is written to a hidden temp file in the target folder (``.NAME_mask.tif.tmp-<pid>``) and
moved into place with ``os.replace``, so an interrupted run never leaves a half-written mask that a
resume would take as done. MONAI's ``SaveImage`` neither writes atomically nor names outputs this way,
hence :class:`SaveMaskd`.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import h5py
import nibabel as nib
import numpy as np
import tifffile

from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_data_type, ensure_tuple_rep

from plimonai.io.background import BackgroundWriter, submit_write
from plimonai.data.readers import H5_DATASET, H5_PYRAMID, SliceFormatError, resolve_h5_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "TILED_MIN_SIDE",
    "TILE_SHAPE",
    "H5_PYRAMID_MIN_SIDE",
    "split_image_name",
    "mask_path_for",
    "atomic_path",
    "is_temp_path",
    "write_mask",
    "mask_pyramid",
    "source_path",
    "SaveMaskd",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Recognised input extensions (longest first so ``.nii.gz`` wins over ``.gz``-less ``.nii``).
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".tiff", ".tif", ".hdf5", ".h5")
#: Masks with a side longer than this are written tiled with a downsampled sub-IFD level.
TILED_MIN_SIDE = 4096
TILE_SHAPE = (512, 512)
#: HDF5 mask pyramids stop before a level's short side drops below this (level 00 is always written).
H5_PYRAMID_MIN_SIDE = 256
_TEMP_MARKER = ".tmp-"
_TEMP_RE = re.compile(r"^\..+\.tmp-\d+$")
_NIFTI1_MAX_DIM = 32767  # NIfTI-1 stores dims as int16


def split_image_name(path: PathLike) -> tuple[str, str]:
    """Split an image file name into ``(stem, extension)``, handling ``.nii.gz``.

    The extension keeps the file's spelling (case); raises ``ValueError`` for unsupported extensions.
    """
    name = Path(path).name
    lower = name.lower()
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    raise ValueError(f"Unsupported image file {str(path)!r}: expected one of {', '.join(IMAGE_EXTENSIONS)}.")


def mask_path_for(image_path: PathLike, output_dir: PathLike, suffix: str = "_mask") -> Path:
    """Mask path for an input image: ``output_dir/NAME{suffix}{ext}``.

    ``ext`` is the input's extension (``.tif``, ``.tiff``, ``.nii``, ``.nii.gz``, ``.h5``, ``.hdf5``).
    Raises ``ValueError`` for unsupported inputs and when the mask would overwrite the input.
    """
    stem, ext = split_image_name(image_path)
    out = Path(output_dir) / f"{stem}{suffix}{ext}"
    if out.resolve() == Path(image_path).resolve():
        raise ValueError(f"Mask path {str(out)!r} would overwrite the input image; use a suffix or another folder.")
    return out


def is_temp_path(path: PathLike) -> bool:
    """True for temp files left by :func:`atomic_path` (``.NAME.tmp-<pid>``), e.g. after a crash."""
    return bool(_TEMP_RE.match(Path(path).name))


@contextmanager
def atomic_path(final_path: PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``final_path``; on success move it onto ``final_path`` with ``os.replace``.

    The parent folder is created. On any error the temp file is removed and the error re-raised, so
    ``final_path`` either keeps its previous state or holds the complete new file.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{_TEMP_MARKER}{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _mask_to_uint8(mask: NdarrayOrTensor, path: PathLike) -> np.ndarray:
    """(H, W) or (1, H, W) binary numpy/torch -> C-contiguous (H, W) uint8 in {0, 1}."""
    arr = convert_data_type(mask, np.ndarray)[0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"Mask for {str(path)!r} must have shape (H, W) or (1, H, W), got {tuple(arr.shape)}.")
    if arr.dtype == bool:
        return np.ascontiguousarray(arr).view(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        ok = arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)
    else:
        ok = bool(((arr == 0) | (arr == 1)).all())
    if not ok:
        raise ValueError(f"Mask for {str(path)!r} must be binary (0/1); threshold probabilities before writing.")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _is_nifti(path: PathLike) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _is_tiff(path: PathLike) -> bool:
    return str(path).lower().endswith((".tif", ".tiff"))


def _is_h5(path: PathLike) -> bool:
    return str(path).lower().endswith((".h5", ".hdf5"))


def _tiff_resolution(reference: PathLike | None) -> dict[str, Any]:
    """X/Y resolution tags of a reference TIFF (pixel size), as ``TiffWriter.write`` keyword arguments."""
    if reference is None or not _is_tiff(reference):
        return {}
    with tifffile.TiffFile(reference) as tif:
        tags = tif.pages[0].tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return {}
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
        return {"resolution": (tags["XResolution"].value, tags["YResolution"].value), "resolutionunit": unit}


def _pyramid_factor(shape: tuple[int, int]) -> int:
    """2 if that brings the longer side down to <= TILED_MIN_SIDE, else 4.

    Capped at 4 because tifffile only recognises sub-IFDs downsampled by 2, 3 or 4 as pyramid levels.
    """
    return 2 if max(shape) <= 2 * TILED_MIN_SIDE else 4


def _write_tiff(fh: Any, mask: np.ndarray, reference: PathLike | None) -> None:
    res = _tiff_resolution(reference)
    opts: dict[str, Any] = {"photometric": "minisblack", "compression": "zlib", "metadata": None}
    with tifffile.TiffWriter(fh, bigtiff=mask.nbytes > 2**31) as tif:
        if max(mask.shape) <= TILED_MIN_SIDE:
            tif.write(mask, **opts, **res)
            return
        tif.write(mask, tile=TILE_SHAPE, subifds=1, **opts, **res)
        factor = _pyramid_factor(mask.shape)
        if res:  # the preview level's pixels are `factor` times larger
            res = dict(res, resolution=tuple(_scale_rational(r, factor) for r in res["resolution"]))
        # nearest (strided) subsampling: the level is a preview, a mask needs no averaging
        tif.write(mask[::factor, ::factor], tile=TILE_SHAPE, subfiletype=1, **opts, **res)


def _scale_rational(value: Any, factor: int) -> Any:
    if isinstance(value, tuple):
        return (value[0], value[1] * factor)
    return float(value) / factor


def _as_affine4(affine: Any) -> np.ndarray:
    """4 x 4 float64 affine from a numpy/torch 4 x 4 or 2D (3 x 3) affine."""
    a = np.asarray(convert_data_type(affine, np.ndarray)[0], dtype=np.float64)
    if a.shape == (3, 3):  # 2D affine: insert an identity z axis
        a = np.array([[a[0, 0], a[0, 1], 0, a[0, 2]], [a[1, 0], a[1, 1], 0, a[1, 2]], [0, 0, 1, 0], [0, 0, 0, 1]])
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4 x 4 (or 3 x 3 for 2D), got {a.shape}.")
    return a


def _nifti_image(mask: np.ndarray, affine: Any, reference: PathLike | None) -> nib.Nifti1Image:
    ref = nib.load(reference) if reference is not None and _is_nifti(reference) else None
    if affine is None:
        affine = ref.affine if ref is not None else np.eye(4)
    affine = _as_affine4(affine)
    cls = nib.Nifti2Image if max(mask.shape) > _NIFTI1_MAX_DIM else nib.Nifti1Image
    img = cls(mask, affine)
    img.header.set_data_dtype(np.uint8)
    img.header["cal_min"], img.header["cal_max"] = 0, 1
    if ref is not None:
        hdr = ref.header
        img.header.set_xyzt_units(*hdr.get_xyzt_units())
        qcode, scode = int(hdr.get("qform_code", 0)), int(hdr.get("sform_code", 0))
        if qcode or scode:  # keep the input's qform/sform codes so the best affine is the same one
            img.set_qform(affine, code=qcode)
            img.set_sform(affine, code=scode)
    return img


def _write_nifti(tmp: Path, final: Path, img: nib.Nifti1Image) -> None:
    # nibabel picks format and gzip from the file name, which the temp name hides: write via file objects
    gz = str(final).lower().endswith(".gz")
    with gzip.open(tmp, "wb", compresslevel=1) if gz else open(tmp, "wb") as fh:  # level 1: nibabel's default
        img.to_file_map(img.make_file_map({"image": fh, "header": fh}))


def mask_pyramid(mask: np.ndarray, min_side: int = H5_PYRAMID_MIN_SIDE) -> list[np.ndarray]:
    """``[mask, mask/2, mask/4, ...]``: (H, W) then ``(ceil(H / 2**k), ceil(W / 2**k))`` by 2 x 2 max-pooling.

    A level is added while its short side stays ``>= min_side``; level 0 (``mask`` itself) always is.
    """
    levels = [mask]
    while min(-(-n // 2) for n in levels[-1].shape) >= min_side:
        m = levels[-1]
        h, w = m.shape
        m = np.pad(m, ((0, h % 2), (0, w % 2)))  # odd sides: pad with background
        levels.append(m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2).max(axis=(1, 3)))
    return levels


def _copy_attrs(src: h5py.AttributeManager, dst: h5py.AttributeManager) -> None:
    for key in src:
        dst[key] = src[key]  # raw values: dtype and shape are kept


def _write_h5(tmp: Path, mask: np.ndarray, reference: PathLike | None, h5_dataset: str | None) -> None:
    opts: dict[str, Any] = {"compression": "gzip", "compression_opts": 4}
    with h5py.File(tmp, "w") as f:
        levels = mask_pyramid(mask)
        for k, level in enumerate(levels):
            chunks = tuple(min(n, c) for n, c in zip(level.shape, TILE_SHAPE))
            name = H5_DATASET if k == 0 else f"{H5_PYRAMID}/{k:02d}"
            f.create_dataset(name, data=level, chunks=chunks, **opts)
        f[f"{H5_PYRAMID}/00"] = f[H5_DATASET]  # hard link: level 00 is /Image, stored once
        if reference is not None and _is_h5(reference):
            with h5py.File(reference, "r") as ref:
                _copy_attrs(ref.attrs, f.attrs)
                try:  # the dataset the mask was computed from
                    _copy_attrs(ref[resolve_h5_dataset(ref, h5_dataset or H5_DATASET)].attrs, f[H5_DATASET].attrs)
                except SliceFormatError:
                    pass


def write_mask(
    path: PathLike,
    mask: NdarrayOrTensor,
    affine: NdarrayOrTensor | None = None,
    reference: PathLike | None = None,
    h5_dataset: str | None = None,
) -> Path:
    """Write a binary mask atomically, format chosen by the suffix of ``path``.

    Args:
        path: ``.tif``/``.tiff`` (zlib; tiled 512 x 512 plus one downsampled sub-IFD level when a
            side exceeds ``TILED_MIN_SIDE``), ``.nii``/``.nii.gz`` or ``.h5``/``.hdf5`` (``/Image``
            plus a max-pooled ``/pyramid/NN``, see :func:`mask_pyramid`; gzip, chunked).
        mask: (H, W) or (1, H, W) numpy/torch with values in {0, 1} (bool, int or float); stored as
            (H, W) ``uint8``.
        affine: NIfTI only: 4 x 4 voxel-to-world affine (e.g. ``meta["original_affine"]`` of the
            input); defaults to the reference's affine, else identity.
        reference: optional path of the source image: a NIfTI reference supplies the affine (if not
            given), qform/sform codes and units; a TIFF reference supplies the resolution tags; an
            HDF5 reference its file attributes (to the mask file) and dataset attributes (to ``/Image``).
        h5_dataset: HDF5 only: the reference's dataset the mask was computed from (default
            ``/Image``, else its finest pyramid level), whose attributes are copied.

    Returns:
        The written path.
    """
    path = Path(path)
    if not (_is_tiff(path) or _is_nifti(path) or _is_h5(path)):
        raise ValueError(f"Unsupported mask file {str(path)!r}: use .tif, .tiff, .nii, .nii.gz, .h5 or .hdf5.")
    data = _mask_to_uint8(mask, path)
    if _is_tiff(path):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            _write_tiff(fh, data, reference)
    elif _is_h5(path):
        with atomic_path(path) as tmp:
            _write_h5(tmp, data, reference, h5_dataset)
    else:
        img = _nifti_image(data, affine, reference)
        with atomic_path(path) as tmp:
            _write_nifti(tmp, path, img)
    return path


def source_path(data: Mapping[Hashable, Any], image_key: str = "image", path_key: str = "image_path") -> str:
    """Source file of a data item: ``data[image_key].meta["filename_or_obj"]``, else ``data[path_key]``."""
    img = data.get(image_key)
    name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
    if isinstance(name, (list, tuple)):  # collated meta
        name = name[0] if len(name) == 1 else None
    if not name:
        name = data.get(path_key)
    if not name:
        raise KeyError(f"No source file name: neither {image_key!r}.meta['filename_or_obj'] nor {path_key!r} is set.")
    return str(name)


def _meta_affine(*items: Any) -> np.ndarray | None:
    """``original_affine`` (else ``affine``) from the first MetaTensor among ``items`` that has one."""
    for item in items:
        if isinstance(item, MetaTensor):
            for key in ("original_affine", "affine"):
                value = item.meta.get(key)
                if value is not None:
                    return _as_affine4(value)
    return None


def _meta_value(item: Any, key: str) -> Any:
    """``item.meta[key]`` of a MetaTensor (first element of collated meta), else None."""
    value = item.meta.get(key) if isinstance(item, MetaTensor) else None
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


class SaveMaskd(MapTransform):
    """Write ``data[key]`` as the mask of the item's source image, atomically.

    The file is ``mask_path_for(source, output_dir, suffix)``, the source name coming from
    ``data[image_key].meta["filename_or_obj"]`` (else ``data["image_path"]``). NIfTI masks get the
    image's ``meta["original_affine"]`` (else ``meta["affine"]``, else the source header's affine);
    HDF5 masks the attributes of the source and of its dataset named by ``meta["h5_dataset"]``.
    The written path is recorded as ``str`` in ``data[path_key]``; the mask itself is left unchanged.

    Input: ``data[key]`` (H, W) or (1, H, W) binary mask, numpy/torch/MetaTensor.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: PathLike,
        suffix: str | Sequence[str] = "_mask",
        image_key: str = "image",
        path_key: str | Sequence[str] = "mask_path",
        allow_missing_keys: bool = False,
        writer: BackgroundWriter | None = None,
    ) -> None:
        """
        Args:
            keys: mask key(s), usually ``"pred"``.
            output_dir: folder for the masks (created if missing).
            suffix: appended to the source stem; one per key when several keys are given.
            image_key: key of the source image (a MetaTensor with ``filename_or_obj``).
            path_key: where to record the written path; one per key when several keys are given.
            allow_missing_keys: don't raise for missing mask keys.
            writer: write in this :class:`~plimonai.io.background.BackgroundWriter`'s thread (the
                path is recorded at once, the write's Future in ``data["pending_writes"]``); ``None``: now.
        """
        super().__init__(keys, allow_missing_keys)
        self.writer = writer
        self.output_dir = Path(output_dir)
        self.suffix = ensure_tuple_rep(suffix, len(self.keys))
        self.path_key = ensure_tuple_rep(path_key, len(self.keys))
        if len(set(self.suffix)) != len(self.suffix) or len(set(self.path_key)) != len(self.path_key):
            raise ValueError("SaveMaskd with several keys needs one distinct suffix and path_key per key.")
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        src = source_path(d, self.image_key)
        for key, suffix, path_key in self.key_iterator(d, self.suffix, self.path_key):
            path = mask_path_for(src, self.output_dir, suffix)
            affine = _meta_affine(d.get(self.image_key), d[key]) if _is_nifti(path) else None
            reference = src if os.path.isfile(src) else None
            h5_dataset = _meta_value(d.get(self.image_key), "h5_dataset") if _is_h5(path) else None
            if self.writer is None:
                d[path_key] = str(write_mask(path, d[key], affine=affine, reference=reference, h5_dataset=h5_dataset))
                continue
            mask = _mask_to_uint8(d[key], path).copy()  # validated and detached here, so the slice fails on bad masks at once
            submit_write(self.writer, d, functools.partial(write_mask, affine=affine, reference=reference, h5_dataset=h5_dataset),
                         path, mask)
            d[path_key] = str(path)
        return d
