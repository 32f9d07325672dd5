"""The classes a training step scores (``train.classes_per_step``) and labels in their index space.

The prompts of a vocabulary come from :func:`dpseg.prompts.resolve.vocabulary_prompts`.
"""

from __future__ import annotations

import torch


def sample_step_classes(labels: torch.Tensor, num_classes: int, limit: int, seed: int) -> torch.Tensor | None:
    """Class indices (sorted) scored at one training step, or None for all of them (``train.classes_per_step``).

    Every class present in ``labels`` (B, H, W; -1 = ignore) is kept, so no labelled pixel loses its class; random
    absent classes, drawn with ``seed``, fill up to ``limit`` as negatives. ``limit`` 0 or >= ``num_classes``: None.
    """
    if limit <= 0 or limit >= num_classes or (labels.numel() and int(labels.max()) >= num_classes):
        return None  # all classes (out-of-range labels are left to the loss, which names them)
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[labels[labels >= 0].unique().cpu()] = True
    absent = (~present).nonzero().flatten()
    fill = max(0, limit - int(present.sum()))
    order = torch.randperm(len(absent), generator=torch.Generator().manual_seed(seed))[:fill]
    present[absent[order]] = True
    return present.nonzero().flatten()


def remap_labels(labels: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels in the index space of ``classes`` (a sorted subset of range(num_classes)); others become ignore (-1)."""
    lut = torch.full((num_classes + 1,), -1, dtype=labels.dtype, device=labels.device)  # slot num_classes: ignore
    lut[classes.to(labels.device)] = torch.arange(len(classes), dtype=labels.dtype, device=labels.device)
    return lut[torch.where(labels >= 0, labels, torch.full_like(labels, num_classes))]
