"""MONAI ecosystem conformance: the workflows define MONAI's standard bundle properties
(`InferProperties`, `TrainProperties`, `MetaProperties`) and run end to end from Python through
`monai.bundle.create_workflow`, as other applications drive bundles."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, create_workflow
from monai.bundle.properties import InferProperties, MetaProperties, TrainProperties

from helpers import make_slice, write_datalist

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "bundle" / "configs"
INFER, TRAIN, EVAL = str(CONFIGS / "inference.json"), str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")
META = str(CONFIGS / "metadata.json")
THRESH_NET = {"_target_": "helpers.ThresholdNet"}
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")  # the trust warning: our own configs
TINY_TRAIN = {"epochs": 1, "val_interval": 1, "patch_size": [64, 64], "val_roi_size": [64, 64], "num_samples": 2,
              "batch_size": 4, "network_def#channels": [4, 8], "num_workers": 0, "cache_workers": 0,
              "save_interval": 1, "resume": False}


@pytest.fixture()
def data(tmp_path) -> Path:
    return write_datalist(tmp_path / "data")


def test_standard_ids_are_used():
    """Every required property, and every optional one that applies, is defined under MONAI's id (checked on
    the config text: nothing is instantiated)."""
    for config, props, optional in [
        (INFER, InferProperties, ["handlers", "preprocessing", "postprocessing"]),
        (TRAIN, TrainProperties, ["network_def", "train_handlers", "train_preprocessing", "train_postprocessing",
                                  "train_key_metric", "evaluator", "val_interval", "val_handlers", "val_dataset",
                                  "val_dataset_data", "val_inferer", "val_preprocessing", "val_postprocessing",
                                  "val_key_metric", "train_dataset_data"]),
    ]:
        parser = ConfigParser()
        parser.read_config(config)
        parser.read_meta(META)
        for name, p in {**props, **MetaProperties}.items():
            if p["required"] or name in optional:
                assert p["id"] in parser, (config, name, p["id"])


def test_inference_properties_and_run_from_python(data, tmp_path):
    slices = tmp_path / "slices"
    slices.mkdir()
    for i in range(3):
        tifffile.imwrite(slices / f"s{i}.tif", make_slice((96, 128), seed=i)[0])
    out = tmp_path / "out"
    wf = create_workflow(config_file=INFER, meta_file=META, workflow_type="inference", bundle_root=str(ROOT / "bundle"),
                         dataset_dir=str(data), output_dir=str(out), network_def=THRESH_NET,
                         ckpt_path="", roi_size=[128, 128], num_workers=0, min_component_area=200, max_hole_area=100)
    assert wf.check_properties() == []
    # properties are read and set by their standard names
    assert wf.version == json.loads(Path(META).read_text())["version"]
    assert isinstance(wf.device, torch.device) and wf.bundle_root == str(ROOT / "bundle")
    assert len(wf.dataset) == 8  # every slice file of dataset_dir: the 4 images and 4 labels
    wf.dataset_dir = str(slices)  # setting a property: initialize again before running
    wf.initialize()
    assert wf.dataset_dir == str(slices) and len(wf.dataset) == 3
    # slice_list is not a standard property: add it (or pass slice_list=... to create_workflow)
    wf.add_property("slice_list", required=False, config_id="slice_list")
    (slices / "list.txt").write_text("s0.tif\ns2.tif\n")
    wf.slice_list = str(slices / "list.txt")
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["slice"] for r in rows] == ["s0", "s2"] and all(r["status"] == "ok" for r in rows)
    assert all(int(r["tissue_area_px"]) > 0 for r in rows)
    assert (out / "s0_mask.tif").is_file() and not (out / "s1_mask.tif").exists()


def test_evaluate_properties(data, tmp_path):
    wf = create_workflow(config_file=EVAL, meta_file=META, workflow_type="inference", bundle_root=str(ROOT / "bundle"),
                         dataset_dir=str(data), output_dir=str(tmp_path / "eval"), network_def=THRESH_NET,
                         ckpt_path="", num_workers=0)
    assert wf.check_properties() == []


def test_train_properties_and_one_epoch_from_python(data, tmp_path):
    models = tmp_path / "models"
    wf = create_workflow(config_file=TRAIN, meta_file=META, workflow_type="train", bundle_root=str(ROOT / "bundle"),
                         dataset_dir=str(data), ckpt_dir=str(models), output_dir=str(tmp_path / "eval"), **TINY_TRAIN)
    assert wf.check_properties() == []
    assert wf.max_epochs == 1 and wf.val_interval == 1 and len(wf.train_dataset) == 3 and len(wf.val_dataset) == 1
    wf.run()
    wf.finalize()
    assert wf.trainer.state.epoch == 1
    state = torch.load(models / "model.pt", weights_only=True)  # best model by validation Dice
    assert state["encoders.0.conv.0.weight"].shape[0] == 4
    assert list((models / "checkpoints").glob("*.pt"))
