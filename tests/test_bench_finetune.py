"""scripts/bench_finetune.py helpers (datalists per condition, log parsing, the markdown block, the plot,
the checkpoint fallback) and finetune.json's CPU defaults (iterations per epoch, 0/255 full labels).
No training here: the tiny fine-tuning runs are in test_finetune.py / test_pseudo_labels.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_finetune as bench  # noqa: E402

BOTH = [str(ROOT / "bundle/configs/train.json"), str(ROOT / "bundle/configs/finetune.json")]
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")


def _results(mode="quick"):
    rows = [{"condition": "shipped", "n_slices": 0, "dice": [0.7, 0.9]}]
    for i, (cond, n, kind) in enumerate(bench.CONDITIONS):
        rows.append({"condition": cond, "n_slices": n, "labelled_fraction": 0.1 if kind == "partial" else 1.0,
                     "dice": [0.9 + 0.01 * i, 0.95], "finetune": {"wall_s": 60.0 * (i + 1), "iterations": 12,
                                                                 "epochs_run": 2, "early_stopped": i == 1,
                                                                 "best_val_dice": 0.8}})
    for r in rows:
        r["mean_dice"] = sum(r["dice"]) / len(r["dice"])
    return {"mode": mode, "date": "2026-01-01", "machine": "test machine", "command": "python scripts/bench_finetune.py",
            "ckpt": "bundle/models/model.pt", "ckpt_sha256": "ab" * 32, "ckpt_note": "", "total_s": 300.0, "load_average": [0.5, 1000.0],
            "settings": {"shape": [416, 555], "contrast": "inverted", "n_pool": 6, "n_test": 2, "pool_seed": 71000,
                         "test_seed": 72000, "partial_fraction": 0.1, "train_overrides": {"epochs": 2}}, "rows": rows}


def test_datalists_per_condition(tmp_path):
    args = bench.parse_args(["--quick", "--work_dir", str(tmp_path)])
    names = [f"lap_{i:05d}" for i in range(6)]
    lists = bench.write_datalists(args, names)
    assert set(lists) == {c for c, _, _ in bench.CONDITIONS}
    for cond, n, kind in bench.CONDITIONS:
        d = json.loads(lists[cond].read_text())
        sub = "labels" if kind == "partial" else "labels_full"
        assert [e["image"] for e in d["training"]] == [f"images/{nm}.tif" for nm in names[:n]]
        assert all(e["label"].startswith(sub + "/") for e in d["training"] + d["validation"])
        assert d["validation"] == [{"image": "images/lap_00005.tif", "label": f"{sub}/lap_00005.tif"}]
        assert "lap_00005" not in json.dumps(d["training"])  # the validation slice is held back


def test_parse_args_modes(tmp_path):
    q = bench.parse_args(["--quick", "--work_dir", str(tmp_path)])
    f = bench.parse_args(["--work_dir", str(tmp_path)])
    assert q.shape == (416, 555) and f.shape == (2080, 2776) and q.n_test < f.n_test
    assert f.png == ROOT / "bundle/docs/finetune.png" and q.png == tmp_path.resolve() / "finetune_quick.png"
    assert bench.train_overrides(f) == {}  # the full run uses finetune.json's defaults
    over = bench.train_overrides(q)
    assert over["epochs"] == 2 and over["min_component_area"] == bench.area_rules((416, 555))["min_component_area"]
    assert bench.area_rules((2080, 2776)) == {"min_component_area": 3000, "max_hole_area": 1500}
    assert bench.area_rules((1040, 1388)) == {"min_component_area": 750, "max_hole_area": 375}
    extra = bench.parse_args(["--work_dir", str(tmp_path), "--train_arg", "learning_rate=0.001", "--train_arg", "x=abc"])
    assert bench.train_overrides(extra) == {"learning_rate": 0.001, "x": "abc"}
    assert bench.overrides_to_cli({"patch_size": [128, 128], "epochs": 2}) == ["--patch_size", "[128, 128]", "--epochs", "2"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--n_pool", "4"])


def test_parse_log():
    log = "\n".join([
        "Epoch: 1/3, Iter: 1/2 -- train_loss: 0.5 ", "Epoch: 1/3, Iter: 2/2 -- train_loss: 0.4 ",
        "Got new best metric of val_mean_dice: 0.91", "Epoch[1] Metrics -- val_mean_dice: 0.9100 ",
        "Epoch: 2/3, Iter: 1/2 -- train_loss: 0.3 ", "Epoch: 2/3, Iter: 2/2 -- train_loss: 0.2 ",
        "Epoch[2] Metrics -- val_mean_dice: 0.8800 ", "EarlyStopping: Stop training"])
    assert bench.parse_log(log) == {"iterations": 4, "epochs_run": 2, "best_val_dice": 0.91, "early_stopped": True}
    empty = bench.parse_log("")
    assert empty["iterations"] == 0 and np.isnan(empty["best_val_dice"]) and not empty["early_stopped"]


def test_markdown_block_and_plot(tmp_path):
    md = tmp_path / "finetune.md"
    md.write_text("# guide\n\n<!-- bench_finetune:full:begin -->\n**Not yet run.**\n<!-- bench_finetune:full:end -->\n\n"
                  "<!-- bench_finetune:quick:begin -->\nold\n<!-- bench_finetune:quick:end -->\ntail\n")
    res = _results("quick")
    bench.write_md(res, md, tmp_path / "q.png")
    text = md.read_text()
    assert "**Not yet run.**" in text and "old" not in text and text.startswith("# guide") and text.endswith("tail\n")
    assert "Smoke test" in text and "| 3 slices, partial labels | 3 | 10% |" in text
    assert "other jobs shared the CPU" in text  # a load far above the core count is reported
    assert text.count("bench_finetune:quick:begin") == 1
    base = res["rows"][0]["mean_dice"]
    assert f"{res['rows'][2]['mean_dice'] - base:+.4f}" in text  # the lift over the shipped model
    bench.write_md(_results("full"), md, tmp_path / "finetune.png")
    text = md.read_text()
    assert "**Not yet run.**" not in text and "![Dice and fine-tuning time](finetune.png)" in text
    assert "Smoke test" in text  # the quick block stays
    fresh = tmp_path / "new.md"  # no markers: appended
    bench.write_md(res, fresh, tmp_path / "q.png")
    assert "bench_finetune:quick:end" in fresh.read_text()
    bench.plot(res, tmp_path / "q.png")
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_fallback(tmp_path, monkeypatch, capsys):
    real = tmp_path / "model.pt"
    real.write_bytes(b"x")
    assert bench.resolve_ckpt(str(real)) == (real.resolve(), "")
    fb = tmp_path / "fallback.pt"
    fb.write_bytes(b"y")
    monkeypatch.setattr(bench, "FALLBACK_CKPT", fb)
    path, note = bench.resolve_ckpt(str(tmp_path / "missing.pt"))
    assert path == fb and "not found" in note and "NOTE" in capsys.readouterr().out
    monkeypatch.setattr(bench, "FALLBACK_CKPT", tmp_path / "nothing.pt")
    with pytest.raises(SystemExit):
        bench.resolve_ckpt(str(tmp_path / "missing.pt"))


# ------------------------------------------------------------------ finetune.json's CPU defaults
@pytest.mark.parametrize("n,repeats", [(1, 48), (3, 16), (5, 10), (100, 1)])
def test_iterations_per_epoch_do_not_grow_with_slices(n, repeats):
    parser = ConfigParser()
    parser.read_config(BOTH)
    parser["train#dataset"] = list(range(n))  # stands in for the cached slices: only its length counts
    assert parser.get_parsed_content("slice_repeats") == repeats
    assert parser.get_parsed_content("train#dataloader#sampler").num_samples == n * repeats
    assert parser["patch_size"] == [512, 512] and parser["epochs"] * n * repeats <= 12 * 100


def test_ignore_label_none_maps_0_255_full_labels():
    parser = ConfigParser()
    parser.read_config(BOTH)
    parser["ignore_label"] = None
    binarize = parser.get_parsed_content("train#preprocessing").transforms[2]
    lab = np.zeros((1, 4, 4), np.uint8)
    lab[0, :2] = 255
    assert np.array_equal(np.asarray(binarize({"label": lab})["label"]), (lab > 0).astype(np.float32))
    assert parser.get_parsed_content("loss").ignore_index is None
    parser2 = ConfigParser()
    parser2.read_config(BOTH)  # default: 255 stays "unlabelled"
    kept = parser2.get_parsed_content("train#preprocessing").transforms[2]({"label": np.where(lab > 0, 255, 1)})
    assert float(np.asarray(kept["label"]).max()) == 255.0
