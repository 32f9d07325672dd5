"""Semantic-guided prompt refinement: two-pass inference (docs/paper-choices.md #17-#20).

Pass 1 predicts with the bank's visual prompts. A class is *detected* in an image when its voting pixels - those
where it is the argmax and its probability is at least ``min_score`` - cover at least ``min_area`` of the pass-1
map (:class:`RefinePolicy`). Its voting pixels are framed in the *input image* by the one prompt-image rule of
:func:`dpseg.model.prompt_image.prepare_prompt_image` (a square around them, the region filling 70 % of it, the rest
of the frame kept or masked by ``framing`` - as the objects of generated prompt images are framed), encoded by the
frozen visual-prompt encoder in one batch (:func:`crop_prompts`; ``source="pooled"`` instead pools pass 1's image
features over them, :func:`region_prompts`), and replace that class's visual prompts: global V for all M templates
and the pooled stage features v_j (``crop_weight`` < 1 blends them instead: weight·crop + (1 − weight)·generated
prompt, per template).
Undetected classes and all text prompts are unchanged. Pass 2 re-runs only the cost volumes and the decoder: the
image features of pass 1 are reused. Inference only; no training is involved.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from dpseg.errors import InputError
from dpseg.model.decode_state import DecodeState
from dpseg.model.dual_prompt import PromptSet
from dpseg.model.early_rejection import EarlyRejection
from dpseg.model.prompt_image import OBJECT_FILL, prepare_prompt_image
from dpseg.model.towers import ImageFeatures


@dataclass(frozen=True)
class RefinePolicy:
    """Which pass-1 classes get refined, and how much is re-decoded: ``eval.refine_X`` is field ``X`` (defaults,
    ranges and meanings in :class:`dpseg.config_schema.EvalConfig`; built by
    :func:`dpseg.evaluation.inference.refine_policy`)."""

    min_score: float  # a pixel votes for its best class only if that class's probability is >= this
    min_area: float  # a class is detected if its votes cover at least this fraction of the map
    max_classes: int  # at most this many detected classes per image, largest first (0 = all)
    scope: str  # "all" re-decodes every class (the paper), "present" only the detected ones
    crop_weight: float  # 1 = the crop replaces the class's visual prompts (the paper); < 1 blends it in
    framing: str  # "context" | "tight" | "masked": how the crop is framed (CROP_FRAMING)
    replace: str  # "both" | "global" | "stages": which visual prompts the crop replaces
    source: str = "crops"  # "crops": framed crops through the prompt encoder (the paper) | "pooled" (region_prompts)


# framing -> (share of the frame's side the class's pixels span, pixels outside them at the CLIP mean colour)
CROP_FRAMING = {"context": (OBJECT_FILL, False), "tight": (1.0, False), "masked": (OBJECT_FILL, True)}


def voting_labels(logits: Tensor, min_score: float) -> Tensor:
    """(B, K, h, w) logits -> (B, h, w) argmax class of each pixel whose best probability is >= ``min_score``, else
    -1: the pixels that count for a class's area and form its crop."""
    best, labels = logits.max(dim=1)  # (B, h, w)
    return labels.masked_fill(best.sigmoid() < min_score, -1)


def detected_classes(logits: Tensor, min_area: float, max_classes: int = 0, min_score: float = 0.0) -> Tensor:
    """(B, K, h, w) logits -> (B, K) bool: classes whose voting pixels (:func:`voting_labels`) cover >= ``min_area``
    of the map (and >= 1 pixel); with ``max_classes`` > 0 only the largest that many per image."""
    B, K, h, w = logits.shape
    labels = voting_labels(logits, min_score).view(B, -1)  # (B, h*w)
    votes = (labels >= 0).float()
    counts = torch.zeros(B, K, device=logits.device).scatter_add_(1, labels.clamp(min=0), votes)
    detected = (counts > 0) & (counts >= min_area * h * w)
    if 0 < max_classes < K:
        rank = counts.masked_fill(~detected, -1).argsort(dim=1, descending=True).argsort(dim=1)  # 0 = largest
        detected &= rank < max_classes
    return detected


def region_prompts(model, feats: ImageFeatures, masks: Tensor, image_index: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``eval.refine_source=pooled``: a detected class's prompts pooled from the pass-1 image features over its
    voting pixels instead of a crop through the prompt encoder - V from the CLIP head on the region's mean E_5 (as
    the global embedding is the head on the image's mean), v_j the region's mean E_j. No encoder runs: an
    approximation (the fine-tuned image encoder instead of the frozen one, the whole image's context in every
    feature), off by default; its accuracy cost is measured in BENCHMARKS.md.

    masks (N, h, w) bool at any resolution, image_index (N,) -> V (N, d) normalised, [v_2, v_3, v_4] (N, D_j)."""
    pooled = []
    for e in feats.stages:  # E_2..E_5, (B, D_j, h_j, w_j)
        weights = F.adaptive_avg_pool2d(masks[:, None].float(), (e.shape[-2], e.shape[-1]))[:, 0]  # (N, h_j, w_j)
        weights = weights / weights.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        means = weights.new_zeros(len(masks), e.shape[1])  # (N, D_j)
        for b in image_index.unique().tolist():  # one image at a time: E_j is never copied per region
            rows = image_index == b
            # (n, h_j, w_j) x (D_j, h_j, w_j) -> (n, D_j): the weighted mean of each region of image b
            means[rows] = torch.einsum("nhw,dhw->nd", weights[rows], e[b].float())
        pooled.append(means)
    e5 = pooled[-1][:, :, None, None]  # (N, D_5) -> (N, D_5, 1, 1)
    global_ = F.normalize(model.image_encoder.dense_head(e5.to(feats.stages[-1].dtype)).flatten(1).float(), dim=-1)
    return global_, pooled[:3]


@torch.no_grad()
def refine_prompts(
    model,
    images: Tensor,
    logits: Tensor,
    prompts: PromptSet,
    policy: RefinePolicy,
    feats: Optional[ImageFeatures] = None,
) -> tuple[PromptSet, Tensor]:
    """Per-image prompts (B, K, M, ·) with the visual prompts of detected classes replaced by crop embeddings.
    ``feats``: pass 1's image features, which ``policy.source == "pooled"`` pools (encoded here when not given)."""
    if prompts.visual is None or prompts.visual_stages is None:  # not prompts.has_visual
        raise InputError("prompt refinement replaces visual prompts, but these prompts have none (text-only)")
    B = images.shape[0]
    detected = detected_classes(logits, policy.min_area, policy.max_classes, policy.min_score)  # (B, K)
    K, M = prompts.num_classes, prompts.num_templates

    def per_image(t: Tensor) -> Tensor:
        t = t if t.ndim == 4 else t.unsqueeze(0).expand(B, *t.shape)  # (K, M', D) -> (B, K, M', D)
        return t.expand(B, K, M, t.shape[-1]).clone()  # one prompt per template so rows can be replaced

    visual = per_image(prompts.visual)
    stages = [per_image(v) for v in prompts.visual_stages]
    pairs = detected.nonzero().tolist()
    if pairs:
        idx = torch.tensor(pairs, device=images.device)  # (N, 2): image, class
        if policy.source == "pooled":
            with record_function("dpseg.refine_pooled"):
                feats = feats if feats is not None else model.encode_image(images)
                masks = voting_labels(logits, policy.min_score)[idx[:, 0]] == idx[:, 1, None, None]  # (N, h, w)
                v_crop, stage_crops = region_prompts(model, feats, masks, idx[:, 0])
        else:
            with record_function("dpseg.refine_crops"):
                v_crop, stage_crops = crop_prompts(model, images, logits, pairs, policy)
        idx_b, idx_k = idx[:, 0], idx[:, 1]
        w = policy.crop_weight
        if policy.replace in ("both", "global"):
            # (N, M, d) <- (N, 1, d) broadcast over the M templates; w = 1 is a plain replacement
            visual[idx_b, idx_k] = w * v_crop[:, None].to(visual.dtype) + (1 - w) * visual[idx_b, idx_k]
        if policy.replace in ("both", "stages"):
            for t, s in zip(stages, stage_crops):
                t[idx_b, idx_k] = w * s[:, None].to(t.dtype) + (1 - w) * t[idx_b, idx_k]  # (N, M, D_j)
    refined = PromptSet(prompts.class_names, prompts.text, visual, stages)
    return refined, detected


def crop_prompts(
    model, images: Tensor, logits: Tensor, pairs: list[list[int]], policy: RefinePolicy
) -> tuple[Tensor, list[Tensor]]:
    """Each (image, class) pair's voting pixels framed in the input image by ``policy.framing`` and encoded by the
    frozen prompt encoder in one batch -> V (N, d) normalised, [v_2, v_3, v_4] (N, D_j)."""
    labels = voting_labels(logits, policy.min_score).unsqueeze(1).float()  # (B, 1, h, w), -1 = no vote
    labels = F.interpolate(labels, size=images.shape[-2:], mode="nearest")[:, 0].long()  # (B, H, W): input size
    size, (fill, outside) = model.prompt_image_size, CROP_FRAMING[policy.framing]
    crops = torch.stack(
        [prepare_prompt_image(images[b], size, mask=labels[b] == k, fill=fill, mask_outside=outside) for b, k in pairs]
    )
    unique, inverse = unique_images(crops)  # classes framed alike share one crop: encode it once
    v_unique, stages_unique = model.encode_visual_prompts(unique)  # (U, d), [(U, D_j)]
    return v_unique[inverse], [s[inverse] for s in stages_unique]  # (N, d), [(N, D_j)]


def unique_images(images: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 3, S, S) -> the distinct images (U, 3, S, S) and, for each input, the index of its copy among them (N,).
    Classes whose pass-1 regions get the same frame (e.g. several stuff classes spanning the image's width) have
    identical crops; the encoder then sees each once (exact: the same input gives the same embedding)."""
    kept: list[int] = []
    inverse = []
    for i in range(len(images)):
        same = next((u for u, j in enumerate(kept) if torch.equal(images[j], images[i])), None)
        if same is None:
            kept.append(i)
            same = len(kept) - 1
        inverse.append(same)
    return images[kept], torch.tensor(inverse, device=images.device)


def _accepts_state(decode) -> bool:
    """Whether ``decode`` takes a DecodeState (a stand-in with the plain signature does not)."""
    try:
        return "state" in inspect.signature(decode).parameters
    except (TypeError, ValueError):
        return False


def two_pass(
    model,
    images: Tensor,
    prompts: PromptSet,
    policy: RefinePolicy,
    class_chunk: int = 0,
    rejection: EarlyRejection = EarlyRejection(),
) -> dict:
    """Inference I, refinement, Inference II. Returns logits of both passes, detected classes, refined prompts.

    ``policy.scope``: ``"all"`` re-decodes every class (the paper); ``"present"`` re-decodes only the classes
    detected in some image of the batch and keeps the pass-1 logits of the others. The decoder dominates the cost
    of a pass, so "all" makes pass 2 nearly as expensive as pass 1, while "present" costs about (detected / K) of
    a decoder pass. ``rejection`` (SED's category early rejection; off by default) applies to both passes.
    """
    extra = rejection.decode_options()
    # pass 2 of scope "all" reuses what pass 1 computed that the new prompts do not change (decode_state.py)
    state = {"state": DecodeState()} if policy.scope == "all" and _accepts_state(model.decode) else {}
    feats = model.encode_image(images)
    first = model.decode(feats, prompts, class_chunk, **extra, **state)["logits"]
    refined, detected = refine_prompts(model, images, first, prompts, policy, feats=feats)
    if policy.scope == "all":
        if state:  # stage 0 reads the dual prompts R = f(T, V): only pairs whose global V changed are new there
            state["state"].changed = detected if policy.replace in ("both", "global") else torch.zeros_like(detected)
        second = model.decode(feats, refined, class_chunk, **extra, **state)["logits"]
    else:
        idx = detected.any(dim=0).nonzero().flatten()
        second = first.clone()
        if len(idx):
            second[:, idx] = model.decode(feats, refined.select(idx.tolist()), class_chunk, **extra)["logits"]
    return {"logits_pass1": first, "logits": second, "detected": detected, "prompts": refined}
