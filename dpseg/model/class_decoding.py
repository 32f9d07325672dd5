"""One decoding of a vocabulary (paper Fig. 2, right half): the dual-prompt cost volume F_c, its cost embedding, the
decoder's three stages and the head, run class chunk by class chunk.

Every step except class aggregation is per class, so it runs a few classes at a time (class_maps.py): only the
class-aggregation input of each stage is held for all K, and the result is the same (class aggregation is exact
under chunking, see aggregation.py). Two inference options change what is decoded, never how:

* **category early rejection** (SED-fast; :class:`~dpseg.model.early_rejection.EarlyRejection` with k > 0): after
  each stage's auxiliary head only the classes among its k best at some pixel (of any image of the batch) are
  decoded further (from its ``first_stage`` on: SED starts at 0; a later start skips heads that rank classes badly;
  with ``rank="cost"`` the first rejection ranks by the cost volume before stage 0), and class
  aggregation - and the class statistics of the visual cost volumes, ``visual_cost_norm=class`` - then run over the
  survivors;
  the others get ``REJECTED_LOGIT`` (early_rejection.py);
* **pass-2 reuse** (``state``, decode_state.py): pass 1 keeps what the next decoding of the same image features can
  reuse; pass 2 recomputes stage 0 only for the (image, class) pairs whose prompts changed.

:class:`ClassDecoding` is built by :meth:`dpseg.model.dpseg.DPSeg.decode` for one call and holds that call's state
(the classes still decoded, the visual statistics made so far); the modules it runs belong to the model.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Protocol, Sequence, Union, cast

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from dpseg.model import early_rejection
from dpseg.model.aggregation import class_chunks
from dpseg.model.class_maps import empty_class_maps, stage_chunk
from dpseg.model.cost_volume import (
    CostEmbedding,
    UpsampledCostGuidance,
    VisualCostEmbedding,
    template_mean_similarity,
)
from dpseg.model.decode_state import DecodeState
from dpseg.model.decoder import CostVolumeGuidedDecoder, DecoderStage
from dpseg.model.dual_prompt import PromptSet, dual_prompt
from dpseg.model.early_rejection import EarlyRejection, in_vocabulary
from dpseg.model.towers import ImageFeatures

HEAD = 3  # the stage index of the head in the chunk sizes (stages 0-2 are the decoder's)


class DecodingModel(Protocol):
    """What a decoding reads of :class:`dpseg.model.dpseg.DPSeg` (which imports this module, so not DPSeg itself)."""

    cost_embedding: CostEmbedding
    visual_cost: nn.ModuleDict
    upsampled_cost: Optional[UpsampledCostGuidance]
    decoder: CostVolumeGuidedDecoder
    prompt_type: str
    detach_guidance: bool
    cpu_chunk_elements: int

    def embed_cost_volume(self, dense: Tensor, R: Tensor) -> Tensor: ...

    @property
    def stage_guidance(self) -> Callable[..., Optional[Tensor]]:
        """DPSeg.stage_guidance: (s, classes, feats, E, R, prompts, statistics) -> (B, k, g_s, h_j, w_j) or None."""
        ...

    def head_logits(self, x: Tensor) -> Tensor: ...


class ClassDecoding:
    """One :meth:`DPSeg.decode` call: ``run()`` gives {"logits": (B, K, H/4, W/4)} and, with auxiliary heads,
    "aux": [(B, K, h_s, w_s) for the stages s = 0, 1, 2 at strides 32, 16, 8]."""

    def __init__(
        self,
        model: DecodingModel,
        feats: ImageFeatures,
        prompts: PromptSet,
        class_chunk: int,
        rejection: EarlyRejection,
        state: Optional[DecodeState],
    ):
        self.model, self.feats, self.prompts = model, feats, prompts
        self.class_chunk, self.rejection = class_chunk, rejection
        self.dense = feats.dense  # E: (B, d, h5, w5)
        self.E = [s.detach() if model.detach_guidance else s for s in feats.stages]  # E_2..E_5
        self.K, self.B = prompts.num_classes, self.dense.shape[0]
        self.stages = cast(Sequence[DecoderStage], model.decoder.stages)  # an nn.ModuleList of DecoderStage
        self.aux_heads = model.decoder.aux_heads
        self.alive: Optional[Tensor] = None  # vocabulary indices of the classes still decoded; None = all K
        self.statistics: dict[str, tuple[Tensor, Tensor]] = {}  # F_v^j's class statistics, made when first needed
        if rejection.topk or torch.is_grad_enabled():
            state = None  # survivors differ between passes; training keeps no state
        self.state = state
        self.reuse = state is not None and state.matches(feats, self.B, self.K)
        self.projected: list[Tensor] = []  # E_4, E_3, E_2 projected for the stages' fusion (_prepare)
        self.terms: list[Optional[Tensor]] = []
        self.chunk: list[int] = []  # classes per chunk at each stage and the head (_prepare)

    def R(self, ids: Union[slice, Tensor], image: Optional[int] = None) -> Tensor:
        """The dual prompts R of classes ``ids`` (of one image's prompts): (…, k, M, d), built per chunk so that the
        whole vocabulary's R is never held at once."""
        text, visual = self.prompts.text, self.prompts.visual
        if image is not None:
            text = text[image : image + 1] if text.ndim == 4 else text
            visual = visual[image : image + 1] if visual is not None and visual.ndim == 4 else visual
        pick = (lambda t: t[..., ids, :, :]) if isinstance(ids, slice) else (lambda t: t.index_select(-3, ids))
        prompt_type = self.model.prompt_type
        return dual_prompt(pick(text), None if visual is None else pick(visual), prompt_type).to(self.dense.dtype)

    def visual_statistics(self, s: int) -> dict:
        """The class statistics of F_v^j for decoder stage s (j = 4 - s) over the classes still decoded: all K, or
        with early rejection its survivors (as the class attention sees them)."""
        j = str(4 - s)
        visual_cost = cast(Mapping[str, VisualCostEmbedding], self.model.visual_cost)
        m = visual_cost[j] if j in visual_cost else None
        if m is not None and m.norm == "class" and j not in self.statistics:
            with record_function("dpseg.visual_statistics"):
                assert self.prompts.visual_stages is not None  # check_prompts requires them for visual cost volumes
                v = self.prompts.visual_stages[int(j) - 2].to(self.E[0].dtype)  # (…, K, M, D_j)
                v = v if self.alive is None else v.index_select(-3, self.alive)
                self.statistics[j] = m.class_statistics(self.E[int(j) - 2], v, class_chunks(v.shape[-3], self.chunk[s]))
        return self.statistics

    def stage_input(self, s: int, x: Optional[Tensor], c: slice) -> Tensor:
        """Class maps entering stage s (HEAD = the head) for rows ``c`` of the alive classes: (B, k, C_s, h, w)."""
        ids = c if self.alive is None else self.alive[c]  # vocabulary indices of these rows
        if s == 0:  # dual-prompt cost volume -> cost embedding
            return self.model.embed_cost_volume(self.dense, self.R(ids))
        assert x is not None  # the maps stage s - 1 produced
        R_ids = self.R(ids) if self.model.upsampled_cost is not None else None  # SED's guidance reads F_c again
        guidance = self.model.stage_guidance(
            s - 1, ids, self.feats, self.E, R_ids, self.prompts, self.visual_statistics(s - 1)
        )
        with record_function(f"dpseg.upsample_fuse.{s - 1}"):
            return self.stages[s - 1].upsample_fuse(
                x[:, c], self.projected[s - 1], guidance, self.terms[s - 1]
            )  # (B, k, C_s, 2h, 2w)

    def _prepare(self) -> None:
        """The encoder's share of the decoder (once per image, or pass 1's in pass 2) and the chunk sizes."""
        state = self.state
        if state is not None and state.feats is self.feats and state.projected is not None and state.terms is not None:
            self.projected, self.terms = state.projected, state.terms
        else:
            with record_function("dpseg.encoder_guidance"):
                self.projected = [
                    stage.encoder_proj(self.E[2 - s]) for s, stage in enumerate(self.stages)
                ]  # E_4, E_3, E_2 -> (B, g, h_j, w_j)
                self.terms = [  # their share of each stage's fusion, once per image: (B, C_s+1, h_j, w_j)
                    stage.encoder_term(p) if stage.shared_encoder_term else None
                    for stage, p in zip(self.stages, self.projected)
                ]
        # classes per chunk at each stage s (HEAD = the head), for maps of (C_s, h, w) elements per class
        dense, model = self.dense, self.model
        sizes = [model.cost_embedding.conv.out_channels * dense.shape[-2] * dense.shape[-1]] + [
            stage.out_channels * p.shape[-2] * p.shape[-1] for stage, p in zip(self.stages, self.projected)
        ]
        self.chunk = [stage_chunk(self.class_chunk, size, dense.device, model.cpu_chunk_elements) for size in sizes]

    def run(self) -> dict:
        aux: list[Tensor] = []
        with record_function("dpseg.decode"):
            self._prepare()
            if self.rejection.ranks_by_cost:
                self._reject_by_cost()
            x: Optional[Tensor] = None  # the class maps of the stage before, all alive classes
            for s, stage in enumerate(self.stages):
                x, scores = self._stage(s, stage, x)
                if scores is not None:  # the model has auxiliary heads
                    aux.append(in_vocabulary(scores, self.alive, self.K))
                if self.rejection.rejects_after(s):
                    x = self._reject(s, stage, x, scores)
                with record_function(f"dpseg.class_aggregation.{s}"):  # attention across all (alive) classes
                    x = stage.classes(x, self.class_chunk, out=None if torch.is_grad_enabled() else x)
            n = self.K if self.alive is None else len(self.alive)
            logits: Optional[Tensor] = None
            for c in class_chunks(n, self.chunk[HEAD]):
                y = self.model.head_logits(self.stage_input(HEAD, x, c))  # (B, k, H/4, W/4)
                logits = y.new_empty((y.shape[0], n, *y.shape[2:])) if logits is None else logits
                logits[:, c] = y
            assert logits is not None
        out: dict[str, Union[Tensor, list[Tensor]]] = {"logits": in_vocabulary(logits, self.alive, self.K)}
        if self.aux_heads is not None:
            out["aux"] = aux
        return out

    def _stage(self, s: int, stage: DecoderStage, x: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Stage s's class-aggregation input (B, n, C_s, h, w) for the n alive classes, chunk by chunk (spatial
        aggregation included unless early rejection postpones it to the survivors), and its auxiliary logits
        (B, n, h, w) when the model has auxiliary heads."""
        n = self.K if self.alive is None else len(self.alive)
        maps: Optional[Tensor] = None
        scores: list[Tensor] = []
        reused = s == 0 and self.reuse
        if reused:  # pass 2: only the changed (image, class) pairs are new (decode_state.py)
            maps, scores = self._reused_stage0()
        for c in [] if reused else class_chunks(n, self.chunk[s]):
            y = self.stage_input(s, x, c)
            if self.aux_heads is not None:
                with record_function("dpseg.aux_heads"):
                    scores.append(self.aux_heads[s](y.detach()))  # (B, k, h, w); detached: learns from its own loss
            if not self.rejection.rejects_after(s):  # else _reject runs it on the survivors only
                with record_function(f"dpseg.spatial_aggregation.{s}"):
                    y = stage.spatial(y)
            maps = empty_class_maps(y, n) if maps is None else maps
            maps[:, c] = y
        assert maps is not None  # class_chunks gives at least one chunk
        all_scores = torch.cat(scores, dim=1) if scores else None
        if s == 0 and self.state is not None and not self.reuse:  # pass 1: keep what pass 2 can reuse
            self.state.feats, self.state.projected, self.state.terms = self.feats, self.projected, self.terms
            self.state.stage0 = maps.clone()
            self.state.stage0_aux = all_scores if self.aux_heads is not None else None
        return maps, all_scores

    def _reject_by_cost(self) -> None:
        """Early rejection before stage 0 (``early_rejection_rank="cost"``): keep the classes among the top k of the
        dual-prompt cost volume's mean similarity over the templates at some pixel; stage 0 then decodes only them
        (the survivors' maps are what stage 0 would make of them after a rejection by its head)."""
        with record_function("dpseg.rank_by_cost"):
            similarity = torch.cat(
                [template_mean_similarity(self.dense, self.R(c)) for c in class_chunks(self.K, self.chunk[0])], dim=1
            )  # (B, k, h5, w5) per chunk -> (B, K, h5, w5)
            self.alive = early_rejection.kept_classes(similarity, self.rejection.topk).nonzero().flatten()

    def _reject(self, s: int, stage: DecoderStage, x: Tensor, scores: Optional[Tensor]) -> Tensor:
        """Early rejection after stage s: keep the classes among the top k of its auxiliary logits, then run the
        spatial aggregation it postponed on the survivors only. Returns their maps (B, k_alive, C_s, h, w)."""
        assert scores is not None  # DPSeg.decode refuses early rejection without auxiliary heads
        keep = early_rejection.kept_classes(scores, self.rejection.topk)  # (K_alive,) bool
        self.alive = (torch.arange(self.K, device=keep.device) if self.alive is None else self.alive)[keep]
        x = x.permute(0, 1, 3, 4, 2)[:, keep].permute(0, 1, 4, 2, 3)  # survivors, same layout
        with record_function(f"dpseg.spatial_aggregation.{s}"):
            for c in class_chunks(len(self.alive), self.chunk[s]):
                x[:, c] = stage.spatial(x[:, c])
        return x

    def _reused_stage0(self) -> tuple[Tensor, list[Tensor]]:
        """Stage 0's class maps (and first auxiliary logits) in pass 2: pass 1's, with the pairs in
        ``state.changed`` computed anew from their new dual prompts ``R(ids, image)``."""
        state = self.state
        assert state is not None and state.stage0 is not None and state.changed is not None
        maps, state.stage0 = state.stage0, None  # overwritten in place from here on
        scores = [] if state.stage0_aux is None else [state.stage0_aux]
        for b, changed in enumerate(state.changed):
            ids = changed.nonzero().flatten()  # this image's changed classes
            for c in class_chunks(len(ids), self.chunk[0]):
                y = self.model.embed_cost_volume(self.dense[b : b + 1], self.R(ids[c], image=b))  # (1, k, C_0, h5, w5)
                if scores and self.aux_heads is not None:
                    with record_function("dpseg.aux_heads"):
                        scores[0][b : b + 1, ids[c]] = self.aux_heads[0](y)  # (1, k, h5, w5)
                with record_function("dpseg.spatial_aggregation.0"):
                    maps[b : b + 1, ids[c]] = self.stages[0].spatial(y)
        return maps, scores
