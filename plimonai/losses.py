"""Training loss for partial labels: pixels marked unlabelled (e.g. 255) count in neither term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.metrics.utils import create_ignore_mask

__all__ = ["MaskedDiceCELoss"]


class MaskedDiceCELoss(DiceCELoss):
    """MONAI's :class:`~monai.losses.DiceCELoss` with an ``ignore_index``: target pixels equal to it
    (label-encoded ``(B, 1, ...)`` target; for one-hot targets, all-zero pixels) add nothing to the loss.

    Dice term: MONAI's own ``DiceLoss(ignore_index=...)`` zeroes prediction and target there before
    the sums. Cross entropy: per-pixel CE averaged over the labelled pixels only (0 when a batch has
    none). With ``ignore_index=None``, or no ignored pixel in the batch, the value equals DiceCELoss's.
    All other arguments are DiceCELoss's.
    """

    # Custom code because MONAI 1.6's DiceCELoss does not take ignore_index (only its DiceLoss does).

    def __init__(self, *args, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_index = ignore_index
        self.dice.ignore_index = ignore_index

    def _masked_mean(self, per_pixel: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
        total = per_pixel.sum()
        if self.cross_entropy.reduction == "sum":
            return total
        return total / denom.clamp_min(1e-8)  # no labelled pixel: total is 0, so is the loss

    def ce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is None:
            return super().ce(input, target)
        valid = create_ignore_mask(target, self.ignore_index)[:, 0]  # (B, ...) 1 = labelled
        w = self.cross_entropy.weight
        if target.shape[1] == 1 and input.shape[1] != 1:
            t = torch.where(valid > 0, target[:, 0], torch.zeros_like(target[:, 0])).long()
            per = F.cross_entropy(input, t, weight=w, reduction="none",
                                  label_smoothing=self.cross_entropy.label_smoothing) * valid
            denom = (w[t] * valid).sum() if w is not None else valid.sum()  # as torch's weighted mean
        else:
            per = F.cross_entropy(input, target.to(input.dtype), weight=w, reduction="none",
                                  label_smoothing=self.cross_entropy.label_smoothing) * valid
            denom = valid.sum()
        return self._masked_mean(per, denom)

    def bce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.ignore_index is None:
            return super().bce(input, target)
        valid = create_ignore_mask(target, self.ignore_index)
        t = torch.where(valid > 0, target, torch.zeros_like(target)).to(input.dtype)
        per = F.binary_cross_entropy_with_logits(input, t, pos_weight=self.binary_cross_entropy.pos_weight,
                                                 reduction="none") * valid
        return self._masked_mean(per, valid.sum())
