"""A CLIP-score filter for generated prompt images (``model.visual_prompt_keep``).

A text-to-image generator misdraws some concepts systematically (a wrong colour, a wrong shape); keeping only the
generated images that agree with their text is common practice with Stable Diffusion data. Here a class's M bank
images are ranked by the cosine of their visual prompt V_m with the class's mean normalised text embedding, the
best ``ceil(keep * M)`` are kept, and each dropped image's prompts (V_m and its stage features v_j,m) are replaced by
the mean of the kept ones (averaged as every prompt image is, ``average_prompts``: V renormalised, v_j a plain mean),
so the prompt set keeps its (K, M, ·) shape and R(k, m) still pairs V_m with T_m.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dpseg.errors import InputError
from dpseg.model.dual_prompt import PromptSet
from dpseg.prompts.exemplars import average_prompts


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
    best = score.topk(n, dim=1).indices  # (K, n) the kept images of each class
    visual = prompts.visual.clone()
    stages = None if prompts.visual_stages is None else [t.clone() for t in prompts.visual_stages]
    for k, ids in enumerate(best):
        dropped = sorted(set(range(M)) - set(ids.tolist()))
        # the project's one rule for averaging prompt images (builder, exemplars): V renormalised, v_j plain mean
        mean_v, mean_stages = average_prompts(visual[k, ids], [t[k, ids] for t in stages or []])
        visual[k, dropped] = mean_v.to(visual.dtype)
        for t, mean in zip(stages or [], mean_stages):
            t[k, dropped] = mean.to(t.dtype)
    return PromptSet(prompts.class_names, prompts.text, visual, stages)
