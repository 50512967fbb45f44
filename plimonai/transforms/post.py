"""Area-based clean-up of binary tissue masks (2D sections).

The masks feed a 3D reconstruction from thousands of sections, so borders, real holes (ventricles,
tears) and separate tissue pieces must survive post-processing:

* MONAI's ``KeepLargestConnectedComponent`` drops real separate pieces, and
* MONAI's ``FillHoles`` fills every enclosed hole, ventricles included,

hence the area thresholds below. Everything is one ``scipy.ndimage.label`` + ``np.bincount`` per
rule and a lookup-table gather (no per-component Python loops but the side-band rule's one pass over
``ndimage.find_objects`` boxes), which keeps a 2080 x 2776 mask well under a second and a
20000 x 20000 mask workable (int32 labels: 4 bytes per pixel).

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
    "remove_edge_bands",
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


def _scanned_box(valid: np.ndarray | None, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows y0:y1 and columns x0:x1 holding scanned pixels (the whole image without ``valid``)."""
    if valid is None or not valid.any():
        return 0, shape[0], 0, shape[1]
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def remove_edge_bands(
    mask: np.ndarray, valid: np.ndarray | None = None, max_depth: float = 0.15, min_coverage: float = 0.6,
    min_elongation: float = 3.0, gap: float = 0.02, connectivity: int = 2,
) -> tuple[np.ndarray, int]:
    """Remove bands along a side of the scanned area: the region beyond a cover-slip or slide edge.

    Such a band is uniform and darker than glass, so the network can call it tissue, often in patches
    along the edge line; it then outweighs a small (rodent) section. A side's candidates are components
    lying (>= 95 % of their pixels) within ``max_depth`` x the scanned height / width of that side and at
    least ``min_elongation`` times longer along the side than deep. When together they span at least
    ``min_coverage`` of the side's length they are removed, with the other components of the strip that lie
    within ``gap`` x the side's length of them (the band's smaller patches). A tissue piece cut by the
    image border is deeper than it is long, or spans less of the side, so it stays. Returns the mask and
    the number of components removed; ``max_depth`` 0 disables.

    Input: (H, W) bool mask; ``valid`` (H, W) scanned pixels (the sides are those of their bounding box).
    """
    mask = np.asarray(mask, dtype=bool)
    if max_depth <= 0 or not mask.any():
        return mask, 0
    lab, n = ndimage.label(mask, structure=_structure(connectivity))
    total = np.bincount(lab.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(lab)
    ext_y = np.array([0] + [b[0].stop - b[0].start for b in boxes])
    ext_x = np.array([0] + [b[1].stop - b[1].start for b in boxes])
    y0, y1, x0, x1 = _scanned_box(valid, mask.shape)
    h, w = y1 - y0, x1 - x0
    dh, dw = max(1, int(max_depth * h)), max(1, int(max_depth * w))
    drop = np.zeros(n + 1, dtype=bool)
    # (strip along the side with the side along axis 1, side length, component extents along / across the side)
    sides = [
        (lab[y0:y0 + dh, x0:x1], w, ext_x, ext_y),
        (lab[y1 - dh:y1, x0:x1], w, ext_x, ext_y),
        (lab[y0:y1, x0:x0 + dw].T, h, ext_y, ext_x),
        (lab[y0:y1, x1 - dw:x1].T, h, ext_y, ext_x),
    ]
    for strip, length, along, across in sides:
        inside = np.bincount(strip.ravel(), minlength=n + 1) >= 0.95 * total
        inside[0] = False
        cand = inside & (along >= min_elongation * across)
        if not cand.any() or cand[strip].any(axis=0).mean() < min_coverage:
            continue
        drop |= cand
        size = 2 * max(1, int(gap * length)) + 1
        near = np.unique(strip[ndimage.maximum_filter(cand[strip].astype(np.uint8), size=size).astype(bool)])
        drop[near] |= inside[near]
    if not drop.any():
        return mask, 0
    return mask & ~drop[lab], int(drop.sum())


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
    3. with ``edge_band_depth`` > 0, bands along a side of the scanned area (beyond a cover-slip or slide
       edge) are removed (:func:`remove_edge_bands`);
    4. optionally (``keep_largest=True``) only the largest component is kept, via MONAI's
       ``KeepLargestConnectedComponent``;
    5. holes smaller than ``max_hole_area`` pixels are filled (border-touching background and larger
       holes such as ventricles are kept);
    6. invalid pixels are forced to background again, so hole filling never claims unscanned area.

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
        edge_band_depth: float = 0.0,
    ) -> None:
        """
        Args:
            min_component_area: tissue components with fewer pixels are removed (0 disables).
            max_hole_area: holes with fewer pixels are filled (0 disables).
            min_component_fraction: also remove components smaller than this fraction of the largest.
            keep_largest: keep only the largest component (MONAI ``KeepLargestConnectedComponent``).
            connectivity: tissue connectivity (1 or 2); holes use the dual one (3 - connectivity).
            edge_band_depth: remove side bands up to this fraction of the scanned height / width deep
                (:func:`remove_edge_bands`; 0 disables).
        """
        check_area_rules(min_component_fraction, connectivity)
        self.edge_band_depth = float(edge_band_depth)
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
        if self.edge_band_depth > 0:
            mask, removed = remove_edge_bands(mask, valid, self.edge_band_depth, connectivity=self.connectivity)
            n -= removed
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
        edge_band_depth: float = 0.0,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = TissueMaskPostprocess(
            min_component_area, max_hole_area, min_component_fraction, keep_largest, connectivity, edge_band_depth
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
