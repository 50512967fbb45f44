import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from plimonai.data import SliceFormatError, load_datalist
from plimonai.transforms.io import LoadSliced


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_dtypes_load_as_channel_first_float(tmp_path, dtype):
    a = (np.random.default_rng(0).random((30, 41)) * (200 if dtype == np.uint8 else 1)).astype(dtype)
    tifffile.imwrite(tmp_path / "s.tif", a)
    img = LoadSliced("image")({"image": str(tmp_path / "s.tif")})["image"]
    assert img.shape == (1, 30, 41) and img.dtype == torch.float32
    assert img.meta["original_dtype"] == np.dtype(dtype).name
    np.testing.assert_allclose(img[0].numpy(), a.astype(np.float32))


def test_nifti_2d_and_trailing_singleton(tmp_path):
    a = np.random.default_rng(0).random((20, 25)).astype(np.float32)
    nib.save(nib.Nifti1Image(a, np.diag([2.0, 3.0, 1.0, 1.0])), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(a[..., None], np.eye(4)), tmp_path / "b.nii")
    load = LoadSliced("image")
    for name in ("a.nii.gz", "b.nii"):
        img = load({"image": str(tmp_path / name)})["image"]
        assert img.shape == (1, 20, 25)
        np.testing.assert_allclose(img[0].numpy(), a)


@pytest.mark.parametrize(
    "array,match",
    [
        (np.zeros((10, 12, 3), np.uint8), "single-channel 2D"),
        (np.zeros((2, 10, 12), np.uint16), "single-channel 2D"),
        (np.zeros((10, 12), np.int32), "unsupported dtype"),
    ],
)
def test_bad_tiffs_name_the_file(tmp_path, array, match):
    p = tmp_path / "bad.tif"
    tifffile.imwrite(p, array)
    with pytest.raises(Exception, match=match) as e:
        LoadSliced("image")({"image": str(p)})
    assert "bad.tif" in str(e.value) or "bad.tif" in str(e.value.__cause__)


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "c.tif").write_bytes(b"not a tiff at all")
    for name, exc in (("c.tif", SliceFormatError), ("missing.tif", FileNotFoundError)):
        with pytest.raises(exc, match=name):
            LoadSliced("image")({"image": str(tmp_path / name)})


def test_nifti_3d_volume_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 4), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(SliceFormatError, match="v.nii.gz"):
        LoadSliced("image")({"image": str(tmp_path / "v.nii.gz")})


def test_datalist_missing_entry_named(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    (tmp_path / "dl.json").write_text('{"training": [{"image": "a.tif", "label": "nolabel.tif"}]}')
    with pytest.raises(FileNotFoundError, match="nolabel.tif"):
        load_datalist(tmp_path / "dl.json")
    (tmp_path / "dl2.json").write_text('{"training": [{"image": "a.tif"}]}')
    with pytest.raises(KeyError, match="label"):
        load_datalist(tmp_path / "dl2.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_datalist(tmp_path / "nope.json")
