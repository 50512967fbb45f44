"""PLI-specific augmentations: artifacts land on background only, labels untouched, seeded."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from plimonai.transforms.augment import RandBackgroundArtifactsd


def sample(seed: int) -> dict:
    lab = torch.zeros(1, 128, 160)
    lab[0, 40:90, 50:110] = 1
    img = torch.where(lab > 0, 0.5, 0.0)
    return {"image": img, "label": lab}


def paint_off_tissue(t: RandBackgroundArtifactsd, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``t`` to ``sample(seed)``; check that it only added attenuation off the tissue and its 4 px margin
    and left the label alone. Returns the added attenuation (H, W) and that margin mask."""
    d0 = sample(seed)
    d = t(d0)
    near = ndimage.binary_dilation(d0["label"][0].numpy() > 0, iterations=4)
    diff = (d["image"] - d0["image"])[0].numpy()
    assert np.all(diff[near] == 0)  # tissue and its margin untouched
    assert torch.equal(d["label"], d0["label"])
    assert np.all(diff >= 0)  # artifacts add attenuation
    return diff, near


def test_artifacts_only_on_background_and_label_unchanged():
    t = RandBackgroundArtifactsd("image", prob=1.0, max_dust=40, max_bubbles=3, max_strokes=2, margin=4, edge_prob=0.5)
    t.set_random_state(1)
    painted = 0
    for i in range(8):
        diff, _ = paint_off_tissue(t, i)
        painted += int((diff > 0).any())
    assert painted >= 6


def test_slide_edge_band_enters_from_one_side():
    t = RandBackgroundArtifactsd("image", prob=1.0, max_dust=0, max_bubbles=0, max_strokes=0, edge_prob=1.0)
    t.set_random_state(0)
    for _ in range(6):
        a = t(sample(0))["image"][0].numpy()
        sides = [a[0].mean(), a[-1].mean(), a[:, 0].mean(), a[:, -1].mean()]
        assert max(sides) > 0.05  # a band along one crop side
        assert 0.01 < (a > 0.05).mean() < 0.45  # a band, not the whole crop


def test_seeded_and_off_by_default():
    a = RandBackgroundArtifactsd("image", prob=1.0, edge_prob=0.5).set_random_state(7)(sample(0))["image"]
    b = RandBackgroundArtifactsd("image", prob=1.0, edge_prob=0.5).set_random_state(7)(sample(0))["image"]
    assert torch.equal(a, b)
    off = RandBackgroundArtifactsd("image", prob=0.0)(sample(0))
    assert torch.equal(off["image"], sample(0)["image"])


def test_out_of_focus_clumps_are_soft_and_off_the_tissue():
    t = RandBackgroundArtifactsd("image", prob=1.0, max_dust=0, max_bubbles=0, max_strokes=0, clump_prob=1.0, max_clumps=2)
    t.set_random_state(3)
    soft = 0
    for i in range(8):
        diff, near = paint_off_tissue(t, i)
        assert diff.max() > 0.01  # something painted every time
        blob = diff > 0.2 * diff.max()
        # out of focus: wide (tens of px) and, away from the cut at the tissue margin, the steepest step
        # between neighbours is a small part of the peak
        far = ~ndimage.binary_dilation(near, iterations=2)
        steep = max(np.abs(np.diff(diff, axis=0))[far[1:] & far[:-1]].max(),
                    np.abs(np.diff(diff, axis=1))[far[:, 1:] & far[:, :-1]].max())
        soft += int(blob.sum() > 30 and steep < 0.35 * diff.max())
    assert soft >= 6
    # off (the default) draws nothing for clumps, so seeded streams of existing configs are unchanged: a
    # probability that never fires still draws once, and only that shifts the generator's state
    off = RandBackgroundArtifactsd("image", prob=1.0, edge_prob=0.5).set_random_state(7)
    tiny = RandBackgroundArtifactsd("image", prob=1.0, edge_prob=0.5, clump_prob=1e-12).set_random_state(7)
    assert torch.equal(off(sample(0))["image"], tiny(sample(0))["image"])
    assert off.R.get_state()[2] != tiny.R.get_state()[2]
