"""DPSeg: the full network (paper Fig. 2).

    images ─ image encoder (trainable, lr × 0.01) ─ E_2..E_5, dense E
    prompts (bank: T, V, v_j) ─ dual prompt R = norm(norm V + norm T) ─ F_c = cos(E, R) ─ cost embedding
    decoder: 3 × [spatial + class aggregation → ×2 up → fuse(E_j, F_v^j = cos(E_j, v_j))] → head → logits @ 1/4

Its parts are built and injected by :func:`dpseg.build.build_model` (this module never reads a config). The text
tower and the visual-prompt encoder (a frozen copy of the initial image tower) are held so that prompts can be
encoded consistently, but they never train; a model that uses no visual prompts (text prompts, no visual cost
volumes - e.g. SED, preset ``sed-b``) holds no visual-prompt encoder at all. ``forward`` returns a dict and never a
loss. Inference can be split: :meth:`encode_image` once, then :meth:`decode` with different prompts (the two-pass
refinement re-uses the image features this way).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from dpseg.errors import InputError
from dpseg.model.aggregation import ClassAggregation
from dpseg.model.class_decoding import ClassDecoding
from dpseg.model.class_maps import CPU_CHUNK_ELEMENTS, to_class_layout, use_channels_last
from dpseg.model.cost_volume import CostEmbedding, UpsampledCostGuidance, VisualCostEmbedding, cosine_cost_volume
from dpseg.model.decode_state import DecodeState
from dpseg.model.decoder import CostVolumeGuidedDecoder, DecoderStage
from dpseg.model.dual_prompt import PromptSet
from dpseg.model.early_rejection import REJECTED_LOGIT, EarlyRejection, kept_classes
from dpseg.model.towers import ImageFeatures, ImageTower, TextTower

__all__ = ["DPSeg", "FROZEN_TOWERS", "REJECTED_LOGIT", "is_frozen_tower", "kept_classes"]

PROMPT_TYPES = ("text", "visual", "dual")


# The frozen towers: the CLIP text tower and the visual-prompt encoder. Never trained, never taken from another model
# (train.init_from), not part of a training checkpoint's trainable state; their weights define the prompts.
FROZEN_TOWERS = ("prompt_encoder", "text_encoder")


def is_frozen_tower(name: str) -> bool:
    """Whether a state-dict key or parameter name belongs to a frozen tower."""
    return name.split(".", 1)[0] in FROZEN_TOWERS


class DPSeg(nn.Module):
    def __init__(
        self,
        image_encoder: ImageTower,
        prompt_encoder: Optional[ImageTower],
        text_encoder: TextTower,
        cost_embedding: CostEmbedding,
        decoder: CostVolumeGuidedDecoder,
        upsampled_cost: Optional[UpsampledCostGuidance] = None,
        visual_cost: Optional[dict[int, VisualCostEmbedding]] = None,
        prompt_type: str = "dual",
        detach_guidance: bool = True,
        prompt_image_size: int = 320,
        visual_prompt_keep: float = 1.0,
    ):
        """``visual_cost`` maps encoder stage j (2, 3, 4) to its visual cost embedding; decoder stage s = 4 - j
        gets F_v^j. ``upsampled_cost`` (SED's guidance) feeds every decoder stage. ``prompt_encoder`` is None for a
        model that uses no visual prompts."""
        super().__init__()
        if prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type must be one of {PROMPT_TYPES}, got {prompt_type!r}")
        if prompt_encoder is None and (prompt_type != "text" or visual_cost):
            raise ValueError("a model that uses visual prompts needs a visual-prompt encoder")
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
        self.visual_prompt_keep = visual_prompt_keep  # read where bank prompts are resolved (dpseg.prompts.agreement)
        self.channels_last: Optional[bool] = None  # class maps channels-last (None: on a CPU; class_maps.py)
        self.cpu_chunk_elements = CPU_CHUNK_ELEMENTS  # class chunks on a CPU (class_maps.py); 0 = class_chunk

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
        if self.prompt_encoder is not None:
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
        if self.prompt_encoder is None:
            raise InputError(
                "this model uses text prompts only and holds no visual-prompt encoder; visual prompts "
                "(exemplars, banks, refinement) do not apply to it"
            )
        return self.prompt_encoder.encode_prompts(images)

    # ------------------------------------------------------------------------------------------- decoding

    def check_prompts(self, prompts: PromptSet) -> None:
        if prompts.num_templates != self.num_templates:
            raise InputError(
                f"the prompts have M={prompts.num_templates} templates but the model was built for "
                f"M={self.num_templates}; build the prompts with the model's template set"
            )
        if prompts.text.shape[-1] != self.text_encoder.embed_dim:
            raise InputError(
                f"text prompts have width {prompts.text.shape[-1]}, the model's CLIP {self.text_encoder.embed_dim}"
            )
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
                    raise InputError(
                        f"visual stage-{j} prompts have width {v.shape[-1]}, "
                        f"the encoder {self.image_encoder.stage_dims[j - 2]}"
                    )

    def decode(
        self,
        feats: ImageFeatures,
        prompts: PromptSet,
        class_chunk: int = 0,
        early_rejection_topk: int = 0,
        state: Optional[DecodeState] = None,
        early_rejection_from: int = 0,
        early_rejection_rank: str = "heads",
    ) -> dict:
        """Cost volumes + decoder for one vocabulary: {"logits": (B, K, H/4, W/4)}, and with auxiliary heads also
        "aux": their logits [(B, K, h_s, w_s) for the stages s = 0, 1, 2 at strides 32, 16, 8].

        ``class_chunk``: classes decoded at a time (0 = all; the result is the same). ``early_rejection_topk`` = k > 0:
        SED's category early rejection (inference; the others get ``REJECTED_LOGIT``), by the auxiliary heads of the
        stages ``early_rejection_from`` (SED: 0) and after; ``early_rejection_rank="cost"`` ranks the classes by F_c's
        mean over the templates before stage 0 instead of by stage 0's head after it. ``state`` (inference, no early
        rejection): an empty :class:`DecodeState` is filled with what the next decode of the same ``feats`` can
        reuse; a filled one whose ``changed`` is set is reused. How each works: class_decoding.py.
        """
        self.check_prompts(prompts)
        aux_heads = self.decoder.aux_heads
        rejection = EarlyRejection(early_rejection_topk, early_rejection_from, early_rejection_rank)
        if rejection.topk and aux_heads is None:
            raise InputError(
                "early rejection ranks classes by the auxiliary heads, which this model lacks; "
                "set eval.early_rejection_topk=0"
            )
        problem = rejection.problem(len(self.decoder.stages))
        if problem:
            raise InputError(problem)
        batches = {t.shape[0] for _, t in prompts._tensors() if t.ndim == 4}  # per-image prompts: (B, K, M, ·)
        if batches - {feats.dense.shape[0]}:
            raise InputError(
                f"per-image prompts are for {max(batches)} images but the batch has {feats.dense.shape[0]}"
            )
        return ClassDecoding(self, feats, prompts, class_chunk, rejection, state).run()

    def embed_cost_volume(self, dense: Tensor, R: Tensor) -> Tensor:
        """Stage 0's input: the dual-prompt cost volume F_c and its cost embedding, (B, k, C_0, h5, w5)."""
        with record_function("dpseg.cost_volume"):
            F_c = cosine_cost_volume(dense, R)  # (B, k, M, h5, w5)
        with record_function("dpseg.cost_embedding"):
            return to_class_layout(self.cost_embedding(F_c), use_channels_last(self.channels_last, dense.device))

    def set_fast_paths(self, enabled: bool) -> DPSeg:
        """Switch every exact speed-up of the decoder on (the default) or off (the reference computation, for
        tests): channels-last class maps, cache-sized class chunks on a CPU, the class attention's pixel blocks, the
        fusion's shared encoder term."""
        self.channels_last = None if enabled else False
        self.cpu_chunk_elements = CPU_CHUNK_ELEMENTS if enabled else 0
        for m in self.modules():
            if isinstance(m, ClassAggregation):
                m.pixel_blocks = enabled
            if isinstance(m, DecoderStage):
                m.shared_encoder_term = enabled
        return self

    def head_logits(self, x: Tensor) -> Tensor:
        with record_function("dpseg.head"):
            return self.decoder.head(x)

    def stage_guidance(
        self,
        s: int,
        c: Union[slice, Tensor],
        feats: ImageFeatures,
        E: list[Tensor],
        R: Optional[Tensor],
        prompts: PromptSet,
        statistics: Optional[dict] = None,
    ) -> Optional[Tensor]:
        """Cost guidance of decoder stage ``s`` for the classes ``c`` (a slice or indices of the vocabulary), whose
        dual prompts are ``R`` (…, k, M, d) (needed by SED's upsampled F_c only): (B, k, g_s, h_j, w_j) or None."""
        parts = []
        if self.upsampled_cost is not None:
            assert R is not None, "SED's upsampled-F_c guidance needs the classes' dual prompts"
            with record_function("dpseg.upsampled_cost"):
                F_c = cosine_cost_volume(feats.dense, R)  # (B, k, M, h5, w5)
                parts.append(self.upsampled_cost(F_c, s))
        j = 4 - s  # decoder stage s fuses encoder stage j
        if str(j) in self.visual_cost:
            assert prompts.visual_stages is not None  # check_prompts requires them for visual cost volumes
            with record_function("dpseg.visual_cost_volume"):
                v = prompts.visual_stages[j - 2][..., c, :, :].to(E[j - 2].dtype)  # (…, k, M, D_j)
                parts.append(
                    self.visual_cost[str(j)](E[j - 2], v, (statistics or {}).get(str(j)))
                )  # (B, k, c_j, h_j, w_j)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # concatenated on the channel axis

    def forward(
        self,
        images: Tensor,
        prompts: PromptSet,
        class_chunk: int = 0,
        early_rejection_topk: int = 0,
        early_rejection_from: int = 0,
        early_rejection_rank: str = "heads",
    ) -> dict:
        feats = self.encode_image(images)
        return self.decode(
            feats,
            prompts,
            class_chunk,
            early_rejection_topk,
            early_rejection_from=early_rejection_from,
            early_rejection_rank=early_rejection_rank,
        )

    # --------------------------------------------------------------------------------------- parameters

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: the image encoder (lr × encoder_lr_mult) and everything else."""
        encoder = [p for p in self.image_encoder.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in self.image_encoder.parameters()}
        frozen = [self.text_encoder] + ([self.prompt_encoder] if self.prompt_encoder is not None else [])
        frozen_ids = {id(p) for m in frozen for p in m.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids | frozen_ids]
        return {"image_encoder": encoder, "decoder": rest}
