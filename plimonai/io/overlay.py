"""Quick-look PNG overlays: downsampled section image with the tissue-mask border drawn on top."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.segmentation import find_boundaries

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_data_type

from .background import BackgroundWriter, submit_write
from .writers import PathLike, atomic_path, source_path, split_image_name

__all__ = ["overlay_path_for", "render_overlay", "save_overlay", "SaveOverlayd"]



def _as_2d(x: NdarrayOrTensor, name: str) -> np.ndarray:
    arr = convert_data_type(x, np.ndarray)[0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (1, H, W), got {tuple(arr.shape)}.")
    return arr


def _downsample(arr: np.ndarray, max_size: int) -> np.ndarray:
    """Block-mean (NaN-aware) by the smallest integer factor that brings the longer side <= max_size.

    torch's ``avg_pool2d`` (``ceil_mode``: the last partial block row/column is averaged over its own
    pixels) of the finite values divided by that of the finite indicator: ~20x faster than numpy here.
    """
    f = math.ceil(max(arr.shape) / max_size)
    if f <= 1:
        return arr.astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    finite = torch.isfinite(x)
    pool = dict(kernel_size=f, stride=f, ceil_mode=True)
    total = F.avg_pool2d(torch.where(finite, x, 0.0), **pool)
    count = F.avg_pool2d(finite.float(), **pool)
    return torch.where(count > 0, total / count.clamp_min(1e-12), float("nan"))[0, 0].numpy()


def _stretch(img: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Robust contrast stretch over finite pixels to uint8; non-finite pixels become 0."""
    finite = np.isfinite(img)
    out = np.zeros(img.shape, np.uint8)
    if not finite.any():
        return out
    lo, hi = np.percentile(img[finite], percentiles)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out[finite] = np.clip((img[finite] - lo) * scale, 0, 255).astype(np.uint8)
    return out


def render_overlay(
    image: NdarrayOrTensor,
    mask: NdarrayOrTensor,
    max_size: int = 1024,
    color: tuple[int, int, int] = (255, 0, 0),
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> np.ndarray:
    """Overlay as an RGB array.

    Args:
        image: (H, W) or (C, H, W), any real dtype; NaN/inf allowed. Channel 0 is drawn (the
            transmittance; e.g. a retardation channel 1 is ignored).
        mask: (H, W) or (1, H, W) binary, same spatial size; values > 0 are tissue.
        max_size: longer side of the result, at most.
        color: RGB colour of the mask border.
        percentiles: contrast stretch range over the finite (downsampled) pixels.

    Returns:
        (h, w, 3) uint8 with ``max(h, w) <= max_size``.
    """
    if image.ndim == 3 and image.shape[0] > 1:  # multi-channel input (transmittance + retardation): channel 0
        image = image[:1]
    img2d, mask2d = _as_2d(image, "image"), _as_2d(mask, "mask")
    if img2d.shape != mask2d.shape:
        raise ValueError(f"image {img2d.shape} and mask {mask2d.shape} must have the same spatial size.")
    small = _downsample(img2d, max_size)
    # majority vote keeps the border where the image shows it; padding is ignored
    small_mask = _downsample(mask2d > 0, max_size) >= 0.5
    gray = _stretch(small, percentiles)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[find_boundaries(small_mask, mode="inner")] = color
    return rgb


def overlay_path_for(image_path: PathLike, output_dir: PathLike, suffix: str = "_overlay") -> Path:
    """``output_dir/NAME{suffix}.png`` for an input ``.../NAME.<tif|tiff|nii|nii.gz|h5|hdf5>``."""
    stem, _ = split_image_name(image_path)
    return Path(output_dir) / f"{stem}{suffix}.png"


def save_overlay(
    path: PathLike,
    image: NdarrayOrTensor,
    mask: NdarrayOrTensor,
    max_size: int = 1024,
    color: tuple[int, int, int] = (255, 0, 0),
) -> Path:
    """Write :func:`render_overlay` as an RGB PNG, atomically; returns ``path``."""
    path = Path(path)
    rgb = render_overlay(image, mask, max_size=max_size, color=color)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=3)
    return path


class SaveOverlayd(MapTransform):
    """Write ``OUT/NAME{suffix}.png`` from ``data[keys[0]]`` (image) and ``data[keys[1]]`` (mask).

    The source name comes from ``data[keys[0]].meta["filename_or_obj"]`` (else ``data["image_path"]``);
    the written path is recorded as ``str`` in ``data[path_key]``.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "pred"),
        output_dir: PathLike = ".",
        suffix: str = "_overlay",
        max_size: int = 1024,
        color: Sequence[int] = (255, 0, 0),
        path_key: str = "overlay_path",
        allow_missing_keys: bool = False,
        writer: BackgroundWriter | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.writer = writer  # render + write in its thread (see SaveMaskd); None: now
        if len(self.keys) != 2:
            raise ValueError(f"SaveOverlayd needs keys=(image_key, mask_key), got {self.keys}.")
        self.output_dir = Path(output_dir)
        self.suffix = suffix
        self.max_size = max_size
        self.color = tuple(int(c) for c in color)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image_key, mask_key = self.keys
        if self.allow_missing_keys and (image_key not in d or mask_key not in d):
            return d
        path = overlay_path_for(source_path(d, str(image_key)), self.output_dir, self.suffix)
        if self.writer is None:
            d[self.path_key] = str(save_overlay(path, d[image_key], d[mask_key], self.max_size, self.color))
            return d
        submit_write(self.writer, d, save_overlay, path, d[image_key], d[mask_key], self.max_size, self.color)
        d[self.path_key] = str(path)
        return d
