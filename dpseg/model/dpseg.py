"""DPSeg: the full network (paper Fig. 2; DESIGN §2).

    images ─ image encoder (trainable, lr × 0.01) ─ E_2..E_5, dense E
    prompts (bank: T, V, v_j) ─ dual prompt R = norm(norm V + norm T) ─ F_c = cos(E, R) ─ cost embedding
    decoder: 3 × [HD-conv + class attention → ×2 up → fuse(E_j, F_v^j = cos(E_j, v_j))] → head → logits @ 1/4

The text tower and the visual-prompt encoder (a frozen copy of the initial image tower) are held by the model so
that prompts can be encoded consistently, but they never train. ``forward`` returns a dict and never a loss.
Inference can be split: :meth:`encode_image` once, then :meth:`decode` with different prompts (the two-pass
refinement re-uses the image features this way).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from dpseg.config import ModelConfig
from dpseg.errors import InputError
from dpseg.model.cost_volume import CostEmbedding, UpsampledCostGuidance, VisualCostEmbedding, cosine_cost_volume
from dpseg.model.decoder import CostVolumeGuidedDecoder
from dpseg.model.prompts import PromptSet, dual_prompt
from dpseg.model.towers import ImageFeatures, ImageTower, TextTower


def _classes(t: Tensor, s: slice) -> Tensor:
    """Slice the class axis of a (…, K, M, D) prompt tensor."""
    return t[..., s, :, :]


class DPSeg(nn.Module):
    def __init__(self, cfg: ModelConfig, image_encoder: ImageTower, prompt_encoder: ImageTower,
                 text_encoder: TextTower, num_templates: int):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.text_encoder = text_encoder
        self.num_templates = num_templates
        self.prompt_type = cfg.prompt_type
        self.guidance = cfg.guidance
        self.visual_scales = sorted(cfg.visual_scales) if cfg.guidance == "visual" else []
        self.detach_guidance = cfg.detach_guidance
        self.prompt_image_size = cfg.prompt_image_size
        self.refine_min_area = cfg.refine_min_area
        self.refine_max_classes = cfg.refine_max_classes
        self.refine_scope = cfg.refine_scope
        self.class_chunk = cfg.class_chunk
        D = image_encoder.stage_dims  # D_2, D_3, D_4, D_5

        self.cost_embedding = CostEmbedding(num_templates, cfg.cost_embed_dim, cfg.cost_embed_kernel)
        # decoder stage s fuses encoder stage j = 4 - s
        cost_guidance = [self._guided(4 - s) * cfg.cost_guidance_dims[s] for s in range(3)]
        self.visual_cost = nn.ModuleDict(
            {str(j): VisualCostEmbedding(num_templates, cfg.cost_guidance_dims[4 - j]) for j in self.visual_scales}
        )
        self.upsampled_cost = (
            UpsampledCostGuidance(num_templates, cfg.cost_guidance_dims) if cfg.guidance == "upsampled" else None
        )
        self.decoder = CostVolumeGuidedDecoder(
            cfg.cost_embed_dim, cfg.decoder_dims, [D[2], D[1], D[0]], cfg.encoder_guidance_dims, cost_guidance,
            cfg.attention_heads, cfg.mlp_ratio, cfg.class_pool_train, cfg.class_pool_test,
        )

    def _guided(self, j: int) -> bool:
        return self.guidance == "upsampled" or j in self.visual_scales

    @property
    def needs_visual_prompts(self) -> bool:
        return self.prompt_type != "text" or bool(self.visual_scales)

    def train(self, mode: bool = True):
        super().train(mode)
        self.prompt_encoder.eval()  # frozen towers never switch to training behaviour
        self.text_encoder.eval()
        return self

    # ------------------------------------------------------------------------------------------- encoding

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """(B, 3, H, W) RGB in [0, 1], H and W multiples of 32 -> stage maps and dense embedding."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2] % 32 or images.shape[-1] % 32:
            raise InputError(
                f"image height and width must be multiples of 32, got {tuple(images.shape[-2:])}; resize or pad "
                "first (dpseg.evaluation.inference and Segmenter do this for you)"
            )
        if not images.is_floating_point():
            raise InputError(f"images must be float RGB in [0, 1], got dtype {images.dtype}")
        with record_function("dpseg.image_encoder"):
            return self.image_encoder(images)

    @torch.no_grad()
    def encode_text_prompts(self, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
        """T (K, M, d) from the frozen text tower."""
        if len(templates) != self.num_templates:
            raise InputError(f"the model was built for M={self.num_templates} templates, got {len(templates)}")
        return self.text_encoder.encode(class_names, templates)

    @torch.no_grad()
    def encode_visual_prompts(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Visual-prompt images (N, 3, S, S) in [0, 1] -> V (N, d) normalised, [v_2, v_3, v_4] (N, D_j)."""
        return self.prompt_encoder.encode_prompts(images)

    # ------------------------------------------------------------------------------------------- decoding

    def check_prompts(self, prompts: PromptSet) -> None:
        if prompts.num_templates != self.num_templates:
            raise InputError(
                f"the prompts have M={prompts.num_templates} templates but the model was built for "
                f"M={self.num_templates}; build the prompts with the model's template set"
            )
        if prompts.text.shape[-1] != self.text_encoder.embed_dim:
            raise InputError(f"text prompts have width {prompts.text.shape[-1]}, the model's CLIP {self.text_encoder.embed_dim}")
        if self.prompt_type != "text" and prompts.visual is None:
            raise InputError(
                f"model.prompt_type={self.prompt_type} needs visual prompts; pass a prompt bank "
                "(dpseg prompts build) or use a text-only model"
            )
        if self.visual_scales:
            if prompts.visual_stages is None:
                raise InputError(
                    "this model's decoder uses visual cost volumes, which need the pooled stage features of visual "
                    "prompts (a prompt bank); none were given"
                )
            for j, v in zip((2, 3, 4), prompts.visual_stages):
                if v.shape[-1] != self.image_encoder.stage_dims[j - 2]:
                    raise InputError(f"visual stage-{j} prompts have width {v.shape[-1]}, the encoder {self.image_encoder.stage_dims[j - 2]}")

    def decode(self, feats: ImageFeatures, prompts: PromptSet, class_chunk: Optional[int] = None) -> dict:
        """Cost volumes + decoder for one vocabulary: {"logits": (B, K, H/4, W/4)}."""
        self.check_prompts(prompts)
        chunk = self.class_chunk if class_chunk is None else class_chunk
        dense = feats.dense
        stages = [s.detach() if self.detach_guidance else s for s in feats.stages]
        R = dual_prompt(prompts.text, prompts.visual, self.prompt_type).to(dense.dtype)  # (…, K, M, d)
        if R.ndim == 4 and R.shape[0] != dense.shape[0]:
            raise InputError(f"per-image prompts are for {R.shape[0]} images but the batch has {dense.shape[0]}")

        def cost(s: slice) -> Tensor:
            with record_function("dpseg.cost_volume"):
                return self.cost_embedding(cosine_cost_volume(dense, _classes(R, s)))  # (B, k, C_0, h5, w5)

        def guidance(stage: int, s: slice) -> Optional[Tensor]:
            j = 4 - stage
            if self.upsampled_cost is not None:
                with record_function("dpseg.upsampled_cost"):
                    return self.upsampled_cost(cosine_cost_volume(dense, _classes(R, s)), stage)
            if j in self.visual_scales:
                with record_function("dpseg.visual_cost_volume"):
                    v = _classes(prompts.visual_stages[j - 2], s).to(dense.dtype)
                    return self.visual_cost[str(j)](stages[j - 2], v)  # (B, k, c_j, h_j, w_j)
            return None

        with record_function("dpseg.decode"):
            logits = self.decoder(cost, prompts.num_classes, [stages[2], stages[1], stages[0]], guidance, chunk)
        return {"logits": logits}

    def forward(self, images: Tensor, prompts: PromptSet, class_chunk: Optional[int] = None) -> dict:
        return self.decode(self.encode_image(images), prompts, class_chunk)

    # --------------------------------------------------------------------------------------- parameters

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: the image encoder (lr × encoder_lr_mult) and everything else."""
        encoder = [p for p in self.image_encoder.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in self.image_encoder.parameters()}
        frozen_ids = {id(p) for p in self.prompt_encoder.parameters()} | {id(p) for p in self.text_encoder.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids | frozen_ids]
        return {"image_encoder": encoder, "decoder": rest}
