"""PM (Polarizing Microscope) slices: huge tiled BigTIFFs written tile by tile.

Geometry is planned on a coarse node grid (~2000 px long side) and every 1024 x 1024 tile is
rendered from bilinearly upsampled level sets (:func:`plimonai.synthetic.render.render_window`),
so the image and mask agree pixel-exactly and tiles join seamlessly. Memory stays bounded:
image tiles are compressed in a small thread pool while the next tile renders, mask tiles are
kept compressed (they are nearly constant), and the pyramid levels (2x block means, written as
TIFF SubIFDs) are buffered one tile row at a time in raw scratch files next to the output.
"""

from __future__ import annotations

import os
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile

from .render import plan_slice, render_window

try:  # libdeflate through imagecodecs: ~4x faster than zlib, same (zlib) stream format
    import imagecodecs

    def _deflate(data: np.ndarray, level: int) -> bytes:
        return bytes(imagecodecs.deflate_encode(data, level=level))

except ImportError:  # pragma: no cover - tifffile then uses zlib as well

    def _deflate(data: np.ndarray, level: int) -> bytes:
        return zlib.compress(data.tobytes(), level)


__all__ = ["PM_SHAPE", "auto_levels", "read_tile", "write_pm_slice"]

PM_SHAPE = (20000, 20000)


def auto_levels(shape: tuple[int, int], tile: int, max_side: int = 2048) -> int:
    """Number of 2x pyramid levels until the long side is <= ``max_side`` (>= 1, 2**n <= tile/16)."""
    n, side = 0, max(shape)
    while side > max_side:
        side = (side + 1) // 2
        n += 1
    return int(max(1, min(n, int(np.log2(max(tile // 16, 2))))))


def _reduce2(a: np.ndarray, mask: bool) -> np.ndarray:
    """2x2 block mean (rounded) of uint16, or majority (>= 2 of 4) of a {0, 1} uint8 mask."""
    h, w = a.shape
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2)), mode="edge")
    s = a[0::2, 0::2].astype(np.uint32)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    if mask:
        return (s >= 2).astype(np.uint8)
    return ((s + 2) // 4).astype(np.uint16)


class _LevelFiles:
    """Raw row-major scratch files for pyramid levels 1..L, filled one tile row (band) at a time."""

    def __init__(self, folder: Path, stem: str, shape: tuple[int, int], levels: int):
        self.shapes = []
        h, w = shape
        for _ in range(levels):
            h, w = (h + 1) // 2, (w + 1) // 2
            self.shapes.append((h, w))
        self.paths = {(k, m): folder / f".{stem}.level{k + 1}.{'mask' if m else 'image'}.raw"
                      for k in range(levels) for m in (False, True)}
        self.files = {key: open(p, "wb+") for key, p in self.paths.items()}
        self.bands: dict = {}

    def start_band(self, rows: int) -> None:
        self.bands = {}
        for k, (hk, wk) in enumerate(self.shapes):
            rk = -(-rows // 2 ** (k + 1))
            self.bands[(k, False)] = np.zeros((rk, wk), np.uint16)
            self.bands[(k, True)] = np.zeros((rk, wk), np.uint8)

    def add(self, x0: int, img: np.ndarray, mask: np.ndarray) -> None:
        for k in range(len(self.shapes)):
            img, mask = _reduce2(img, False), _reduce2(mask, True)
            xk = x0 >> (k + 1)
            self.bands[(k, False)][: img.shape[0], xk : xk + img.shape[1]] = img
            self.bands[(k, True)][: mask.shape[0], xk : xk + mask.shape[1]] = mask

    def end_band(self) -> None:
        for key, band in self.bands.items():
            self.files[key].write(band.tobytes())
        self.bands = {}

    def read(self, k: int, is_mask: bool, r0: int, r1: int) -> np.ndarray:
        hk, wk = self.shapes[k]
        dt = np.dtype(np.uint8 if is_mask else np.uint16)
        f = self.files[(k, is_mask)]
        f.flush()
        f.seek(r0 * wk * dt.itemsize)
        return np.frombuffer(f.read((r1 - r0) * wk * dt.itemsize), dtype=dt).reshape(r1 - r0, wk)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        for p in self.paths.values():
            try:
                os.remove(p)
            except OSError:
                pass


def _pad(tile_arr: np.ndarray, tile: int) -> np.ndarray:
    if tile_arr.shape == (tile, tile):
        return np.ascontiguousarray(tile_arr)
    out = np.zeros((tile, tile), dtype=tile_arr.dtype)
    out[: tile_arr.shape[0], : tile_arr.shape[1]] = tile_arr
    return out


def _pipelined(arrays: Iterator[np.ndarray], tile: int, level: int, workers: int) -> Iterator[bytes]:
    """Compress padded tiles in a thread pool while the producer makes the next ones (order kept)."""
    if workers <= 0:
        for a in arrays:
            yield _deflate(_pad(a, tile), level)
        return
    with ThreadPoolExecutor(workers) as ex:
        pending: deque = deque()
        for a in arrays:
            pending.append(ex.submit(lambda x: _deflate(_pad(x, tile), level), a))
            while len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _level_tiles(levels: _LevelFiles, k: int, is_mask: bool, tile: int) -> Iterator[np.ndarray]:
    hk, wk = levels.shapes[k]
    for r0 in range(0, hk, tile):
        band = levels.read(k, is_mask, r0, min(r0 + tile, hk))
        for c0 in range(0, wk, tile):
            yield band[:, c0 : c0 + tile]


def write_pm_slice(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    shape: tuple[int, int] = PM_SHAPE,
    seed: int = 0,
    tile: int = 1024,
    pyramid_levels: int | None = None,
    hard: bool | None = None,
    compression_level: int = 1,
    workers: int | None = None,
) -> dict:
    """Write a synthetic PM slice (uint16) and its mask (uint8, {0, 1}) as tiled BigTIFFs.

    Both files: one tile x tile (multiple of 16), deflate ('zlib', TIFF compression 8) compressed,
    with ``pyramid_levels`` 2x-downsampled SubIFDs (None: until the long side is <= 2048 px).
    Files are written under temporary names and renamed at the end. Memory is bounded by a few
    tiles plus the coarse plan (~0.5 GB for 20000 x 20000), independent of ``shape``.

    Returns a dict: image, mask, shape, tile, n_tiles, levels (shapes), tissue_fraction, hard,
    seed, seconds.
    """
    t0 = time.perf_counter()
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    h, w = int(shape[0]), int(shape[1])
    image_path, mask_path = Path(image_path), Path(mask_path)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    n_levels = auto_levels((h, w), tile) if pyramid_levels is None else int(pyramid_levels)
    if not 0 <= n_levels or 2**n_levels > tile:
        raise ValueError(f"pyramid_levels must be in [0, log2(tile)], got {n_levels}")
    if workers is None:
        workers = max(1, min(2, (os.cpu_count() or 1) - 1))

    plan = plan_slice(seed, (h, w), "pm", hard)
    nty, ntx = -(-h // tile), -(-w // tile)
    levels = _LevelFiles(image_path.parent, image_path.stem, (h, w), n_levels)
    mask_chunks: list[bytes] = []
    tissue = 0
    # plain text: a JSON description would be mistaken for tifffile "shaped" metadata
    desc = f"plimonai.synthetic kind=pm seed={int(seed)} hard={plan.hard} shape={h}x{w}"

    def tiles() -> Iterator[np.ndarray]:
        nonlocal tissue
        for ty in range(nty):
            y0 = ty * tile
            th = min(tile, h - y0)
            levels.start_band(th)
            for tx in range(ntx):
                x0 = tx * tile
                img, m = render_window(plan, y0, x0, th, min(tile, w - x0))
                tissue += int(m.sum(dtype=np.int64))
                mask_chunks.append(_deflate(_pad(m, tile), compression_level))
                levels.add(x0, img, m)
                if tx == ntx - 1:  # before the last yield: the consumer may stop right after it
                    levels.end_band()
                yield img

    tmp_img = image_path.with_name(f".{image_path.name}.{os.getpid()}.tmp")
    tmp_msk = mask_path.with_name(f".{mask_path.name}.{os.getpid()}.tmp")
    opts = dict(tile=(tile, tile), compression="zlib", photometric="minisblack", metadata=None)
    try:
        with tifffile.TiffWriter(tmp_img, bigtiff=True) as tif:
            tif.write(_pipelined(tiles(), tile, compression_level, workers), shape=(h, w), dtype=np.uint16,
                      subifds=n_levels, description=desc, **opts)
            for k, (hk, wk) in enumerate(levels.shapes):
                tif.write(_pipelined(_level_tiles(levels, k, False, tile), tile, compression_level, workers),
                          shape=(hk, wk), dtype=np.uint16, subfiletype=1, **opts)
        with tifffile.TiffWriter(tmp_msk, bigtiff=True) as tif:
            tif.write(iter(mask_chunks), shape=(h, w), dtype=np.uint8, subifds=n_levels, description=desc, **opts)
            mask_chunks.clear()
            for k, (hk, wk) in enumerate(levels.shapes):
                tif.write(_pipelined(_level_tiles(levels, k, True, tile), tile, compression_level, 0),
                          shape=(hk, wk), dtype=np.uint8, subfiletype=1, **opts)
        os.replace(tmp_img, image_path)
        os.replace(tmp_msk, mask_path)
    finally:
        levels.close()
        for p in (tmp_img, tmp_msk):
            if p.exists():
                p.unlink()
    return {
        "image": str(image_path),
        "mask": str(mask_path),
        "shape": (h, w),
        "tile": tile,
        "n_tiles": nty * ntx,
        "levels": [(h, w), *levels.shapes],
        "tissue_fraction": tissue / float(h * w),
        "hard": plan.hard,
        "seed": int(seed),
        "seconds": time.perf_counter() - t0,
    }


def read_tile(path: str | os.PathLike, ty: int, tx: int, level: int = 0) -> np.ndarray:
    """Decode one stored tile (tile x tile, edge tiles zero-padded) of a tiled TIFF without reading the rest."""
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[level].keyframe
        ntx = -(-page.shape[1] // page.tilewidth)
        i = ty * ntx + tx
        tif.filehandle.seek(page.dataoffsets[i])
        data = tif.filehandle.read(page.databytecounts[i])
        arr, _, _ = page.decode(data, i)
        return np.asarray(arr).reshape(page.tilelength, page.tilewidth)
