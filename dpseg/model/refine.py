"""Semantic-guided prompt refinement: two-pass inference (paper §4.6; notes §9 #17-#20).

Pass 1 predicts with the bank's visual prompts. For every class that covers at least ``min_area`` of an image
in the pass-1 label map, the class's predicted region is cut out of the *input image* (bounding box of the mask,
pixels outside the mask filled with the CLIP mean colour, resized and padded to a square: the one rule of
``dpseg.model.prompt_image.prepare_prompt_image`` that generated and exemplar prompts go through too),
encoded by the frozen visual-prompt encoder, and replaces that class's visual prompts - global V for all M
templates and the pooled stage features v_j. Undetected classes and all text prompts are unchanged. Pass 2
re-runs only the cost volumes and the decoder: the image features of pass 1 are reused.
Inference only; no training is involved.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from dpseg.errors import InputError
from dpseg.model.prompt_image import prepare_prompt_image
from dpseg.model.prompts import PromptSet


def detected_classes(logits: Tensor, min_area: float, max_classes: int = 0) -> Tensor:
    """(B, K, h, w) logits -> (B, K) bool: classes holding ≥ min_area of the argmax map (and ≥ 1 pixel);
    with ``max_classes`` > 0 only the largest that many per image."""
    B, K, h, w = logits.shape
    labels = logits.argmax(dim=1).view(B, -1)  # (B, h*w)
    counts = torch.zeros(B, K, device=logits.device).scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float))
    detected = (counts > 0) & (counts >= min_area * h * w)
    if 0 < max_classes < K:
        rank = counts.masked_fill(~detected, -1).argsort(dim=1, descending=True).argsort(dim=1)  # 0 = largest
        detected &= rank < max_classes
    return detected


@torch.no_grad()
def refine_prompts(model, images: Tensor, logits: Tensor, prompts: PromptSet,
                   min_area: Optional[float] = None) -> tuple[PromptSet, Tensor]:
    """Per-image prompts (B, K, M, ·) with the visual prompts of detected classes replaced by crop embeddings."""
    if not prompts.has_visual:
        raise InputError("prompt refinement replaces visual prompts, but these prompts have none (text-only)")
    min_area = model.refine_min_area if min_area is None else min_area
    B, _, H, W = images.shape
    detected = detected_classes(logits, min_area, model.refine_max_classes)  # (B, K)
    labels = logits.argmax(dim=1, keepdim=True).float()  # (B, 1, h, w)
    labels = F.interpolate(labels, size=(H, W), mode="nearest")[:, 0].long()  # (B, H, W) at the input size
    K, M = prompts.num_classes, prompts.num_templates

    def per_image(t: Tensor) -> Tensor:
        t = t if t.ndim == 4 else t.unsqueeze(0).expand(B, *t.shape)  # (K, M', D) -> (B, K, M', D)
        return t.expand(B, K, M, t.shape[-1]).clone()  # one prompt per template so rows can be replaced

    visual = per_image(prompts.visual)
    stages = [per_image(v) for v in prompts.visual_stages]
    pairs = detected.nonzero().tolist()
    if pairs:
        with record_function("dpseg.refine_crops"):
            size = model.prompt_image_size
            crops = torch.stack([prepare_prompt_image(images[b], size, mask=labels[b] == k) for b, k in pairs])
            v_crop, stage_crops = model.encode_visual_prompts(crops)  # (N, d), [(N, D_j)]
        idx_b = torch.tensor([b for b, _ in pairs], device=images.device)
        idx_k = torch.tensor([k for _, k in pairs], device=images.device)
        visual[idx_b, idx_k] = v_crop[:, None].to(visual.dtype)  # (N, 1, d) broadcast over the M templates
        for t, s in zip(stages, stage_crops):
            t[idx_b, idx_k] = s[:, None].to(t.dtype)
    refined = PromptSet(prompts.class_names, prompts.text, visual, stages)
    return refined, detected


def two_pass(model, images: Tensor, prompts: PromptSet, class_chunk: Optional[int] = None,
             min_area: Optional[float] = None, scope: Optional[str] = None) -> dict:
    """Inference I, refinement, Inference II. Returns logits of both passes, detected classes, refined prompts.

    ``scope`` (default ``model.refine_scope``): ``"all"`` re-decodes every class (the paper); ``"present"``
    re-decodes only the classes that hold at least one pixel of a pass-1 label map in the batch and keeps the
    pass-1 logits of the others. The decoder dominates the cost of a pass, so "all" makes pass 2 nearly as
    expensive as pass 1, while "present" costs about (present classes / K) of a decoder pass.
    """
    scope = model.refine_scope if scope is None else scope
    if scope not in ("all", "present"):
        raise InputError(f"refinement scope must be 'all' or 'present', got {scope!r}")
    feats = model.encode_image(images)
    first = model.decode(feats, prompts, class_chunk)["logits"]
    refined, detected = refine_prompts(model, images, first, prompts, min_area)
    if scope == "all":
        second = model.decode(feats, refined, class_chunk)["logits"]
    else:
        K = first.shape[1]
        present = torch.zeros(K, dtype=torch.bool, device=first.device)
        present[first.argmax(dim=1).unique()] = True
        idx = present.nonzero().flatten()
        second = first.clone()
        second[:, idx] = model.decode(feats, refined.select(idx.tolist()), class_chunk)["logits"]
    return {"logits_pass1": first, "logits": second, "detected": detected, "prompts": refined}
