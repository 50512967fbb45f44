"""Area-based clean-up of binary tissue masks (2D sections).

The masks feed a 3D reconstruction from thousands of sections, so borders, real holes (ventricles,
tears) and separate tissue pieces must survive post-processing:

* MONAI's ``KeepLargestConnectedComponent`` drops real separate pieces, and
* MONAI's ``FillHoles`` fills every enclosed hole, ventricles included,

hence the area thresholds below. Everything is one ``scipy.ndimage.label`` + ``np.bincount`` per
rule and a lookup-table gather (no per-component Python loops), which keeps a 2080 x 2776 mask well
under a second and a 20000 x 20000 mask workable (int32 labels: 4 bytes per pixel).

All transforms take a binary mask of shape (H, W) or (1, H, W) as numpy array, torch tensor or
MONAI ``MetaTensor`` (values > 0 are tissue) and return the same kind and shape as ``uint8`` in {0, 1},
keeping the ``MetaTensor`` meta.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import KeepLargestConnectedComponent, MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

__all__ = [
    "component_stats",
    "remove_small_components",
    "fill_small_holes",
    "RemoveSmallComponents",
    "FillSmallHoles",
    "TissueMaskPostprocess",
    "RemoveSmallComponentsd",
    "FillSmallHolesd",
    "TissueMaskPostprocessd",
    "LogitsToMask",
    "LogitsToMaskd",
]


def _as_2d_bool(mask: NdarrayOrTensor, name: str = "mask") -> np.ndarray:
    """(H, W) or (1, H, W) numpy/torch -> (H, W) bool numpy (values > 0; NaN -> False)."""
    arr = convert_data_type(mask, np.ndarray)[0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (1, H, W), got {tuple(arr.shape)}.")
    return arr if arr.dtype == bool else arr > 0


def _restore(out: np.ndarray, like: NdarrayOrTensor) -> NdarrayOrTensor:
    """(H, W) bool -> uint8 in the container type and shape of ``like`` (MetaTensor meta kept)."""
    out = out.reshape(like.shape).astype(np.uint8, copy=False)
    return convert_to_dst_type(out, like, dtype=np.uint8)[0]


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours) in 2D, got {connectivity}.")
    return ndimage.generate_binary_structure(2, connectivity)


def check_area_rules(min_component_fraction: float, connectivity: int) -> None:
    """Raise ``ValueError`` for a fraction outside [0, 1] or a 2D connectivity other than 1 or 2
    (shared by the in-memory and the streamed post-processing)."""
    if not 0.0 <= min_component_fraction <= 1.0:
        raise ValueError(f"min_component_fraction must be in [0, 1], got {min_component_fraction}.")
    _structure(connectivity)


def _label_areas(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Label ``mask`` and return (labels, areas) with ``areas[0] == 0`` (index 0 = outside ``mask``)."""
    labels, n = ndimage.label(mask, structure=_structure(connectivity))
    # np.bincount casts int32 labels to intp, i.e. copies all of them: count in row chunks instead
    # (20000 x 20000: 10 s -> 1.3 s); chunks hold >= 4 Mpx and >= 4 x the bin count
    rows = max(1, -(-max(1 << 22, 4 * (n + 1)) // max(1, labels.shape[1])))
    areas = np.zeros(n + 1, dtype=np.int64)
    for start in range(0, labels.shape[0], rows):
        areas += np.bincount(labels[start : start + rows].ravel(), minlength=n + 1)
    areas[0] = 0
    return labels, areas


def component_stats(mask: NdarrayOrTensor, connectivity: int = 2) -> tuple[int, np.ndarray]:
    """Connected tissue components of a binary mask.

    Args:
        mask: (H, W) or (1, H, W) binary mask, numpy or torch; values > 0 are tissue.
        connectivity: 1 = 4-neighbours, 2 = 8-neighbours.

    Returns:
        ``(n_components, areas)``: areas in pixels as int64 array of length ``n_components``,
        sorted largest first.
    """
    _, areas = _label_areas(_as_2d_bool(mask), connectivity)
    areas = np.sort(areas[1:])[::-1].astype(np.int64)
    return int(areas.size), areas


def remove_small_components(
    mask: np.ndarray, min_area: int = 0, min_fraction: float = 0.0, connectivity: int = 2
) -> np.ndarray:
    """Drop tissue components smaller than ``min_area`` pixels or ``min_fraction`` x the largest one.

    Custom rather than ``skimage.morphology.remove_small_objects`` to apply both criteria on one labelling.

    Args:
        mask: (H, W) bool array.
        min_area: components with fewer pixels are removed.
        min_fraction: components with fewer than ``min_fraction * largest_area`` pixels are removed.
        connectivity: 1 = 4-neighbours, 2 = 8-neighbours.

    Returns:
        (H, W) bool array.
    """
    return _remove_small(mask, min_area, min_fraction, connectivity)[0]


def _remove_small(mask: np.ndarray, min_area: int, min_fraction: float, connectivity: int) -> tuple[np.ndarray, int]:
    """:func:`remove_small_components` and the number of components it keeps (one labelling)."""
    labels, areas = _label_areas(mask, connectivity)
    if areas.size <= 1:  # no tissue at all
        return mask, 0
    threshold = max(float(min_area), float(min_fraction) * float(areas.max()), 1.0)
    keep = areas >= threshold
    keep[0] = False
    return keep[labels], int(keep.sum())


def fill_small_holes(mask: np.ndarray, max_area: int, connectivity: int = 1) -> np.ndarray:
    """Fill enclosed background components (holes) smaller than ``max_area`` pixels.

    Background touching the image border is never filled, and holes of ``max_area`` pixels or more
    (ventricles) are kept. Custom because ``skimage.morphology.remove_small_holes`` also fills small
    border-touching background and MONAI's ``FillHoles`` has no size limit.

    Args:
        mask: (H, W) bool array.
        max_area: holes with fewer pixels are filled.
        connectivity: background connectivity; 1 (4-neighbours) is the dual of 8-connected tissue.

    Returns:
        (H, W) bool array.
    """
    if max_area <= 1:
        return mask
    labels, areas = _label_areas(~mask, connectivity)  # label the inverted mask once
    border = np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1]))
    fill = areas < max_area
    fill[0] = False  # tissue
    fill[border] = False  # background reaching the image edge is not a hole
    if not fill.any():
        return mask
    return mask | fill[labels]


class RemoveSmallComponents(Transform):
    """Remove tissue components (dust, specks) with fewer than ``min_area`` pixels.

    Input: (H, W) or (1, H, W) binary mask (bool/uint8/int/float, numpy/torch/MetaTensor).
    Output: same kind and shape, ``uint8`` in {0, 1}.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, min_area: int, connectivity: int = 2) -> None:
        """
        Args:
            min_area: components with fewer pixels are removed.
            connectivity: tissue connectivity, 1 = 4-neighbours, 2 = 8-neighbours (default).
        """
        _structure(connectivity)
        self.min_area = int(min_area)
        self.connectivity = connectivity

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        out = remove_small_components(_as_2d_bool(img), self.min_area, connectivity=self.connectivity)
        return _restore(out, img)


class FillSmallHoles(Transform):
    """Fill holes (enclosed background not touching the image border) with fewer than ``max_area`` pixels.

    Larger holes (ventricles) and background touching the border are kept.
    Input: (H, W) or (1, H, W) binary mask (bool/uint8/int/float, numpy/torch/MetaTensor).
    Output: same kind and shape, ``uint8`` in {0, 1}.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, max_area: int, connectivity: int = 1) -> None:
        """
        Args:
            max_area: holes with fewer pixels are filled.
            connectivity: background connectivity, 1 = 4-neighbours (default, dual of 8-connected tissue).
        """
        _structure(connectivity)
        self.max_area = int(max_area)
        self.connectivity = connectivity

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        out = fill_small_holes(_as_2d_bool(img), self.max_area, connectivity=self.connectivity)
        return _restore(out, img)


class TissueMaskPostprocess(Transform):
    """Default clean-up policy for predicted tissue masks.

    Steps, in order:

    1. pixels where ``valid_mask`` is 0 (unscanned / NaN) become background;
    2. tissue components smaller than ``min_component_area`` pixels, or smaller than
       ``min_component_fraction`` x the largest component, are removed (all other pieces are kept);
    3. optionally (``keep_largest=True``) only the largest component is kept, via MONAI's
       ``KeepLargestConnectedComponent``;
    4. holes smaller than ``max_hole_area`` pixels are filled (border-touching background and larger
       holes such as ventricles are kept);
    5. invalid pixels are forced to background again, so hole filling never claims unscanned area.

    Input: (H, W) or (1, H, W) binary mask (bool/uint8/int/float, numpy/torch/MetaTensor);
    ``valid_mask`` of the same spatial size, non-zero = valid.
    Output: same kind and shape as the input, ``uint8`` in {0, 1}.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        min_component_area: int = 1000,
        max_hole_area: int = 1000,
        min_component_fraction: float = 0.0,
        keep_largest: bool = False,
        connectivity: int = 2,
    ) -> None:
        """
        Args:
            min_component_area: tissue components with fewer pixels are removed (0 disables).
            max_hole_area: holes with fewer pixels are filled (0 disables).
            min_component_fraction: also remove components smaller than this fraction of the largest.
            keep_largest: keep only the largest component (MONAI ``KeepLargestConnectedComponent``).
            connectivity: tissue connectivity (1 or 2); holes use the dual one (3 - connectivity).
        """
        check_area_rules(min_component_fraction, connectivity)
        self.min_component_area = int(min_component_area)
        self.max_hole_area = int(max_hole_area)
        self.min_component_fraction = float(min_component_fraction)
        self.keep_largest = keep_largest
        self.connectivity = connectivity
        self._largest = KeepLargestConnectedComponent(applied_labels=1, is_onehot=False, connectivity=connectivity)

    def __call__(self, img: NdarrayOrTensor, valid_mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        return self.with_count(img, valid_mask)[0]

    def with_count(self, img: NdarrayOrTensor, valid_mask: NdarrayOrTensor | None = None) -> tuple[NdarrayOrTensor, int]:
        """The cleaned mask and its number of tissue components (``connectivity``), without relabelling:
        filling holes neither joins nor splits components."""
        mask = _as_2d_bool(img)
        valid = None
        if valid_mask is not None:
            valid = _as_2d_bool(valid_mask, "valid_mask")
            if valid.shape != mask.shape:
                raise ValueError(f"valid_mask shape {valid.shape} does not match mask shape {mask.shape}.")
            mask = mask & valid
        mask, n = _remove_small(mask, self.min_component_area, self.min_component_fraction, self.connectivity)
        if self.keep_largest:
            mask = self._largest(mask[None].astype(np.uint8))[0] > 0
            n = min(n, 1)
        mask = fill_small_holes(mask, self.max_hole_area, connectivity=3 - self.connectivity)
        if valid is not None:
            mask = mask & valid  # only un-fills invalid hole pixels: the count stays
        return _restore(mask, img), n


class RemoveSmallComponentsd(MapTransform):
    """Dictionary wrapper of :class:`RemoveSmallComponents`."""

    backend = RemoveSmallComponents.backend

    def __init__(
        self, keys: KeysCollection, min_area: int, connectivity: int = 2, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = RemoveSmallComponents(min_area, connectivity)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class FillSmallHolesd(MapTransform):
    """Dictionary wrapper of :class:`FillSmallHoles`."""

    backend = FillSmallHoles.backend

    def __init__(
        self, keys: KeysCollection, max_area: int, connectivity: int = 1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = FillSmallHoles(max_area, connectivity)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class TissueMaskPostprocessd(MapTransform):
    """Dictionary wrapper of :class:`TissueMaskPostprocess`.

    ``valid_key`` names an optional (H, W) / (1, H, W) valid-pixel mask in the data (non-zero = scanned);
    when the key is absent from an item, all pixels count as valid. Also stores the number of tissue
    components under ``"{key}_components"`` (read by the summary handler instead of relabelling).
    """

    backend = TissueMaskPostprocess.backend

    def __init__(
        self,
        keys: KeysCollection,
        min_component_area: int = 1000,
        max_hole_area: int = 1000,
        min_component_fraction: float = 0.0,
        keep_largest: bool = False,
        connectivity: int = 2,
        valid_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = TissueMaskPostprocess(
            min_component_area, max_hole_area, min_component_fraction, keep_largest, connectivity
        )
        self.valid_key = valid_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        valid = d.get(self.valid_key) if self.valid_key is not None else None
        for key in self.key_iterator(d):
            d[key], d[f"{key}_components"] = self.transform.with_count(d[key], valid)
        return d


class LogitsToMask(Transform):
    """Two-class logits ``(2, H, W)`` -> tissue mask ``(1, H, W)`` uint8 (``logit_1 > logit_0``, i.e. the
    argmax; ``torch.argmax`` over a size-2 channel dim costs about 1 s per LAP slice on CPU). A
    one-channel input is taken as the tissue logit (``> 0``). MetaTensor meta is kept."""

    def __call__(self, logits: NdarrayOrTensor) -> NdarrayOrTensor:
        t = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
        mask = (t[1:2] > t[0:1]) if t.shape[0] >= 2 else (t[0:1] > 0)
        out = mask.to(torch.uint8)
        if isinstance(logits, MetaTensor) and not isinstance(out, MetaTensor):
            out = MetaTensor(out, meta=logits.meta)
        return out if isinstance(logits, torch.Tensor) else out.numpy()


class LogitsToMaskd(MapTransform):
    """Dictionary wrapper of :class:`LogitsToMask`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = LogitsToMask()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d
