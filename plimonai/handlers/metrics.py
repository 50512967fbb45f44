"""Ignite handler of the boundary F1 score, the one evaluation metric MONAI has no handler for."""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.utils import MetricReduction

from plimonai.metrics import BoundaryF1Metric

__all__ = ["BoundaryF1"]


class BoundaryF1(IgniteMetricHandler):
    """Computes the boundary F1 score (see :func:`plimonai.metrics.boundary_f1`) of every image and
    averages over batch, class channels and iterations, like :class:`monai.handlers.HausdorffDistance`.

    Args:
        include_background: whether to score the first channel. Defaults to ``False``.
        tolerance: matching distance in pixels. Defaults to 2.
        reduction: MONAI reduction mode over not-nan values, default ``"mean"``.
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``: batch-first
            (B, C, H, W) tensors or lists of channel-first (C, H, W) tensors, binarized and one-hot,
            e.g. ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: whether to save the per-image scores to ``engine.state.metric_details`` under
            the metric name (what ``MetricsSaver`` writes to ``<name>_raw.csv``).
    """

    def __init__(
        self,
        include_background: bool = False,
        tolerance: float = 2.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = BoundaryF1Metric(include_background=include_background, tolerance=tolerance, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
