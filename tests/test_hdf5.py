"""HDF5 slices: reader (dataset choice, pyramid fallback, attributes, errors), mask writer layout,
and end-to-end inference on an HDF5 slice list through the bundle config."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers import make_slice
from plimonai.data import SliceFormatError, list_slices
from plimonai.io import mask_path_for, write_mask
from plimonai.io.writers import mask_pyramid
from plimonai.transforms.io import LoadSliced
from test_inference import dice, run_inference

SHAPE = (300, 400)


def write_h5(path: Path, img: np.ndarray, dataset: str = "/Image", pyramid: bool = True, **attrs) -> Path:
    """A 3D-PLI style slice file: ``dataset`` (H, W), optional ``/pyramid/00..01``, attributes."""
    with h5py.File(path, "w") as f:
        f.attrs.update({"modality": "NTransmittance", "pixel_size_um": 1.3, "slice": np.int32(42), **attrs})
        ds = f.create_dataset(dataset, data=img, chunks=True, compression="gzip")
        ds.attrs["channel"] = np.bytes_(b"T")
        ds.attrs["range"] = np.array([0.0, 1.0], np.float32)
        if pyramid:
            f["/pyramid/01"] = img[::2, ::2]
            f["/pyramid/00"] = img
    return path


@pytest.fixture()
def ntrans():
    """float32 [0, 1] NTransmittance slice (glass 0.9) with a zero (unscanned) left border, and its mask."""
    img, mask = make_slice(SHAPE, seed=5, dtype=np.float32)
    img[:, :40] = 0.0
    mask[:, :40] = 0
    return img, mask


# --------------------------------------------------------------------------- reader


def test_read_image_attrs_and_pyramid_levels(tmp_path, ntrans):
    img, _ = ntrans
    p = write_h5(tmp_path / "s.h5", img)
    t = LoadSliced("image")({"image": str(p)})["image"]
    assert t.shape == (1, *SHAPE) and t.dtype == torch.float32
    np.testing.assert_array_equal(t[0].numpy(), img)
    m = t.meta
    assert m["h5_dataset"] == "/Image" and m["original_dtype"] == "float32"
    assert m["h5_attrs"]["file"] == {"modality": "NTransmittance", "pixel_size_um": 1.3, "slice": 42}
    assert m["h5_attrs"]["dataset"] == {"channel": "T", "range": [0.0, 1.0]}
    assert type(m["h5_attrs"]["file"]["slice"]) is int  # plain python, not numpy
    half = LoadSliced("image", h5_dataset="/pyramid/01")({"image": str(p)})["image"]
    assert half.shape == (1, 150, 200) and half.meta["h5_dataset"] == "/pyramid/01"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_pyramid_fallback_when_image_missing(tmp_path, dtype):
    img = make_slice(SHAPE, seed=1, dtype=dtype)[0]
    p = tmp_path / "p.hdf5"
    with h5py.File(p, "w") as f:
        f["/pyramid/02"] = img[::4, ::4]
        f["/pyramid/10"] = img[:1, :1]
        f["/pyramid/00"] = img
        f["/pyramid/01"] = img[::2, ::2]
    t = LoadSliced("image")({"image": str(p)})["image"]
    assert t.meta["h5_dataset"] == "/pyramid/00" and t.meta["original_dtype"] == np.dtype(dtype).name
    np.testing.assert_array_equal(t[0].numpy(), img.astype(np.float32))


def test_missing_dataset_names_file_and_tried_paths(tmp_path):
    p = tmp_path / "nodata.h5"
    with h5py.File(p, "w") as f:
        f["/Other"] = np.zeros((4, 5), np.float32)
    with pytest.raises(SliceFormatError) as e:
        LoadSliced("image")({"image": str(p)})
    msg = str(e.value)
    assert "nodata.h5" in msg and "/Image" in msg and "/pyramid/NN" in msg and "/Other" in msg
    # an explicitly requested level does not fall back to another resolution
    write_h5(tmp_path / "lv.h5", np.ones((8, 8), np.float32))
    with pytest.raises(SliceFormatError, match=r"lv\.h5.*tried /pyramid/05;"):
        LoadSliced("image", h5_dataset="/pyramid/05")({"image": str(tmp_path / "lv.h5")})


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((3, 10, 12), np.float32), "single-channel 2D"),
        (np.zeros((10,), np.float32), "single-channel 2D"),
        (np.zeros((10, 12), np.int64), "unsupported dtype"),
    ],
)
def test_bad_dataset_names_the_file(tmp_path, array, match):
    p = write_h5(tmp_path / "bad.h5", array, pyramid=False)
    with pytest.raises(SliceFormatError, match=match) as e:
        LoadSliced("image")({"image": str(p)})
    assert "bad.h5:/Image" in str(e.value)


def test_singleton_channel_big_endian_and_corrupt(tmp_path):
    a = np.arange(12 * 9, dtype=">f4").reshape(1, 12, 9)
    t = LoadSliced("image")({"image": str(write_h5(tmp_path / "c.h5", a, pyramid=False))})["image"]
    assert t.shape == (1, 12, 9)
    np.testing.assert_array_equal(t[0].numpy(), a[0].astype(np.float32))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(SliceFormatError, match="junk.h5"):
        LoadSliced("image")({"image": str(tmp_path / "junk.h5")})


# --------------------------------------------------------------------------- writer


def test_mask_file_layout_pyramid_and_attrs(tmp_path, ntrans):
    src = write_h5(tmp_path / "src.h5", ntrans[0])
    assert mask_path_for(src, tmp_path / "out") == tmp_path / "out" / "src_mask.h5"
    mask = np.zeros((1100, 1301), np.uint8)
    mask[501, 7] = 1  # a single pixel survives max-pooling at every level
    out = write_mask(tmp_path / "out" / "src_mask.h5", torch.from_numpy(mask)[None], reference=src)
    with h5py.File(out, "r") as f:
        assert f["/Image"].dtype == np.uint8 and f["/Image"].compression == "gzip" and f["/Image"].chunks
        np.testing.assert_array_equal(f["/Image"][()], mask)
        shapes = [f[f"/pyramid/{k}"].shape for k in sorted(f["/pyramid"])]
        assert shapes == [(1100, 1301), (550, 651), (275, 326)]  # ceil halving; next short side 138 < 256
        assert f["/pyramid/00"] == f["/Image"]  # hard link, stored once
        assert [f[f"/pyramid/{k}"][()].sum() for k in ("01", "02")] == [1, 1]
        assert f.attrs["modality"] == "NTransmittance" and f.attrs["slice"] == 42
        np.testing.assert_array_equal(f["/Image"].attrs["range"], [0.0, 1.0])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["src_mask.h5"]  # no temp file left
    assert len(mask_pyramid(np.zeros((300, 400), np.uint8))) == 1


# --------------------------------------------------------------------------- end to end


def test_inference_on_h5_slice_list(tmp_path, ntrans):
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    truth = {}
    for i, dtype in enumerate([np.uint16, np.uint8]):
        img, truth[f"s{i}"] = make_slice(SHAPE, seed=i, dtype=dtype)
        write_h5(d / f"s{i}.h5", img, run=i)
    write_h5(d / "nt.hdf5", ntrans[0], pyramid=False)  # float32 [0, 1], zero unscanned border
    truth["nt"] = ntrans[1]
    (d / "list.txt").write_text("s0.h5\ns1.h5\nnt.hdf5\n")
    assert list_slices(dataset_dir=d) == sorted(str(p) for p in d.iterdir() if p.suffix != ".txt")
    rows = run_inference(out, {"slice_list": str(d / "list.txt")})
    assert [(r["slice"], r["status"]) for r in rows] == [("s0", "ok"), ("s1", "ok"), ("nt", "ok")]
    for name, gt in truth.items():
        ext = ".hdf5" if name == "nt" else ".h5"
        with h5py.File(out / f"{name}_mask{ext}", "r") as f:
            m = f["/Image"][()]
            assert m.dtype == np.uint8 and m.shape == SHAPE and dice(m, gt) > 0.98
            assert f.attrs["modality"] == "NTransmittance" and f["/Image"].attrs["channel"] == b"T"
            assert "/pyramid/00" in f
        assert (out / f"{name}_overlay.png").stat().st_size > 0
    with h5py.File(out / "nt_mask.hdf5", "r") as f:
        assert f["/Image"][:, :40].sum() == 0  # nothing in the unscanned border
    with h5py.File(out / "s1_mask.h5", "r") as f:
        assert f.attrs["run"] == 1
    # resume skips slices whose HDF5 mask exists; --h5_dataset reads another level (half-size masks)
    write_h5(d / "new.h5", make_slice(SHAPE, seed=9)[0])
    (d / "list.txt").write_text("s0.h5\ns1.h5\nnt.hdf5\nnew.h5\n")
    mtime = (out / "s0_mask.h5").stat().st_mtime_ns
    rows = run_inference(out, {"slice_list": str(d / "list.txt")})
    assert [r["status"] for r in rows] == ["skipped"] * 3 + ["ok"] and (out / "s0_mask.h5").stat().st_mtime_ns == mtime
    half = tmp_path / "half"
    rows = run_inference(half, {"slice_list": str(d / "list.txt"), "h5_dataset": "/pyramid/01"}, expect_fail=True)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok"] and "/pyramid/01" in rows[2]["error"]
    with h5py.File(half / "s0_mask.h5", "r") as f:
        assert f["/Image"].shape == (150, 200)
