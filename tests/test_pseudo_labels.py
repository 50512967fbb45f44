"""PM pseudo-labels (plimonai.pseudo_labels, `plimonai pseudo_labels`, finetune_pm.json): the LAP-scale
model on a pyramid level, 0/1/255 labels with an unlabelled band around the border, crops + datalist
that finetune.json loads, and a tiny fine-tune -> refine chain. Small: a 3000 x 3000 PM slice with
one 2x pyramid level, ThresholdNet or a 2-level PLIUNet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, create_workflow
from monai.transforms import Compose

from helpers import THRESH_NET, disk
from plimonai.data import load_datalist
from plimonai.pseudo_labels import choose_level, coarse_pseudo_label, pm_pseudo_labels, select_crops, upsample_window
from plimonai.synthetic import write_pm_slice

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [str(ROOT / "bundle" / "configs" / f) for f in ("train.json", "finetune.json", "finetune_pm.json")]
META = str(ROOT / "bundle" / "configs" / "metadata.json")
PM_SHAPE = (3000, 3000)
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")


@pytest.fixture(scope="module")
def pm(tmp_path_factory):
    d = tmp_path_factory.mktemp("pm")
    res = write_pm_slice(d / "pm_0003.tif", d / "pm_0003_mask.tif", shape=PM_SHAPE, seed=3, tile=512)
    assert len(res["levels"]) == 2  # full resolution + one 2x level
    return d


@pytest.fixture(scope="module")
def pseudo(pm, tmp_path_factory):
    out = tmp_path_factory.mktemp("pseudo")
    res = pm_pseudo_labels([pm / "pm_0003.tif"], out, overrides={"network_def": THRESH_NET, "roi_size": [256, 256]},
                           crop=512, max_crops=10, n_val=2, device="cpu")
    return out, res


def _neighbour_pairs(lab: np.ndarray) -> int:
    """Number of 4-neighbour pixel pairs labelled 0 and 1 (no unlabelled pixel between them)."""
    a = lab.astype(np.int16)
    h = ((a[:, 1:] + a[:, :-1]) == 1) & (a[:, 1:] != 255) & (a[:, :-1] != 255)
    v = ((a[1:] + a[:-1]) == 1) & (a[1:] != 255) & (a[:-1] != 255)
    return int(h.sum() + v.sum())


# ------------------------------------------------------------------ pieces
def test_choose_level():
    pm20k = [(20000, 20000), (10000, 10000), (5000, 5000), (2500, 2500), (1250, 1250)]
    assert choose_level(pm20k) == 3 and choose_level(pm20k, 1000) == 4 and choose_level(pm20k, 20000) == 0
    assert choose_level([(3000, 3000), (1500, 1500)]) == 1
    assert choose_level([(2080, 2776)]) == 0


def test_coarse_pseudo_label_band_margin_and_area_rules():
    shape = (120, 160)
    tissue = disk(shape, 60, 60, 35)
    speck = disk(shape, 20, 140, 3)  # confident but below the area rule: uncertain, not tissue
    margin = np.where(tissue | speck, 8.0, -8.0).astype(np.float32)
    margin[90:110, 120:150] = 0.5  # a low-margin patch on the glass
    logits = np.stack([-margin / 2, margin / 2])
    valid = np.ones(shape, bool)
    valid[:, :5] = False  # unscanned strip: background
    lab = coarse_pseudo_label(logits, valid, band_px=3, margin=2.2, min_component_area=100, max_hole_area=10)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) == {0, 1, 255}
    assert _neighbour_pairs(lab) == 0  # 0 and 1 never touch: the band separates them
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - 60, xx - 60)
    assert (lab[np.abs(r - 35) <= 2] == 255).all()  # the border band
    assert (lab[r < 30] == 1).all() and (lab[(r > 40) & (xx < 100) & (xx >= 5)] == 0).all()
    assert (lab[speck] == 255).all()  # removed by the area rules
    assert (lab[95:105, 125:145] == 255).all()  # low margin
    assert (lab[:, :5] == 0).all()  # unscanned
    # wider band, more unlabelled
    wide = coarse_pseudo_label(logits, valid, band_px=6, margin=2.2, min_component_area=100, max_hole_area=10)
    assert (wide == 255).sum() > (lab == 255).sum()


def test_upsample_window_matches_repeat():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 3, (7, 9)).astype(np.uint8)
    full = np.repeat(np.repeat(coarse, 2, 0), 2, 1)[:13, :17]  # a 13 x 17 image has a 7 x 9 2x level
    assert np.array_equal(upsample_window(coarse, (13, 17), 0, 13, 0, 17), full)
    assert np.array_equal(upsample_window(coarse, (13, 17), 3, 11, 5, 16), full[3:11, 5:16])


def test_select_crops_quota_and_labelled_share():
    coarse = np.zeros((100, 100), np.uint8)
    coarse[20:80, 20:80] = 1
    coarse[18:22, 18:82] = 255
    coarse[:, 92:] = 255  # a column of crops with only 20 % labelled is skipped
    crops = select_crops(coarse, (1000, 1000), 100, max_crops=20, seed=1, min_labelled=0.5)
    assert len(crops) == 20 and len({(y, x) for y, x, _ in crops}) == 20
    kinds = [k for _, _, k in crops]
    assert kinds.count("border") == 12 and kinds.count("tissue") == 4 and kinds.count("background") == 4
    assert all(x < 900 for _, x, _ in crops)
    assert select_crops(coarse, (1000, 1000), 100, 20, seed=1, min_labelled=0.5) == crops  # seeded


# ------------------------------------------------------------------ end to end
def test_pm_pseudo_labels_outputs(pm, pseudo):
    out, res = pseudo
    s = res["slices"][0]
    assert s["level"] == 1 and s["level_shape"] == [1500, 1500] and s["factor"] == 2.0  # used the pyramid
    assert 0.5 < s["labelled_fraction"] < 1.0 and s["crops"] == 10
    assert res["n_training"] == 8 and res["n_validation"] == 2
    coarse = tifffile.imread(out / "coarse" / "pm_0003.tif")
    assert coarse.shape == (1500, 1500)
    with tifffile.TiffFile(pm / "pm_0003_mask.tif") as t:
        truth = t.series[0].levels[0].asarray()
    with tifffile.TiffFile(pm / "pm_0003.tif") as t:
        image = t.series[0].levels[0].asarray()
    datalist = json.loads((out / "datalist.json").read_text())
    tissue_px = correct = 0
    for item in datalist["training"] + datalist["validation"]:
        y0, x0 = (int(v) for v in re.search(r"_y(\d+)_x(\d+)", item["image"]).groups())
        img, lab = tifffile.imread(out / item["image"]), tifffile.imread(out / item["label"])
        assert img.shape == lab.shape == (512, 512) and img.dtype == np.uint16 and lab.dtype == np.uint8
        assert np.array_equal(img, image[y0:y0 + 512, x0:x0 + 512])  # full-resolution pixels
        assert set(np.unique(lab)) <= {0, 1, 255}
        assert np.array_equal(lab, upsample_window(coarse, PM_SHAPE, y0, y0 + 512, x0, x0 + 512))
        assert _neighbour_pairs(lab) == 0  # the border is unlabelled
        assert (lab != 255).mean() >= 0.25
        t = truth[y0:y0 + 512, x0:x0 + 512]
        tissue_px += int((lab == 1).sum())
        correct += int(((lab == 1) & (t == 1)).sum())
    # ThresholdNet misses pale grey matter but what it calls tissue is tissue: checks the upsampling alignment
    assert tissue_px > 10_000 and correct / tissue_px > 0.97
    settings = json.loads((out / "pseudo_labels.json").read_text())["settings"]
    assert settings["band_px"] == 3 and settings["ignore_value"] == 255


def test_datalist_loads_with_finetune_transforms(pseudo):
    out, _ = pseudo
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser["dataset_dir"] = str(out)
    load = Compose(parser.get_parsed_content("load_transforms"))
    for key in ("training", "validation"):
        items = load_datalist(out / "datalist.json", key, out)
        assert items
        for item in items[:3]:
            d = load(item)
            assert tuple(d["image"].shape) == tuple(d["label"].shape) == (1, 512, 512)
            assert set(torch.unique(d["label"]).tolist()) <= {0.0, 1.0, 255.0}


def test_validation_datalist_replaces_validation(pm, pseudo, tmp_path):
    src, _ = pseudo
    tiles = tmp_path / "tiles"
    (tiles / "i").mkdir(parents=True)
    tifffile.imwrite(tiles / "i" / "a.tif", np.full((64, 64), 40000, np.uint16))
    tifffile.imwrite(tiles / "i" / "a_lab.tif", np.zeros((64, 64), np.uint8))
    (tiles / "datalist.json").write_text(json.dumps({"training": [{"image": "i/a.tif", "label": "i/a_lab.tif"}]}))
    res = pm_pseudo_labels([pm / "pm_0003.tif"], tmp_path / "out", overrides={"network_def": THRESH_NET, "roi_size": [256, 256]},
                           level=1, crop=1024, max_crops=3, validation_datalist=tiles / "datalist.json", device="cpu")
    d = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert res["n_training"] == 3 and d["validation"] == [{"image": str((tiles / "i" / "a.tif").resolve()),
                                                            "label": str((tiles / "i" / "a_lab.tif").resolve())}]
    with pytest.raises(ValueError, match="level 5"):
        pm_pseudo_labels([pm / "pm_0003.tif"], tmp_path / "bad", overrides={"network_def": THRESH_NET}, level=5,
                         device="cpu")
    # a margin no pixel reaches: nothing labelled, so no crop qualifies
    with pytest.raises(ValueError, match="labelled pixels"):
        pm_pseudo_labels([pm / "pm_0003.tif"], tmp_path / "none", overrides={"network_def": THRESH_NET}, margin=1e9,
                         device="cpu")


def test_cli_with_a_checkpoint(tmp_path, capsys):
    """The command with a checkpoint of the config's network that calls everything glass (logits -1, +1),
    on its 2x level (``--level 1``) of a 1200 x 1200 slice."""
    from plimonai.cli import pseudo_labels
    from plimonai.networks import PLIUNet

    write_pm_slice(tmp_path / "pm_0004.tif", tmp_path / "pm_0004_mask.tif", shape=(1200, 1200), seed=4, tile=512)

    net = PLIUNet(1, 2, [8, 16, 32, 64, 128])
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([1.0, -1.0]))
    torch.save(net.state_dict(), tmp_path / "m.pt")
    pseudo_labels(str(tmp_path / "pm_0004.tif"), out=str(tmp_path / "cli"), ckpt=str(tmp_path / "m.pt"), crop=512,
                  max_crops=2, n_val=1, margin=1.0, level=1)
    printed = capsys.readouterr().out
    assert "level 1 600 x 600 (1/2)" in printed and "100% labelled" in printed and "finetune_pm.json" in printed
    d = json.loads((tmp_path / "cli" / "datalist.json").read_text())
    assert len(d["training"]) == len(d["validation"]) == 1
    assert all((tifffile.imread(tmp_path / "cli" / e["label"]) == 0).all() for e in d["training"] + d["validation"])
    with pytest.raises(SystemExit):
        pseudo_labels(out=str(tmp_path / "none"))  # no slice given


def test_finetune_pm_then_refine(pseudo, tmp_path):
    """finetune_pm.json over finetune.json: a tiny run on the pseudo-labelled crops, then a refinement on
    'labelled tiles' that starts from its weights."""
    src, _ = pseudo
    full = json.loads((src / "datalist.json").read_text())
    out = tmp_path / "data"  # 2 training crops, 1 validation crop (paths absolute)
    out.mkdir()
    (out / "datalist.json").write_text(json.dumps(
        {k: [{f: str(src / e[f]) for f in ("image", "label")} for e in full[k][:n]]
         for k, n in (("training", 2), ("validation", 1))}))
    tiny = {"epochs": 1, "val_interval": 1, "patch_size": [64, 64], "val_roi_size": [128, 128], "num_samples": 2,
            "batch_size": 2, "network_def#channels": [4, 8], "num_workers": 0, "cache_workers": 0,
            "resume": False, "epoch_iterations": 2, "early_stop_patience": 0, "init_ckpt": ""}
    wf = create_workflow(config_file=CONFIGS, meta_file=META, workflow_type="train", bundle_root=str(ROOT / "bundle"),
                         dataset_dir=str(out), ckpt_dir=str(tmp_path / "pm_models"), output_dir=str(tmp_path / "e1"), **tiny)
    p = wf.parser
    assert p.get_parsed_content("min_component_area") == 0 and p.get_parsed_content("slice_repeats") == 1
    fresh = ConfigParser()
    fresh.read_config(CONFIGS)
    fresh["bundle_root"] = "/b"
    assert fresh.get_parsed_content("ckpt_dir") == "/b/models/finetune_pm"
    assert fresh.get_parsed_content("init_ckpt") == "/b/models/model.pt"
    wf.run()
    stage1 = tmp_path / "pm_models" / "model.pt"
    assert wf.trainer.state.iteration == 2 and stage1.is_file()
    wf2 = create_workflow(config_file=CONFIGS, meta_file=META, workflow_type="train", bundle_root=str(ROOT / "bundle"),
                          dataset_dir=str(out), ckpt_dir=str(tmp_path / "refined"), output_dir=str(tmp_path / "e2"),
                          **{**tiny, "init_ckpt": str(stage1)})
    net = wf2.parser.get_parsed_content("network")
    wf2.parser.get_parsed_content("train#init_loader")(wf2.trainer)
    state = torch.load(stage1, weights_only=True)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
