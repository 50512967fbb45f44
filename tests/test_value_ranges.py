"""Real 3D-PLI inputs (issue 9): every value range a PLI pipeline writes, invalid pixels, slices smaller
than the window and odd sizes, and the slice's pixel size (resampling to the model's and back,
file attributes reported but not trusted by default, implausible resampling refused per slice).
End to end through bundle/configs/inference.json with deterministic threshold networks."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from helpers import THRESH_NET, ThresholdNet, make_slice, run_inference_workflow
from plimonai.transforms.io import LoadSliced
from plimonai.transforms.spacing import PixelSizeError, ResampleToModelPixeld, RestoreSliceGridd, file_pixel_size_um

ROOT = Path(__file__).resolve().parent.parent
INFER = str(ROOT / "bundle/configs/inference.json")
META = str(ROOT / "bundle/configs/metadata.json")

DILATED_NET = {"_target_": "test_value_ranges.DilatedThresholdNet"}
MODEL_PX = json.loads(Path(META).read_text())["network_data_format"]["inputs"]["image"]["pixel_size_um"]
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")


class DilatedThresholdNet(ThresholdNet):
    """ThresholdNet after a 9 x 9 max filter: like a CNN's receptive field, it calls tissue up to
    4 px beyond it, i.e. into small invalid holes and unscanned borders next to tissue."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.max_pool2d(x[:, :1], 9, stride=1, padding=4))


def run(out: Path, roi=(128, 128), net=THRESH_NET, expect_fail: bool = False, **overrides) -> list[dict]:
    """Run the inference workflow in this process; return the summary rows."""
    return run_inference_workflow(out, overrides, expect_fail, network_def=net, roi_size=list(roi), overlay_max_size=256)


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 1.0 if not (a.any() or b.any()) else 2 * (a & b).sum() / (a.sum() + b.sum())


def mask_of(out: Path, name: str) -> np.ndarray:
    return tifffile.imread(out / f"{name}_mask.tif")


def post_index(name: str) -> int:
    """Index of a post-processing transform in inference.json (for overrides)."""
    ts = ConfigParser.load_config_file(INFER)["postprocessing"]["transforms"]
    return next(i for i, t in enumerate(ts) if t["_target_"].endswith(name))


# ------------------------------------------------------------------ invalid pixels


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_zero_border_and_nan_never_tissue(tmp_path, dtype):
    """Zero (unscanned) border cutting through tissue, and NaN / 0 blocks inside tissue: never tissue.

    The dilated net calls them tissue and hole filling would claim them too; the control run without
    the valid mask in post-processing shows that this test can fail."""
    d = tmp_path / "in"
    d.mkdir()
    img, gt = make_slice((200, 260), seed=3, dtype=np.float32)  # tissue disk centre (100, 78), r 60
    invalid = np.zeros(gt.shape, bool)
    invalid[:, :30] = True  # unscanned border through the tissue disk
    invalid[97:103, 37:43] = True  # small blocks inside tissue (outside the ventricle)
    invalid[95:101, 190:196] = True
    assert gt[:, :30].any() and gt[97:103, 37:43].all() and gt[95:101, 190:196].all()  # all touch tissue
    if dtype == np.uint16:
        img = (img * 60000).astype(np.uint16)
        img[invalid] = 0
    else:
        img[:, :30] = 0.0
        img[97:103, 37:43] = np.nan
        img[95:101, 190:196] = 0.0
    tifffile.imwrite(d / "s.tif", img)
    out = run(tmp_path / "out", net=DILATED_NET, dataset_dir=str(d))
    assert out[0]["status"] == "ok"
    m = mask_of(tmp_path / "out", "s")
    assert m[invalid].sum() == 0
    assert dice(m, gt & ~invalid) > 0.85  # the rest of the tissue is found (4 px wider: the dilation)
    # control: without the valid mask the same run calls invalid pixels tissue
    i = post_index("TissueMaskPostprocessd")
    run(tmp_path / "ctl", net=DILATED_NET, dataset_dir=str(d), **{f"postprocessing#transforms#{i}#valid_key": None})
    ctl = mask_of(tmp_path / "ctl", "s")
    assert ctl[:, :30].sum() > 0 and ctl[97:103, 37:43].all() and ctl[95:101, 190:196].all()


# ------------------------------------------------------------------ sizes


def test_small_and_odd_sizes_keep_their_shape_with_the_real_roi(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    truth = {}
    for name, shape in {"small": (150, 200), "odd": (1001, 1537), "thin": (97, 1030)}.items():
        img, truth[name] = make_slice(shape, seed=len(name))
        tifffile.imwrite(d / f"{name}.tif", img)
    roi = ConfigParser.load_config_file(INFER)["roi_size"]
    assert roi == [1024, 1024]
    rows = run(tmp_path / "out", roi=roi, dataset_dir=str(d))
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        gt = truth[r["slice"]]
        m = mask_of(tmp_path / "out", r["slice"])
        assert m.shape == gt.shape == (int(r["height"]), int(r["width"])) and m.dtype == np.uint8
        assert dice(m, gt) > 0.97
        assert r["resample_factor"] == "1" and r["file_pixel_size_um"] == ""


# ------------------------------------------------------------------ value ranges


def test_float_uint16_uint8_versions_give_the_same_mask(tmp_path):
    """One slice as NTransmittance float32 in [0, 1] (glass ~0.9), uint16 and uint8 counts."""
    d = tmp_path / "in"
    d.mkdir()
    versions = {}
    for dtype in (np.float32, np.uint16, np.uint8):
        img, gt = make_slice((240, 330), seed=7, dtype=dtype)
        versions[np.dtype(dtype).name] = img
        tifffile.imwrite(d / f"v_{np.dtype(dtype).name}.tif", img)
    f = versions["float32"]
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1 and abs(np.percentile(f, 99) - 0.9) < 0.05
    assert versions["uint16"].max() > 255  # really 16-bit counts
    rows = run(tmp_path / "out", dataset_dir=str(d))
    assert all(r["status"] == "ok" for r in rows)
    masks = {k: mask_of(tmp_path / "out", f"v_{k}") for k in versions}
    assert dice(masks["float32"], masks["uint16"]) >= 0.99
    assert dice(masks["float32"], masks["uint8"]) >= 0.99
    assert dice(masks["float32"], gt) > 0.97


# ------------------------------------------------------------------ pixel size


def test_metadata_and_config_agree_on_the_model_pixel_size():
    cfg = ConfigParser.load_config_file(INFER)
    assert MODEL_PX == cfg["model_pixel_size_um"] == 64.0  # synthetic LAP: ~64 um pixels
    assert cfg["pixel_size_um"] is None and cfg["trust_file_pixel_size"] is False  # no resampling by default


def test_model_pixel_size_is_no_resampling_and_coarser_slices_are_resampled(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img, gt = make_slice((300, 420), seed=2)
    tifffile.imwrite(d / "full.tif", img)
    none = run(tmp_path / "none", dataset_dir=str(d))
    same = run(tmp_path / "same", dataset_dir=str(d), pixel_size_um=MODEL_PX)
    assert none[0]["status"] == same[0]["status"] == "ok" and same[0]["resample_factor"] == "1"
    np.testing.assert_array_equal(mask_of(tmp_path / "none", "full"), mask_of(tmp_path / "same", "full"))

    # half the resolution (128 um): enlarged 2x for the network, the mask comes back in the slice's grid
    e = tmp_path / "half"
    e.mkdir()
    small, small_gt = make_slice((150, 211), seed=2)
    tifffile.imwrite(e / "half.tif", small)
    rows = run(tmp_path / "out128", dataset_dir=str(e), pixel_size_um=2 * MODEL_PX)
    assert rows[0]["status"] == "ok" and rows[0]["resample_factor"] == "2"
    m = mask_of(tmp_path / "out128", "half")
    assert m.shape == small_gt.shape == (150, 211) and dice(m, small_gt) > 0.96
    # twice the resolution (32 um): shrunk by 2, mask back at 600 x 840
    g = tmp_path / "fine"
    g.mkdir()
    big, big_gt = make_slice((600, 840), seed=2)
    tifffile.imwrite(g / "fine.tif", big)
    rows = run(tmp_path / "out32", dataset_dir=str(g), pixel_size_um=MODEL_PX / 2)
    assert rows[0]["status"] == "ok" and rows[0]["resample_factor"] == "0.5"
    m = mask_of(tmp_path / "out32", "fine")
    assert m.shape == big_gt.shape and dice(m, big_gt) > 0.97
    assert (tmp_path / "out32" / "fine_overlay.png").stat().st_size > 0


def test_preprocessing_resamples_image_not_valid_mask():
    img, _ = make_slice((150, 211), seed=2, dtype=np.float32)
    img[:, :10] = np.nan
    x = MetaTensor(torch.from_numpy(img)[None], meta={"filename_or_obj": "s.tif"})
    from plimonai.transforms.intensity import NormalizeTransmittanced

    dn = NormalizeTransmittanced("image")({"image": x})
    d = ResampleToModelPixeld("image", MODEL_PX, pixel_size_um=2 * MODEL_PX)(dn)
    assert d["image"].shape == (1, 300, 422) and d["valid"].shape == (1, 150, 211)
    assert torch.isfinite(d["image"]).all()
    assert d["image"].meta["resample_original_shape"] == [150, 211] and d["image"].meta["resample_factor"] == [2.0, 2.0]
    logits = torch.randn(2, 300, 422)
    back = RestoreSliceGridd(["pred", "image"])({**d, "pred": logits})
    assert back["pred"].shape == (2, 150, 211) and back["image"].shape == (1, 150, 211)
    assert back["resample_factor"] == "2" and back["file_pixel_size_um"] == ""
    # anisotropic pixels: [row, col]
    d2 = ResampleToModelPixeld("image", MODEL_PX, pixel_size_um=[2 * MODEL_PX, MODEL_PX])(dn)
    assert d2["image"].shape == (1, 300, 211)


@pytest.mark.parametrize("px, shape, match", [
    (9 * MODEL_PX, (100, 120), r"s\.tif: refusing to resample.*pixel size 576 um.*100 x 120 px -> 900 x 1080 px \(factor 9\).*more than 8x"),
    (MODEL_PX / 4, (200, 300), r"s\.tif: refusing to resample.*pixel size 16 um.*200 x 300 px -> 50 x 75 px.*under 64 px"),
])
def test_implausible_resampling_is_refused(px, shape, match):
    x = MetaTensor(torch.ones(1, *shape), meta={"filename_or_obj": "/data/s.tif"})
    with pytest.raises(PixelSizeError, match=match):
        ResampleToModelPixeld("image", MODEL_PX, pixel_size_um=px)({"image": x})
    with pytest.raises(PixelSizeError, match="positive"):
        ResampleToModelPixeld("image", MODEL_PX, pixel_size_um=-1)


def _tif_with_size(path: Path, img: np.ndarray, um: float | None) -> None:
    if um is None:
        tifffile.imwrite(path, img)  # tifffile writes resolution 1/1 with unit "none": no size
    else:
        tifffile.imwrite(path, img, resolution=(1e4 / um, 1e4 / um), resolutionunit="CENTIMETER")


def test_file_pixel_size_reported_not_used_unless_trusted_and_refusal_is_per_slice(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    sizes = {"a_ok": 64.0, "b_huge": 1024.0, "c_tiny": 1.0, "d_none": None, "e_coarse": 128.0}
    truth = {}
    for i, (name, um) in enumerate(sizes.items()):
        img, truth[name] = make_slice((200, 260), seed=i)
        _tif_with_size(d / f"{name}.tif", img, um)
    # default: the file's size is reported only; nothing is resampled
    rows = {r["slice"]: r for r in run(tmp_path / "plain", dataset_dir=str(d))}
    assert all(r["status"] == "ok" and r["resample_factor"] == "1" for r in rows.values())
    assert {k: r["file_pixel_size_um"] for k, r in rows.items()} == {
        "a_ok": "64", "b_huge": "1024", "c_tiny": "1", "d_none": "", "e_coarse": "128"}
    # trusted: resampled per file; implausible sizes fail their slice only, the others succeed
    rows = {r["slice"]: r for r in run(tmp_path / "trust", dataset_dir=str(d), trust_file_pixel_size=True,
                                       expect_fail=True)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a_ok": "ok", "b_huge": "failed", "c_tiny": "failed", "d_none": "ok", "e_coarse": "ok"}
    assert "b_huge.tif: refusing to resample" in rows["b_huge"]["error"] and "factor 16" in rows["b_huge"]["error"]
    assert "200 x 260 px -> 3 x 4 px" in rows["c_tiny"]["error"] and "under 64 px" in rows["c_tiny"]["error"]
    assert {k: rows[k]["resample_factor"] for k in ("a_ok", "d_none", "e_coarse")} == {
        "a_ok": "1", "d_none": "1", "e_coarse": "2"}
    for name in ("a_ok", "d_none", "e_coarse"):
        m = mask_of(tmp_path / "trust", name)
        assert m.shape == (200, 260) and dice(m, truth[name]) > 0.96
    assert not (tmp_path / "trust" / "b_huge_mask.tif").exists()
    # a given pixel size is the fallback for files without one
    rows = {r["slice"]: r for r in run(tmp_path / "fb", dataset_dir=str(d), trust_file_pixel_size=True,
                                       pixel_size_um=2 * MODEL_PX, expect_fail=True)}
    assert rows["d_none"]["resample_factor"] == "2" and rows["a_ok"]["resample_factor"] == "1"


def test_file_pixel_size_from_tiff_nifti_and_hdf5(tmp_path):
    img = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    load = LoadSliced("image")

    def size(p):
        return file_pixel_size_um(load({"image": str(p)})["image"])

    tifffile.imwrite(tmp_path / "um.tif", img, resolution=(1 / 64, 1 / 32), resolutionunit="MICROMETER")
    tifffile.imwrite(tmp_path / "dpi.tif", img, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(1 / 1.3, 1 / 1.3), metadata={"unit": "um"})
    tifffile.imwrite(tmp_path / "none.tif", img)
    assert size(tmp_path / "um.tif") == pytest.approx((32, 64))  # (row, col) = (Y, X)
    assert size(tmp_path / "dpi.tif") == pytest.approx((25400 / 72,) * 2)  # a typical placeholder
    assert size(tmp_path / "ij.tif") == pytest.approx((1.3, 1.3))
    assert size(tmp_path / "none.tif") is None
    n = nib.Nifti1Image(img, np.diag([0.064, 0.07, 1, 1]))
    n.header.set_xyzt_units("mm")
    nib.save(n, tmp_path / "n.nii.gz")
    assert size(tmp_path / "n.nii.gz") == pytest.approx((64, 70))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.attrs["pixel_size_um"] = 1.3
        f["/Image"] = img
        f["/pyramid/01"] = img[::2, ::2]
    with h5py.File(tmp_path / "ds.h5", "w") as f:
        f.attrs["pixel_size"] = 5.0  # the dataset's own attribute wins
        f["/Image"] = img
        f["/Image"].attrs["PixelSize"] = [0.064, 0.064]
        f["/Image"].attrs["unit"] = "mm"
    assert size(tmp_path / "f.h5") == pytest.approx((1.3, 1.3))
    assert size(tmp_path / "ds.h5") == pytest.approx((64, 64))
    half = LoadSliced("image", h5_dataset="/pyramid/01")({"image": str(tmp_path / "f.h5")})["image"]
    assert file_pixel_size_um(half) == pytest.approx((2.6, 2.6))  # a file attribute describes /Image


def test_hdf5_file_attribute_in_summary_and_trusted(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img, gt = make_slice((150, 200), seed=4, dtype=np.float32)
    with h5py.File(d / "s.h5", "w") as f:
        f.attrs["pixel_size_um"] = 128.0
        f["/Image"] = img
    rows = run(tmp_path / "a", dataset_dir=str(d))
    assert rows[0]["file_pixel_size_um"] == "128" and rows[0]["resample_factor"] == "1"
    rows = run(tmp_path / "b", dataset_dir=str(d), trust_file_pixel_size=True)
    assert rows[0]["status"] == "ok" and rows[0]["resample_factor"] == "2"
    with h5py.File(tmp_path / "b" / "s_mask.h5", "r") as f:
        m = f["/Image"][()]
    assert m.shape == (150, 200) and dice(m, gt) > 0.96
