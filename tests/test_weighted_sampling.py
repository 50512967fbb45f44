"""Per-slice sampling weights: datalist "weight" keys drive a WeightedRandomSampler (weighted_sampling.json)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from helpers import write_datalist
from plimonai.data import sample_weights

ROOT = Path(__file__).resolve().parent.parent


def test_sample_weights_defaults_and_errors():
    assert sample_weights([{"image": "a"}, {"image": "b", "weight": 2}]) == [1.0, 2.0]
    for bad in ("x", -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="entry 1"):
            sample_weights([{"weight": 1}, {"weight": bad}])
    with pytest.raises(ValueError, match="nothing to sample"):
        sample_weights([{"weight": 0}, {"weight": 0.0}])


def test_weighted_sampling_config_draws_by_weight(tmp_path):
    d = write_datalist(tmp_path / "data", n=4, n_val=1)
    dl = json.loads((d / "datalist.json").read_text())
    for i, item in enumerate(dl["training"]):
        item["weight"] = 1.0 if i == 1 else 0.0  # only entry 1 may be drawn
    (d / "datalist.json").write_text(json.dumps(dl))
    p = ConfigParser()
    p.read_config([str(ROOT / "bundle/configs/train.json"), str(ROOT / "bundle/configs/weighted_sampling.json")])
    p.update({"bundle_root": str(ROOT / "bundle"), "dataset_dir": str(d), "cache_workers": 0})
    loader = p.get_parsed_content("train#dataloader")
    sampler = loader.sampler
    assert len(sampler) == len(dl["training"])
    assert set(iter(sampler)) == {1}
    assert loader.dataset.data[1]["weight"] == 1.0


def test_make_weighted_datalist_script(tmp_path):
    sets = []
    for name, hard in (("a", [True, False]), ("b", [False])):
        d = write_datalist(tmp_path / name, n=len(hard) + 1, n_val=1)
        info = {"slices": [{"name": f"img{i}", "hard": h, "render": {"od_gm": 0.2}} for i, h in enumerate(hard)]}
        (d / "synthetic_info.json").write_text(json.dumps(info))
        sets.append(d)
    out = tmp_path / "merged.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/make_weighted_datalist.py"), f"{sets[0]}:2", str(sets[1]),
                        "--out", str(out), "--hard_weight", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged = json.loads(out.read_text())
    assert [i["weight"] for i in merged["training"]] == [6.0, 2.0, 1.0]
    assert len(merged["validation"]) == 2 and all("weight" not in i for i in merged["validation"])
    assert all((tmp_path / i["image"]).is_file() for i in merged["training"] + merged["validation"])
