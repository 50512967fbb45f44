"""Masks of huge slices written band by band: tiled, compressed, pyramidal TIFF.

:func:`write_tiled_mask` takes the mask as an iterable of row bands (any heights, top to bottom) and
writes a tiled BigTIFF/TIFF (``zlib``, TIFF compression 8) whose SubIFDs hold 2x2 max-pooled levels
(a tissue pixel stays visible at every level, as in the HDF5 mask pyramid of
:func:`plimonai.io.writers.mask_pyramid`) down to a long side of at most one tile, like the PM
generator's images, so viewers (QuPath, napari, tifffile) open it at any zoom. Level 0 tiles are
compressed and handed to tifffile as soon as their tile row is complete; the coarser levels are
kept as compressed tiles (masks compress 100x and more) and written after level 0. Memory: about
two tile rows of level 0 plus the compressed levels. The file is written under a temp name and
renamed (:func:`plimonai.io.writers.atomic_path`).

:class:`BlockReducer` is the band-wise block reduction (max or mean over ``f x f`` blocks, the last
partial blocks over their own pixels) behind the pyramid and the overlay thumbnails.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import tifffile

from .writers import PathLike, _scale_rational, _tiff_resolution, atomic_path

try:  # libdeflate through imagecodecs: several times faster than zlib, same stream format
    import imagecodecs

    def _encode(tile: np.ndarray, level: int) -> bytes:
        return bytes(imagecodecs.zlib_encode(np.ascontiguousarray(tile), level=level))

except ImportError:  # pragma: no cover

    def _encode(tile: np.ndarray, level: int) -> bytes:
        return zlib.compress(np.ascontiguousarray(tile).tobytes(), level)


__all__ = ["BlockReducer", "block_reduce", "pyramid_shapes", "write_tiled_mask"]


def block_reduce(a: np.ndarray, f: int, op: str = "max") -> np.ndarray:
    """(h, w) -> (ceil(h / f), ceil(w / f)): ``"max"`` (same dtype) or ``"mean"`` (float32) of ``f x f``
    blocks; partial blocks at the bottom/right use only their own pixels."""
    h, w = a.shape
    hh, ww = -(-h // f), -(-w // f)
    if op == "max":
        pad = np.zeros((hh * f, ww * f), a.dtype)
        pad[:h, :w] = a
        return pad.reshape(hh, f, ww, f).max(axis=(1, 3))
    if op != "mean":
        raise ValueError(f"op must be 'max' or 'mean', got {op!r}")
    pad = np.zeros((hh * f, ww * f), np.float64 if a.dtype.kind == "f" else np.uint32)
    pad[:h, :w] = a
    s = pad.reshape(hh, f, ww, f).sum(axis=(1, 3), dtype=np.float64)
    rows = np.minimum(f, h - np.arange(hh) * f)
    cols = np.minimum(f, w - np.arange(ww) * f)
    return (s / np.outer(rows, cols)).astype(np.float32)


class BlockReducer:
    """Band-wise :func:`block_reduce`: ``push((h, W))`` rows top to bottom, get the reduced rows that are
    complete; ``flush()`` returns the last (partial) block row. Keeps fewer than ``f`` input rows."""

    def __init__(self, factor: int, op: str = "max") -> None:
        self.f, self.op = int(factor), op
        self._rest: np.ndarray | None = None

    def push(self, rows: np.ndarray) -> np.ndarray | None:
        if self._rest is not None and len(self._rest):
            rows = np.concatenate([self._rest, rows])
        n = rows.shape[0] // self.f * self.f
        self._rest = rows[n:].copy()
        return block_reduce(rows[:n], self.f, self.op) if n else None

    def flush(self) -> np.ndarray | None:
        rest, self._rest = self._rest, None
        return block_reduce(rest, self.f, self.op) if rest is not None and len(rest) else None


def pyramid_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Shapes of the 2x levels below ``shape`` (ceil halves) until the long side fits one tile."""
    out: list[tuple[int, int]] = []
    h, w = shape
    while max(h, w) > tile:
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


class _TileRows:
    """Collects rows of one level and cuts complete tile rows into padded, compressed tiles."""

    def __init__(self, width: int, tile: int, level: int) -> None:
        self.width, self.tile, self.level = width, tile, level
        self._rows: list[np.ndarray] = []
        self._n = 0

    def push(self, rows: np.ndarray) -> Iterator[bytes]:
        self._rows.append(rows)
        self._n += rows.shape[0]
        while self._n >= self.tile:
            yield from self._cut(self.tile)

    def flush(self) -> Iterator[bytes]:
        if self._n:
            yield from self._cut(self._n)

    def _cut(self, n: int) -> Iterator[bytes]:
        buf = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        band, rest = buf[:n], buf[n:]
        self._rows, self._n = ([rest] if len(rest) else []), len(rest)
        t = self.tile
        for x0 in range(0, self.width, t):
            part = band[:, x0 : x0 + t]
            if part.shape != (t, t):
                full = np.zeros((t, t), np.uint8)
                full[: part.shape[0], : part.shape[1]] = part
                part = full
            yield _encode(part, self.level)


def _hold_last(items: Iterator[bytes]) -> Iterator[bytes]:
    """``items`` with the last one yielded only after ``items`` is exhausted: tifffile stops (and closes
    the iterator) at the last tile, so work after it (the level flushes) would never run."""
    prev = None
    for item in items:
        if prev is not None:
            yield prev
        prev = item
    if prev is not None:
        yield prev


def write_tiled_mask(
    path: PathLike,
    bands: Iterable[np.ndarray],
    shape: tuple[int, int],
    tile: int = 512,
    reference: PathLike | None = None,
    compression_level: int = 6,
) -> dict[str, Any]:
    """Write the mask given as row bands to ``path``, atomically.

    Args:
        path: ``.tif``/``.tiff`` output.
        bands: (h_i, W) bool/uint8 bands in {0, 1}, top to bottom, heights summing to H.
        shape: (H, W).
        tile: tile side (multiple of 16).
        reference: a TIFF whose resolution tags are copied (scaled for the pyramid levels).
        compression_level: zlib level.

    Returns:
        ``{"path", "shape", "levels": [(H, W), (H/2, W/2), ...], "tile"}``.
    """
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    path = Path(path)
    h, w = int(shape[0]), int(shape[1])
    shapes = pyramid_shapes((h, w), tile)
    level_tiles: list[list[bytes]] = [[] for _ in shapes]
    rows_seen = [0]
    res = _tiff_resolution(reference) if reference is not None and Path(reference).is_file() else {}

    def level0() -> Iterator[bytes]:
        cutters = [_TileRows(w, tile, compression_level)] + [_TileRows(s[1], tile, compression_level) for s in shapes]
        reducers = [BlockReducer(2, "max") for _ in shapes]

        def down(k: int, rows: np.ndarray | None) -> None:  # rows of level k (>= 1) -> its tiles and level k + 1
            if rows is None or k > len(shapes):
                return
            level_tiles[k - 1].extend(cutters[k].push(rows))
            if k < len(shapes):
                down(k + 1, reducers[k].push(rows))

        for band in bands:
            band = np.asarray(band)
            if band.ndim != 2 or band.shape[1] != w:
                raise ValueError(f"{path}: mask band of shape {band.shape}, expected (rows, {w})")
            band = band.astype(np.uint8, copy=False)
            rows_seen[0] += band.shape[0]
            if rows_seen[0] > h:
                raise ValueError(f"{path}: mask bands have more than {h} rows")
            yield from cutters[0].push(band)
            if shapes:
                down(1, reducers[0].push(band))
        if rows_seen[0] != h:
            raise ValueError(f"{path}: mask bands have {rows_seen[0]} rows, expected {h}")
        yield from cutters[0].flush()
        for k in range(1, len(shapes) + 1):  # the partial last block rows, finest first
            down(k, reducers[k - 1].flush())
            level_tiles[k - 1].extend(cutters[k].flush())

    opts: dict[str, Any] = dict(tile=(tile, tile), compression="zlib", photometric="minisblack", metadata=None,
                                dtype=np.uint8)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=h * w > 2**31) as tif:
        tif.write(_hold_last(level0()), shape=(h, w), subifds=len(shapes), **opts, **res)
        for k, (hk, wk) in enumerate(shapes, start=1):
            lres = dict(res, resolution=tuple(_scale_rational(r, 2**k) for r in res["resolution"])) if res else {}
            tif.write(iter(level_tiles[k - 1]), shape=(hk, wk), subfiletype=1, **opts, **lres)
            level_tiles[k - 1] = []
    return {"path": str(path), "shape": (h, w), "levels": [(h, w), *shapes], "tile": tile}
