"""The one factory: config → DPSeg. Every part of the network (the CLIP towers of :mod:`dpseg.clip_loading`, the cost
embeddings, the decoder stages of the chosen variant) is built here from the ``model`` section and handed to
:class:`~dpseg.model.dpseg.DPSeg`, which reads no config. Also the parameter counts per component.

Saving and loading a built model is :mod:`dpseg.checkpoint`; starting one from another checkpoint's weights is
:mod:`dpseg.init_from`.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from dpseg.clip_loading import build_towers
from dpseg.config import Config, ModelConfig
from dpseg.errors import ConfigError
from dpseg.init_patch import INIT_PATCH_LOCK
from dpseg.model.aggregation import ClassAggregation, ConvNeXtAggregation, SEDClassAggregation, SpatialAggregation
from dpseg.model.cost_volume import CostEmbedding, UpsampledCostGuidance, VisualCostEmbedding
from dpseg.model.decoder import ClassHead, CostVolumeGuidedDecoder, DecoderStage
from dpseg.model.dpseg import DPSeg
from dpseg.prompts.templates import model_templates


def build_model(cfg: Config, load_clip_weights: bool = True) -> DPSeg:
    """DPSeg from a resolved config: every part is built here and handed to the network (which reads no config).
    CLIP weights come from ``model.clip_pretrained`` unless told not to."""
    m = cfg.model
    with INIT_PATCH_LOCK:  # random initialisation while no other thread has torch.nn.init patched
        image, prompt, text = build_towers(m, load_weights=load_clip_weights, prompt_encoder=uses_visual_prompts(m))
        M = len(model_templates(cfg))
        upsample_first = image.dense_stride > image.stage_strides[2]  # F_c below E_4's resolution (stride 32 vs 16)
        try:
            return DPSeg(
                image,
                prompt,
                text,
                CostEmbedding(M, m.cost_embed_dim, m.cost_embed_kernel),
                build_decoder(m, image.stage_dims, upsample_first),
                upsampled_cost=_upsampled_cost(m, M, upsample_first),
                visual_cost=_visual_costs(m, M),
                prompt_type=m.prompt_type,
                detach_guidance=m.detach_guidance,
                prompt_image_size=m.prompt_image_size,
                visual_prompt_keep=m.visual_prompt_keep,
            )
        except ValueError as e:
            raise ConfigError(f"the model section of the config is inconsistent: {e}") from None


def _visual_scales(m: ModelConfig) -> list[int]:
    return sorted(m.visual_scales) if m.guidance in ("visual", "both") else []


def uses_visual_prompts(m: ModelConfig) -> bool:
    """Whether the model reads visual prompts (and so holds a visual-prompt encoder)."""
    return m.prompt_type != "text" or bool(_visual_scales(m))


def _upsampled_cost(m: ModelConfig, num_templates: int, upsample_first: bool) -> Optional[UpsampledCostGuidance]:
    if m.guidance not in ("upsampled", "both"):
        return None
    return UpsampledCostGuidance(num_templates, m.cost_guidance_dims, upsample_first)


def _visual_costs(m: ModelConfig, num_templates: int) -> dict[int, VisualCostEmbedding]:
    """Encoder stage j -> the embedding of F_v^j (decoder stage 4 - j takes its guidance width)."""
    return {
        j: VisualCostEmbedding(num_templates, m.cost_guidance_dims[4 - j], m.visual_cost_norm)
        for j in _visual_scales(m)
    }


def build_decoder(m: ModelConfig, stage_dims: list[int], upsample_first: bool = True) -> CostVolumeGuidedDecoder:
    """The three decoder stages (widths cost_embed_dim -> decoder_dims) fusing E_4, E_3, E_2 and their guidance;
    without ``upsample_first`` (a dense embedding at E_4's stride) stage 0 projects instead of upsampling."""
    widths = [m.cost_embed_dim] + list(m.decoder_dims)
    encoder_dims = [stage_dims[2], stage_dims[1], stage_dims[0]]  # D_4, D_3, D_2 for decoder stages 0, 1, 2
    scales = _visual_scales(m)
    stages = []
    for s in range(3):
        guidance = (m.cost_guidance_dims[s] if m.guidance in ("upsampled", "both") else 0) + (
            m.cost_guidance_dims[s] if 4 - s in scales else 0
        )
        spatial = (
            SpatialAggregation(widths[s])
            if m.spatial_aggregation == "hdconv"
            else ConvNeXtAggregation(widths[s], m.spatial_kernel, m.mlp_ratio)
        )
        classes = ClassAggregation if m.class_aggregation == "dpseg" else SEDClassAggregation
        stages.append(
            DecoderStage(
                spatial,
                classes(widths[s], m.attention_heads, m.mlp_ratio, m.class_pool_train, m.class_pool_test),
                widths[s],
                widths[s + 1],
                encoder_dims[s],
                m.encoder_guidance_dims[s],
                guidance,
                upsample=s > 0 or upsample_first,
            )
        )
    head = ClassHead(widths[-1])
    aux_heads = [ClassHead(w) for w in widths[:3]] if m.aux_heads else None  # on the maps entering stages 0, 1, 2
    return CostVolumeGuidedDecoder(stages, head, aux_heads)


# ------------------------------------------------------------------------------------------ parameter counts


def component_counts(model) -> list[tuple[str, int, int]]:
    """(component, total, trainable) rows for a DPSeg model, plus a total row."""
    parts: list[tuple[str, nn.Module]] = [
        ("image encoder (CLIP image tower, lr × encoder_lr_mult)", model.image_encoder),
        *([("visual-prompt encoder (frozen copy)", model.prompt_encoder)] if model.prompt_encoder is not None else []),
        ("text encoder (frozen CLIP text tower)", model.text_encoder),
        ("cost embedding", model.cost_embedding),
        ("visual cost embeddings", model.visual_cost),
        ("decoder (aggregation, upsampling, fusion, head)", model.decoder),
    ]
    if model.upsampled_cost is not None:
        parts.append(("upsampled-cost guidance (SED mode)", model.upsampled_cost))
    rows = [
        (name, sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if p.requires_grad))
        for name, m in parts
    ]
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(r[1] for r in rows), "a component is missing from the summary"
    rows.append(("total", total, sum(p.numel() for p in model.parameters() if p.requires_grad)))
    return rows


def human_count(n: int) -> str:
    """12.35M, 4.20K, 0: a parameter count for humans."""
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n / 1e3:.2f}K" if n else "0"


def format_counts(rows: list[tuple[str, int, int]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'component':<{width}}  {'total':>10}  {'trainable':>10}"]
    lines += [f"{name:<{width}}  {human_count(t):>10}  {human_count(tr):>10}" for name, t, tr in rows]
    return "\n".join(lines)
