"""Tests for plimonai.io (atomic mask writers and overlays)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import plimonai.io.writers as writers
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from plimonai.io import (
    SaveMaskd,
    SaveOverlayd,
    atomic_path,
    is_temp_path,
    mask_path_for,
    render_overlay,
    save_overlay,
    write_mask,
)

# non-trivial affine: axes swapped and flipped, anisotropic, shifted
AFFINE = np.array([[0.0, -0.5, 0.0, 10.0], [1.3, 0.0, 0.0, -3.0], [0.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _mask(h: int = 37, w: int = 53) -> np.ndarray:
    """Non-square, asymmetric mask so transposes and flips show."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[3 : h // 2, 5 : w - 7] = 1
    m[h - 6 :, 2:9] = 1
    return m


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "name, expected",
    [
        ("s0001.tif", "s0001_mask.tif"),
        ("s0001.tiff", "s0001_mask.tiff"),
        ("S.TIF", "S_mask.TIF"),
        ("brain.nii", "brain_mask.nii"),
        ("brain.nii.gz", "brain_mask.nii.gz"),
        ("sec.0042.nii.gz", "sec.0042_mask.nii.gz"),
        ("sec.h5", "sec_mask.h5"),
        ("sec.hdf5", "sec_mask.hdf5"),
    ],
)
def test_mask_path_for(tmp_path, name, expected):
    assert mask_path_for(Path("/data/in") / name, tmp_path) == tmp_path / expected
    assert mask_path_for(f"/data/in/{name}", str(tmp_path), suffix="_tissue").name == expected.replace(
        "_mask", "_tissue"
    )


def test_mask_path_for_rejects_unsupported_and_overwrite(tmp_path):
    with pytest.raises(ValueError, match="image.png"):
        mask_path_for("/data/image.png", tmp_path)
    with pytest.raises(ValueError, match="overwrite"):
        mask_path_for(tmp_path / "a.tif", tmp_path, suffix="")


# --------------------------------------------------------------------------- atomic writes


def test_atomic_path_success_and_failure(tmp_path):
    final = tmp_path / "sub" / "a_mask.tif"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and is_temp_path(tmp) and not tmp.name.endswith(".tif")
        assert not tmp.match("*_mask.tif")
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and os.listdir(final.parent) == ["a_mask.tif"]

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert final.read_bytes() == b"new" and os.listdir(final.parent) == ["a_mask.tif"]
    assert not is_temp_path(final)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def crash(fh, mask, reference):
        fh.write(b"II*\x00partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(writers, "_write_tiff", crash)
    with pytest.raises(KeyboardInterrupt):
        write_mask(tmp_path / "a_mask.tif", _mask())
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m,
        lambda m: m.astype(bool),
        lambda m: torch.from_numpy(m[None].astype(np.float32)),
        lambda m: MetaTensor(torch.from_numpy(m[None].astype(np.int64))),
    ],
)
def test_write_tiff(tmp_path, make):
    m = _mask()
    path = write_mask(tmp_path / "a_mask.tif", make(m))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE and not page.is_tiled
        data = tif.asarray()
    assert data.dtype == np.uint8 and data.shape == m.shape
    np.testing.assert_array_equal(data, m)


@pytest.mark.parametrize(
    "h, w, factor", [(writers.TILED_MIN_SIDE + 104, 600, 2), (2 * writers.TILED_MIN_SIDE + 9, 70, 4)]
)
def test_write_tiff_large_is_tiled_with_pyramid_and_keeps_resolution(tmp_path, h, w, factor):
    m = np.zeros((h, w), dtype=np.uint8)
    m[100:4000, 5 : w - 9] = 1
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, m, resolution=(10000 / 13, 10000 / 13), resolutionunit="CENTIMETER")
    out = write_mask(mask_path_for(src, tmp_path / "out"), m, reference=src)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == writers.TILE_SHAPE
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(h, w), (-(-h // factor), -(-w // factor))]
        np.testing.assert_allclose(page.resolution, (10000 / 13, 10000 / 13), rtol=1e-6)
        np.testing.assert_array_equal(tif.asarray(), m)
        np.testing.assert_array_equal(levels[1].asarray(), m[::factor, ::factor])


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.zeros((2, 4, 4)), "shape"),
        (np.zeros(7), "shape"),
        (np.full((4, 4), 0.7, dtype=np.float32), "binary"),
        (np.full((4, 4), 2, dtype=np.uint8), "binary"),
    ],
)
def test_write_mask_errors_name_the_file(tmp_path, mask, match):
    with pytest.raises(ValueError) as err:
        write_mask(tmp_path / "b_mask.tif", mask)
    assert match in str(err.value) and "b_mask.tif" in str(err.value)
    assert os.listdir(tmp_path) == []


def test_write_mask_unsupported_suffix(tmp_path):
    with pytest.raises(ValueError, match="b_mask.png"):
        write_mask(tmp_path / "b_mask.png", _mask())


# --------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_nifti_round_trip_with_monai_loadimage(tmp_path, ext):
    rng = np.random.default_rng(0)
    data = rng.random((37, 53), dtype=np.float32)
    src = tmp_path / f"sec{ext}"
    nib.save(nib.Nifti1Image(data, AFFINE), src)
    img = LoadImage(image_only=True)(src)
    assert tuple(img.shape) == data.shape

    pred = img > 0.5
    out = write_mask(mask_path_for(src, tmp_path / "out"), pred, affine=img.meta["original_affine"])
    assert out.name == f"sec_mask{ext}"

    back = LoadImage(image_only=True)(out)
    np.testing.assert_array_equal(back.numpy(), (data > 0.5).astype(np.float32))  # pixel-for-pixel aligned
    np.testing.assert_array_equal(back.meta["original_affine"], img.meta["original_affine"])
    ref = nib.load(out)
    assert ref.get_data_dtype() == np.uint8 and ref.shape == data.shape
    np.testing.assert_array_equal(ref.affine, nib.load(src).affine)


def test_nifti_affine_from_qform_only_reference(tmp_path):
    src = tmp_path / "q.nii.gz"
    img = nib.Nifti1Image(np.zeros((37, 53), np.float32), None)
    img.set_qform(AFFINE, code=1)
    img.set_sform(None, code=0)
    nib.save(img, src)
    out = write_mask(tmp_path / "q_mask.nii.gz", _mask(), reference=src)
    hdr_in, hdr_out = nib.load(src).header, nib.load(out).header
    assert (int(hdr_out["qform_code"]), int(hdr_out["sform_code"])) == (1, 0)
    np.testing.assert_allclose(nib.load(out).affine, nib.load(src).affine, atol=1e-6)
    assert hdr_out.get_xyzt_units() == hdr_in.get_xyzt_units()


def test_nifti_default_identity_affine(tmp_path):
    out = write_mask(tmp_path / "x_mask.nii", _mask()[None])
    np.testing.assert_array_equal(nib.load(out).affine, np.eye(4))
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), _mask())


# --------------------------------------------------------------------------- SaveMaskd


def test_savemaskd_nifti_pipeline(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.random((37, 53), dtype=np.float32)
    src = tmp_path / "sec_0007.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), src)
    item = Compose([LoadImaged("image"), EnsureChannelFirstd("image", channel_dim="no_channel")])({"image": str(src)})
    item["pred"] = (item["image"] > 0.5).float()  # (1, H, W) MetaTensor
    out = SaveMaskd("pred", tmp_path / "out")(item)

    assert out["mask_path"] == str(tmp_path / "out" / "sec_0007_mask.nii.gz")
    assert os.listdir(tmp_path / "out") == ["sec_0007_mask.nii.gz"]
    back = LoadImage(image_only=True)(out["mask_path"])
    np.testing.assert_array_equal(back.numpy(), data > 0.5)
    np.testing.assert_array_equal(back.meta["original_affine"], nib.load(src).affine)


def test_savemaskd_tiff_with_image_path_fallback(tmp_path):
    m = _mask()
    item = {"image": np.zeros(m.shape, np.float32), "pred": m[None], "image_path": "/data/in/s12.tiff"}
    out = SaveMaskd("pred", tmp_path)(item)
    assert out["mask_path"] == str(tmp_path / "s12_mask.tiff")
    np.testing.assert_array_equal(tifffile.imread(out["mask_path"]), m)
    assert "mask_path" not in item  # input dict untouched
    with pytest.raises(KeyError, match="image_path"):
        SaveMaskd("pred", tmp_path)({"image": m, "pred": m})


# --------------------------------------------------------------------------- overlays


def _overlay_scene() -> tuple[np.ndarray, np.ndarray]:
    """400 x 300 image/mask; with max_size=100 the factor is 4 and the mask maps to rows 10:50, cols 10:40."""
    rng = np.random.default_rng(2)
    image = (rng.random((400, 300)) * 4000).astype(np.uint16)
    mask = np.zeros((400, 300), dtype=np.uint8)
    mask[40:200, 40:160] = 1
    return image, mask


def _is_red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)


def test_save_overlay_png_rgb_bounded_with_border(tmp_path):
    image, mask = _overlay_scene()
    path = save_overlay(tmp_path / "o" / "s_overlay.png", image[None], mask, max_size=100)
    assert os.listdir(tmp_path / "o") == ["s_overlay.png"]
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and max(im.size) <= 100
        assert im.size == (75, 100)
        rgb = np.asarray(im)
    red = _is_red(rgb)
    border = np.zeros(red.shape, bool)
    border[10:50, 10:40] = True
    border[11:49, 11:39] = False
    np.testing.assert_array_equal(red, border)  # exactly the mask's (inner) border is coloured
    gray = rgb[~red]
    assert (gray[:, 0] == gray[:, 1]).all() and gray.std() > 10  # the image itself is visible


def test_overlay_nan_image_and_float_input(tmp_path):
    image, mask = _overlay_scene()
    image = image.astype(np.float32)
    image[:120] = np.nan
    rgb = render_overlay(torch.from_numpy(image), torch.from_numpy(mask), max_size=100)
    assert rgb.shape == (100, 75, 3) and rgb.dtype == np.uint8
    assert _is_red(rgb)[10:50, 10].all()
    assert (rgb[:30][~_is_red(rgb[:30])] == 0).all()  # NaN rows render black
    save_overlay(tmp_path / "nan.png", np.full((50, 60), np.nan, np.float32), np.ones((50, 60)))
    assert Image.open(tmp_path / "nan.png").size == (60, 50)


def test_overlay_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="same spatial size"):
        save_overlay(tmp_path / "x.png", np.zeros((10, 10)), np.zeros((10, 12)))
    assert not (tmp_path / "x.png").exists()


def test_saveoverlayd(tmp_path):
    image, mask = _overlay_scene()
    item = {
        "image": MetaTensor(torch.from_numpy(image[None].astype(np.float32)), meta={"filename_or_obj": "/d/s7.nii.gz"}),
        "pred": MetaTensor(torch.from_numpy(mask[None])),
    }
    out = SaveOverlayd(("image", "pred"), tmp_path, max_size=64)(item)
    assert out["overlay_path"] == str(tmp_path / "s7_overlay.png")
    with Image.open(out["overlay_path"]) as im:
        assert im.mode == "RGB" and max(im.size) <= 64
