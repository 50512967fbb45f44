"""Tiny end-to-end training runs through MONAI's bundle runner: single process, resume, 2-process DDP."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from helpers import write_datalist

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "bundle/configs/train.json")
MULTI = str(ROOT / "bundle/configs/multi_gpu_train.json")
META = str(ROOT / "bundle/configs/metadata.json")
TINY = ["--val_interval", "1", "--patch_size", "[64,64]", "--val_roi_size", "[64,64]", "--num_samples", "2",
        "--batch_size", "4", "--network_def#channels", "[4,8]", "--num_workers", "0", "--save_interval", "1"]


@pytest.fixture()
def data(tmp_path):
    return write_datalist(tmp_path / "data", label_255_every=2)  # 0/255 labels accepted too


def train(data: Path, out: Path, *extra: str, config=TRAIN, launcher=(sys.executable, "-m"), env=None):
    cmd = [*launcher, "monai.bundle", "run", "training", "--config_file", config, "--meta_file", META,
           "--bundle_root", str(ROOT / "bundle"), "--dataset_dir", str(data), "--ckpt_dir", str(out / "models"),
           "--output_dir", str(out / "eval"), *TINY, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    r.log = r.stdout + r.stderr  # MONAI logs to stdout, tracebacks go to stderr
    return r


def test_train_then_resume(data, tmp_path):
    r = train(data, tmp_path, "--epochs", "2")
    assert r.returncode == 0, r.log[-3000:]
    assert "Epoch: 2/2" in r.log
    best = tmp_path / "models" / "model.pt"
    state = torch.load(best, weights_only=True)  # a plain state dict
    assert "encoders.0.conv.0.weight" in state
    ckpts = sorted(p.name for p in (tmp_path / "models" / "checkpoints").glob("*.pt"))
    assert ckpts and any("final" in c for c in ckpts)
    assert list((tmp_path / "eval").glob("events.out.tfevents*"))  # TensorBoard
    # an interrupted/finished run resumes from the latest checkpoint: only epoch 3 runs
    r = train(data, tmp_path, "--epochs", "3")
    assert r.returncode == 0, r.log[-3000:]
    assert "Epoch: 3/3" in r.log and "Epoch: 1/3" not in r.log
    # resume disabled: starts from scratch
    r = train(data, tmp_path, "--epochs", "1", "--resume", "False")
    assert "Epoch: 1/1" in r.log


def test_compile_switch(data, tmp_path):
    # --compile True: MONAI's SupervisedTrainer compiles the training step (inductor writes its kernels to the cache
    # dir); checkpoints keep the plain module's keys, so they load into the eager network
    import os

    cache = tmp_path / "inductor"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    r = train(data, tmp_path, "--epochs", "1", "--compile", "True", env=env)
    assert r.returncode == 0, r.log[-3000:]
    assert cache.is_dir() and any(cache.rglob("*.py"))
    state = torch.load(tmp_path / "models" / "checkpoints" / "latest_final.pt", weights_only=True)["model"]
    assert "encoders.0.conv.0.weight" in state and not any("_orig_mod" in k for k in state)


def test_ddp_two_cpu_processes(data, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m"]
    r = train(data, tmp_path, "--epochs", "2", config=f"['{TRAIN}','{MULTI}']", launcher=torchrun)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # each rank has its own shard of the 3 training slices (partitioned, even): 2 epochs x 1 iteration
    assert "rank 0/2: 2 iterations done" in r.stdout and "rank 1/2: 2 iterations done" in r.stdout
    assert (tmp_path / "models" / "model.pt").is_file()
    ckpts = list((tmp_path / "models" / "checkpoints").glob("*.pt"))
    assert ckpts  # written by rank 0 only: one set, no duplicates from rank 1
    assert r.log.count("Epoch: 1/2, Iter: 1/1") == 1  # only rank 0 logs


@pytest.mark.parametrize(
    "breakage,needle",
    [
        ("size", "lab0.tif"),
        ("values", "lab0.tif"),
        ("corrupt", "img0.tif"),
        ("missing", "nothere.tif"),
    ],
)
def test_bad_training_data_named(data, tmp_path, breakage, needle):
    if breakage == "size":
        tifffile.imwrite(data / "lab0.tif", np.zeros((90, 128), np.uint8))
    elif breakage == "values":
        tifffile.imwrite(data / "lab0.tif", np.full((96, 128), 3, np.uint8))
    elif breakage == "corrupt":
        (data / "img0.tif").write_bytes(b"garbage" * 10)
    else:
        dl = json.loads((data / "datalist.json").read_text())
        dl["training"][0]["label"] = "nothere.tif"
        (data / "datalist.json").write_text(json.dumps(dl))
    r = train(data, tmp_path, "--epochs", "1")
    assert r.returncode != 0
    assert needle in r.log


def test_default_batch_mixes_slices(tmp_path):
    """A default batch holds one crop from each of ``batch_size`` slices: with several crops of one slice per
    batch the network learned per-slice batch-norm statistics and failed in eval mode on low-contrast slices."""
    from monai.bundle import ConfigParser

    d = write_datalist(tmp_path / "data", n=5, n_val=1)
    p = ConfigParser()
    p.read_config(TRAIN)
    p.update({"bundle_root": str(ROOT / "bundle"), "dataset_dir": str(d), "patch_size": [64, 64], "num_workers": 0,
              "cache_workers": 0})
    assert p.get_parsed_content("num_samples") == 1
    loader = p.get_parsed_content("train#dataloader")
    assert loader.batch_size == p.get_parsed_content("batch_size") == 4
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (4, 1, 64, 64)
    # four different slices (shuffled without replacement): no two crops are equal
    flat = batch["image"].reshape(4, -1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i + 1, 4))


def test_diagnose_batchnorm_own_statistics():
    """scripts/diagnose_batchnorm.py: the copy's running statistics are the crops' own, the original is untouched."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from diagnose_batchnorm import own_statistics

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3)).eval()
    before = net[1].running_mean.clone()
    crops = torch.randn(8, 1, 16, 16) * 2 + 5
    adapted = own_statistics(net, crops, batch=4)
    with torch.no_grad():
        feats = net[0](crops)
    assert torch.allclose(adapted[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.equal(net[1].running_mean, before) and not adapted.training


def test_plot_training_reads_text_log(tmp_path):
    """scripts/plot_training.py on a run's text log: global iteration steps, epoch metrics, a resumed epoch kept once."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from plot_training import log_scalars

    log = tmp_path / "train.log"
    log.write_text(
        "2026-11-26 03:56:17,764 - INFO - Epoch: 117/200, Iter: 1/6 -- train_loss: 0.5000 \n"
        "2026-11-26 03:56:17,765 - INFO - Epoch: 117/200, Iter: 6/6 -- train_loss: 0.2500 \n"
        "2026-11-26 03:56:26,693 - INFO - Epoch[117] Metrics -- val_mean_dice: 0.9775 \n"
        "2026-11-26 03:56:26,707 - INFO - Epoch[117] Metrics -- train_mean_dice: 0.9342 \n"
        "resumed\n"
        "2026-11-26 03:57:17,764 - INFO - Epoch: 117/200, Iter: 6/6 -- train_loss: 0.2000 \n"
        "2026-11-26 03:57:18,764 - INFO - Epoch: 118/200, Iter: 1/6 -- train_loss: 0.1000 \n"
    )
    s = log_scalars(str(log))
    steps, loss = s["train_loss"]
    assert steps.tolist() == [697, 702, 703] and loss.tolist() == [0.5, 0.2, 0.1]
    assert s["val_mean_dice"][0].tolist() == [117] and s["val_mean_dice"][1][0] == 0.9775
    assert s["train_mean_dice"][1].tolist() == [0.9342]


def test_load_weights_reads_both_checkpoint_layouts(tmp_path):
    """plimonai.training.load_weights: a plain state dict and a training checkpoint give the same weights."""
    from plimonai.training import load_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
    a, b = load_weights(tmp_path / "model.pt"), load_weights(tmp_path / "ckpt.pt")
    assert set(a) == set(b) == set(net.state_dict()) and all(torch.equal(a[k], b[k]) for k in a)


def test_binary_dice():
    from plimonai.metrics import binary_dice

    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    assert binary_dice(a, b) == 1.0  # both empty
    a[:2] = 1
    b[1:3] = 1
    assert binary_dice(a, b) == 0.5 and binary_dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        binary_dice(a, b[:2])
