"""Retardation as a second input channel (issue 9, item 5): the retardation normalisation, the file
convention, and bundle/configs/retardation_{train,evaluate,inference}.json end to end on small slices."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor

from helpers import ThresholdNet, make_slice
from plimonai.synthetic.dataset import generate_dataset
from plimonai.transforms.retardation import (AddRetardationPathd, NormalizeRetardation, NormalizeRetardationd,
                                             retardation_path_for)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "bundle/configs"
META = str(CONFIGS / "metadata.json")
RET_NET = {"_target_": "test_retardation.RetardationThresholdNet"}
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")


class RetardationThresholdNet(ThresholdNet):
    """Stand-in network that sees only channel 1 (retardation): tissue logit = k * (retardation - threshold).
    ``(B, 2, H, W) -> (B, 2, H, W)``; an absent or zeroed retardation channel gives an empty mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 2, f"expected 2 input channels, got {x.shape[1]}"
        t = self.k * (x[:, 1:2] - self.threshold) + 0 * self.dummy
        return torch.cat([-t, t], dim=1)


def dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def pair(shape=(150, 200), seed=0, glass=0.01, tissue=0.4):
    """Hand-made slice: float32 NTransmittance (H, W), retardation (H, W) bright on tissue, ground-truth mask."""
    img, mask = make_slice(shape, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed + 100)
    ret = (np.where(mask > 0, tissue, glass) + rng.normal(0, 0.005, shape)).clip(1e-4, 1).astype(np.float32)
    return img, ret, mask


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """Generator slices with retardation, float32 NTransmittance with unscanned borders (3 train, 1 val)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(str(out), n=4, seed=7, n_val=1, shape=(96, 128), preview=False, unscanned_border=True,
                     output_format="ntransmittance", retardation=True)
    return out


# ------------------------------------------------------------------ normalisation


def test_normalisation_unscanned_zero_tissue_brighter(synth, tmp_path):
    """Through the configs' chain (NormalizeRetardationd -> ConcatItemsd -> NormalizeTransmittanced) on generator
    slices: channel 1 is float32 in [0, 1], exactly 0 where the transmittance is unscanned (also where only the
    transmittance says so), and tissue is brighter than glass."""
    cfg = ConfigParser()
    cfg.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "retardation_train.json")])
    chain = cfg.get_parsed_content("load_transforms")
    items = json.loads((synth / "datalist.json").read_text())["training"]
    n_unscanned = 0
    for i, item in enumerate(items):
        data = {k: str(synth / v) for k, v in item.items()}
        trans = tifffile.imread(data["image"])
        unscanned = trans == 0
        band = np.zeros_like(unscanned)
        band[40:50] = tifffile.imread(data["retardation"])[40:50] > 0
        assert band.sum() > 200  # unscanned in the transmittance only: the retardation file has values there
        trans[band] = 0
        data["image"] = str(tmp_path / f"t{i}.tif")
        tifffile.imwrite(data["image"], trans)
        unscanned |= band
        d = data
        for t in chain:
            d = t(d)
        x, label = d["image"], d["label"][0].numpy() > 0
        assert x.shape == (2, *trans.shape) and x.dtype == torch.float32 and "retardation" not in d
        r = x[1].numpy()
        assert r.min() >= 0 and r.max() <= 1
        assert (r[unscanned] == 0).all()
        n_unscanned += int(unscanned.sum())
        tissue, glass = r[label & ~unscanned], r[~label & ~unscanned]
        assert np.median(tissue) > 3 * np.median(glass)
        assert np.percentile(tissue, 25) > np.percentile(glass, 75)
    assert n_unscanned > len(items) * 200


def test_normalisation_value_ranges_and_invalid():
    """uint8 / uint16 / float32 encodings of one retardation image give the same result; NaN, inf and pixels
    outside ``valid`` become 0; a float image holding integer counts is recognised."""
    _, ret, mask = pair()
    ret[5:8, 5:8] = np.nan
    ret[9, 9] = np.inf
    valid = np.ones_like(mask, bool)
    valid[:, :10] = False
    ref = NormalizeRetardation()(MetaTensor(torch.from_numpy(ret[None]), meta={"original_dtype": "float32"}), valid)
    assert ref.dtype == torch.float32 and ref.shape == (1, *ret.shape)
    assert float(ref[0, :, :10].abs().max()) == 0 and float(ref[0, 5:8, 5:8].abs().max()) == 0 and float(ref[0, 9, 9]) == 0
    finite = np.isfinite(ret) & valid
    for dtype, full in (("uint16", 65535), ("uint8", 255)):
        coded = np.round(np.nan_to_num(ret, nan=0, posinf=0) * full)
        for meta in ({"original_dtype": dtype}, {}):  # from the dtype, or guessed from the values
            out = NormalizeRetardation()(MetaTensor(torch.from_numpy(coded[None].astype(np.float32)), meta=meta), valid)
            assert np.abs(out[0].numpy()[finite] - ref[0].numpy()[finite]).max() <= 1.0 / full
            assert out.meta["retardation_full_scale"] == full
    d = NormalizeRetardationd("r", valid_key="v")({"r": torch.from_numpy(ret[None]), "v": torch.from_numpy(valid[None])})
    assert torch.equal(d["r"], ref.as_tensor())


def test_retardation_path_convention(tmp_path):
    img = tmp_path / "brain" / "NTransmittance" / "b_s0001_NTransmittance.h5"
    assert retardation_path_for(img) == tmp_path / "brain" / "retardation" / img.name
    assert retardation_path_for(img, folder="Retardation", name_replace=["NTransmittance", "Retardation"]) == \
        tmp_path / "brain" / "Retardation" / "b_s0001_Retardation.h5"
    assert retardation_path_for(img, retardation_dir=tmp_path / "r") == tmp_path / "r" / img.name
    t = AddRetardationPathd("image")
    with pytest.raises(FileNotFoundError) as e:
        t({"image": str(img)})
    assert str(tmp_path / "brain" / "retardation" / img.name) in str(e.value) and str(img) in str(e.value)
    (tmp_path / "brain" / "retardation").mkdir(parents=True)
    (tmp_path / "brain" / "retardation" / img.name).write_bytes(b"")
    assert t({"image": str(img)})["retardation"] == str(tmp_path / "brain" / "retardation" / img.name)


# ------------------------------------------------------------------ inference


def run_infer(out: Path, images: list[Path], **overrides) -> tuple[list[dict], bool]:
    """inference.json + retardation_inference.json in this process; (summary rows, whether the run raised)."""
    args = dict(network_def=RET_NET, roi_size=[128, 128], num_workers=0, ckpt_path="", min_component_area=50,
                max_hole_area=20, overlay_max_size=256, qc_report=False)
    args.update(overrides)
    lst = out.parent / f"{out.name}_list.txt"
    lst.write_text("\n".join(str(p) for p in images))
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "inference.json"), str(CONFIGS / "retardation_inference.json")],
                        meta_file=META, workflow_type="inference", bundle_root=str(ROOT / "bundle"),
                        output_dir=str(out), slice_list=str(lst), **args)
    wf.initialize()
    failed = False
    try:
        wf.run()
    except RuntimeError:
        failed = True
    wf.finalize()
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f)), failed


def test_inference_masks_and_per_slice_errors(tmp_path):
    """Two good slices (one of an odd size) give masks of the input's shape that follow the retardation (the
    stand-in net sees channel 1 only); a missing retardation file and a retardation image of another size fail
    their slice only, with errors naming the files; the run exits non-zero at the end."""
    images, rets = tmp_path / "images", tmp_path / "retardation"
    images.mkdir()
    rets.mkdir()
    truth = {}
    for name, shape, seed in (("a", (150, 200), 0), ("b", (131, 257), 1), ("missing", (150, 200), 2), ("size", (150, 200), 3)):
        img, ret, mask = pair(shape, seed)
        tifffile.imwrite(images / f"{name}.tif", img)
        if name == "size":
            ret = ret[:, :-7]
        if name != "missing":
            tifffile.imwrite(rets / f"{name}.tif", ret)
        truth[name] = mask
    rows, failed = run_infer(tmp_path / "out", sorted(images.iterdir()))
    assert failed
    by = {r["slice"]: r for r in rows}
    for name in ("a", "b"):
        assert by[name]["status"] == "ok", by[name]["error"]
        m = tifffile.imread(tmp_path / "out" / f"{name}_mask.tif")
        assert m.shape == truth[name].shape
        assert dice(m, truth[name]) > 0.95
        assert (tmp_path / "out" / f"{name}_overlay.png").is_file()
    assert by["missing"]["status"] == "failed"
    assert str(rets / "missing.tif") in by["missing"]["error"] and "retardation file not found" in by["missing"]["error"]
    assert by["size"]["status"] == "failed"
    assert str(images / "size.tif") in by["size"]["error"] and str(rets / "size.tif") in by["size"]["error"]
    assert not (tmp_path / "out" / "missing_mask.tif").exists() and not (tmp_path / "out" / "size_mask.tif").exists()


def test_inference_retardation_dir_and_name_replace(tmp_path):
    """The real pipeline's layout: NTransmittance/x_NTransmittance.tif with Retardation/x_Retardation.tif."""
    (tmp_path / "NTransmittance").mkdir()
    (tmp_path / "Retardation").mkdir()
    img, ret, mask = pair((120, 160), 5)
    tifffile.imwrite(tmp_path / "NTransmittance" / "x_NTransmittance.tif", img)
    tifffile.imwrite(tmp_path / "Retardation" / "x_Retardation.tif", ret)
    rows, failed = run_infer(tmp_path / "out", [tmp_path / "NTransmittance" / "x_NTransmittance.tif"],
                             retardation_dir=str(tmp_path / "Retardation"),
                             retardation_name_replace=["NTransmittance", "Retardation"])
    assert not failed and rows[0]["status"] == "ok"
    assert dice(tifffile.imread(tmp_path / "out" / "x_NTransmittance_mask.tif"), mask) > 0.95


# ------------------------------------------------------------------ training and evaluation


def test_train_two_channels_end_to_end(synth, tmp_path):
    """The merged training config runs a few iterations on generator slices with retardation and saves a
    2-channel network; evaluate.json + retardation_evaluate.json scores that checkpoint on the same data."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           f"['{CONFIGS / 'train.json'}','{CONFIGS / 'retardation_train.json'}']", "--meta_file", META,
           "--bundle_root", str(ROOT / "bundle"), "--dataset_dir", str(synth), "--ckpt_dir", str(out / "models"),
           "--output_dir", str(out / "eval"), "--epochs", "2", "--val_interval", "1", "--patch_size", "[64,64]",
           "--val_roi_size", "[64,64]", "--num_samples", "2", "--batch_size", "4", "--network_def#channels", "[4,8]",
           "--num_workers", "0", "--cache_workers", "0", "--save_interval", "1", "--resume", "False"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "Epoch: 2/2, Iter: 2/2" in log  # 3 training slices, 2 per iteration: 2 iterations an epoch
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert state["encoders.0.conv.0.weight"].shape[1] == 2
    # evaluation of the 2-channel checkpoint with the merged evaluation config
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "evaluate.json"), str(CONFIGS / "retardation_evaluate.json")],
                        meta_file=META, workflow_type="eval", bundle_root=str(ROOT / "bundle"), logging_file=False,
                        dataset_dir=str(synth), output_dir=str(out / "evaluate"), ckpt_path=str(out / "models" / "model.pt"),
                        network_def={"_target_": "plimonai.networks.PLIUNet", "in_channels": "@in_channels",
                                     "out_channels": 2, "channels": [4, 8]},
                        network_backend="eager", roi_size=[64, 64], num_workers=0, min_component_area=20, max_hole_area=10)
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(out / "evaluate" / "per_slice.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["slice"] for r in rows] == ["lap_00010"] and 0 <= float(rows[0]["dice"]) <= 1


def test_evaluate_config_uses_retardation(synth, tmp_path):
    """evaluate.json + retardation_evaluate.json with the channel-1 stand-in net: the retardation reaches the
    network (high Dice against the generator's ground truth)."""
    wf = ConfigWorkflow(config_file=[str(CONFIGS / "evaluate.json"), str(CONFIGS / "retardation_evaluate.json")],
                        meta_file=META, workflow_type="eval", bundle_root=str(ROOT / "bundle"), logging_file=False,
                        dataset_dir=str(synth), data_list_key="training", output_dir=str(tmp_path / "ev"),
                        ckpt_path="", network_def=dict(RET_NET, threshold=0.04), network_backend="eager",
                        roi_size=[64, 64], num_workers=0, min_component_area=20, max_hole_area=10)
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(tmp_path / "ev" / "per_slice.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert np.mean([float(r["dice"]) for r in rows]) > 0.8


def test_training_datalist_without_retardation_is_named(tmp_path):
    """A transmittance-only datalist under the retardation config fails before training, naming the key."""
    d = tmp_path / "d"
    d.mkdir()
    img, _, mask = pair((64, 64))
    tifffile.imwrite(d / "i.tif", img)
    tifffile.imwrite(d / "l.tif", mask)
    (d / "datalist.json").write_text(json.dumps({"training": [{"image": "i.tif", "label": "l.tif"}], "validation": []}))
    cfg = ConfigParser()
    cfg.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "retardation_train.json")])
    cfg.update({"dataset_dir": str(d)})
    with pytest.raises(Exception) as e:
        cfg.get_parsed_content("train#dataset#data")
    chain, err = [], e.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    assert any("has no 'retardation'" in m for m in chain), chain


def test_finetune_merges_over_retardation_config():
    """train + retardation + finetune (in that order): 2 channels, partial labels (255 kept) and the
    retardation loading both hold."""
    cfg = ConfigParser()
    cfg.read_config([str(CONFIGS / n) for n in ("train.json", "retardation_train.json", "finetune.json")])
    chain = cfg.get_parsed_content("load_transforms")
    names = [type(t).__name__ for t in chain]
    assert names[0] == "LoadSliced" and "retardation" in chain[0].keys and "ConcatItemsd" in names
    assert names[2] == "BinarizeLabeld" and chain[2].t.ignore_value == 255
    assert cfg.get_parsed_content("network_def").encoders[0].conv[0].in_channels == 2
