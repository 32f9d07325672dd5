"""SED's category early rejection (``eval.early_rejection_topk``, SED-fast): after each decoder stage's auxiliary
head only the classes among its k best at some pixel stay in the decoder; the others get :data:`REJECTED_LOGIT`.

:class:`EarlyRejection` (defined with the ``eval`` config section, re-exported here) holds the three settings
together - k, the first rejecting stage, what ranks stage 0 - and is the one place that says which combinations
make sense: the config and ``DPSeg.decode`` both ask it."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dpseg.config_schema import RANKS, EarlyRejection  # noqa: F401 - re-exported: the model's callers use them here

# The logit of a class dropped by early rejection: sigmoid gives exactly 0 in fp32, bf16 and fp16 (as SED's zero
# probability) while, unlike -inf, bilinear resizing and the BCE stay finite.
REJECTED_LOGIT = -1e4


def kept_classes(scores: Tensor, k: int) -> Tensor:
    """SED's early-rejection rule: (B, K, h, w) auxiliary logits -> (K,) bool, True for the classes that are among
    the k highest at one pixel of one image at least."""
    best = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (B, k, h, w)
    keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
    keep[best.flatten()] = True  # (B*k*h*w,) class indices
    return keep


def in_vocabulary(values: Tensor, alive: Optional[Tensor], K: int) -> Tensor:
    """(B, K_alive, h, w) maps of the alive classes -> (B, K, h, w), rejected classes at ``REJECTED_LOGIT``."""
    if alive is None:
        return values
    out = values.new_full((values.shape[0], K, *values.shape[2:]), REJECTED_LOGIT)
    out[:, alive] = values
    return out
