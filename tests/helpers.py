"""Small shared fixtures: hand-made slices and a deterministic stand-in network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn


def disk(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_slice(shape=(300, 420), seed=0, dtype=np.uint16):
    """Glass background with two tissue pieces (one with a ventricle), a few dust specks.

    Returns (image (H, W) of ``dtype``, mask (H, W) uint8). Transmittance: glass 0.9, tissue 0.45.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    mask = disk(shape, h * 0.5, w * 0.3, min(h, w) * 0.3) | disk(shape, h * 0.5, w * 0.75, min(h, w) * 0.2)
    hole = disk(shape, h * 0.5, w * 0.3, min(h, w) * 0.1)
    mask &= ~hole
    t = np.where(mask, 0.45, 0.9) + rng.normal(0, 0.01, shape)
    for _ in range(6):  # dust: small dark specks on glass
        cy, cx = rng.integers(5, h - 5), rng.integers(5, w - 5)
        if not mask[max(0, cy - 8): cy + 8, max(0, cx - 8): cx + 8].any():
            t[disk(shape, cy, cx, 2)] = 0.4
    t = np.clip(t, 0, 1)
    if dtype == np.uint16:
        img = (t * 60000).astype(np.uint16)
    elif dtype == np.uint8:
        img = (t * 255).astype(np.uint8)
    else:
        img = t.astype(dtype)
    return img, mask.astype(np.uint8)


class ThresholdNet(nn.Module):
    """Deterministic stand-in for a trained U-Net: tissue logit = k * (attenuation - threshold).

    (B, 1, H, W) -> (B, 2, H, W). Lets pipeline tests check post-processing and IO exactly.
    """

    def __init__(self, threshold: float = 0.25, k: float = 40.0) -> None:
        super().__init__()
        self.threshold, self.k = threshold, k
        self.dummy = nn.Parameter(torch.zeros(1))  # so checkpoint/device code has a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.k * (x[:, :1] - self.threshold) + 0 * self.dummy
        return torch.cat([-t, t], dim=1)


class WindowBiasNet(ThresholdNet):
    """:class:`ThresholdNet` plus a per-window term ``bias * (window mean - 0.2)``: the logits depend on
    which window a pixel is seen in, so blending (and any error in it) changes the mask."""

    def __init__(self, threshold: float = 0.25, k: float = 40.0, bias: float = 4.0) -> None:
        super().__init__(threshold, k)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # a strided view (MONAI's single-window batches) would sum the mean in another order
        t = self.k * (x[:, :1] - self.threshold) + self.bias * (x[:, :1].mean(dim=(1, 2, 3), keepdim=True) - 0.2)
        return torch.cat([-t, t], dim=1) + 0 * self.dummy


def write_datalist(d: Path, n: int = 4, shape=(96, 128), n_val: int = 1, label_255_every: int = 0) -> Path:
    """``n`` :func:`make_slice` slices as TIFF image/label pairs in ``d`` with a ``datalist.json``
    (the last ``n_val`` for validation); every ``label_255_every``-th label (odd indices for 2)
    is stored as 0/255. Returns ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        img, m = make_slice(shape, seed=i)
        scale = 255 if label_255_every and i % label_255_every == label_255_every - 1 else 1
        tifffile.imwrite(d / f"img{i}.tif", img)
        tifffile.imwrite(d / f"lab{i}.tif", m * scale)
        items.append({"image": f"img{i}.tif", "label": f"lab{i}.tif"})
    (d / "datalist.json").write_text(json.dumps({"training": items[: n - n_val], "validation": items[n - n_val:]}))
    return d


ROOT = Path(__file__).resolve().parent.parent
THRESH_NET = {"_target_": "helpers.ThresholdNet"}
WINDOW_NET = {"_target_": "helpers.WindowBiasNet"}


def run_inference_workflow(out: Path, overrides: dict | None = None, expect_fail: bool = False, **defaults) -> list[dict]:
    """Run ``inference.json`` in this process (ThresholdNet, 128 x 128 windows, no checkpoint, small
    area rules unless overridden); return the ``summary.csv`` rows. ``expect_fail``: the run must raise."""
    import csv

    import pytest
    from monai.bundle import ConfigWorkflow

    args = dict(network_def=THRESH_NET, roi_size=[128, 128], num_workers=0, ckpt_path="", min_component_area=200,
                max_hole_area=100)
    args.update(defaults)
    args.update(overrides or {})
    wf = ConfigWorkflow(
        config_file=str(ROOT / "bundle/configs/inference.json"), meta_file=str(ROOT / "bundle/configs/metadata.json"),
        workflow_type="inference", run_id="inference", bundle_root=str(ROOT / "bundle"), output_dir=str(out), **args,
    )
    wf.initialize()
    if expect_fail:
        with pytest.raises(RuntimeError):
            wf.run()
    else:
        wf.run()
    wf.finalize()
    with open(Path(out) / "summary.csv") as f:
        return list(csv.DictReader(f))
