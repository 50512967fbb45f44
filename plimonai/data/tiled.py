"""Lazy region reads from huge single-channel TIFF slices (PM scale) and their pyramid levels.

:class:`TiledTiffImage` decodes only the tiles (or strips) a region touches, straight from the file
(``page.dataoffsets`` + ``page.decode``), keeps recently decoded ones in a small LRU cache (windows and
bands overlap), and memory-maps uncompressed contiguous levels. Levels are tifffile's series levels:
SubIFDs (as :func:`plimonai.synthetic.write_pm_slice` writes them) or further pages of a pyramid.
Custom because tifffile's ``aszarr`` needs the optional ``zarr`` package, and MONAI's readers load
whole images (``WSIReader`` backends want OpenSlide / cuCIM and RGB).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np
import tifffile

from .readers import SUPPORTED_DTYPES, SliceFormatError

__all__ = ["TiledTiffImage", "tiff_shape"]

_TIFF_SUFFIXES = (".tif", ".tiff")


def tiff_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(H, W) of level 0 of a single-channel TIFF from its header alone; None for other files or on any error."""
    if not str(path).lower().endswith(_TIFF_SUFFIXES):
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.series[0].levels[0].keyframe
            if page.samplesperpixel != 1 or len([s for s in page.shape if s > 1]) > 2:
                return None
            return int(page.imagelength), int(page.imagewidth)
    except Exception:  # unreadable: the normal loader reports it
        return None


class TiledTiffImage:
    """A single-channel 2D TIFF opened for region reads; use as a context manager (keeps the file open).

    Args:
        path: the TIFF (tiled or stripped, any tifffile codec; pyramid levels optional).
        cache_bytes: decoded tiles kept for reuse (LRU).

    ``shape`` is level 0's (H, W), ``level_shapes`` every level's; :meth:`read` returns (y1 - y0, x1 - x0)
    arrays in the file's dtype. Errors name the file.
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int = 128 << 20) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: slice file not found")
        try:
            self._tif = tifffile.TiffFile(self.path)
            self._pages = [lvl.keyframe for lvl in self._tif.series[0].levels]
        except Exception as e:
            raise SliceFormatError(f"{self.path}: unreadable TIFF ({type(e).__name__}: {e})") from e
        for k, p in enumerate(self._pages):
            if p.samplesperpixel != 1 or p.imagedepth != 1:
                self.close()
                raise SliceFormatError(f"{self.path}: expected a single-channel 2D slice, level {k} has shape {p.shape}")
        if self._pages[0].dtype is None or self._pages[0].dtype.type not in SUPPORTED_DTYPES:
            self.close()
            raise SliceFormatError(f"{self.path}: unsupported dtype {self._pages[0].dtype}")
        self.level_shapes = [(int(p.imagelength), int(p.imagewidth)) for p in self._pages]
        self.shape = self.level_shapes[0]
        self.dtype = np.dtype(self._pages[0].dtype)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict = OrderedDict()
        self._cached = 0
        self._maps: dict[int, np.ndarray] = {}

    def __enter__(self) -> "TiledTiffImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cache.clear()
        self._maps.clear()
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()

    def _segment_shape(self, page) -> tuple[int, int]:
        return (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip or page.imagelength, page.imagewidth)

    def _memmap(self, level: int) -> np.ndarray | None:
        page = self._pages[level]
        if level not in self._maps and page.is_memmappable:
            try:
                self._maps[level] = tifffile.memmap(self.path, series=0, level=level, mode="r").reshape(self.level_shapes[level])
            except Exception:  # fall back to decoding
                return None
        return self._maps.get(level)

    def _segment(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        seg = self._cache.get(key)
        if seg is not None:
            self._cache.move_to_end(key)
            return seg
        page = self._pages[level]
        sh, sw = self._segment_shape(page)
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        try:
            if count == 0:  # sparse file: tile never written
                seg = np.zeros((sh, sw), self.dtype)
            else:
                fh = self._tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
                if len(data) < count:
                    raise OSError(f"file truncated: {len(data)} of {count} bytes at offset {offset}")
                arr = page.decode(data, index, jpegtables=getattr(page, "jpegtables", None))[0]
                if arr is None:
                    raise ValueError("decoder returned nothing")
                seg = np.asarray(arr).reshape(-1, sw)
        except Exception as e:
            raise SliceFormatError(f"{self.path}: unreadable segment {index} of level {level} "
                                   f"({type(e).__name__}: {e})") from e
        self._cache[key] = seg
        self._cached += seg.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return seg

    def read(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of ``level`` (clipped to the image) as (h, w) in the file's dtype."""
        h, w = self.level_shapes[level]
        y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
        mm = self._memmap(level)
        if mm is not None:
            return np.array(mm[y0:y1, x0:x1])
        page = self._pages[level]
        sh, sw = self._segment_shape(page)
        nx = math.ceil(w / sw)
        out = np.empty((max(0, y1 - y0), max(0, x1 - x0)), self.dtype)
        for ty in range(y0 // sh, math.ceil(y1 / sh)):
            for tx in range(x0 // sw, math.ceil(x1 / sw)):
                seg = self._segment(level, ty * nx + tx)
                a0, a1 = max(y0, ty * sh), min(y1, (ty + 1) * sh)
                b0, b1 = max(x0, tx * sw), min(x1, (tx + 1) * sw)
                out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = seg[a0 - ty * sh : a1 - ty * sh, b0 - tx * sw : b1 - tx * sw]
        return out

    def read_level(self, level: int) -> np.ndarray:
        """A whole (small) level as (h, w)."""
        h, w = self.level_shapes[level]
        return self.read(0, h, 0, w, level)
