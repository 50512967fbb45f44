"""Section classes, unscanned borders, NTransmittance / HDF5 output and retardation of the synthetic
generator (plimonai.synthetic): the new options, and that their defaults leave the output unchanged."""

from __future__ import annotations

import functools
import hashlib
import json

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from plimonai.synthetic import (
    SECTION_CLASSES,
    generate_dataset,
    make_lap_slice,
    ntransmittance,
    pick_section_class,
    plan_slice,
    render_retardation,
    render_window,
    retardation_window,
    write_h5_image,
)
from plimonai.synthetic.formats import image_pyramid

SMALL = (520, 694)  # quarter-size LAP frame: lengths scale by 0.25, node grid = pixel grid (scale 1)
F_SMALL = SMALL[0] / 2080.0
TINY = (260, 347)  # eighth-size: geometry-only checks

# Hashes of the default output, computed with the generator before the section classes, unscanned
# borders, NTransmittance/HDF5 output and retardation were added (the running training job and the
# test sets were generated with it): the defaults must keep producing these bytes.
DEFAULT_3_TINY = ("0706c0d23926b8832429cb9a3697aa765869bf46b56f1bf940e278b8c252d034",  # image, seed 3, 260 x 347
                  "3c490776b3641a800d3aebbdf0311807ad52a7d059cd0f21dd86ee016ce4dfd3")  # mask
# decoded pixels + description tag (the zlib-compressed file bytes depend on the zlib build)
DEFAULT_DATASET_20 = {"images/lap_00020.tif": "536bd2ffc455740c0bfd58bda9398c457ae05bee923c82f9ecf833ac1685a328",
                      "labels/lap_00020.tif": "093c3ab94dbab9b9537faa6e9a4ddf1296523dc82222a9dca52ee9d81e9c74b9"}
DEFAULT_DESCRIPTION_20 = "plimonai.synthetic kind=lap seed=20 hard=False shape=260x347"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=None)
def _slice(seed: int, cls: str = "human", unscanned: float = 0.0):
    """(plan, counts, ntransmittance, mask, retardation) of a SMALL slice (cached, read-only)."""
    plan = plan_slice(seed, SMALL, "lap", section_class=cls, unscanned_border=unscanned)
    counts, mask = render_window(plan, 0, 0, *SMALL)
    nt, mask2 = render_window(plan, 0, 0, *SMALL, output_format="ntransmittance")
    assert np.array_equal(mask, mask2)
    ret = render_retardation(plan)
    for a in (counts, nt, mask, ret):
        a.flags.writeable = False
    return plan, counts, nt, mask, ret


def _across(plan) -> float:
    """Largest tissue extent (px at the LAP reference frame) from the coarse level set."""
    g = plan.geometry
    ys, xs = np.nonzero(g.phi > 0)
    return max(np.ptp(ys) + 1, np.ptp(xs) + 1) * g.scale * 2080.0 / min(plan.shape)


def _regions(plan):
    """Pixel masks (SMALL frame, node grid = pixels) of clear glass, grey matter and white matter."""
    g = plan.geometry
    h, w = SMALL
    phi, depth, thick = g.phi[:h, :w], g.depth[:h, :w], g.thickness[:h, :w]
    plain = (g.nuclei[:h, :w] < 0.05) & (g.fold[:h, :w] < 0.05)
    gm = (phi > 2) & (depth < thick - 2) & plain
    wm = (phi > 2) & (depth > thick + 2 * plan.params.gm_wm_width + 2) & plain
    glass = depth < -20
    return glass, gm, wm


# ------------------------------------------------------------------------------------------
# defaults unchanged
# ------------------------------------------------------------------------------------------
def test_default_output_byte_identical(tmp_path):
    image, mask = make_lap_slice(3, (260, 347))
    assert (_sha(image.tobytes()), _sha(mask.tobytes())) == DEFAULT_3_TINY
    # the new options at their defaults are the same code path
    image2, mask2 = make_lap_slice(3, (260, 347), section_class="human", unscanned_border=False,
                                   output_format="uint16")
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2)
    info = plan_slice(3, (260, 347)).info
    assert "section_class" not in info and "unscanned" not in info
    # dataset files (pixels and description tag) and layout
    res = generate_dataset(tmp_path, n=1, seed=20, n_val=0, shape=(260, 347), preview=False)
    for rel, digest in DEFAULT_DATASET_20.items():
        with tifffile.TiffFile(tmp_path / rel) as tif:
            assert _sha(tif.asarray().tobytes()) == digest, rel
            assert tif.pages[0].description == DEFAULT_DESCRIPTION_20, rel
    assert json.loads((tmp_path / "datalist.json").read_text())["training"] == [
        {"image": "images/lap_00020.tif", "label": "labels/lap_00020.tif"}]
    meta = json.loads((tmp_path / "synthetic_info.json").read_text())
    assert not {"section_class", "output_format", "file_format", "retardation", "unscanned_border"} & set(meta)
    assert "section_class" not in res and not (tmp_path / "retardation").exists()


# ------------------------------------------------------------------------------------------
# section classes
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, lo, hi", [("mouse", 100, 300), ("rat", 240, 600), ("monkey", 600, 1800),
                                          ("human_hemisphere", 1200, 2900), ("human", 1200, 2900)])
def test_class_sizes(cls, lo, hi):
    """Tissue extent in LAP px (measured in an eighth-size frame and scaled back)."""
    sizes = [_across(plan_slice(seed, TINY, "lap", section_class=cls)) for seed in range(3)]
    assert all(lo < s < hi for s in sizes), (cls, sizes)


def test_pieces_per_class():
    """Rodent sections are one piece; whole human sections often have several."""
    placed = {cls: [plan_slice(seed, TINY, "lap", section_class=cls).info["pieces_placed"] for seed in range(6)]
              for cls in ("mouse", "rat", "human")}
    assert placed["mouse"] == [1] * 6 and placed["rat"] == [1] * 6
    assert sum(p >= 2 for p in placed["human"]) >= 2, placed["human"]
    for seed, cls in ((3, "mouse"), (2, "rat")):  # smooth, shallow sulci at most: one component
        mask = _slice(seed, cls)[3]
        lab, n = ndi.label(mask)
        sizes = np.bincount(lab.ravel())[1:]
        assert (sizes > 0.5 * sizes.max()).sum() == 1


def test_mouse_in_full_lap_frame():
    """One full-size slice: a mouse is a few hundred px in the 2080 x 2776 LAP frame."""
    image, mask = make_lap_slice(1, section_class="mouse")
    assert image.shape == (2080, 2776) and image.dtype == np.uint16
    ys, xs = np.nonzero(mask)
    assert 100 < max(np.ptp(ys), np.ptp(xs)) < 300
    assert 0.002 < mask.mean() < 0.02
    assert np.median(image[mask > 0]) < 0.9 * np.median(image[mask == 0])


def test_mixed_classes():
    drawn = [pick_section_class(seed, "mixed") for seed in range(40)]
    assert set(drawn) == set(SECTION_CLASSES)
    assert {pick_section_class(seed, "mouse,rat") for seed in range(20)} == {"mouse", "rat"}
    assert pick_section_class(5, "rat") == "rat"
    for seed in range(2):  # a mixed slice is exactly the slice of its drawn class
        a = plan_slice(seed, TINY, "lap", section_class="mixed")
        b = plan_slice(seed, TINY, "lap", section_class=drawn[seed])
        assert a.section_class == drawn[seed] == a.info["section_class"]
        assert np.array_equal(a.fields, b.fields)
    human = next(s for s, c in enumerate(drawn) if c == "human")
    img_mixed, _ = make_lap_slice(human, TINY, section_class="mixed")
    assert np.array_equal(img_mixed, make_lap_slice(human, TINY)[0])
    with pytest.raises(ValueError):
        plan_slice(0, TINY, "lap", section_class="elephant")
    with pytest.raises(ValueError):
        generate_dataset("unused", kind="pm", section_class="mouse")


# ------------------------------------------------------------------------------------------
# unscanned borders, NTransmittance
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_unscanned_border_zero_in_image_and_label(seed):
    plan, counts, nt, mask, ret = _slice(seed, "human", 1.0)
    rects = plan.unscanned.rects
    assert len(rects) >= 1
    zero = np.zeros(SMALL, bool)
    for y0, y1, x0, x1 in rects:
        assert y0 == 0 or x0 == 0 or y1 == SMALL[0] or x1 == SMALL[1]  # along an image edge
        zero[y0:y1, x0:x1] = True
    assert zero.any() and zero.mean() < 0.5
    for img in (counts, nt, ret):
        assert np.all(img[zero] == 0)
        assert np.all(img[~zero] > 0)  # exactly 0 means "not scanned"
    assert np.all(mask[zero] == 0) and mask.sum() > 0.01 * mask.size  # label 0 there, the section remains
    # the same slice without the option: identical outside the bands
    plain_counts, plain_mask = make_lap_slice(seed, SMALL)
    outside = ~zero & (ndi.binary_dilation(zero, iterations=40) == 0)  # away from any holder edge
    assert np.array_equal(plain_counts[outside], counts[outside])
    assert np.array_equal(plain_mask[~zero], mask[~zero])


@pytest.mark.parametrize("seed, cls", [(0, "human"), (4, "monkey"), (2, "rat")])
def test_ntransmittance_range_and_levels(seed, cls):
    plan, counts, nt, mask, _ = _slice(seed, cls)
    assert nt.dtype == np.float32 and nt.shape == SMALL
    assert nt.min() >= 0 and nt.max() <= 1
    glass, gm, wm = _regions(plan)
    g = float(np.median(nt[glass & (mask == 0)]))
    assert 0.85 <= g <= 0.95, g
    assert float(np.std(nt[glass & (mask == 0)])) < 0.05
    # white matter darkest, grey matter paler, glass brightest
    assert np.median(nt[wm]) < np.median(nt[gm]) < g
    # the same counts as the uint16 output, normalised
    assert np.array_equal(ntransmittance(plan, counts, 0, 0), nt)


# ------------------------------------------------------------------------------------------
# retardation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed, cls", [(0, "human"), (1, "human_hemisphere"), (3, "mouse")])
def test_retardation_levels(seed, cls):
    plan, counts, _, mask, ret = _slice(seed, cls)
    assert ret.dtype == np.float32 and ret.shape == SMALL and ret.min() >= 0 and ret.max() <= 1
    glass, gm, wm = _regions(plan)
    bg, r_gm, r_wm = (float(np.median(ret[m])) for m in (glass & (mask == 0), gm, wm))
    assert bg < 0.05 and 0.03 < r_gm < 0.3 and 0.2 < r_wm < 0.95, (bg, r_gm, r_wm)
    assert np.median(ret[mask > 0]) > bg + 0.05  # tissue brighter than glass
    assert r_wm > r_gm + 0.1  # white matter brightest
    # asking for retardation does not change the transmittance image
    image, mask2, _ = make_lap_slice(seed, SMALL, section_class=cls, retardation=True)
    assert np.array_equal(image, counts) and np.array_equal(mask2, mask)
    # windows agree with the whole image up to the per-window sensor noise
    win = retardation_window(plan, 100, 150, 64, 80)
    assert np.abs(win - ret[100:164, 150:230]).max() < 0.15


# ------------------------------------------------------------------------------------------
# files: HDF5 layout, datalist, CLI
# ------------------------------------------------------------------------------------------
def test_h5_pyramid_layout(tmp_path):
    img = np.arange(37 * 51, dtype=np.float32).reshape(37, 51) / (37 * 51)
    path = tmp_path / "x.h5"
    write_h5_image(path, img, {"modality": "NTransmittance"}, pixel_size_um=64.0, min_side=4)
    with h5py.File(path, "r") as f:
        assert f["Image"].dtype == np.float32 and np.array_equal(f["Image"][()], img)
        assert f["pyramid/00"].id == f["Image"].id  # hard link, stored once
        levels = sorted(f["pyramid"], key=int)
        assert levels == ["00", "01", "02", "03"]
        shape = img.shape
        for k, name in enumerate(levels):
            ds = f[f"pyramid/{name}"]
            assert ds.shape == shape and ds.attrs["downsample"] == 2**k and ds.attrs["pixel_size"] == 64.0 * 2**k
            shape = (-(-shape[0] // 2), -(-shape[1] // 2))
        np.testing.assert_allclose(f["pyramid/01"][:18, :25], img[:36, :50].reshape(18, 2, 25, 2).mean(axis=(1, 3)),
                                   rtol=1e-6)
        assert f.attrs["modality"] == "NTransmittance" and f["Image"].attrs["pixel_size_um"] == 64.0
    counts = (np.arange(6 * 6, dtype=np.uint16).reshape(6, 6) * 1000)
    assert image_pyramid(counts, 3)[1].dtype == np.uint16


def test_dataset_mixed_h5_ntransmittance_retardation(tmp_path):
    res = generate_dataset(tmp_path, n=2, seed=40, n_val=1, shape=SMALL, preview=True, section_class="mixed",
                           output_format="ntransmittance", file_format="h5", retardation=True,
                           unscanned_border=True)
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    items = datalist["training"] + datalist["validation"]
    assert len(items) == 2 and all(set(it) == {"image", "label", "retardation"} for it in items)
    assert (tmp_path / "slices.txt").read_text().split() == [it["image"] for it in items]
    assert res["section_class"] == [pick_section_class(s, "mixed") for s in (40, 41)]
    meta = json.loads((tmp_path / "synthetic_info.json").read_text())
    assert meta["section_class"] == "mixed" and meta["file_format"] == "h5" and meta["retardation"] is True
    for it in items:
        assert it["image"].endswith(".h5") and it["retardation"].endswith(".h5") and it["label"].endswith(".tif")
        with h5py.File(tmp_path / it["image"], "r") as f:
            image = f["Image"][()]
            assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
            assert f["pyramid/01"].shape == (SMALL[0] // 2, SMALL[1] // 2)
            assert f.attrs["modality"] == "NTransmittance" and f.attrs["pixel_size_um"] == 64.0 / F_SMALL
        with h5py.File(tmp_path / it["retardation"], "r") as f:
            ret = f["Image"][()]
            assert f.attrs["modality"] == "Retardation" and ret.dtype == np.float32
        label = tifffile.imread(tmp_path / it["label"])
        assert label.shape == image.shape == ret.shape
        assert np.all(label[image == 0] == 0) and np.array_equal(image == 0, ret == 0)
        assert np.median(ret[label > 0]) > np.median(ret[(label == 0) & (image > 0)])


def test_dataset_tif_retardation(tmp_path):
    generate_dataset(tmp_path, n=1, seed=7, n_val=0, shape=(260, 347), preview=False, retardation=True)
    item = json.loads((tmp_path / "datalist.json").read_text())["training"][0]
    assert item["retardation"] == "retardation/lap_00007.tif"
    ret = tifffile.imread(tmp_path / item["retardation"])
    assert ret.dtype == np.float32 and ret.shape == (260, 347)
    # the image itself is the default one
    assert np.array_equal(tifffile.imread(tmp_path / item["image"]), make_lap_slice(7, (260, 347))[0])


def test_cli_passes_options(tmp_path):
    import fire

    from plimonai.cli import synth

    fire.Fire({"synth": synth}, command=[
        "synth", "--n", "1", "--n_val", "0", "--out", str(tmp_path), "--seed", "3", "--shape", "260,347",
        "--preview", "False", "--section_class", "mouse", "--output_format", "ntransmittance",
        "--file_format", "h5", "--retardation", "True", "--unscanned_border", "True"])
    item = json.loads((tmp_path / "datalist.json").read_text())["training"][0]
    assert item == {"image": "images/lap_00003.h5", "label": "labels/lap_00003.tif",
                    "retardation": "retardation/lap_00003.h5"}
    meta = json.loads((tmp_path / "synthetic_info.json").read_text())
    assert meta["section_class"] == "mouse" and meta["unscanned_border"] == 1.0
    assert meta["slices"][0]["section_class"] == "mouse" and "unscanned" in meta["slices"][0]
    with h5py.File(tmp_path / item["image"], "r") as f:
        assert f["Image"].dtype == np.float32 and f.attrs["section_class"] == "mouse"
