"""A CLIP-score filter for generated prompt images (``model.visual_prompt_keep``).

A text-to-image generator misdraws some concepts systematically (a wrong colour, a wrong shape); keeping only the
generated images that agree with their text is common practice with Stable Diffusion data. Here a class's M bank
images are ranked by the cosine of their visual prompt V_m with the class's mean normalised text embedding, the
best ``ceil(keep * M)`` are kept, and each dropped image's prompts (V_m and its stage features v_j,m) are replaced by
the mean of the kept ones, so the prompt set keeps its (K, M, ·) shape and R(k, m) still pairs V_m with T_m.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dpseg.errors import InputError
from dpseg.model.dual_prompt import PromptSet


def keep_agreeing_images(prompts: PromptSet, keep: float) -> PromptSet:
    """The prompt set with each class's images outside its ``keep`` share best agreeing with its text replaced by the
    mean of those kept; ``keep`` = 1 returns the set unchanged. Shared prompts (K, M, ·) only."""
    if not 0 < keep <= 1:
        raise InputError(f"visual_prompt_keep is the share of a class's prompt images kept, in (0, 1], not {keep}")
    if keep == 1 or prompts.visual is None:
        return prompts
    if prompts.visual.ndim != 3:
        raise InputError("visual_prompt_keep filters a vocabulary's shared prompts (K, M, d), not per-image prompts")
    M = prompts.visual.shape[1]
    n = max(1, math.ceil(keep * M - 1e-9))  # images kept per class
    text = F.normalize(F.normalize(prompts.text, dim=-1).mean(1), dim=-1)  # (K, M, d) -> (K, d)
    score = torch.einsum("kmd,kd->km", F.normalize(prompts.visual, dim=-1), text)  # (K, M, d) · (K, d) -> (K, M)
    kept = torch.zeros_like(score, dtype=torch.bool).scatter_(1, score.topk(n, dim=1).indices, True)  # (K, M)

    def fill(t: Tensor) -> Tensor:  # (K, M, D): a dropped image's row := the mean of the kept rows
        mean = (t * kept[..., None]).sum(1, keepdim=True) / n  # (K, M, D) -> (K, 1, D)
        return torch.where(kept[..., None], t, mean)

    stages = None if prompts.visual_stages is None else [fill(s) for s in prompts.visual_stages]
    return PromptSet(prompts.class_names, prompts.text, fill(prompts.visual), stages)
