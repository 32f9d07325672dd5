"""Per-pixel binary cross-entropy over the K class maps, the loss of CAT-Seg and SED.

Logits at stride 4 are upsampled bilinearly to the label size; the target of class k is 1 where the label is k.
Pixels with the ignore label (-1) are handled by ``ignore``:

* ``"negative"`` (default, the peers' behaviour and therefore the paper's): ignored pixels keep an all-zero
  target and count in the mean, i.e. they push every class towards 0;
* ``"mask"``: ignored pixels are left out of the loss entirely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpseg.errors import InputError
from dpseg.vocab import IGNORE_INDEX


class SegmentationLoss(nn.Module):
    def __init__(self, ignore: str = "negative"):
        super().__init__()
        if ignore not in ("negative", "mask"):
            raise InputError(f"loss ignore mode must be 'negative' or 'mask', got {ignore!r}")
        self.ignore = ignore

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(B, K, h, w) logits, (B, H, W) int labels in [0, K) or -1 -> scalar loss."""
        B, K = logits.shape[:2]
        if labels.ndim != 3 or labels.shape[0] != B:
            raise InputError(f"labels must have shape (B={B}, H, W), got {tuple(labels.shape)}")
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= K))
        if bad.any():
            raise InputError(
                f"labels hold values outside [0, {K}) other than the ignore value -1: "
                f"{labels[bad].unique()[:5].tolist()}"
            )
        up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)  # (B, K, H, W)
        valid = labels != IGNORE_INDEX
        target = torch.zeros_like(up)
        target.scatter_(1, labels.clamp(min=0).unsqueeze(1), valid.unsqueeze(1).to(up.dtype))  # one-hot on valid pixels
        if self.ignore == "negative":
            return F.binary_cross_entropy_with_logits(up, target)
        per_pixel = F.binary_cross_entropy_with_logits(up, target, reduction="none").mean(dim=1)  # (B, H, W)
        return (per_pixel * valid).sum() / valid.sum().clamp(min=1)
