"""Boundary F1, the Otsu baseline and the `run evaluating` workflow (in-process and as a command)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from helpers import ThresholdNet, disk, make_slice
from plimonai.handlers import BoundaryF1
from plimonai.metrics import BoundaryF1Metric, boundary_f1
from plimonai.transforms.baseline import OtsuMask, OtsuMaskd

ROOT = Path(__file__).resolve().parent.parent
EVAL = str(ROOT / "bundle/configs/evaluate.json")
INFER = str(ROOT / "bundle/configs/inference.json")
META = str(ROOT / "bundle/configs/metadata.json")
THRESH_NET = {"_target_": "helpers.ThresholdNet"}
MEASURES = ["dice", "hd95", "bf1"]
COLUMNS = ["slice"] + MEASURES + [f"{m}_{x}" for m in ("otsu", "otsu_post") for x in MEASURES] + ["image"]


# ---------------------------------------------------------------- boundary F1

GT = disk((80, 80), 40, 40, 20)


def test_boundary_f1_identical_and_shifted():
    assert boundary_f1(GT, GT) == 1.0
    one = np.roll(GT, 1, axis=1)
    assert boundary_f1(one, GT, tolerance=2.0) == 1.0
    assert boundary_f1(one, GT, tolerance=0.5) < 0.6  # only the pixels the shift leaves in place match
    five = np.roll(GT, 5, axis=0)
    assert boundary_f1(five, GT, tolerance=2.0) < 0.6
    assert boundary_f1(five, GT, tolerance=5.0) == 1.0
    # symmetric, and dtype/value agnostic (values > 0 are foreground)
    assert boundary_f1(GT, five) == pytest.approx(boundary_f1(five, GT))
    assert boundary_f1(GT.astype(np.uint8) * 255, GT.astype(np.float32)) == 1.0


def test_boundary_f1_empty_and_partial():
    empty = np.zeros_like(GT)
    assert boundary_f1(empty, empty) == 1.0
    assert boundary_f1(GT, empty) == 0.0 and boundary_f1(empty, GT) == 0.0
    # an extra speck far away: recall stays 1, precision drops by its boundary share
    speck = GT | disk(GT.shape, 5, 5, 2)
    score = boundary_f1(speck, GT)
    assert 0.85 < score < 1.0
    with pytest.raises(ValueError):
        boundary_f1(GT, GT[:-1])


def test_boundary_f1_metric_and_handler_shapes():
    gt = torch.from_numpy(np.stack([~GT, GT])[None].astype(np.float32))  # (1, 2, H, W) one-hot
    pred = torch.from_numpy(np.stack([~GT, np.roll(GT, 5, 0)])[None].astype(np.float32))
    metric = BoundaryF1Metric()
    per_image = metric(torch.cat([gt, pred]), torch.cat([gt, gt]))  # background channel dropped
    assert per_image.shape == (2, 1) and per_image[0, 0] == 1.0 and per_image[1, 0] < 0.6
    assert metric.aggregate().item() == pytest.approx(float(per_image.mean()))
    assert BoundaryF1Metric(include_background=True)(gt, gt).shape == (1, 2)
    handler = BoundaryF1(tolerance=5.0)
    assert handler.metric_fn.tolerance == 5.0 and handler.save_details


# ---------------------------------------------------------------- Otsu baseline

def test_otsu_mask_on_crafted_slice():
    att = np.zeros((1, 40, 50), np.float32)
    att[0, 10:30, 10:30] = 0.6  # tissue
    att[0, 5:8, 40:43] = 0.05  # faint dust, below the threshold
    valid = np.ones((1, 40, 50), np.uint8)
    valid[0, :, 45:] = 0
    att[0, 20:25, 46:49] = 0.9  # bright but unscanned: never tissue
    out = OtsuMaskd("image", valid_key="valid")({"image": torch.from_numpy(att), "valid": torch.from_numpy(valid)})
    m = out["otsu"]
    assert isinstance(m, torch.Tensor) and m.shape == (1, 40, 50) and m.dtype == torch.uint8
    expect = np.zeros((40, 50), bool)
    expect[10:30, 10:30] = True
    np.testing.assert_array_equal(m[0].numpy() > 0, expect)
    # numpy in, numpy out; no valid key in the data -> every finite pixel counts
    att_nan = att.copy()
    att_nan[0, 0, 0] = np.nan
    m2 = OtsuMaskd("image", mask_key="b")({"image": att_nan})["b"]
    assert isinstance(m2, np.ndarray) and m2[0, 0, 0] == 0 and m2[0, 20:25, 46:49].all()
    # no contrast -> all background
    assert OtsuMask()(np.full((1, 8, 8), 0.3, np.float32)).sum() == 0
    assert OtsuMask()(np.zeros((1, 8, 8), np.float32), valid_mask=np.zeros((8, 8))).sum() == 0


# ---------------------------------------------------------------- workflow

@pytest.fixture()
def dataset(tmp_path):
    d = tmp_path / "data"
    (d / "img").mkdir(parents=True)
    entries = []
    for i, shape in enumerate([(300, 420), (150, 200), (257, 333)]):
        img, mask = make_slice(shape, seed=i)
        tifffile.imwrite(d / "img" / f"s{i}.tif", img)
        tifffile.imwrite(d / "img" / f"s{i}_label.tif", mask * (255 if i == 1 else 1))  # {0,1} and {0,255}
        entries.append({"image": f"img/s{i}.tif", "label": f"img/s{i}_label.tif"})
    datalist = {"training": entries[:1], "validation": entries, "test": entries[1:2]}
    (d / "datalist.json").write_text(json.dumps(datalist))
    return d


def run_evaluate(data: Path, out: Path, **overrides) -> ConfigWorkflow:
    kw = dict(dataset_dir=str(data), num_workers=0, network_def=THRESH_NET, roi_size=[128, 128], ckpt_path="",
              min_component_area=200, max_hole_area=100)
    kw.update(overrides)
    wf = ConfigWorkflow(config_file=EVAL, meta_file=META, run_id="evaluating",
                        bundle_root=str(ROOT / "bundle"), output_dir=str(out), **kw)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def error_chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes (the bundle parser wraps errors in ``RuntimeError``)."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def test_evaluate_end_to_end(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    run_evaluate(dataset, out)
    fields, rows = read_rows(out / "per_slice.csv")
    assert fields == COLUMNS
    assert [r["slice"] for r in rows] == ["s0", "s1", "s2"]
    assert all(r["image"].endswith(f"{r['slice']}.tif") for r in rows)
    for r in rows:
        assert float(r["dice"]) > 0.95 and float(r["bf1"]) > 0.95 and float(r["hd95"]) < 2.0
    # the raw Otsu threshold also takes the dust specks: the figures differ from the network's
    assert any(float(r["otsu_dice"]) < float(r["dice"]) for r in rows)
    assert any(float(r["otsu_bf1"]) < float(r["bf1"]) for r in rows)
    assert np.mean([float(r["otsu_bf1"]) for r in rows]) < np.mean([float(r["otsu_post_bf1"]) for r in rows])
    # MONAI's MetricsSaver files are there too, with the image paths
    _, raw = read_rows(out / "val_dice_raw.csv")
    assert [Path(r["filename"]).name for r in raw] == ["s0.tif", "s1.tif", "s2.tif"]
    assert (out / "otsu_post_hd95_summary.csv").is_file() and (out / "metrics.csv").is_file()
    md = (out / "summary.md").read_text()
    assert "3 slices" in md and "| metric | model | otsu | otsu_post |" in md
    assert [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ") and "±" in ln] == MEASURES
    assert "| dice | 1.0000 ± 0.0000 |" in md
    assert "| metric | model | otsu | otsu_post |" in capsys.readouterr().out  # printed too


def test_checkpoint_loading_and_missing_checkpoint(dataset, tmp_path):
    net = ThresholdNet()
    with torch.no_grad():
        net.dummy.fill_(7.0)  # the output does not depend on it; only the loading is checked
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    wf = run_evaluate(dataset, tmp_path / "out", ckpt_path=str(ckpt), data_list_key="test")
    net = wf.parser.get_parsed_content("network")
    assert getattr(net, "module", net).dummy.item() == 7.0  # "auto" may wrap it (ONNX Runtime)
    _, rows = read_rows(tmp_path / "out" / "per_slice.csv")
    assert [r["slice"] for r in rows] == ["s1"]
    # a checkpoint that is asked for but missing fails (no silent evaluation of untrained weights)
    with pytest.raises(Exception) as e:
        run_evaluate(dataset, tmp_path / "out2", ckpt_path=str(tmp_path / "nope.pt"), data_list_key="test")
    assert any(isinstance(x, FileNotFoundError) and "nope.pt" in str(x) for x in error_chain(e.value))


def test_label_size_mismatch_names_files(dataset, tmp_path):
    tifffile.imwrite(dataset / "img" / "s1_label.tif", np.zeros((10, 10), np.uint8))
    with pytest.raises(Exception) as e:
        run_evaluate(dataset, tmp_path / "out", data_list_key="test")
    msgs = [str(x) for x in error_chain(e.value) if isinstance(x, ValueError)]
    assert any("size mismatch" in m and "s1.tif" in m and "s1_label.tif" in m for m in msgs)


def test_same_network_inference_and_postprocessing_as_inference_json():
    """Evaluated figures must be those of `run inference`: the shared settings may not drift apart."""
    ev, inf = ConfigParser.load_config_file(EVAL), ConfigParser.load_config_file(INFER)
    for key in ("network_def", "in_channels", "roi_size", "sw_batch_size", "overlap", "blend_mode", "inferer",
                "min_component_area", "max_hole_area", "device"):
        assert ev[key] == inf[key], key
    def core(cfg):  # logits->mask and the area rules (inference's QC and grid-restoring steps aside)
        return [t for t in cfg["postprocessing"]["transforms"] if t["_target_"].startswith("plimonai.transforms.post.")]

    assert core(ev)[:2] == core(inf)[:2] and len(core(inf)) >= 2
    norm = [t for t in inf["preprocessing"]["transforms"] if "Normalize" in t["_target_"]]
    assert norm and norm[0] in ev["preprocessing"]["transforms"]


def test_command_line(dataset, tmp_path):
    """The documented command, as a subprocess, with an explicit datalist and key."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", EVAL, "--meta_file", META,
           "--bundle_root", str(ROOT / "bundle"), "--dataset_dir", str(dataset),
           "--datalist", str(dataset / "datalist.json"), "--data_list_key", "training", "--output_dir", str(out),
           "--network_def", "%s" % THRESH_NET, "--roi_size", "[128,128]", "--ckpt_path", "",
           "--min_component_area", "200", "--max_hole_area", "100", "--num_workers", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| metric | model | otsu | otsu_post |" in r.stdout
    _, rows = read_rows(out / "per_slice.csv")
    assert [r["slice"] for r in rows] == ["s0"]


def test_write_comparison_nan_counts_and_stale_files(tmp_path, capsys):
    from plimonai.evaluation import write_comparison

    def raw(name, rows):
        (tmp_path / f"{name}_raw.csv").write_text(
            "filename,class0,mean\n" + "".join(f"/d/{f}.tif,{v},{v}\n" for f, v in rows))

    raw("val_dice", [("a", 1.0), ("b", "nan")])
    raw("otsu_dice", [("a", 0.5), ("b", "nan")])
    raw("val_hd95", [("a", 2.0), ("b", 4.0)])
    table = write_comparison(tmp_path, print_table=False)
    assert capsys.readouterr().out == ""
    assert "| dice | 1.0000 ± 0.0000 (n=1) | 0.5000 ± 0.0000 (n=1) |" in table
    assert "| hd95 | 3.0000 ± 1.0000 |  |" in table and "bf1" not in table
    fields, rows = read_rows(tmp_path / "per_slice.csv")
    assert fields == ["slice", "dice", "hd95", "otsu_dice", "image"]
    assert rows[1] == {"slice": "b", "dice": "nan", "hd95": "4.0000", "otsu_dice": "nan", "image": "/d/b.tif"}
    raw("otsu_dice", [("a", 0.5)])  # a stale file of another run
    with pytest.raises(ValueError, match="other slices"):
        write_comparison(tmp_path)
    with pytest.raises(ValueError, match="no slice was evaluated"):
        write_comparison(tmp_path, [])
