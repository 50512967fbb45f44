"""Tests for plimonai.transforms.post (area-based mask clean-up)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label
from skimage.segmentation import clear_border

from monai.data import MetaTensor
from plimonai.transforms.post import (
    remove_edge_bands,
    FillSmallHoles,
    FillSmallHolesd,
    RemoveSmallComponents,
    RemoveSmallComponentsd,
    TissueMaskPostprocess,
    TissueMaskPostprocessd,
    component_stats,
)

MIN_AREA, MAX_HOLE = 10, 50


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """(mask, expected) for MIN_AREA / MAX_HOLE: three real pieces, specks, small/large holes, edge pocket."""
    m = np.zeros((80, 100), dtype=np.uint8)
    m[5:45, 5:45] = 1  # piece A (1600 px) ...
    m[20:35, 20:35] = 0  # ... with a ventricle (225 px): kept
    m[10:12, 10:12] = 0  # ... and a small tear (4 px): filled
    m[50:70, 60:80] = 1  # piece B (400 px)
    m[0:15, 70:100] = 1  # piece C touching the top/right border ...
    m[0:2, 80:82] = 0  # ... with a 4 px pocket open to the image border: kept
    m[75, 5] = 1  # specks: removed
    m[60:62, 10] = 1
    m[76:78, 30:32] = 1
    expected = m.copy()
    expected[10:12, 10:12] = 1
    expected[75, 5] = expected[60:62, 10] = expected[76:78, 30:32] = 0
    return m, expected


def test_policy_keeps_pieces_removes_specks_fills_small_holes_only():
    mask, expected = _scene()
    out = TissueMaskPostprocess(MIN_AREA, MAX_HOLE)(mask)
    np.testing.assert_array_equal(out, expected)
    assert component_stats(out)[0] == 3  # all real pieces survive
    assert out[20:35, 20:35].sum() == 0  # ventricle stays open
    assert out[0:2, 80:82].sum() == 0  # border-touching background untouched


def test_remove_small_components_only():
    mask, _ = _scene()
    out = RemoveSmallComponents(MIN_AREA)(mask)
    assert out[75, 5] == 0 and out[60:62, 10].sum() == 0 and out[76:78, 30:32].sum() == 0
    assert out[10:12, 10:12].sum() == 0  # holes untouched
    np.testing.assert_array_equal(out[:50], mask[:50])


def test_connectivity_of_components():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2, 2] = mask[3, 3] = 1  # diagonal neighbours
    assert RemoveSmallComponents(2, connectivity=2)(mask).sum() == 2
    assert RemoveSmallComponents(2, connectivity=1)(mask).sum() == 0


def test_fill_small_holes_only():
    mask, _ = _scene()
    out = FillSmallHoles(MAX_HOLE)(mask)
    assert out[10:12, 10:12].all()
    assert out[20:35, 20:35].sum() == 0
    assert out[0:2, 80:82].sum() == 0
    assert out[75, 5] == 1  # specks untouched
    # a bigger threshold fills the ventricle too, never the border pocket
    big = FillSmallHoles(10_000)(mask)
    assert big[20:35, 20:35].all() and big[0:2, 80:82].sum() == 0


def test_hole_connectivity_is_4_by_default():
    mask = np.ones((9, 9), dtype=np.uint8)
    mask[4, 0:5] = 0  # a 4-connected channel from the border: not a hole
    assert FillSmallHoles(5)(mask)[4, 4] == 0
    mask = np.ones((9, 9), dtype=np.uint8)
    mask[4, 4] = 0  # one-pixel hole touching a border channel only diagonally (at [3, 3])
    mask[3, 0:4] = 0
    assert FillSmallHoles(5)(mask)[4, 4] == 1
    assert FillSmallHoles(5)(mask)[3, 0:4].sum() == 0
    assert FillSmallHoles(5, connectivity=2)(mask)[4, 4] == 0


def test_min_component_fraction():
    mask, _ = _scene()
    out = TissueMaskPostprocess(MIN_AREA, MAX_HOLE, min_component_fraction=0.2)(mask)
    # areas before hole filling: A 1371, C 446, B 400; 0.2 * 1371 = 274 keeps all, 0.3 -> 411 drops B
    assert component_stats(out)[0] == 3
    out = TissueMaskPostprocess(MIN_AREA, MAX_HOLE, min_component_fraction=0.3)(mask)
    assert component_stats(out)[0] == 2 and out[50:70, 60:80].sum() == 0


def test_keep_largest_delegates_and_still_fills_holes():
    mask, _ = _scene()
    out = TissueMaskPostprocess(MIN_AREA, MAX_HOLE, keep_largest=True)(mask)
    n, areas = component_stats(out)
    assert n == 1 and out[5:45, 5:45].sum() == areas[0] and out[10:12, 10:12].all()


def test_component_stats():
    mask, expected = _scene()
    n, areas = component_stats(expected)
    assert n == 3 and areas.dtype == np.int64
    assert list(areas) == sorted(areas, reverse=True) and areas.sum() == expected.sum()
    assert component_stats(np.zeros((4, 4)))[0] == 0
    assert component_stats(torch.from_numpy(mask)[None])[0] == 6


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.astype(bool),
        lambda m: m[None].astype(np.float32),
        lambda m: torch.from_numpy(m.astype(np.int64)),
        lambda m: MetaTensor(torch.from_numpy(m[None].astype(np.float32)), meta={"filename_or_obj": "a.tif"}),
    ],
    ids=["numpy-bool-HW", "numpy-float-1HW", "torch-int-HW", "metatensor-1HW"],
)
def test_types_shapes_and_meta_preserved(make):
    mask, expected = _scene()
    x = make(mask)
    out = TissueMaskPostprocess(MIN_AREA, MAX_HOLE)(x)
    assert type(out) is type(x) and tuple(out.shape) == tuple(x.shape)
    assert out.dtype in (np.uint8, torch.uint8)
    np.testing.assert_array_equal(np.asarray(out).reshape(expected.shape), expected)
    if isinstance(x, MetaTensor):
        assert out.meta["filename_or_obj"] == "a.tif"


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="shape"):
        RemoveSmallComponents(3)(np.zeros((2, 4, 4)))


def test_valid_mask_forces_background():
    mask, expected = _scene()
    valid = np.ones_like(mask)
    valid[50:70, 60:65] = 0  # cuts 100 px off piece B
    valid[25:28, 8:11] = 0  # small unscanned patch inside piece A: must stay background, not be "filled"
    out = TissueMaskPostprocess(MIN_AREA, MAX_HOLE)(mask, valid)
    want = expected & valid
    np.testing.assert_array_equal(out, want)
    # the dictionary wrapper reads it from valid_key; a missing valid_key means "all valid"
    post = TissueMaskPostprocessd("pred", MIN_AREA, MAX_HOLE, valid_key="valid")
    d = post({"pred": mask[None], "valid": valid[None]})
    np.testing.assert_array_equal(d["pred"][0], want)
    d = post({"pred": mask})
    np.testing.assert_array_equal(d["pred"], expected)
    with pytest.raises(ValueError, match="valid_mask shape"):
        TissueMaskPostprocess()(mask, valid[:10])


def test_dict_wrappers():
    mask, _ = _scene()
    d = {"pred": MetaTensor(torch.from_numpy(mask[None])), "other": 1}
    out = RemoveSmallComponentsd("pred", MIN_AREA)(d)
    assert out["other"] == 1 and out["pred"][0, 75, 5] == 0 and isinstance(out["pred"], MetaTensor)
    out = FillSmallHolesd("pred", MAX_HOLE)(out)
    np.testing.assert_array_equal(out["pred"][0].numpy(), _scene()[1])
    assert d["pred"][0, 75, 5] == 1  # input dict not modified


def test_full_size_mask_matches_skimage_reference():
    """2080 x 2776 random blobs (the pipeline's typical size): compare with an independent skimage formulation."""
    rng = np.random.default_rng(0)
    mask = ndimage.gaussian_filter(rng.random((2080, 2776), dtype=np.float32), 4) > 0.5
    min_area, max_hole = 200, 200
    out = TissueMaskPostprocess(min_area, max_hole)(mask)
    assert out.shape == mask.shape and out.dtype == np.uint8

    lab = label(mask, connectivity=2)
    areas = np.bincount(lab.ravel())
    ref = mask & (areas >= min_area)[lab]
    holes = clear_border(label(~ref, connectivity=1))
    hole_areas = np.bincount(holes.ravel())
    hole_areas[0] = max_hole  # label 0 = tissue and border background
    ref = ref | (hole_areas < max_hole)[holes]
    assert (ref != mask).sum() > 1000  # the scene really exercises both rules
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("keep_largest", [False, True])
def test_component_count_without_relabelling_is_exact(keep_largest):
    """The count TissueMaskPostprocessd stores for the summary equals a fresh labelling of its output."""
    rng = np.random.default_rng(3)
    for trial in range(5):
        noisy = ndimage.binary_opening(rng.random((160, 200)) < 0.55, iterations=1)  # blobs, specks, holes
        valid = np.ones_like(noisy)
        valid[:, :7 * trial] = False  # an unscanned band cutting through components and holes
        d = TissueMaskPostprocessd("pred", min_component_area=15, max_hole_area=12, keep_largest=keep_largest,
                                   valid_key="valid")({"pred": noisy[None].astype(np.uint8), "valid": valid[None]})
        n_ref, _ = component_stats(d["pred"])
        assert d["pred_components"] == n_ref, trial
        assert n_ref > (0 if keep_largest else 1)


def _band_scene(h: int = 400, w: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small section, a tissue piece cut by the left border, and a cover-slip band along the bottom
    found in three patches (gaps of a few pixels), as the network marks it."""
    section = np.zeros((h, w), bool)
    section[60:120, 250:330] = True  # a rodent-sized section
    section[150:300, 0:90] = True  # a piece cut by the left image border (deeper than 15 % of w? no: 90 / 600)
    band = np.zeros((h, w), bool)
    band[372:395, 0:190] = True
    band[370:400, 196:420] = True
    band[380:400, 425:600] = True
    band[350:375, 560:590] = True  # a compact patch of the band, 5 px from the others: removed with them
    return section, band, section | band


def test_edge_band_removed_pieces_kept():
    section, band, mask = _band_scene()
    out, n = remove_edge_bands(mask)
    assert n == 4 and not (out & band).any()
    assert np.array_equal(out, section)  # the small section and the border-cut piece stay


def test_edge_band_rules_keep_tissue():
    section, band, mask = _band_scene()
    # a band spanning less than min_coverage (60 %) of the side stays
    short = section.copy()
    short[370:400, 100:400] = True  # 50 % of the width
    assert remove_edge_bands(short)[1] == 0
    # a piece deeper than max_depth (15 %) stays, even when it spans the whole side
    deep = section.copy()
    deep[320:400, :] = True  # 20 % of the height
    assert remove_edge_bands(deep)[1] == 0
    # a wide piece that is not elongated (along < 3 x across) stays
    blob = np.zeros((400, 600), bool)
    blob[345:400, 0:150] = True
    assert remove_edge_bands(blob, min_coverage=0.2)[1] == 0
    # disabled
    assert remove_edge_bands(mask, max_depth=0)[1] == 0


def test_edge_band_next_to_unscanned_border():
    """The sides are those of the scanned area: a band ending at a zero (unscanned) margin is found."""
    section, band, _ = _band_scene()
    mask = np.zeros((440, 640), bool)
    valid = np.zeros_like(mask)
    valid[:400, 40:] = True  # 40 unscanned rows at the bottom, 40 columns at the left
    mask[:400, 40:] = section | band
    out, n = remove_edge_bands(mask, valid)
    assert n == 4 and np.array_equal(out[:400, 40:], section)
    assert remove_edge_bands(mask)[1] == 0  # measured from the image border, the band is not at a side


def test_policy_edge_band_depth():
    section, band, mask = _band_scene()
    post = TissueMaskPostprocess(min_component_area=10, max_hole_area=0, edge_band_depth=0.15)
    out, n = post.with_count(mask.astype(np.uint8))
    assert np.array_equal(out > 0, section) and n == 2
    assert TissueMaskPostprocess(min_component_area=10, max_hole_area=0).with_count(mask.astype(np.uint8))[1] == 6
