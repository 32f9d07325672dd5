"""DPSeg: the full network (paper Fig. 2).

    images ─ image encoder (trainable, lr × 0.01) ─ E_2..E_5, dense E
    prompts (bank: T, V, v_j) ─ dual prompt R = norm(norm V + norm T) ─ F_c = cos(E, R) ─ cost embedding
    decoder: 3 × [spatial + class aggregation → ×2 up → fuse(E_j, F_v^j = cos(E_j, v_j))] → head → logits @ 1/4

Its parts are built and injected by :func:`dpseg.build.build_model` (this module never reads a config). The text
tower and the visual-prompt encoder (a frozen copy of the initial image tower) are held so that prompts can be
encoded consistently, but they never train. ``forward`` returns a dict and never a loss. Inference can be split:
:meth:`encode_image` once, then :meth:`decode` with different prompts (the two-pass refinement re-uses the image
features this way).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from dpseg.errors import InputError
from dpseg.model.aggregation import class_chunks
from dpseg.model.cost_volume import CostEmbedding, UpsampledCostGuidance, VisualCostEmbedding, cosine_cost_volume
from dpseg.model.decoder import CostVolumeGuidedDecoder
from dpseg.model.prompts import PromptSet, dual_prompt
from dpseg.model.towers import ImageFeatures, ImageTower, TextTower

PROMPT_TYPES = ("text", "visual", "dual")


class DPSeg(nn.Module):
    def __init__(self, image_encoder: ImageTower, prompt_encoder: ImageTower, text_encoder: TextTower,
                 cost_embedding: CostEmbedding, decoder: CostVolumeGuidedDecoder,
                 upsampled_cost: Optional[UpsampledCostGuidance] = None,
                 visual_cost: Optional[dict[int, VisualCostEmbedding]] = None, prompt_type: str = "dual",
                 detach_guidance: bool = True, prompt_image_size: int = 320):
        """``visual_cost`` maps encoder stage j (2, 3, 4) to its visual cost embedding; decoder stage s = 4 - j
        gets F_v^j. ``upsampled_cost`` (SED's guidance) feeds every decoder stage."""
        super().__init__()
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.text_encoder = text_encoder
        self.cost_embedding = cost_embedding
        self.visual_cost = nn.ModuleDict({str(j): m for j, m in sorted((visual_cost or {}).items())})
        self.upsampled_cost = upsampled_cost
        self.decoder = decoder
        self.prompt_type = prompt_type
        self.detach_guidance = detach_guidance
        self.prompt_image_size = prompt_image_size

    @property
    def num_templates(self) -> int:
        return self.cost_embedding.num_templates

    @property
    def visual_scales(self) -> list[int]:
        return [int(j) for j in self.visual_cost]

    @property
    def guidance(self) -> str:
        """none | upsampled (SED) | visual (DPSeg) | both - what the decoder stages are guided by."""
        kinds = (["upsampled"] if self.upsampled_cost is not None else []) + (["visual"] if self.visual_scales else [])
        return "both" if len(kinds) == 2 else kinds[0] if kinds else "none"

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

    def decode(self, feats: ImageFeatures, prompts: PromptSet, class_chunk: int = 0) -> dict:
        """Cost volumes + decoder for one vocabulary: {"logits": (B, K, H/4, W/4)}.

        Every step except class aggregation is per class, so it runs ``class_chunk`` classes at a time (0 = all):
        only the class-aggregation input of each stage is held for all K, and the result is the same (class
        aggregation is exact under chunking, see aggregation.py).
        """
        self.check_prompts(prompts)
        dense = feats.dense  # E: (B, d, h5, w5)
        E = [s.detach() if self.detach_guidance else s for s in feats.stages]  # E_2..E_5
        R = dual_prompt(prompts.text, prompts.visual, self.prompt_type).to(dense.dtype)  # (…, K, M, d)
        if R.ndim == 4 and R.shape[0] != dense.shape[0]:
            raise InputError(f"per-image prompts are for {R.shape[0]} images but the batch has {dense.shape[0]}")
        chunks = class_chunks(prompts.num_classes, class_chunk)
        stages = self.decoder.stages
        with record_function("dpseg.decode"):
            projected = [stage.encoder_proj(E[2 - s]) for s, stage in enumerate(stages)]  # E_4, E_3, E_2 -> (B, g, h_j, w_j)

            def first(c: slice) -> Tensor:  # dual-prompt cost volume -> cost embedding -> spatial aggregation
                with record_function("dpseg.cost_volume"):
                    F_c = cosine_cost_volume(dense, R[..., c, :, :])  # (B, k, M, h5, w5)
                    return stages[0].spatial(self.cost_embedding(F_c))  # (B, k, C_0, h5, w5)

            x = torch.cat([first(c) for c in chunks], dim=1)  # (B, K, C_0, h5, w5)
            statistics = {j: m.class_statistics(E[int(j) - 2], prompts.visual_stages[int(j) - 2].to(E[0].dtype), chunks)
                          for j, m in self.visual_cost.items() if m.norm == "class"}  # F_v^j over all K classes
            for s, stage in enumerate(stages):
                x = stage.classes(x, class_chunk)  # attention across all K classes
                after = stages[s + 1].spatial if s + 1 < len(stages) else self.decoder.head
                x = torch.cat([after(stage.upsample_fuse(x[:, c], projected[s], self.stage_guidance(s, c, feats, E, R, prompts, statistics)))
                               for c in chunks], dim=1)  # (B, K, C_{s+1}, 2h, 2w); after the head (B, K, H/4, W/4)
        return {"logits": x}

    def stage_guidance(self, s: int, c: slice, feats: ImageFeatures, E: list[Tensor], R: Tensor,
                       prompts: PromptSet, statistics: Optional[dict] = None) -> Optional[Tensor]:
        """Cost guidance of decoder stage ``s`` for the classes ``c``: (B, k, g_s, h_j, w_j) or None."""
        parts = []
        if self.upsampled_cost is not None:
            with record_function("dpseg.upsampled_cost"):
                F_c = cosine_cost_volume(feats.dense, R[..., c, :, :])  # (B, k, M, h5, w5)
                parts.append(self.upsampled_cost(F_c, s))
        j = 4 - s  # decoder stage s fuses encoder stage j
        if str(j) in self.visual_cost:
            with record_function("dpseg.visual_cost_volume"):
                v = prompts.visual_stages[j - 2][..., c, :, :].to(E[j - 2].dtype)  # (…, k, M, D_j)
                parts.append(self.visual_cost[str(j)](E[j - 2], v, (statistics or {}).get(str(j))))  # (B, k, c_j, h_j, w_j)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # concatenated on the channel axis

    def forward(self, images: Tensor, prompts: PromptSet, class_chunk: int = 0) -> dict:
        return self.decode(self.encode_image(images), prompts, class_chunk)

    # --------------------------------------------------------------------------------------- parameters

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: the image encoder (lr × encoder_lr_mult) and everything else."""
        encoder = [p for p in self.image_encoder.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in self.image_encoder.parameters()}
        frozen_ids = {id(p) for p in self.prompt_encoder.parameters()} | {id(p) for p in self.text_encoder.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids | frozen_ids]
        return {"image_encoder": encoder, "decoder": rest}
