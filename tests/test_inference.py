"""End-to-end tests of `run inference` through MONAI's bundle runner, with a deterministic network."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from helpers import THRESH_NET, make_slice, run_inference_workflow
from plimonai.transforms.io import LoadSliced

ROOT = Path(__file__).resolve().parent.parent
INFER = str(ROOT / "bundle/configs/inference.json")
META = str(ROOT / "bundle/configs/metadata.json")


def run_inference(out: Path, overrides: dict, expect_fail: bool = False) -> list[dict]:
    """Run the inference workflow in this process; return the summary rows."""
    return run_inference_workflow(out, overrides, expect_fail)


def dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture()
def slices(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    truth = {}
    for i, shape in enumerate([(300, 420), (150, 200), (257, 333)]):
        img, mask = make_slice(shape, seed=i)
        tifffile.imwrite(d / "sub" / f"s{i}.tif", img)
        truth[f"s{i}"] = mask
    (d / "list.txt").write_text("# my slices\nsub/s0.tif\n\n  sub/s1.tif  \nsub/s2.tif # last\n")
    return d, truth


def test_output_contract_and_pieces(slices, tmp_path):
    d, truth = slices
    out = tmp_path / "out"
    rows = run_inference(out, {"slice_list": str(d / "list.txt")})
    assert [r["slice"] for r in rows] == ["s0", "s1", "s2"] and all(r["status"] == "ok" for r in rows)
    for name, gt in truth.items():
        m = tifffile.imread(out / f"{name}_mask.tif")
        assert m.dtype == np.uint8 and m.shape == gt.shape and set(np.unique(m)) <= {0, 1}
        assert dice(m, gt) > 0.98  # dust specks removed, ventricle kept
        assert (out / f"{name}_overlay.png").stat().st_size > 0
    row = rows[0]
    assert int(row["components"]) == 2  # both tissue pieces kept, no dust
    assert int(row["tissue_area_px"]) == int(tifffile.imread(out / "s0_mask.tif").sum())
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp files left


def test_failure_isolation_and_resume(slices, tmp_path):
    d, truth = slices
    (d / "sub" / "broken.tif").write_bytes(b"\x00" * 100)
    (d / "list.txt").write_text("sub/s0.tif\nsub/broken.tif\nsub/missing.tif\nsub/s1.tif\n")
    out = tmp_path / "out"
    rows = run_inference(out, {"slice_list": str(d / "list.txt")}, expect_fail=True)
    status = {r["slice"]: r for r in rows}
    assert status["s0"]["status"] == status["s1"]["status"] == "ok"
    assert status["broken"]["status"] == "failed" and "broken.tif" in status["broken"]["error"]
    assert status["missing"]["status"] == "failed" and "not found" in status["missing"]["error"]
    mtime = (out / "s0_mask.tif").stat().st_mtime_ns
    # rerun: done slices are skipped (kept in the summary), failed ones retried
    rows2 = run_inference(out, {"slice_list": str(d / "list.txt")}, expect_fail=True)
    st2 = {r["slice"]: r["status"] for r in rows2}
    assert st2 == {"s0": "skipped", "broken": "failed", "missing": "failed", "s1": "skipped"}
    assert (out / "s0_mask.tif").stat().st_mtime_ns == mtime
    assert {r["slice"]: r["tissue_area_px"] for r in rows2}["s0"] == status["s0"]["tissue_area_px"]
    # a list with every slice done: nothing runs, the summary is still rewritten (all skipped)
    (d / "done.txt").write_text("sub/s0.tif\nsub/s1.tif\n")
    (out / "summary.csv").unlink()
    rows_done = run_inference(out, {"slice_list": str(d / "done.txt")})
    assert {r["slice"]: r["status"] for r in rows_done} == {"s0": "skipped", "s1": "skipped"}
    # --overwrite redoes them
    rows3 = run_inference(out, {"slice_list": str(d / "list.txt"), "overwrite": True}, expect_fail=True)
    assert {r["slice"]: r["status"] for r in rows3}["s0"] == "ok"


def test_nan_constant_and_zero_border_slices(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img, mask = make_slice((200, 260), seed=3, dtype=np.float32)
    img[:, :30] = 0.0  # outside the scan
    img[50:60, 50:60] = np.nan
    tifffile.imwrite(d / "nan.tif", img)
    tifffile.imwrite(d / "const.tif", np.full((90, 120), 0.7, np.float32))
    tifffile.imwrite(d / "zeros.tif", np.zeros((90, 120), np.uint16))
    out = tmp_path / "out"
    rows = run_inference(out, {"dataset_dir": str(d)})
    assert {r["slice"]: r["status"] for r in rows} == {"const": "ok", "nan": "ok", "zeros": "ok"}
    m = tifffile.imread(out / "nan_mask.tif")
    assert m[:, :30].sum() == 0 and m[50:60, 50:60].sum() == 0
    assert tifffile.imread(out / "const_mask.tif").sum() == 0
    assert tifffile.imread(out / "zeros_mask.tif").sum() == 0


def test_nifti_round_trip_keeps_affine(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img, gt = make_slice((120, 160), seed=1, dtype=np.float32)
    affine = np.array([[0.0, 0.06, 0, 10.0], [0.05, 0.0, 0, -3.0], [0, 0, 1, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(img, affine), d / "n1.nii.gz")
    out = tmp_path / "out"
    rows = run_inference(out, {"dataset_dir": str(d)})
    assert rows[0]["status"] == "ok"
    m = nib.load(out / "n1_mask.nii.gz")
    np.testing.assert_allclose(m.affine, affine, atol=1e-6)
    assert m.get_data_dtype() == np.uint8
    loaded = LoadSliced("image")({"image": str(out / "n1_mask.nii.gz")})["image"][0].numpy()
    assert loaded.shape == gt.shape and dice(loaded, gt) > 0.98


def test_command_line_exit_code(slices, tmp_path):
    """The documented command, as a subprocess: exits 0 when all slices succeed, non-zero otherwise."""
    d, _ = slices
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", INFER, "--meta_file", META,
           "--bundle_root", str(ROOT / "bundle"), "--slice_list", str(d / "list.txt"), "--output_dir", str(out),
           "--network_def", "%s" % THRESH_NET, "--roi_size", "[128,128]", "--ckpt_path", "", "--num_workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 slices done, 0 failed" in r.stdout
    (d / "list.txt").write_text("sub/s0.tif\nsub/nothere.tif\n")
    r = subprocess.run(cmd + ["--overwrite", "True"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "nothere" in r.stdout + r.stderr


def test_background_writes_match_and_fail_per_slice(slices, tmp_path):
    """Masks/overlays written in the writer thread equal the synchronous ones; a write that fails
    (its final path is a folder) fails only that slice, in summary.csv and the exit status."""
    d, _ = slices
    sync, bg = tmp_path / "sync", tmp_path / "bg"
    rows_sync = run_inference(sync, {"slice_list": str(d / "list.txt"), "async_write": False})
    (bg / "s1_mask.tif").mkdir(parents=True)  # os.replace onto a folder fails in the writer thread
    rows_bg = run_inference(bg, {"slice_list": str(d / "list.txt"), "overwrite": True}, expect_fail=True)
    st = {r["slice"]: r for r in rows_bg}
    assert st["s1"]["status"] == "failed" and "writing outputs" in st["s1"]["error"] and "s1_mask.tif" in st["s1"]["error"]
    for name in ("s0", "s2"):
        assert st[name]["status"] == "ok"
        np.testing.assert_array_equal(tifffile.imread(bg / f"{name}_mask.tif"), tifffile.imread(sync / f"{name}_mask.tif"))
        assert (bg / f"{name}_overlay.png").read_bytes() == (sync / f"{name}_overlay.png").read_bytes()
    assert [r["tissue_area_px"] for r in rows_sync if r["slice"] != "s1"] == [st["s0"]["tissue_area_px"], st["s2"]["tissue_area_px"]]
    assert not any(p.name.startswith(".") for p in bg.iterdir())  # the failed write left no temp file
