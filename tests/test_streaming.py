"""Streaming (PM-scale) inference: lazy tiles, exact blending, coarse-to-fine, band-wise post-processing,
tiled pyramidal output, and its place in the inference workflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from scipy import ndimage

from helpers import WINDOW_NET, ThresholdNet, WindowBiasNet, run_inference_workflow
from plimonai.data.tiled import TiledTiffImage
from plimonai.inferers import BlendSweep, CoarsePrediction, StreamingSliceInferer, StreamSelector, window_starts
from plimonai.inferers.coarse_to_fine import window_cores
from plimonai.io.tiled import block_reduce, write_tiled_mask
from plimonai.synthetic import write_pm_slice
from plimonai.transforms.intensity import NormalizeTransmittance
from plimonai.transforms.post import TissueMaskPostprocess
from plimonai.transforms.post_stream import StreamingMaskPostprocess

ROOT = Path(__file__).resolve().parent.parent
STREAM = {"stream_min_pixels": 1000, "roi_size": [512, 512], "min_component_area": 3000, "max_hole_area": 1500}


def dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def pm(tmp_path_factory):
    """A 4000 x 4500 and a 2048 x 2304 synthetic PM slice (tiled 512, SubIFD pyramid) with their truth."""
    d = tmp_path_factory.mktemp("pm")
    big = write_pm_slice(d / "big" / "pm_big.tif", d / "truth" / "pm_big.tif", shape=(4000, 4500), seed=3, tile=512)
    small = write_pm_slice(d / "small" / "pm_small.tif", d / "truth" / "pm_small.tif", shape=(2048, 2304), seed=5,
                           tile=512)
    return {"dir": d, "big": Path(big["image"]), "small": Path(small["image"]),
            "big_truth": Path(big["mask"]), "small_truth": Path(small["mask"])}


# -- building blocks ---------------------------------------------------------------------------

def _sweep(x, net, roi, overlap, mode, batch):
    """BlendSweep over an in-memory image: (blended logits (2, H, W), bands, windows in predict order)."""
    h, w = x.shape[-2:]
    ys, xs = window_starts(h, roi[0], overlap), window_starts(w, roi[1], overlap)
    imp = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device="cpu", dtype=torch.float32)
    out, seen = torch.full((2, h, w), float("nan")), []

    def predict(ids):
        seen.extend(ids)
        return list(net(torch.cat([x[:, :, ys[i] : ys[i] + roi[0], xs[j] : xs[j] + roi[1]] for i, j in ids])) * imp)

    def finalize(y0, x0, sums, wts):
        out[:, y0 : y0 + wts.shape[0], x0 : x0 + wts.shape[1]] = sums / wts
        return np.zeros(wts.shape, bool)

    bands = list(BlendSweep((h, w), roi, ys, xs, imp, 2).run(np.ones((len(ys), len(xs)), bool), predict, finalize, batch))
    return out, bands, seen, ys, xs


def _image(h, w):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (0.3 + 0.2 * torch.sin(6 * yy) * torch.cos(5 * xx) + 0.02 * torch.rand(h, w))[None, None]


@pytest.mark.parametrize("shape,roi,overlap,mode,batch", [
    ((700, 950), (128, 160), 0.125, "gaussian", 3),
    ((520, 300), (128, 128), 0.25, "constant", 1),
    ((1000, 1130), (256, 256), 0.125, "gaussian", 2),
])
def test_blend_sweep_equals_monai(shape, roi, overlap, mode, batch):
    """The band sweep blends exactly as MONAI's whole-image sliding_window_inference (bitwise), for
    window-dependent networks, uneven last windows and any batch size, visiting each window once in order."""
    torch.manual_seed(0)
    x = _image(*shape)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.Tanh(), torch.nn.Conv2d(4, 2, 5, padding=2))
    for net in (conv.eval(), WindowBiasNet(k=4.0, bias=20.0)):
        with torch.no_grad():
            ref = sliding_window_inference(x, roi, batch, net, overlap=overlap, mode=mode)[0]
            out, bands, seen, ys, xs = _sweep(x, net, roi, overlap, mode, batch)
        assert [b[0] for b in bands] == ys and sum(b[1].shape[0] for b in bands) == shape[0]
        assert seen == [(i, j) for i in range(len(ys)) for j in range(len(xs))]
        assert torch.equal(out, ref)


def test_no_seams_at_band_borders():
    """A network whose output depends on the whole window (its mean) blends into a smooth map: the steps
    across band and block borders (where the sweep hands over carried sums) are no larger than the
    steps elsewhere. Dropping the carried sums, or normalising by the wrong weights, shows up there."""
    torch.manual_seed(0)
    x = _image(900, 1000)
    with torch.no_grad():
        out, _, _, ys, xs = _sweep(x, WindowBiasNet(k=4.0, bias=20.0), (128, 128), 0.25, "gaussian", 2)
    margin = (out[1] - out[0]).numpy()
    dy, dx = np.abs(np.diff(margin, axis=0)), np.abs(np.diff(margin, axis=1))
    inner_y = np.delete(dy, [y - 1 for y in ys[1:]], axis=0).max()
    inner_x = np.delete(dx, [c - 1 for c in xs[1:]], axis=1).max()
    assert dy[[y - 1 for y in ys[1:]]].max() <= 1.5 * inner_y and dx[:, [c - 1 for c in xs[1:]]].max() <= 1.5 * inner_x


def test_window_grid_matches_monai():
    from monai.data.utils import dense_patch_slices

    for size, roi, ov in [(6000, 1024, 0.125), (1024, 1024, 0.125), (1500, 1024, 0.25), (20000, 1024, 0.125)]:
        ref = sorted({s[0].start for s in dense_patch_slices((size, 8), (roi, 8), (max(int(roi * (1 - ov)), 1), 8))})
        if size == roi:
            ref = [0]
        assert window_starts(size, roi, ov) == ref
        cores = window_cores(ref, roi, size)
        assert cores[0][0] == 0 and cores[-1][1] == size and all(a[1] == b[0] for a, b in zip(cores, cores[1:]))


def test_region_normaliser_equals_whole_slice_normalisation():
    """Statistics from the full image: every region gets bitwise what NormalizeTransmittance gives there;
    from a 2x-downsampled image: close (the flat field is the same polynomial)."""
    rng = np.random.default_rng(0)
    h, w = 1200, 1500
    yy, xx = np.mgrid[:h, :w]
    t = (0.9 - 0.15 * ((yy / h - 0.4) ** 2 + (xx / w - 0.6) ** 2) + rng.normal(0, 0.01, (h, w))).astype(np.float32)
    t[300:800, 400:1000] *= 0.5
    t[:, :40] = 0  # unscanned
    norm = NormalizeTransmittance()
    whole, valid = norm(torch.from_numpy(t)[None], return_valid=True)
    rn = norm.fit_regions(t)
    for y0, y1, x0, x1 in [(0, 512, 0, 512), (448, 960, 896, 1408), (1199, 1200, 3, 1500), (17, 1200, 1499, 1500)]:
        a, v = rn(t[y0:y1, x0:x1], y0, x0)
        assert torch.equal(a, whole[0, y0:y1, x0:x1]) and torch.equal(v, valid[0, y0:y1, x0:x1] > 0)
    small = block_reduce(t, 2, "mean")
    a, _ = norm.fit_regions(small, (h / small.shape[0], w / small.shape[1]))(t, 0, 0)
    assert (a - whole[0]).abs().max() < 0.02


def test_tiled_reader_matches_tifffile(tmp_path, pm):
    a = (np.arange(3000 * 2100) % 65000).astype(np.uint16).reshape(3000, 2100)
    tifffile.imwrite(tmp_path / "strips.tif", a, compression="zlib", rowsperstrip=64)
    tifffile.imwrite(tmp_path / "raw.tif", a)
    tifffile.imwrite(tmp_path / "tiles.tif", a, tile=(256, 256), compression="zlib")
    for name in ("strips.tif", "raw.tif", "tiles.tif"):
        with TiledTiffImage(tmp_path / name, cache_bytes=1 << 20) as r:
            assert r.shape == a.shape and r.dtype == np.uint16
            for y0, y1, x0, x1 in [(0, 3000, 0, 2100), (70, 2999, 5, 2001), (255, 257, 255, 513)]:
                assert np.array_equal(r.read(y0, y1, x0, x1), a[y0:y1, x0:x1])
    with TiledTiffImage(pm["big"]) as r, tifffile.TiffFile(pm["big"]) as tif:
        assert r.level_shapes == [lvl.shape for lvl in tif.series[0].levels] and len(r.level_shapes) >= 2
        assert np.array_equal(r.read(333, 1444, 1000, 2600), tif.series[0].levels[0].asarray()[333:1444, 1000:2600])
        assert np.array_equal(r.read_level(1), tif.series[0].levels[1].asarray())


def test_tiled_writer_bands_and_pyramid(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 3001, 2333
    yy, xx = np.ogrid[:h, :w]
    m = (((yy - 1500) ** 2 + (xx - 1100) ** 2) < 900**2).astype(np.uint8)
    m[rng.random((h, w)) < 0.001] = 1
    cuts = [0, 7, 900, 1800, 2500, h]
    info = write_tiled_mask(tmp_path / "m.tif", (m[a:b] for a, b in zip(cuts[:-1], cuts[1:])), (h, w), tile=256)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        levels = tif.series[0].levels
        assert tif.pages[0].is_tiled and tif.pages[0].compression == 8 and tif.pages[0].tilewidth == 256
        assert [lvl.shape for lvl in levels] == info["levels"] and max(levels[-1].shape) <= 256
        assert np.array_equal(levels[0].asarray(), m)
        expect = m
        for lvl in levels[1:]:
            expect = block_reduce(expect, 2, "max")
            assert np.array_equal(lvl.asarray(), expect)
    with pytest.raises(ValueError, match="rows"):  # too few rows: nothing is left behind
        write_tiled_mask(tmp_path / "bad.tif", [m[:100]], (h, w), tile=256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


@pytest.mark.parametrize("seed", range(4))
def test_bandwise_postprocess_equals_whole_mask(seed):
    """Same pixels and component count as TissueMaskPostprocess on the whole mask, for any band split."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(60, 300)), int(rng.integers(60, 300))
    m = rng.random((h, w)) < 0.5 + 0.1 * seed
    if seed % 2:
        m = ndimage.binary_opening(m)
    valid = np.ones((h, w), bool)
    valid[:, : int(rng.integers(0, 20))] = False
    valid[rng.random((h, w)) < 0.01] = False
    for conn in (1, 2):
        for area, hole, frac, largest in [(20, 15, 0.0, False), (5, 40, 0.1, False), (0, 0, 0.0, False), (30, 3, 0.0, True)]:
            exp, n = TissueMaskPostprocess(area, hole, frac, largest, conn).with_count(m.astype(np.uint8), valid)
            pp = StreamingMaskPostprocess(area, hole, frac, largest, conn, max_band_pixels=int(rng.integers(w, 20 * w)))
            pp.start(w)
            cuts = np.unique(np.concatenate([[0, h], rng.integers(0, h, 4)]))
            for y0, y1 in zip(cuts[:-1], cuts[1:]):
                pp.add(m[y0:y1], valid[y0:y1])
            got = np.concatenate(list(pp.bands()))
            assert np.array_equal(got, exp > 0) and pp.components == n


def test_coarse_prediction_upsampling_and_active_windows():
    h, w, s = 300, 400, 8
    yy, xx = np.mgrid[:h, :w]
    margin = (20.0 - np.hypot(yy - 150, xx - 200) / 4).astype(np.float32)  # disk of radius 80 px (coarse)
    cp = CoarsePrediction(margin, np.ones((h, w), bool), (h * s, w * s))
    up = F.interpolate(torch.from_numpy(margin)[None, None], scale_factor=s, mode="bilinear", align_corners=False)[0, 0]
    assert np.allclose(cp.upsample(100, 900, 1000, 2200), up[100:900, 1000:2200].numpy(), atol=1e-4)
    roi = (256, 256)
    ys, xs = window_starts(h * s, roi[0], 0.125), window_starts(w * s, roi[1], 0.125)
    active = cp.active_windows(ys, xs, roi, 3.0, 32)
    assert 0 < active.sum() < active.size / 3
    band = cp.uncertain(3.0, 32)
    for i, (a, b) in enumerate(window_cores(ys, roi[0], h * s)):
        for j, (c, d) in enumerate(window_cores(xs, roi[1], w * s)):
            assert active[i, j] == band[a // s : -(-b // s), c // s : -(-d // s)].any()
    centre = np.hypot(np.asarray(ys)[:, None] + 128 - 1200, np.asarray(xs)[None, :] + 128 - 1600)
    assert not active[centre < 250].any() and not active[centre > 1000].any()  # interior and glass stay coarse
    assert active[np.abs(centre - 640) < 100].all()  # the border runs at full resolution


def test_stream_selector(pm, tmp_path):
    (tmp_path / "x.tif").write_bytes(b"\x00" * 100)
    assert StreamSelector(1000)(pm["small"]) and not StreamSelector(2048 * 2304 + 1)(pm["small"])
    assert not StreamSelector(None)(pm["small"]) and not StreamSelector(1000)(tmp_path / "x.tif")
    assert not StreamSelector(1000)(tmp_path / "missing.tif")


# -- through the inference workflow --------------------------------------------------------------

def test_streaming_equals_in_memory(pm, tmp_path):
    """The documented workflow on one slice, in memory (LAP path) and streamed at full resolution, with a
    network whose logits depend on the window (so the blend of overlapping windows decides border pixels):
    with the normalisation statistics taken from the full-resolution level the masks and summary rows
    are identical; with the default statistics from the pyramid level (what keeps memory bounded) the
    glass level and flat field differ slightly (2x2-averaged pixels), so a few border pixels flip."""
    d = pm["big"].parent
    args = dict(STREAM, dataset_dir=str(d), network_def=WINDOW_NET)  # window-dependent logits: blending matters
    lap = run_inference_workflow(tmp_path / "lap", dict(args, stream_min_pixels=None))
    exact = run_inference_workflow(tmp_path / "exact", dict(args, coarse_to_fine=False, coarse_max_side=100000))
    a, b = tifffile.imread(tmp_path / "lap/pm_big_mask.tif"), tifffile.imread(tmp_path / "exact/pm_big_mask.tif")
    assert np.array_equal(a, b) and a.sum() > 0.1 * a.size
    for key in ("status", "tissue_area_px", "components", "height", "width", "confidence", "glass_level"):
        assert lap[0][key] == exact[0][key], key
    default = run_inference_workflow(tmp_path / "default", dict(args, coarse_to_fine=False))
    c = tifffile.imread(tmp_path / "default/pm_big_mask.tif")
    assert default[0]["status"] == "ok" and dice(a, c) >= 0.999
    assert dice(a, tifffile.imread(pm["big_truth"])) > 0.7  # a real segmentation, not a trivial mask


def test_output_is_tiled_pyramidal_tiff(pm, tmp_path):
    rows = run_inference_workflow(tmp_path / "out", dict(STREAM, dataset_dir=str(pm["small"].parent), stream_tile=256))
    assert rows[0]["status"] == "ok"
    out = tmp_path / "out"
    with tifffile.TiffFile(out / "pm_small_mask.tif") as tif:
        page, levels = tif.pages[0], tif.series[0].levels
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256) and page.compression == 8
        assert page.shape == (2048, 2304) and page.dtype == np.uint8
        assert [lvl.shape for lvl in levels][:3] == [(2048, 2304), (1024, 1152), (512, 576)] and len(levels) >= 4
        full = levels[0].asarray()
        assert set(np.unique(full)) <= {0, 1} and np.array_equal(levels[1].asarray(), block_reduce(full, 2, "max"))
    assert int(rows[0]["tissue_area_px"]) == int(full.sum()) and int(rows[0]["width"]) == 2304
    assert int(rows[0]["components"]) == ndimage.label(full, structure=np.ones((3, 3)))[1]
    assert (out / "pm_small_overlay.png").stat().st_size > 0 and (out / "qc/thumbs/pm_small.png").is_file()
    assert (out / "report.html").is_file() and not any(p.name.startswith(".") for p in out.iterdir())


def test_coarse_to_fine_runs_fewer_windows(pm, tmp_path):
    """Called directly: coarse-to-fine skips the windows away from borders and still gives the mask of
    full-resolution streaming (the ThresholdNet is pixel-wise, so both agree wherever they both run)."""
    net = ThresholdNet()
    res = {}
    for c2f in (False, True):
        inf = StreamingSliceInferer(roi_size=(512, 512), coarse_to_fine=c2f, output_dir=tmp_path / str(c2f),
                                    postprocess=StreamingMaskPostprocess(3000, 1500))
        res[c2f] = inf(pm["big"], net, "cpu")
    full, c2f = res[False], res[True]
    assert full["windows_run"] == full["windows_total"] and full["coarse_windows"] == 0
    assert c2f["coarse_windows"] > 0 and c2f["windows_run"] < full["windows_run"]
    a, b = tifffile.imread(full["mask_path"]), tifffile.imread(c2f["mask_path"])
    assert dice(a, b) >= 0.998


def test_bad_slices_fail_alone(pm, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(pm["small"], d / "good.tif")
    data = pm["small"].read_bytes()
    (d / "truncated.tif").write_bytes(data[: len(data) // 3])  # header fine, tiles cut off
    (d / "garbage.tif").write_bytes(b"\x00" * 1000)
    (d / "list.txt").write_text("good.tif\ntruncated.tif\ngarbage.tif\nmissing.tif\n")
    rows = run_inference_workflow(tmp_path / "out", dict(STREAM, slice_list=str(d / "list.txt")), expect_fail=True)
    st = {r["slice"]: r for r in rows}
    assert st["good"]["status"] == "ok" and int(st["good"]["tissue_area_px"]) > 0
    assert st["truncated"]["status"] == "failed" and "truncated.tif" in st["truncated"]["error"]
    assert st["garbage"]["status"] == "failed" and "garbage.tif" in st["garbage"]["error"]
    assert st["missing"]["status"] == "failed" and "not found" in st["missing"]["error"]
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix in (".tif", ".png"))
    assert names == ["good_mask.tif", "good_overlay.png"]  # nothing half-written for the failed ones


# -- memory ---------------------------------------------------------------------------------

_CASE = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from helpers import ThresholdNet
from plimonai.inferers import StreamingSliceInferer
from plimonai.runtime import peak_rss_mb, setup_runtime
setup_runtime(None)
out = StreamingSliceInferer(coarse_to_fine={c2f})({image!r}, ThresholdNet(), "cpu")
print(json.dumps({{"rss_mb": peak_rss_mb(), "windows": out["windows_run"]}}))
"""


@pytest.mark.slow
def test_memory_bounded_on_20000_slice(tmp_path):
    """Peak RSS of streaming a 20000 x 20000 generator slice stays under 2 GB and does not grow with the
    slice: within 300 MB of a 10000 x 10000 slice's (the blending carry grows with the width only)."""
    rss = {}
    for n in (10000, 20000):
        info = write_pm_slice(tmp_path / f"pm{n}.tif", tmp_path / f"gt{n}.tif", shape=(n, n), seed=2, tile=1024)
        for c2f in (False, True):
            code = _CASE.format(tests=str(ROOT / "tests"), image=info["image"], c2f=c2f)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert r.returncode == 0, r.stderr[-3000:]
            rss[(n, c2f)] = json.loads(r.stdout.strip().splitlines()[-1])["rss_mb"]
    print(rss)
    assert max(rss.values()) < 2048
    assert rss[(20000, False)] - rss[(10000, False)] < 300


def test_per_window_options_pass_through(pm, tmp_path):
    """Flip TTA works on streamed slices as in the LAP inferer: the flips of a pixel-wise network agree
    exactly (tta_dice 1) and leave the mask unchanged."""
    kw = dict(roi_size=(512, 512), coarse_to_fine=False, postprocess=StreamingMaskPostprocess(3000, 1500))
    plain = StreamingSliceInferer(output_dir=tmp_path / "plain", **kw)(pm["small"], ThresholdNet(), "cpu")
    tta = StreamingSliceInferer(output_dir=tmp_path / "tta", tta=True, **kw)(pm["small"], ThresholdNet(), "cpu")
    assert plain["tta_dice"] is None and tta["tta_dice"] == 1.0
    assert np.array_equal(tifffile.imread(plain["mask_path"]), tifffile.imread(tta["mask_path"]))
    assert plain["confidence"] == tta["confidence"] and 0 < plain["confidence"] <= 1
