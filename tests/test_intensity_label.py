import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from helpers import make_slice
from plimonai.transforms.intensity import NormalizeTransmittance, NormalizeTransmittanced
from plimonai.transforms.label import BinarizeLabeld, CheckSameSized, LabelValueError


def test_value_range_invariance_uint16_uint8_float():
    outs = []
    for dt in (np.uint16, np.uint8, np.float32):
        img, _ = make_slice(dtype=dt)
        outs.append(NormalizeTransmittance()(torch.as_tensor(img.astype(np.float32))[None]))
    assert torch.allclose(outs[0], outs[2], atol=2e-3)
    assert torch.allclose(outs[1], outs[2], atol=2e-2)  # 8-bit quantisation


def test_glass_near_zero_tissue_positive():
    img, mask = make_slice(dtype=np.float32)
    out = NormalizeTransmittance()(torch.as_tensor(img)[None])[0].numpy()
    assert abs(np.median(out[mask == 0])) < 0.03
    assert np.median(out[mask == 1]) > 0.4


def test_zero_and_nan_pixels_are_invalid_and_background():
    img, _ = make_slice(dtype=np.float32)
    img[:, :40] = 0.0  # unscanned border
    img[100:110, 200:210] = np.nan
    img[0, 0] = np.inf
    d = NormalizeTransmittanced("image")({"image": MetaTensor(torch.as_tensor(img)[None])})
    out, valid = d["image"], d["valid"]
    assert torch.isfinite(out).all()
    assert (out[0, :, :40] == 0).all() and (valid[0, :, :40] == 0).all()
    assert (valid[0, 100:110, 200:210] == 0).all() and valid[0, 0, 0] == 0
    assert valid.dtype == torch.uint8 and valid.shape == (1, *img.shape)
    assert np.isclose(out.meta["glass_level"], 0.9, atol=0.03)


@pytest.mark.parametrize("value", [0.0, 0.5, np.nan])
def test_constant_and_empty_images_are_defined(value):
    out, valid = NormalizeTransmittance()(torch.full((1, 20, 30), value), return_valid=True)
    assert torch.isfinite(out).all() and (out == 0).all()
    if value != 0.5:
        assert valid.sum() == 0


def test_binarize_accepts_01_and_0255_and_names_bad_file():
    for hi in (1, 255):
        lab = MetaTensor(torch.tensor([[[0, hi], [hi, 0]]], dtype=torch.uint8), meta={"filename_or_obj": "lab.tif"})
        out = BinarizeLabeld("label")({"label": lab})["label"]
        assert out.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    bad = MetaTensor(torch.tensor([[[0, 1], [2, 0]]]), meta={"filename_or_obj": "/data/lab7.tif"})
    with pytest.raises(LabelValueError, match="lab7.tif"):
        BinarizeLabeld("label")({"label": bad})


def test_binarize_keeps_ignore_value_when_set():
    lab = torch.tensor([[[0, 1], [255, 0]]], dtype=torch.uint8)
    out = BinarizeLabeld("label", ignore_value=255)({"label": lab})["label"]
    assert out.tolist() == [[[0.0, 1.0], [255.0, 0.0]]]


def test_size_mismatch_names_both_files():
    a = MetaTensor(torch.zeros(1, 10, 12), meta={"filename_or_obj": "img3.tif"})
    b = MetaTensor(torch.zeros(1, 10, 13), meta={"filename_or_obj": "lab3.tif"})
    with pytest.raises(ValueError, match="img3.tif.*lab3.tif"):
        CheckSameSized(["image", "label"])({"image": a, "label": b})


def test_flat_field_removes_vignetting():
    img, mask = make_slice((300, 420), dtype=np.float32)
    yy, xx = np.mgrid[0:300, 0:420]
    vignette = 1.0 - 0.35 * (((yy - 150) / 150.0) ** 2 + ((xx - 210) / 210.0) ** 2) / 2 + 0.1 * (xx / 420.0)
    t = torch.as_tensor(img * vignette)[None]
    flat = NormalizeTransmittance(flat_field_degree=3)(t)[0].numpy()
    single = NormalizeTransmittance(flat_field_degree=None)(t)[0].numpy()
    glass = mask == 0
    # corners of the glass are far from 0 with one glass level, close to 0 with the fitted field
    assert np.percentile(single[glass], 95) > 0.15
    assert np.percentile(np.abs(flat[glass]), 95) < 0.05
    assert np.median(flat[mask == 1]) > 0.4


def test_flat_field_falls_back_when_no_glass_shows():
    from plimonai.transforms.intensity import estimate_illumination

    t = np.full((64, 64), 0.5, np.float32)
    assert estimate_illumination(t, np.zeros_like(t, bool)) is None  # nothing valid
    out = NormalizeTransmittance(flat_field_degree=3)(torch.full((1, 64, 64), 0.5))
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-6)


def _dark_corner_slice(h: int = 520, w: int = 700, seed: int = 0):
    """Glass 0.9 with a smooth dark lower-left corner (-20 %, not a polynomial), a tissue disk (attenuation 0.2)
    in it and an unscanned (0) band on the left: (transmittance, tissue mask, disk centre)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    illum = 1.0 - 0.2 * np.exp(-((yy - h) ** 2 + (xx - 40) ** 2) / (2 * (0.3 * h) ** 2))
    t = 0.9 * illum * (1 + 0.003 * np.random.default_rng(seed).standard_normal((h, w)))
    cy, cx = 0.7 * h, 0.25 * w
    tissue = (yy - cy) ** 2 + (xx - cx) ** 2 < 40**2
    t = np.where(tissue, t * 0.8, t).astype(np.float32)
    t[:, :40] = 0
    return t, tissue, (yy - cy) ** 2 + (xx - cx) ** 2


def test_local_correction_follows_a_dark_corner_the_polynomial_rejects():
    t, tissue, d2 = _dark_corner_slice()
    glass = ~tissue & (t > 0)
    ring = glass & (d2 < 90**2)  # the glass around the section, deep in the dark corner
    poly = NormalizeTransmittance(flat_field_local_step=None)(torch.as_tensor(t)[None])[0].numpy()
    local = NormalizeTransmittance()(torch.as_tensor(t)[None])[0].numpy()
    assert np.percentile(np.abs(poly[glass]), 95) > 0.08  # the robust polynomial rejects the corner as tissue
    assert np.median(poly[ring]) > 0.04
    assert np.percentile(np.abs(local[glass]), 95) < 0.02
    assert abs(np.median(local[ring])) < 0.015
    assert abs(np.median(local[tissue]) - 0.2) < 0.02  # the section's attenuation is right again


def test_local_correction_keeps_pale_tissue():
    # a large pale piece (attenuation 0.05) beside the dark corner: the correction must not creep into it
    t, disk, _ = _dark_corner_slice()
    h, w = t.shape
    yy, xx = np.mgrid[0:h, 0:w]
    pale = (np.abs(yy - 0.6 * h) < 0.2 * h) & (np.abs(xx - 0.65 * w) < 0.2 * w)
    t = torch.as_tensor(np.where(pale, t * 0.95, t).astype(np.float32))[None]
    poly = NormalizeTransmittance(flat_field_local_step=None)(t)[0].numpy()
    local = NormalizeTransmittance()(t)[0].numpy()
    assert abs(np.median(local[pale]) - 0.05) < 0.005 and np.percentile(local[pale], 5) > 0.04
    assert np.abs(np.median(local[pale]) - np.median(poly[pale])) < 0.005
    assert abs(np.median(local[disk]) - 0.2) < 0.02 < abs(np.median(poly[disk]) - 0.2)


def test_corrected_field_is_exact_band_by_band():
    from plimonai.transforms.intensity import fit_illumination

    t, _, _ = _dark_corner_slice()
    fit = fit_illumination(t, t > 0)
    assert fit is not None and fit.corr is not None  # the correction is in play
    h, w = t.shape
    whole = fit.evaluate(np.arange(h) + 0.5, np.arange(w) + 0.5)
    band = fit.evaluate(np.arange(137, 301) + 0.5, np.arange(55, 612) + 0.5)
    assert np.array_equal(band, whole[137:301, 55:612])
