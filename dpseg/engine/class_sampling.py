"""The classes a training step scores (``train.classes_per_step``, ``train.negatives``) and labels in their index
space.

The prompts of a vocabulary come from :func:`dpseg.prompts.resolve.vocabulary_prompts`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from dpseg.model.dual_prompt import PromptSet, dual_prompt


def prompt_similarity(prompts: PromptSet, prompt_type: str) -> torch.Tensor:
    """(K, K) cosine similarity of the classes' prompts R as the model builds them (averaged over the templates):
    how confusable two classes look to the cost volume."""
    r = dual_prompt(prompts.text, prompts.visual, prompt_type).float().mean(dim=1)  # (K, M, d) -> (K, d)
    r = F.normalize(r, dim=-1)
    return (r @ r.T).cpu()  # (K, d) @ (d, K) -> (K, K)


def sample_step_classes(
    labels: torch.Tensor,
    num_classes: int,
    limit: int,
    seed: int,
    similarity: Optional[torch.Tensor] = None,
    temperature: float = 0.05,
) -> torch.Tensor | None:
    """Class indices (sorted) scored at one training step, or None for all of them (``train.classes_per_step``).

    Every class present in ``labels`` (B, H, W; -1 = ignore) is kept, so no labelled pixel loses its class; absent
    classes, drawn with ``seed``, fill up to ``limit`` as negatives: uniformly at random, or - given ``similarity``
    (K, K), ``train.negatives=similar`` - without replacement with weights exp(s_a / temperature), s_a the similarity
    of class a to its closest present class (Gumbel top-k). ``limit`` 0 or >= ``num_classes``: None.
    """
    if limit <= 0 or limit >= num_classes or (labels.numel() and int(labels.max()) >= num_classes):
        return None  # all classes (out-of-range labels are left to the loss, which names them)
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[labels[labels >= 0].unique().cpu()] = True
    absent = (~present).nonzero().flatten()
    fill = max(0, limit - int(present.sum()))
    generator = torch.Generator().manual_seed(seed)
    if similarity is None or not present.any():
        order = torch.randperm(len(absent), generator=generator)[:fill]
    else:
        closest = similarity[absent][:, present].max(dim=1).values  # (A, P) -> (A,)
        gumbel = -torch.log(-torch.log(torch.rand(len(absent), generator=generator).clamp_min(1e-12)))
        order = (closest / temperature + gumbel).argsort(descending=True)[:fill]  # Gumbel top-k: weighted, no repeats
    present[absent[order]] = True
    return present.nonzero().flatten()


def remap_labels(labels: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels in the index space of ``classes`` (a sorted subset of range(num_classes)); others become ignore (-1)."""
    lut = torch.full((num_classes + 1,), -1, dtype=labels.dtype, device=labels.device)  # slot num_classes: ignore
    lut[classes.to(labels.device)] = torch.arange(len(classes), dtype=labels.dtype, device=labels.device)
    return lut[torch.where(labels >= 0, labels, torch.full_like(labels, num_classes))]
