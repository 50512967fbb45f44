"""Boundary F1 score (BF score, Csurka et al. 2013), which MONAI lacks, and a plain Dice of two numpy masks.

Tissue masks feed a 3D reconstruction, where the contour matters more than the area: Dice barely
moves when a border is off by a few pixels along its whole length, HD95 reports one distance, the
BF score says which share of the contour is within a tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction, ignore_background, is_binary_tensor
from monai.utils import MetricReduction

__all__ = ["binary_dice", "mask_boundary", "boundary_f1", "compute_boundary_f1", "BoundaryF1Metric"]


def binary_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two masks (nonzero = tissue) of the same shape; 1.0 when both are empty.

    For scripts comparing whole-slice numpy masks (MONAI's DiceMetric wants one-hot tensors)."""
    a, b = np.asarray(pred) > 0, np.asarray(gt) > 0
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else 1.0


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a binary mask: foreground pixels with a background 4-neighbour (2D) /
    face neighbour (n-D). The image edge counts as background, so a non-empty mask always has a
    boundary. (H, W) or any n-D array, values > 0 are foreground -> bool array of the same shape."""
    m = np.asarray(mask) > 0
    if not m.any():
        return m
    return m & ~ndimage.binary_erosion(m, border_value=0)


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> float:
    """Boundary F1 score of two binary masks.

    Precision is the share of boundary pixels of ``pred`` within ``tolerance`` pixels (Euclidean,
    ``distance <= tolerance``) of a boundary pixel of ``gt``; recall likewise from ``gt`` to ``pred``;
    the score is their harmonic mean.

    Args:
        pred: predicted mask, (H, W) (or any n-D shape), values > 0 are foreground.
        gt: ground-truth mask, same shape.
        tolerance: matching distance in pixels.

    Returns:
        The score in [0, 1]: 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    pred_b, gt_b = mask_boundary(pred), mask_boundary(gt)
    if pred_b.shape != gt_b.shape:
        raise ValueError(f"pred and gt shapes differ: {pred_b.shape} vs {gt_b.shape}.")
    if not pred_b.any() and not gt_b.any():
        return 1.0
    if not pred_b.any() or not gt_b.any():
        return 0.0
    # crop to the boundaries' bounding box: every nearest boundary pixel lies inside it, so the
    # distances are exact while the distance transforms stay small on whole-slice images
    idx = np.nonzero(pred_b | gt_b)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    pred_b, gt_b = pred_b[box], gt_b[box]
    dist_to_gt = ndimage.distance_transform_edt(~gt_b)
    dist_to_pred = ndimage.distance_transform_edt(~pred_b)
    precision = float(np.mean(dist_to_gt[pred_b] <= tolerance))
    recall = float(np.mean(dist_to_pred[gt_b] <= tolerance))
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def compute_boundary_f1(
    y_pred: torch.Tensor, y: torch.Tensor, include_background: bool = False, tolerance: float = 2.0
) -> torch.Tensor:
    """Boundary F1 per image and class.

    Args:
        y_pred: binarized one-hot prediction, (B, C, H, W[, D]).
        y: binarized one-hot ground truth, same shape.
        include_background: whether to score channel 0 too.
        tolerance: matching distance in pixels.

    Returns:
        (B, C') float32 tensor on ``y_pred``'s device (C' = C - 1 without background).
    """
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y should have same shapes, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    if y_pred.ndim < 3:
        raise ValueError(f"y_pred should be (B, C, spatial...), got shape {tuple(y_pred.shape)}.")
    if not include_background:
        y_pred, y = ignore_background(y_pred=y_pred, y=y)
    p = y_pred.detach().cpu().numpy()
    g = y.detach().cpu().numpy()
    out = np.empty(p.shape[:2], dtype=np.float32)
    for b in range(p.shape[0]):
        for c in range(p.shape[1]):
            out[b, c] = boundary_f1(p[b, c], g[b, c], tolerance)
    return torch.from_numpy(out).to(y_pred.device)


class BoundaryF1Metric(CumulativeIterationMetric):
    """Boundary F1 score (BF score) of binarized one-hot predictions, accumulated over iterations.

    Mirrors :class:`monai.metrics.HausdorffDistanceMetric`: ``y_pred`` and ``y`` are batch-first
    (B, C, H, W) tensors or lists of channel-first (C, H, W) tensors, binarized and one-hot; each
    call buffers a (B, C') tensor of scores, ``aggregate`` reduces the buffer.

    Args:
        include_background: whether to score the first channel. Defaults to ``False``.
        tolerance: matching distance in pixels. Defaults to 2.
        reduction: MONAI reduction mode applied to not-nan values, default ``"mean"``.
        get_not_nans: whether ``aggregate`` also returns the not-nan count.
    """

    def __init__(
        self,
        include_background: bool = False,
        tolerance: float = 2.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.tolerance = float(tolerance)
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """(B, C, H, W) binarized one-hot ``y_pred`` and ``y`` -> (B, C') float32 scores."""
        is_binary_tensor(y_pred, "y_pred")
        is_binary_tensor(y, "y")
        return compute_boundary_f1(y_pred, y, self.include_background, self.tolerance)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered (N, C') scores with ``reduction`` (default ``self.reduction``)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be PyTorch Tensor.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f
