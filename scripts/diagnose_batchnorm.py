"""Does a checkpoint rely on per-slice batch-norm statistics? Eval-mode Dice vs Dice with the slice's own statistics.

For each labelled slice: (1) the network in eval mode (running statistics, what inference uses) and (2) the same
weights with batch-norm statistics re-estimated on border-weighted crops of that slice alone (AdaBN). A large gap
(2) >> (1) means the network learned to depend on batch statistics of single slices, which happens when a
training batch holds several crops of one slice (``num_samples`` > 1): see bundle/docs/training.md, session 4.

    python scripts/diagnose_batchnorm.py --ckpt runs/best_s2_e30.pt samples/train_lap/images/lap_00011.tif

Labels are found by replacing ``images`` with ``labels`` in the image path (the generator's layout).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from plimonai.metrics import binary_dice as dice
from plimonai.training import load_weights
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parent.parent


def own_statistics(net: torch.nn.Module, crops: torch.Tensor, batch: int = 4) -> torch.nn.Module:
    """A copy of ``net`` whose batch-norm running statistics are the plain average over ``crops`` (N, C, H, W)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            net(crops[i : i + batch])
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--config", default=str(ROOT / "bundle/configs/train.json"))
    ap.add_argument("--crops", type=int, default=16, help="border-weighted crops of the slice for its own statistics")
    ap.add_argument("--patch", type=int, default=512)
    ap.add_argument("--roi", type=int, default=1024)
    args = ap.parse_args()

    p = ConfigParser()
    p.read_config(args.config)
    p.update({"bundle_root": str(ROOT / "bundle"), "patch_size": [args.patch, args.patch], "num_samples": args.crops})
    load = Compose(p.get_parsed_content("load_transforms"))
    crop = Compose(p.get_parsed_content("train#augmentation")[:4])  # border weights, pad, weighted crops, drop weights
    net = p.get_parsed_content("network_def")
    net.load_state_dict(load_weights(args.ckpt))
    net.eval()

    print("slice | eval-mode Dice | own-statistics Dice | gap")
    for img in args.images:
        d = load({"image": img, "label": img.replace("images", "labels")})
        x, lab = d["image"][None].float(), d["label"][0].numpy() > 0
        crop.set_random_state(0)
        crops = torch.stack([c["image"] for c in crop(dict(d))]).float()
        scores = []
        for model in (net, own_statistics(net, crops)):
            with torch.no_grad():
                y = sliding_window_inference(x, (args.roi, args.roi), 2, model, overlap=0.125, mode="gaussian")
            scores.append(dice(y.argmax(1)[0].numpy() > 0, lab))
        print(f"{Path(img).stem} | {scores[0]:.4f} | {scores[1]:.4f} | {scores[1] - scores[0]:+.4f}", flush=True)


if __name__ == "__main__":
    main()
