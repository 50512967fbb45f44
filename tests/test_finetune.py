"""Fine-tuning on your own, partial labels: the masked loss and metric skip unlabelled (255) pixels,
finetune.json over train.json (init weights, frozen encoder, early stopping, a tiny run), and the
generator's partial labels. Tiny: 2-level networks, 64 px patches, 96 x 128 / 256 x 320 slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser, create_workflow
from monai.losses import DiceCELoss

from helpers import write_datalist
from plimonai.losses import MaskedDiceCELoss
from plimonai.networks import PLIUNet
from plimonai.synthetic import generate_dataset
from plimonai.synthetic.partial import partial_label
from test_training import TRAIN, train

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = str(ROOT / "bundle" / "configs" / "finetune.json")
META = str(ROOT / "bundle" / "configs" / "metadata.json")
BOTH = [TRAIN, FINETUNE]
TINY = {"epochs": 1, "val_interval": 1, "patch_size": [64, 64], "val_roi_size": [64, 64], "num_samples": 2,
        "batch_size": 4, "network_def#channels": [4, 8], "num_workers": 0, "cache_workers": 0,
        "save_interval": 1, "resume": False, "slice_repeats": 1}
pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")  # our own configs


def _pair(seed: int = 0):
    """Logits (2, 2, 32, 32), full label (2, 1, 32, 32) in {0, 1}, the same label with the top 12 rows
    unlabelled (255), that mask, and logits confidently wrong at those rows."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, 32, 32, generator=g)
    label = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    ignored = torch.zeros_like(label, dtype=torch.bool)
    ignored[..., :12, :] = True
    partial = torch.where(ignored, torch.full_like(label, 255.0), label)
    sign = 2 * label - 1  # +1 tissue, -1 background
    wrong = torch.where(ignored, torch.cat([20 * sign, -20 * sign], dim=1), logits)  # argmax = wrong class
    return logits, label, partial, ignored, wrong


def _tiny_ckpt(path: Path, seed: int = 7) -> dict:
    torch.manual_seed(seed)
    state = PLIUNet(1, 2, [4, 8]).state_dict()
    torch.save(state, path)
    return state


def _workflow(data: Path, out: Path, **over):
    return create_workflow(config_file=BOTH, meta_file=META, workflow_type="train", bundle_root=str(ROOT / "bundle"),
                           dataset_dir=str(data), ckpt_dir=str(out / "models"), output_dir=str(out / "eval"),
                           **{**TINY, **over})


# ------------------------------------------------------------------ masked loss and metric
def test_masked_loss_ignores_unlabelled_pixels():
    logits, label, partial, ignored, wrong = _pair()
    kw = {"to_onehot_y": True, "softmax": True, "squared_pred": True}
    loss = MaskedDiceCELoss(ignore_index=255, **kw)
    # no unlabelled pixel: exactly MONAI's DiceCELoss
    assert torch.allclose(loss(logits, label), DiceCELoss(**kw)(logits, label))
    # confidently wrong predictions at unlabelled pixels change nothing ...
    assert torch.allclose(loss(logits, partial), loss(wrong, partial))
    # ... but do change the loss where those pixels are labelled (the check can fail)
    assert loss(wrong, label) > loss(logits, label) + 0.5
    # no gradient reaches unlabelled pixels
    x = logits.clone().requires_grad_(True)
    loss(x, partial).backward()
    assert x.grad[ignored.expand_as(x)].abs().max() == 0 and x.grad[~ignored.expand_as(x)].abs().max() > 0
    # each term on its own: CE = mean over labelled pixels; Dice with prediction and target zeroed there
    valid = ~ignored[:, 0]
    ce = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], label[:, 0][valid].long())
    assert torch.allclose(MaskedDiceCELoss(ignore_index=255, lambda_dice=0.0, **kw)(logits, partial), ce)
    v = (~ignored).float()
    p, t = torch.softmax(logits, 1) * v, torch.cat([1 - label, label], 1) * v
    dice = 1 - (2 * (p * t).sum((2, 3)) + 1e-5) / ((p * p).sum((2, 3)) + (t * t).sum((2, 3)) + 1e-5)
    assert torch.allclose(MaskedDiceCELoss(ignore_index=255, lambda_ce=0.0, **kw)(logits, partial), dice.mean())
    # a batch with nothing labelled: zero, not NaN
    assert loss(logits, torch.full_like(label, 255.0)).item() == 0.0


@pytest.mark.parametrize("stage", ["train", "validate"])
def test_masked_metric_skips_unlabelled_pixels(stage):
    """finetune.json's training/validation Dice (its postprocessing, then its key metric)."""
    parser = ConfigParser()
    parser.read_config(BOTH)
    name = f"{stage}#key_metric#{'train' if stage == 'train' else 'val'}_mean_dice"
    metric = parser.get_parsed_content(name).metric_fn
    if stage == "train":
        post = parser.get_parsed_content("train#postprocessing")
    else:  # the last step (one-hot pred); the tissue-mask steps before it are tested elsewhere
        post = parser.get_parsed_content("validate#postprocessing").transforms[-1]
    assert metric.ignore_index == 255

    def dice(pred, lab):
        if stage == "validate":
            pred = pred.argmax(1, keepdim=True).float()
        items = [post({"pred": p, "label": y}) for p, y in zip(pred, lab)]
        metric.reset()
        metric([i["pred"] for i in items], [i["label"] for i in items])
        return metric.aggregate().item()

    logits, label, partial, _, wrong = _pair(1)
    assert dice(logits, partial) == pytest.approx(dice(wrong, partial))
    assert dice(wrong, label) < dice(logits, label) - 0.1
    assert dice(logits, label) != pytest.approx(dice(logits, partial))  # the ignored rows did count before


# ------------------------------------------------------------------ finetune.json over train.json
@pytest.fixture()
def data(tmp_path):
    return write_datalist(tmp_path / "data")


def test_finetune_merges_and_loads_init_weights(data, tmp_path):
    init = _tiny_ckpt(tmp_path / "init.pt")
    wf = _workflow(data, tmp_path, init_ckpt=str(tmp_path / "init.pt"))
    assert wf.check_properties() == []
    p = wf.parser
    # train.json's settings survive the merge; finetune.json's win
    assert "$import plimonai.training" in p["imports"] and "$import plimonai.losses" in p["imports"]
    assert p["patch_size"] == [64, 64] and p["learning_rate"] == pytest.approx(3e-4)
    assert p.get_parsed_content("train#preprocessing").transforms[2].t.ignore_value == 255
    assert isinstance(p.get_parsed_content("loss"), MaskedDiceCELoss)
    assert p.get_parsed_content("ckpt_dir") == str(tmp_path / "models")
    net = p.get_parsed_content("network")
    assert not all(torch.equal(v, net.state_dict()[k]) for k, v in init.items())  # random init differs
    loader = p.get_parsed_content("train#init_loader")
    assert loader is not None and loader.load_path == str(tmp_path / "init.pt")
    loader(wf.trainer)  # what happens when the trainer starts
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in init.items())
    # the default starts from the shipped weights
    fresh = ConfigParser()
    fresh.read_config(BOTH)
    fresh["bundle_root"] = "/b"
    assert fresh.get_parsed_content("init_ckpt") == "/b/models/model.pt"
    assert fresh.get_parsed_content("ckpt_dir") != fresh.get_parsed_content("init_ckpt").rsplit("/", 1)[0]


def test_freeze_encoder(data, tmp_path):
    init = _tiny_ckpt(tmp_path / "init.pt")
    wf = _workflow(data, tmp_path, init_ckpt=str(tmp_path / "init.pt"), freeze_encoder=True, epochs=2,
                   early_stop_patience=0)
    net = wf.parser.get_parsed_content("network")
    opt = wf.parser.get_parsed_content("optimizer")
    n_trainable = sum(1 for n, _ in net.named_parameters() if not n.startswith("encoders."))
    assert len(opt.param_groups[0]["params"]) == n_trainable < len(list(net.parameters()))
    wf.run()
    assert wf.trainer.state.iteration >= 2
    after = net.state_dict()
    enc = [k for k in init if k.startswith("encoders.")]
    dec = [k for k in init if k.startswith(("decoders.", "head.")) and init[k].is_floating_point()]
    assert enc and dec
    assert all(torch.equal(init[k], after[k]) for k in enc)  # weights and batch-norm statistics
    assert not all(torch.equal(init[k], after[k]) for k in dec)


# ------------------------------------------------------------------ generator partial labels, tiny run
@pytest.fixture(scope="module")
def partial_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("partial")
    res = generate_dataset(out, kind="lap", n=3, seed=5, n_val=1, shape=(256, 320), preview=False,
                           partial_labels=True)
    return out, res


def test_generator_partial_labels(partial_data, tmp_path):
    out, res = partial_data
    assert res["n_train"] == 2 and len(res["labelled_fraction"]) == 3
    for i, name in enumerate(res["names"]):
        lab = tifffile.imread(out / "labels" / f"{name}.tif")
        full = tifffile.imread(out / "labels_full" / f"{name}.tif")
        assert set(np.unique(full)) <= {0, 1}
        if i < res["n_train"]:
            assert set(np.unique(lab)) == {0, 1, 255}
            known = lab != 255
            assert 0.05 <= known.mean() <= 0.25 and known.mean() == pytest.approx(res["labelled_fraction"][i])
            assert np.array_equal(lab[known], full[known])
            assert (full[known] == 1).mean() > 0.1 and (full[known] == 0).mean() > 0.1  # both classes
            assert np.array_equal(lab, partial_label(full, 5 + i))  # deterministic per seed
            assert not np.array_equal(lab, partial_label(full, 99))
        else:  # the held-back validation slice keeps its full label
            assert np.array_equal(lab, full)
    # the default writes complete labels only
    plain = generate_dataset(tmp_path / "plain", kind="lap", n=1, seed=5, n_val=0, shape=(256, 320), preview=False)
    assert "labelled_fraction" not in plain and not (tmp_path / "plain" / "labels_full").exists()
    assert np.array_equal(tifffile.imread(tmp_path / "plain" / "labels" / "lap_00005.tif"),
                          tifffile.imread(out / "labels_full" / "lap_00005.tif"))


def test_finetune_run_with_partial_labels(partial_data, tmp_path):
    src, res = partial_data
    data = Path(shutil.copytree(src, tmp_path / "data"))
    val = data / "labels" / f"{res['names'][-1]}.tif"  # the validation slice partially labelled too
    lab = tifffile.imread(val)
    lab[:, :100] = 255
    tifffile.imwrite(val, lab)
    _tiny_ckpt(tmp_path / "init.pt")
    # min_delta 1: no validation counts as an improvement, so patience 1 stops after the 2nd epoch
    r = train(data, tmp_path, "--epochs", "6", "--init_ckpt", str(tmp_path / "init.pt"), "--slice_repeats", "2",
              "--early_stop_patience", "1", "--early_stop_min_delta", "1.0", config=f"['{TRAIN}','{FINETUNE}']")
    assert r.returncode == 0, r.log[-3000:]
    assert f"Restored all variables from {tmp_path / 'init.pt'}" in r.log
    assert "Epoch: 2/6" in r.log and "Epoch: 3/6" not in r.log  # early stopping
    assert "val_mean_dice" in r.log and "train_mean_dice" in r.log
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)  # best by validation Dice
    assert state["encoders.0.conv.0.weight"].shape[0] == 4
    assert any("final" in p.name for p in (tmp_path / "models" / "checkpoints").glob("*.pt"))


def test_partial_label_mode_warns_on_0_255_full_labels():
    import warnings

    import numpy as np

    from plimonai.transforms.label import BinarizeLabel

    lab = np.zeros((1, 8, 8), np.uint8)
    lab[0, 2:5, 2:5] = 255
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = BinarizeLabel(ignore_value=255)(lab)
    assert any("no tissue" in str(x.message) for x in w)
    assert float(out.max()) == 255.0  # kept as unlabelled: the warning is the user's cue
    lab[0, 0, 0] = 1
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        BinarizeLabel(ignore_value=255)(lab)
    assert not any("no tissue" in str(x.message) for x in w)
