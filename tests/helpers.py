"""Shared test helpers: tiny models and random prompts."""

import torch

from dpseg.build import build_model
from dpseg.config import build_config
from dpseg.model.prompts import PromptSet


def tiny_model(*overrides, seed=0):
    torch.manual_seed(seed)
    cfg = build_config("dpseg-tiny", overrides=list(overrides))
    return build_model(cfg), cfg


def random_prompts(model, num_classes, seed=0, templates=None, names=None):
    """Text prompts from the model's tower and visual prompts from random 'generated' images."""
    g = torch.Generator().manual_seed(seed)
    names = names or [f"class {i}" for i in range(num_classes)]
    M = model.num_templates
    templates = templates or [f"template {m} of a {{}}." for m in range(M)]
    T = model.encode_text_prompts(names, templates)
    if model.prompt_encoder is None:  # a text-only model holds no visual-prompt encoder (and ignores V, v_j)
        V = torch.nn.functional.normalize(torch.randn(num_classes * M, T.shape[-1], generator=g), dim=-1)
        stages = [torch.randn(num_classes * M, d, generator=g) for d in model.image_encoder.stage_dims[:3]]
    else:
        images = torch.rand(num_classes * M, 3, model.prompt_image_size, model.prompt_image_size, generator=g)
        V, stages = model.encode_visual_prompts(images)
    return PromptSet(names, T, V.view(num_classes, M, -1), [s.view(num_classes, M, -1) for s in stages])
