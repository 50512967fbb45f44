"""Stack quality control (issue 12): section numbers, flag rules, confidence, the report of a
(partial) run, ``plimonai report OUT``, the synthetic stack and the report in a real browser."""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from helpers import ThresholdNet, disk
from plimonai.qc import SliceConfidenced, aligned_iou, flag_stack, order_records, section_number, slice_confidence

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# section numbers and order
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, number", [
    ("PE-2021-00981-H_00_s0920_PM_Complete_Transmittance_Stitched", 920),
    ("brain_s0123_lap", 123), ("brain_s12", 12), ("s0007", 7), ("x_S0042.tif", 42), ("a-s3-b", 3),
    ("slice12", None), ("brain_s12a", None), ("sample_s_12", None), ("lap_00012", None), ("", None),
])
def test_section_number(name, number):
    assert section_number(name) == number


def test_order_by_section_number_else_list_order():
    recs = order_records([{"slice": n} for n in ("b_s0010", "b_s0002", "b_s0100", "b_s0003")])
    assert [r["slice"] for r in recs] == ["b_s0002", "b_s0003", "b_s0010", "b_s0100"]
    assert [r["section"] for r in recs] == [2, 3, 10, 100] and [r["position"] for r in recs] == [0, 1, 2, 3]
    mixed = order_records([{"slice": n} for n in ("b_s0010", "other", "b_s0002")])  # one without a number
    assert [r["slice"] for r in mixed] == ["b_s0010", "other", "b_s0002"]
    assert [r["section"] for r in mixed] == [10, None, 2]


# ------------------------------------------------------------------------------------------------
# flag rules on a crafted stack
# ------------------------------------------------------------------------------------------------
FAULTS = {4: "area", 8: "pieces", 10: "torn", 12: "shape", 16: "confidence", 20: "confidence", 24: "empty",
          27: "failed", 30: "tta", 32: "exposure"}
RULE = {"torn": "pieces"}


def crafted_stack(n: int = 33, skip: int = 18):
    """Records (shuffled, section ``skip`` missing) and 48 x 64 thumbnails (a tissue disk and a small
    satellite piece), one fault per rule in FAULTS."""
    rng = np.random.default_rng(0)
    recs, thumbs = [], {}
    for i in range(n):
        if i == skip:
            continue
        name = f"brain_s{i:04d}_lap"
        r = {"slice": name, "status": "ok", "tissue_area_px": 10000 + 50 * i, "components": 2,
             "confidence": 0.9 + 0.01 * rng.uniform(), "tta_dice": 0.99, "glass_level": 50000 + 300 * rng.uniform(),
             "error": ""}
        satellite = disk((48, 64), 6, 58, 4)
        thumb = disk((48, 64), 24 + 0.1 * i, 32 + 0.2 * i, 14 + 0.05 * i) | satellite
        kind = FAULTS.get(i)
        if kind == "area":
            r["tissue_area_px"] = int(0.6 * r["tissue_area_px"])
        elif kind == "pieces":  # two more pieces, each > 1 % of the tissue
            r["components"] = 4
            thumb = thumb | disk((48, 64), 42, 5, 3) | disk((48, 64), 42, 58, 3)
        elif kind == "torn":  # the main piece cut in two halves, the satellite lost: still two pieces
            thumb = thumb & ~satellite
            thumb[:, 34] = False
        elif kind == "shape":  # same area, another shape
            yy, xx = np.ogrid[:48, :64]
            thumb = (((yy - 24) / 8.0) ** 2 + ((xx - 32) / 24.0) ** 2 <= 1) | satellite
        elif kind == "confidence":
            r["confidence"] = 0.2 if i == 16 else 0.6  # below the minimum / a drop against the neighbours
        elif kind == "empty":
            r.update(tissue_area_px=0, components=0, confidence=1.0)
            thumb = np.zeros((48, 64), bool)
        elif kind == "failed":
            r.update(status="failed", tissue_area_px="", components="", confidence="", tta_dice="",
                     error="SliceFormatError: unreadable TIFF")
            thumb = None
        elif kind == "tta":
            r["tta_dice"] = 0.8
        elif kind == "exposure":
            r["glass_level"] = 2000.0
        recs.append({k: str(v) for k, v in r.items()})  # as read from summary.csv
        if thumb is not None:
            thumbs[name] = thumb
    order = rng.permutation(len(recs))
    return [recs[k] for k in order], thumbs


def test_each_flag_rule_on_a_crafted_stack():
    recs, thumbs = crafted_stack()
    out = flag_stack(recs, thumbs)
    assert [r["section"] for r in out] == sorted(r["section"] for r in out)  # stack order despite the shuffle
    flags = {r["section"]: r["flags"] for r in out}
    expected = {s: [RULE.get(rule, rule)] for s, rule in FAULTS.items()}
    assert {s: f for s, f in flags.items() if f} == expected
    by = {r["section"]: r for r in out}
    assert "-40%" in by[4]["reasons"][0] and "4 piece(s), neighbours have 2" in by[8]["reasons"][0]
    assert "largest piece holds 5" in by[10]["reasons"][0] and by[10]["pieces"] == 2  # torn: same count
    assert "under-exposed" in by[32]["reasons"][0]
    assert by[12]["shape_iou"] < 0.85 < min(r["shape_iou"] for r in out if r["section"] in (10, 11, 13, 14))
    assert "below 0.30" in by[16]["reasons"][0] and "neighbours' median 0.9" in by[20]["reasons"][0]
    assert "blank" in by[24]["reasons"][0] and "unreadable TIFF" in by[27]["reasons"][0]
    assert "0.800" in by[30]["reasons"][0]
    assert by[23]["pieces_range"] == (2, 2)  # the blank slide is no neighbour of the others
    # thresholds come from the config: looser ones flag less
    loose = flag_stack(recs, thumbs, {"area_tolerance": 0.5, "shape_iou_min": 0.3, "tta_dice_min": 0.5,
                                      "largest_piece_drop": 0.6, "exposure_tolerance": 0.99})
    assert {r["section"] for r in loose if r["flags"]} == {8, 16, 20, 24, 27}
    # without thumbnails: pieces from the `components` column, no shape rule
    bare = flag_stack(recs)
    assert {r["section"] for r in bare if r["flags"]} == set(FAULTS) - {10, 12}
    with pytest.raises(KeyError, match="unknown qc setting"):
        flag_stack(recs, thumbs, {"area_tol": 0.5})


def test_no_neighbours_no_rule():
    out = flag_stack([{"slice": "a_s1", "status": "ok", "tissue_area_px": "5", "components": "1"}])
    assert out[0]["flags"] == [] and out[0]["area_ref"] is None


def test_aligned_iou():
    a = disk((40, 50), 15, 15, 8)
    assert aligned_iou(a, disk((40, 50), 25, 35, 8)) == pytest.approx(1.0)  # shifted: same shape
    assert aligned_iou(a, disk((60, 70), 40, 50, 8)) == pytest.approx(1.0)  # another canvas size
    assert aligned_iou(a, disk((40, 50), 15, 15, 5)) < 0.5
    b = a.copy()
    b[:3, :3] = True  # a speck far away moves the centroid; the cross-correlation alignment does not care
    assert aligned_iou(a, np.roll(b, (5, 7), axis=(0, 1))) > 0.95
    assert aligned_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0 and aligned_iou(a, np.zeros_like(a)) == 0.0


# ------------------------------------------------------------------------------------------------
# confidence
# ------------------------------------------------------------------------------------------------
def _logits(d: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(d, dtype=torch.float32)
    return torch.stack([-t / 2, t / 2])


def test_confidence_from_logits():
    yy, xx = np.mgrid[:120, :160]
    sdist = 40 - np.hypot(yy - 60, xx - 80)  # signed distance to a disk border, > 0 inside
    crisp = slice_confidence(_logits(2.0 * sdist))
    assert crisp["confidence"] > 0.8  # only the ~2 px transition of the border is uncertain
    rng = np.random.default_rng(0)
    vague = slice_confidence(_logits(0.3 * np.sign(sdist) + rng.normal(0, 0.7, sdist.shape)))
    assert vague["confidence"] < 0.2
    assert slice_confidence(_logits(np.full((50, 60), -10.0)))["confidence"] == 1.0  # confident glass
    # the uncertain half outside the valid (scanned) area does not count
    half = np.where(xx < 80, 2.0 * sdist, 0.0)
    assert slice_confidence(_logits(half))["confidence"] < 0.5
    assert slice_confidence(_logits(half), valid=(xx < 80))["confidence"] > 0.8
    # large slices are evaluated on a grid of every k-th pixel: same figure
    big = np.kron(2.0 * sdist, np.ones((3, 3)))
    assert slice_confidence(_logits(big), band_px=24, max_side=200)["confidence"] == pytest.approx(
        slice_confidence(_logits(big), band_px=24, max_side=0)["confidence"], abs=0.05)


def test_confidence_leaves_out_removed_edge_bands():
    """A vague band along the bottom side, which the side-band rule removes from the mask, does not count."""
    yy, xx = np.mgrid[:300, :400]
    d = 2.0 * (40 - np.hypot(yy - 100, xx - 200))  # a crisp section
    band = yy >= 280  # a band beyond a cover-slip edge: tissue logit, but vague
    d = np.where(band, 0.5 + 0.4 * np.sin(xx / 3.0), d)
    with_band = slice_confidence(_logits(d))["confidence"]
    without = slice_confidence(_logits(d), edge_band_depth=0.15)["confidence"]
    assert with_band < 0.6 < 0.8 < without
    assert without == pytest.approx(slice_confidence(_logits(np.where(band, -10.0, d)))["confidence"], abs=0.05)
    # a band just below the tissue threshold (uncertain, not tissue) is left out too
    weak = np.where(band, -0.5 + 0.4 * np.sin(xx / 3.0), d)
    assert slice_confidence(_logits(weak))["confidence"] < 0.6 < 0.8 < slice_confidence(
        _logits(weak), edge_band_depth=0.15)["confidence"]


def test_confidence_transform_and_tta_agreement():
    from plimonai.inferers import PLISlidingWindowInferer

    img = torch.zeros(1, 1, 64, 96)
    img[..., 16:48, 10:50] = 0.6
    inf = PLISlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2, overlap=0.25, tta=True)
    with torch.no_grad():
        logits = inf(img, ThresholdNet())  # pixel-wise network: flips change nothing
    assert inf.last_tta_dice == pytest.approx(1.0)
    d = SliceConfidenced(keys="pred", inferer=inf)({"pred": logits[0], "valid": torch.ones(1, 64, 96)})
    assert d["confidence"] > 0.8 and d["tta_dice"] == pytest.approx(1.0) and d["pred"] is not None

    class LeftNet(torch.nn.Module):  # tissue = the left half of each window: flipping moves it
        def forward(self, x):
            t = torch.zeros_like(x[:, :1])
            t[..., : x.shape[-1] // 2] = 5.0
            return torch.cat([-t, t], 1)

    with torch.no_grad():
        inf(img, LeftNet())
    assert inf.last_tta_dice < 0.75
    off = PLISlidingWindowInferer(roi_size=(32, 32), sw_batch_size=2, tta=False)
    with torch.no_grad():
        off(img, ThresholdNet())
    assert off.last_tta_dice is None
    assert "tta_dice" not in SliceConfidenced(keys="pred", inferer=off)({"pred": logits[0]})


# ------------------------------------------------------------------------------------------------
# a real run (ThresholdNet) on a crafted stack, the partial-run report and the CLI
# ------------------------------------------------------------------------------------------------
def stack_slice(i: int, shape=(96, 128), blank=False, one_piece=False):
    """Two tissue pieces growing slowly with ``i`` (transmittance 0.45 on glass 0.9)."""
    rng = np.random.default_rng(i)
    h, w = shape
    mask = np.zeros(shape, bool) if blank else disk(shape, h * 0.5, w * 0.3, 22 + 0.3 * i)
    if not (blank or one_piece):
        mask |= disk(shape, h * 0.5, w * 0.75, 14 + 0.2 * i)
    t = np.where(mask, 0.45, 0.9) + rng.normal(0, 0.01, shape)
    return (np.clip(t, 0, 1) * 60000).astype(np.uint16)


@pytest.fixture(scope="module")
def qc_run(tmp_path_factory):
    """Inference of brain_s0001..s0011 (s0005 missing, s0004 blank, s0007 one piece short, s0008 broken)."""
    from monai.bundle import ConfigWorkflow

    d = tmp_path_factory.mktemp("qc_run")
    src, out = d / "in", d / "out"
    src.mkdir()
    for i in range(1, 12):
        if i == 5:
            continue
        p = src / f"brain_s{i:04d}.tif"
        if i == 8:
            p.write_bytes(b"\x00" * 64)
        else:
            tifffile.imwrite(p, stack_slice(i, blank=i == 4, one_piece=i == 7))
    wf = ConfigWorkflow(
        config_file=str(ROOT / "bundle/configs/inference.json"), meta_file=str(ROOT / "bundle/configs/metadata.json"),
        workflow_type="inference", run_id="inference", bundle_root=str(ROOT / "bundle"), output_dir=str(out),
        dataset_dir=str(src), network_def={"_target_": "helpers.ThresholdNet"}, roi_size=[128, 128], num_workers=0,
        ckpt_path="", min_component_area=30, max_hole_area=10,
    )
    wf.initialize()
    with pytest.raises(RuntimeError):  # the broken slice fails the run, after the report
        wf.run()
    wf.finalize()
    return out


def _qc_rows(out: Path) -> dict[str, dict]:
    with open(out / "qc" / "qc.csv", newline="") as f:
        return {r["slice"]: r for r in csv.DictReader(f)}


def _embedded_images(html: str) -> list[Image.Image]:
    imgs = []
    for m in re.finditer(r'src="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"', html):
        im = Image.open(io.BytesIO(base64.b64decode(m.group(2))))
        im.load()
        imgs.append(im)
    return imgs


def test_report_written_by_the_run(qc_run):
    out = qc_run
    with open(out / "summary.csv", newline="") as f:
        rows = {r["slice"]: r for r in csv.DictReader(f)}
    assert float(rows["brain_s0001"]["confidence"]) > 0.8 and rows["brain_s0001"]["tta_dice"] == ""
    qc = _qc_rows(out)
    flagged = {n: r["flags"] for n, r in qc.items() if r["flags"]}
    assert flagged.keys() == {"brain_s0004", "brain_s0007", "brain_s0008"}
    assert flagged["brain_s0004"] == "empty" and flagged["brain_s0008"] == "failed"
    assert "pieces" in flagged["brain_s0007"].split(";")
    html = (out / "report.html").read_text()
    assert "missing section numbers" in html and "1: 5" in html
    assert "unreadable TIFF" in html and "brain_s0007_overlay.png" in html  # reason and link to the full overlay
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    imgs = _embedded_images(html)
    assert len(imgs) >= 10 and all(im.width > 0 for im in imgs)  # plots + thumbnails decode
    assert (out / "qc" / "thumbs" / "brain_s0001.png").is_file() and (out / "qc" / "run.json").is_file()


def test_report_for_a_partial_run_and_cli(qc_run, tmp_path):
    """A run killed before its end: no summary.csv, one mask without thumbnail; `plimonai report OUT`."""
    out = tmp_path / "out"
    shutil.copytree(qc_run, out)
    for p in (out / "summary.csv", out / "report.html", out / "qc" / "run.json", out / "qc" / "thumbs" / "brain_s0007.png"):
        p.unlink()
    (out / "brain_s0011_mask.tif").unlink()  # never written: the run stopped before it
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "plimonai.cli", "report", str(out)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "report.html: 8 slices, 2 flagged" in r.stdout and "brain_s0007" in r.stdout
    qc = _qc_rows(out)
    assert {n for n, q in qc.items() if q["flags"]} == {"brain_s0004", "brain_s0007"}
    assert qc["brain_s0010"]["tissue_area_px"] != ""  # counted from the mask file
    html = (out / "report.html").read_text()
    assert "masks without a summary row" in html and "not recorded" in html
    assert (out / "qc" / "thumbs" / "brain_s0007.png").is_file()  # remade from the mask file
    # thresholds on the command line
    r = subprocess.run([sys.executable, "-m", "plimonai.cli", "report", str(out), "--pieces_slack", "5",
                        "--shape_iou_min", "0", "--area_tolerance", "5"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "1 flagged" in r.stdout, r.stdout + r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# the synthetic stack
# ------------------------------------------------------------------------------------------------
def test_synthetic_stack_faults(tmp_path):
    from plimonai.qc.stack import piece_stats
    from plimonai.synthetic.stack import write_stack

    faults = {1: "tear", 3: "missing_piece", 5: "blank", 7: "overexposed", 9: "underexposed"}
    res = write_stack(tmp_path, n=11, shape=(208, 278), seed=0, faults=faults)
    assert res["faults"] == {f"synbrain_s{k + 1:04d}_lap": f for k, f in faults.items()}
    assert (tmp_path / "slices.txt").read_text().splitlines()[0] == "images/synbrain_s0001_lap.tif"
    labels = [tifffile.imread(tmp_path / "labels" / f"{n}.tif") for n in res["names"]]
    images = [tifffile.imread(tmp_path / "images" / f"{n}.tif") for n in res["names"]]
    area = [int(m.sum()) for m in labels]
    pieces = [piece_stats(m)[0] for m in labels]  # pieces of at least 1 % of the tissue
    clean = [k for k in range(11) if k not in faults or faults[k].endswith("exposed")]
    steps = [abs(area[b] / area[a] - 1) for a, b in zip(clean, clean[1:])]
    assert max(steps) < 0.06  # consecutive sections: slowly changing tissue
    assert area[5] == 0  # blank slide
    assert pieces[3] < min(pieces[2], pieces[4]) and area[3] < min(area[2], area[4])  # a piece is missing
    assert pieces[1] > max(pieces[0], pieces[2])  # the tear splits the main piece
    glass = [float(np.median(im[lab == 0])) for im, lab in zip(images, labels)]
    assert glass[7] == 65535 and glass[9] < 0.1 * glass[8]  # over- / under-exposed scans


# ------------------------------------------------------------------------------------------------
# the report in a real browser
# ------------------------------------------------------------------------------------------------
def test_report_in_headless_chromium(qc_run, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (scripts/install.sh installs Debian's `chromium` where apt-get "
                    "and root are available): the browser check of report.html did not run")
    url = (qc_run / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    base = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1600"]
    r = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console  # no console message at all (the report has no script)
    dom = r.stdout
    assert "Flagged slices (3)" in dom
    for name in ("brain_s0004", "brain_s0007", "brain_s0008"):
        assert f'id="slice-{name}"' in dom
    r = subprocess.run(base + [f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("L"))
    assert px.shape == (1600, 1280) and px.std() > 10  # rendered, not blank
