"""The clean-up policy of :class:`~plimonai.transforms.post.TissueMaskPostprocess` on masks too large to hold.

Same rules, same result pixel for pixel: invalid pixels are background; tissue components
(``connectivity``, default 8-neighbours) smaller than ``min_component_area`` full-resolution pixels
(or ``min_component_fraction`` x the largest) are removed, every other piece is kept; holes
(background components, the dual connectivity, not touching the image border) smaller than
``max_hole_area`` are filled, larger holes (ventricles) and background reaching the border are kept;
invalid pixels are background again.

Approach: exact connected components over row bands with a union-find across band borders.
The mask arrives band by band (any heights, top to bottom) and is cut into sub-bands of at most
``max_band_pixels`` pixels. Each sub-band is labelled on its own (``scipy.ndimage.label``); its
labels get global ids (a running offset), their pixel counts are recorded, and the labels on its
first row are linked to those on the previous sub-band's last row (straight neighbours, plus the
diagonal ones for 8-connectivity). ``scipy.sparse.csgraph.connected_components`` over these links
merges the pieces into the true components, whose areas are the sums of their pieces' counts;
background pieces on the image border mark their component as border-touching. Three passes:

1. (while the mask streams in) label tissue, record areas and links, keep the sub-band packed and
   compressed (``np.packbits`` + zlib: about 1 bit per pixel before compression, far less after);
2. relabel each sub-band (labelling is deterministic, so the ids repeat), drop removed components
   through a lookup table, re-store, and label the background the same way;
3. relabel the background, fill the small holes, apply the valid mask, and yield the final bands.

Memory: the compressed mask (and valid mask, when not all valid), one sub-band of int32 labels,
and a few integers per piece; no full-size array. Compute: three ``ndimage.label`` passes over
the slice. Custom because MONAI and scikit-image label whole arrays only.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .post import check_area_rules

__all__ = ["StreamingMaskPostprocess"]


def _pack(a: np.ndarray) -> bytes:
    return zlib.compress(np.packbits(a, axis=None).tobytes(), 1)


def _unpack(b: bytes, shape: tuple[int, int]) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(zlib.decompress(b), np.uint8), count=shape[0] * shape[1])
    return bits.reshape(shape).view(bool)


class _BandLabels:
    """Global components of a mask labelled sub-band by sub-band (see the module docstring)."""

    def __init__(self, connectivity: int, width: int) -> None:
        self.structure = ndimage.generate_binary_structure(2, connectivity)
        self.diagonal = connectivity == 2
        self.width = width
        self.offsets: list[int] = []
        self.counts: list[int] = []
        self.areas: list[np.ndarray] = [np.zeros(1, np.int64)]  # global id 0: not in the mask
        self.links: list[np.ndarray] = []
        self.border: list[np.ndarray] = []
        self.n = 0
        self._last: np.ndarray | None = None  # global ids on the previous sub-band's last row

    def label(self, mask: np.ndarray) -> tuple[np.ndarray, int]:
        return ndimage.label(mask, structure=self.structure)

    def add(self, mask: np.ndarray, first: bool, border_rows: bool) -> None:
        """Label one sub-band (h, W) bool. ``border_rows``: its left/right columns (and first row when
        ``first``) lie on the image border; the last row of the last sub-band is marked by :meth:`close`."""
        lab, n = self.label(mask)
        off = self.n
        self.offsets.append(off)
        self.counts.append(n)
        self.areas.append(np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64))
        top = np.where(lab[0] > 0, lab[0] + off, 0)
        if self._last is not None:
            a, b = self._last, top
            pairs = [(a, b)]
            if self.diagonal:
                pairs += [(a[:-1], b[1:]), (a[1:], b[:-1])]
            for p, q in pairs:
                keep = (p > 0) & (q > 0)
                if keep.any():
                    self.links.append(np.unique(np.stack([p[keep], q[keep]], axis=1), axis=0))
        if border_rows:
            edge = [lab[:, 0], lab[:, -1]] + ([lab[0]] if first else [])
            e = np.unique(np.concatenate(edge))
            self.border.append(e[e > 0] + off)
        self._last = np.where(lab[-1] > 0, lab[-1] + off, 0)
        self.n += n

    def lookup(self, i: int, table: np.ndarray, lab: np.ndarray) -> np.ndarray:
        """``table`` (per global id, id 0 included) read at sub-band ``i``'s local labels ``lab``."""
        off, n = self.offsets[i], self.counts[i]
        return np.concatenate([table[:1], table[off + 1 : off + n + 1]])[lab]

    def close(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Resolve: ``(component of each global id (n + 1,), component areas, component touches border)``;
        component 0 is id 0's (outside the mask, area 0)."""
        if self._last is not None:
            e = np.unique(self._last)
            self.border.append(e[e > 0])
        size = self.n + 1
        links = np.concatenate(self.links) if self.links else np.zeros((0, 2), np.int64)
        graph = coo_matrix((np.ones(len(links), np.int8), (links[:, 0], links[:, 1])), shape=(size, size))
        _, comp = connected_components(graph, directed=False)
        comp = _renumber_zero_first(comp.astype(np.int64))
        areas = np.bincount(comp, weights=np.concatenate(self.areas), minlength=int(comp.max()) + 1).astype(np.int64)
        touches = np.zeros(areas.size, bool)
        if self.border:
            touches[comp[np.concatenate(self.border).astype(np.int64)]] = True
        touches[0] = False
        return comp, areas, touches


def _renumber_zero_first(comp: np.ndarray) -> np.ndarray:
    """Component labels with id 0's label moved to 0 (a swap of two labels)."""
    z = comp[0]
    if z == 0:
        return comp
    out = comp.copy()
    out[comp == z] = 0
    out[comp == 0] = z
    return out


class StreamingMaskPostprocess:
    """Band-wise :class:`~plimonai.transforms.post.TissueMaskPostprocess` for one slice (see the module docstring).

    Usage: ``pp.start(width)``; ``pp.add(mask_band, valid_band)`` for every band top to bottom ((h, W)
    bool each, ``valid_band`` None = all valid); then ``for band in pp.bands(): ...`` yields the final
    (h', W) bool bands (sub-band heights) and sets ``components`` (tissue components kept).

    Args:
        min_component_area: tissue components with fewer pixels are removed (0 disables).
        max_hole_area: holes with fewer pixels are filled (0 disables).
        min_component_fraction: also remove components smaller than this fraction of the largest.
        keep_largest: keep only the largest component.
        connectivity: tissue connectivity (1 or 2); holes use the dual one (3 - connectivity).
        max_band_pixels: pixels per labelled sub-band (bounds the int32 label buffer).
    """

    def __init__(
        self,
        min_component_area: int = 1000,
        max_hole_area: int = 1000,
        min_component_fraction: float = 0.0,
        keep_largest: bool = False,
        connectivity: int = 2,
        max_band_pixels: int = 1 << 22,
    ) -> None:
        check_area_rules(min_component_fraction, connectivity)
        self.min_component_area, self.max_hole_area = int(min_component_area), int(max_hole_area)
        self.min_component_fraction, self.keep_largest = float(min_component_fraction), bool(keep_largest)
        self.connectivity, self.max_band_pixels = connectivity, int(max_band_pixels)
        self.components = 0

    def start(self, width: int) -> None:
        self.width = int(width)
        self.rows = max(1, self.max_band_pixels // max(1, self.width))
        self._tissue = _BandLabels(self.connectivity, self.width)
        self._store: list[tuple[tuple[int, int], bytes, bytes | None]] = []
        self.components = 0

    def add(self, mask: np.ndarray, valid: np.ndarray | None = None) -> None:
        """One band (h, W) of the thresholded mask (values > 0 tissue) and its valid mask."""
        mask = np.asarray(mask) > 0
        if mask.ndim != 2 or mask.shape[1] != self.width:
            raise ValueError(f"mask band must have shape (h, {self.width}), got {mask.shape}")
        if valid is not None:
            valid = np.asarray(valid) > 0
            mask = mask & valid
        for r0 in range(0, mask.shape[0], self.rows):
            m = mask[r0 : r0 + self.rows]
            v = None if valid is None or valid[r0 : r0 + self.rows].all() else _pack(valid[r0 : r0 + self.rows])
            self._tissue.add(m, first=not self._store, border_rows=False)
            self._store.append((m.shape, _pack(m), v))

    def bands(self) -> Iterator[np.ndarray]:
        """Passes 2 and 3: the post-processed mask, sub-band by sub-band."""
        comp, areas, _ = self._tissue.close()
        keep = np.zeros(areas.size, bool)
        if areas.size > 1:
            threshold = max(float(self.min_component_area), self.min_component_fraction * float(areas[1:].max()), 1.0)
            keep = areas >= threshold
            keep[0] = False
            if self.keep_largest and keep.any():
                cand = np.where(keep, areas, -1)[::-1]  # ties: the last in raster order, as MONAI's argsort picks
                largest = areas.size - 1 - int(np.argmax(cand))
                keep[:] = False
                keep[largest] = True
        self.components = int(keep.sum())
        keep_id = keep[comp]  # per global tissue id
        fill_holes = self.max_hole_area > 1
        holes = _BandLabels(3 - self.connectivity, self.width)
        for i, (shape, packed, v) in enumerate(self._store):  # pass 2
            m = _unpack(packed, shape)
            lab, _ = self._tissue.label(m)
            m = self._tissue.lookup(i, keep_id, lab)
            self._store[i] = (shape, _pack(m), v)
            if fill_holes:
                holes.add(~m, first=i == 0, border_rows=True)
        fill_id = None
        if fill_holes:
            hcomp, hareas, htouch = holes.close()
            fill = (hareas < self.max_hole_area) & ~htouch
            fill[0] = False
            fill_id = fill[hcomp]
        for i, (shape, packed, v) in enumerate(self._store):  # pass 3
            m = _unpack(packed, shape)
            if fill_id is not None:
                lab, _ = holes.label(~m)
                m = m | holes.lookup(i, fill_id, lab)
            if v is not None:
                m &= _unpack(v, shape)
            self._store[i] = (shape, b"", None)  # free as we go
            yield m
        self._store = []
