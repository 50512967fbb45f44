"""Tests of the synthetic LAP/PM generator (plimonai.synthetic)."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from plimonai.synthetic import (
    generate_dataset,
    make_lap_slice,
    plan_slice,
    read_tile,
    render_window,
    write_pm_slice,
)
from plimonai.synthetic.fields import upsample_window

SMALL = (520, 694)  # quarter-size LAP: same layout, ~0.5 s per slice


@functools.lru_cache(maxsize=None)
def _lap(seed: int, shape=SMALL, hard=None):
    image, mask = make_lap_slice(seed, shape, hard=hard)
    image.flags.writeable = False
    mask.flags.writeable = False
    return image, mask


def _enclosed_holes(mask: np.ndarray) -> list[int]:
    """Areas of background components that do not touch the image border."""
    bg, n = ndi.label(mask == 0)
    border = set(np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]])).tolist())
    sizes = np.bincount(bg.ravel())
    return sorted((int(sizes[i]) for i in range(1, n + 1) if i not in border), reverse=True)


def _pieces(mask: np.ndarray, min_frac: float = 0.002) -> int:
    """Tissue components larger than ``min_frac`` of the image."""
    lab, n = ndi.label(mask)
    sizes = np.bincount(lab.ravel())[1:]
    return int((sizes > min_frac * mask.size).sum())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


# ------------------------------------------------------------------------------------------
# LAP slices
# ------------------------------------------------------------------------------------------
def test_default_shape_dtype_and_speed():
    t0 = time.perf_counter()
    image, mask = make_lap_slice(11)
    seconds = time.perf_counter() - t0
    assert image.shape == (2080, 2776) and mask.shape == (2080, 2776)
    assert image.dtype == np.uint16 and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}
    background = np.median(image[mask == 0])
    assert 25000 < background < 60000, background  # bright glass (with vignetting)
    assert 0.05 < mask.mean() < 0.8
    assert seconds < 30, f"one LAP slice took {seconds:.1f} s"  # ~2-3 s unloaded; CI machines are shared


def test_deterministic_per_seed():
    a_img, a_msk = make_lap_slice(5, SMALL)
    b_img, b_msk = make_lap_slice(5, SMALL)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_msk, b_msk)
    c_img, c_msk = _lap(6)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_msk, c_msk)
    # the hard flag is honoured and changes the rendering, not the seed's geometry
    h_img, h_msk = make_lap_slice(5, SMALL, hard=True)
    n_img, n_msk = make_lap_slice(5, SMALL, hard=False)
    assert not np.array_equal(h_img, n_img)
    assert plan_slice(5, SMALL, "lap", hard=True).hard and not plan_slice(5, SMALL, "lap", hard=False).hard


@pytest.mark.parametrize("seed", [0, 3, 4, 7])
def test_tissue_darker_than_surrounding_glass(seed):
    image, mask = _lap(seed)
    m = mask > 0
    ring = ndi.binary_dilation(m, iterations=6) & ~ndi.binary_dilation(m, iterations=1)
    assert image[m].mean() < 0.9 * image[ring].mean()


def test_mask_exactly_aligned_with_image():
    """The tissue/glass contrast across the mask border is largest at zero shift."""
    image, mask = _lap(2)
    img = image.astype(np.float64)

    def contrast(dy: int, dx: int) -> float:
        m = np.roll(mask > 0, (dy, dx), axis=(0, 1))
        inner = m & ~ndi.binary_erosion(m, iterations=2)
        outer = ndi.binary_dilation(m, iterations=2) & ~m
        return img[outer].mean() - img[inner].mean()

    c0 = contrast(0, 0)
    for shift in [(0, 2), (0, -2), (2, 0), (-2, 0), (1, 1)]:
        assert c0 > contrast(*shift), shift


def test_holes_and_multiple_pieces():
    # seeded cases (quarter-size): a ventricle-sized enclosed hole, several separate pieces
    assert _enclosed_holes(_lap(5)[1])[0] > 1000
    assert _pieces(_lap(4)[1]) >= 3
    # and across seeds some slices have holes, some have several pieces, some have one
    holes = [len(_enclosed_holes(_lap(s)[1])) for s in range(10)]
    pieces = [_pieces(_lap(s)[1]) for s in range(10)]
    assert sum(h > 0 for h in holes) >= 7, holes
    assert sum(p >= 2 for p in pieces) >= 3, pieces
    assert min(pieces) >= 1


def test_render_windows_give_identical_masks_and_seamless_fields():
    plan = plan_slice(9, SMALL, "lap")
    _, full = render_window(plan, 0, 0, *SMALL)
    for y0, x0, h, w in [(0, 0, 100, 130), (123, 457, 200, 237), (400, 600, 120, 94)]:
        _, part = render_window(plan, y0, x0, h, w)
        assert np.array_equal(part, full[y0 : y0 + h, x0 : x0 + w])
    fields = np.random.default_rng(0).random((2, 30, 40), dtype=np.float32)
    whole = upsample_window(fields, 7, 0, 0, 200, 270)
    assert np.array_equal(upsample_window(fields, 7, 33, 61, 50, 90), whole[:, 33:83, 61:151])


def test_otsu_is_not_enough_on_hard_slices():
    dices = []
    for seed in range(6):
        image, mask = _lap(seed, SMALL, True)
        otsu = image < threshold_otsu(image)
        dices.append(_dice(otsu, mask))
    dices = np.array(dices)
    assert np.all(dices > 0.5), dices  # tissue is still recognisable
    assert np.all(dices < 0.97), dices  # ... but a global threshold does not reproduce the mask
    assert dices.mean() < 0.9, dices


# ------------------------------------------------------------------------------------------
# PM writer
# ------------------------------------------------------------------------------------------
def test_pm_tiled_pyramid_and_consistent(tmp_path):
    shape, tile, seed = (2000, 1800), 512, 4
    res = write_pm_slice(tmp_path / "pm.tif", tmp_path / "pm_mask.tif", shape=shape, seed=seed, tile=tile)
    assert res["shape"] == shape and res["tile"] == tile and res["n_tiles"] == 4 * 4
    assert set(res) >= {"shape", "tile", "n_tiles", "seconds"}
    for path, dtype in ((res["image"], np.uint16), (res["mask"], np.uint8)):
        with tifffile.TiffFile(path) as tif:
            assert tif.is_bigtiff
            page = tif.pages[0]
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (tile, tile)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.dtype == dtype and page.shape == shape
            levels = tif.series[0].levels
            assert len(page.subifds) == len(levels) - 1 >= 1
            assert [lv.shape for lv in levels[:2]] == [shape, (1000, 900)]
    assert not list(tmp_path.glob(".*"))  # no scratch or temporary files left

    plan = plan_slice(seed, shape, "pm")
    with tifffile.TiffFile(res["mask"]) as tif:
        small_mask = tif.series[0].levels[-1].asarray()
    assert set(np.unique(small_mask).tolist()) == {0, 1}
    for ty, tx in [(0, 0), (1, 2), (2, 1), (3, 3)]:
        y0, x0 = ty * tile, tx * tile
        h, w = min(tile, shape[0] - y0), min(tile, shape[1] - x0)
        img, msk = read_tile(res["image"], ty, tx), read_tile(res["mask"], ty, tx)
        ref_img, ref_msk = render_window(plan, y0, x0, h, w)
        assert np.array_equal(msk[:h, :w], ref_msk) and np.array_equal(img[:h, :w], ref_img)
        assert np.array_equal(msk[:h, :w], plan.geometry.mask_window(y0, x0, h, w))
    # the level-1 pyramid is the 2x2 mean of level 0
    lvl0 = read_tile(res["image"], 1, 1).astype(np.float64)
    with tifffile.TiffFile(res["image"]) as tif:
        lvl1 = tif.series[0].levels[1].asarray()[256:512, 256:512]
    mean = lvl0.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    assert np.abs(lvl1 - mean).max() <= 1
    # tissue darker than glass at full resolution
    full, fullm = tifffile.imread(res["image"]), tifffile.imread(res["mask"]) > 0
    assert full.shape == fullm.shape == shape
    assert full[fullm].mean() < 0.9 * full[~fullm].mean()


def test_pm_memory_bounded_20k(tmp_path):
    code = textwrap.dedent(
        f"""
        import json
        from plimonai.runtime import peak_rss_mb
        from plimonai.synthetic import write_pm_slice
        res = write_pm_slice({str(tmp_path / 'big.tif')!r}, {str(tmp_path / 'big_mask.tif')!r},
                             shape=(20000, 20000), seed=1)
        res["maxrss_mb"] = peak_rss_mb()
        print(json.dumps(res))
        """
    )
    try:  # the image is ~0.8 GB: always clean up
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"PM 20000x20000: {res['seconds']:.1f} s, peak RSS {res['maxrss_mb']:.0f} MB")
        assert res["maxrss_mb"] < 1500
        assert res["n_tiles"] == 400 and tuple(res["shape"]) == (20000, 20000)
        with tifffile.TiffFile(tmp_path / "big.tif") as tif:
            assert tif.pages[0].shape == (20000, 20000) and len(tif.series[0].levels) >= 2
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# dataset folders
# ------------------------------------------------------------------------------------------
def test_generate_dataset_layout(tmp_path):
    out = tmp_path / "ds"
    res = generate_dataset(out_dir=out, kind="lap", n=4, seed=20, n_val=1, shape=(256, 320), preview=True,
                           hard_fraction=0.5)
    names = [f"lap_{s:05d}" for s in range(20, 24)]
    assert res["names"] == names and res["n_train"] == 3 and res["n_val"] == 1
    moved = tmp_path / "moved"
    shutil.move(str(out), str(moved))  # all paths are relative: the folder can move
    lines = (moved / "slices.txt").read_text().split()
    assert lines == [f"images/{n}.tif" for n in names]
    dl = json.loads((moved / "datalist.json").read_text())
    assert [e["image"] for e in dl["training"]] == lines[:3]
    assert dl["validation"] == [{"image": "images/lap_00023.tif", "label": "labels/lap_00023.tif"}]
    for e in dl["training"] + dl["validation"]:
        assert not Path(e["image"]).is_absolute() and not Path(e["label"]).is_absolute()
        img, lab = tifffile.imread(moved / e["image"]), tifffile.imread(moved / e["label"])
        assert img.shape == lab.shape == (256, 320) and img.dtype == np.uint16 and lab.dtype == np.uint8
    assert np.array_equal(tifffile.imread(moved / "labels/lap_00021.tif"), make_lap_slice(21, (256, 320),
                                                                                        hard=res["hard"][1])[1])
    for n in names:
        png = moved / "previews" / f"{n}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(moved.rglob(".*tmp"))


def test_generate_dataset_pm_small(tmp_path):
    res = generate_dataset(tmp_path, kind="pm", n=1, seed=3, n_val=0, shape="1500x1200")
    assert res["shape"] == (1500, 1200) and res["n_val"] == 0
    with tifffile.TiffFile(tmp_path / "images" / "pm_00003.tif") as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].shape == (1500, 1200)
    assert (tmp_path / "previews" / "pm_00003.png").stat().st_size > 1000
    assert json.loads((tmp_path / "datalist.json").read_text())["validation"] == []
