"""Cost volumes.

* Dual-prompt cost volume F_c = cos(E, R) between the dense joint-space embedding E (stride 32) and the dual
  prompts R, kept per template, then the per-class **cost embedding**: one conv over the M template channels
  (weights shared across classes; CAT-Seg/SED: 7×7, M → 128).
* Visual cost volume F_v^j = cos(E_j, v_j) between encoder stage j and the pooled stage-j features of the visual
  prompts, embedded over M by a linear map (1×1 conv) into c_j channels. Because the cosine is bilinear in the
  normalised vectors and the embedding is linear over M, the two fold into one product (exact):

      sum_m W[c, m] <Ê(p), v̂_{k,m}> + b_c  =  <Ê(p), sum_m W[c, m] v̂_{k,m}> + b_c

  so the (B, K, M, h_j, w_j) volume - 10 GB at K = 847, M = 80, j = 2 - is never materialised. The unfolded
  reference is kept (``visual_cost_volume``) and the tests check both agree.
* SED-style guidance (ablation "upsampled"): the raw F_c pushed through a ×2 transposed-conv cascade to each
  decoder resolution; the slot the visual cost volumes replace.

Layout: volumes are class-major, (B, K, M, h, w); the paper writes F_c ∈ R^{B×M×K×h×w}.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpseg.model.decoder import step_up


def cosine_cost_volume(features: Tensor, prompts: Tensor) -> Tensor:
    """cos(features, prompts): (B, D, h, w) × (K, M, D) or (B, K, M, D) -> (B, K, M, h, w)."""
    f = F.normalize(features, dim=1)
    p = F.normalize(prompts, dim=-1)
    if p.ndim == 3:
        return torch.einsum("bdhw,kmd->bkmhw", f, p)  # (B, D, h, w) · (K, M, D) -> (B, K, M, h, w)
    return torch.einsum("bdhw,bkmd->bkmhw", f, p)  # per-image prompts (B, K, M, D) -> (B, K, M, h, w)


def template_mean_similarity(features: Tensor, prompts: Tensor) -> Tensor:
    """The cost volume's mean over the M templates, ``cosine_cost_volume(features, prompts).mean(2)``, without the
    volume: cos is linear in the normalised prompt, so the mean of the M cosines is the cosine's numerator with the
    mean of the M normalised prompts - one product per class instead of M. (B, D, h, w) × (K, M, D) or (B, K, M, D)
    -> (B, K, h, w)."""
    f = F.normalize(features, dim=1)
    p = F.normalize(prompts, dim=-1).mean(-2)  # (…, K, M, D) -> (…, K, D)
    if p.ndim == 2:
        return torch.einsum("bdhw,kd->bkhw", f, p)  # (B, D, h, w) · (K, D) -> (B, K, h, w)
    return torch.einsum("bdhw,bkd->bkhw", f, p)  # per-image prompts (B, K, D) -> (B, K, h, w)


class CostEmbedding(nn.Module):
    """Per-class conv over the M template similarities: (B, K, M, h, w) -> (B, K, C, h, w)."""

    def __init__(self, num_templates: int, dim: int, kernel: int = 7):
        super().__init__()
        self.num_templates = num_templates
        self.conv = nn.Conv2d(num_templates, dim, kernel, padding=kernel // 2)

    def forward(self, volume: Tensor) -> Tensor:
        B, K, M, h, w = volume.shape
        x = self.conv(volume.reshape(B * K, M, h, w))  # classes folded into the batch: (B*K, M, h, w)
        return x.view(B, K, -1, h, w)  # (B*K, C, h, w) -> (B, K, C, h, w)


VISUAL_COST_NORMS = ("none", "class", "batch")


class VisualCostEmbedding(nn.Module):
    """Embedded visual cost volume at one encoder stage, computed folded (see module doc).

    Raw stage features share a large common direction, so cos(E_j, v_j) barely varies across classes (the spread
    is a fraction of a percent of the value); the embedding can therefore standardise its c channels first
    (``norm``, docs/paper-choices.md #8):

    * ``"class"`` - per pixel and channel across the K classes of the vocabulary: (x - mean_k) / std_k. It keeps only
      which classes a pixel resembles more than the others; the statistics come from all K classes (computed in a
      first sweep under class chunking: :meth:`class_statistics`), so chunked and unchunked decoding agree;
    * ``"batch"`` - BatchNorm over images, classes and pixels (running statistics at test time);
    * ``"none"`` - the raw map plus the bias of the linear map.
    """

    def __init__(self, num_templates: int, dim: int, norm: str = "none", eps: float = 1e-8):
        super().__init__()
        if norm not in VISUAL_COST_NORMS:
            raise ValueError(f"visual cost norm must be one of {VISUAL_COST_NORMS}, got {norm!r}")
        self.num_templates = num_templates
        self.norm, self.eps = norm, eps
        self.proj = nn.Linear(num_templates, dim)  # weight (c, M): the 1×1 conv over templates
        self.batch_norm = nn.BatchNorm2d(dim) if norm == "batch" else None

    def fold(self, stage_prompts: Tensor) -> Tensor:
        """(…, K, M, D_j) pooled prompt features -> (…, K, c, D_j) template-mixed unit prompts."""
        v = F.normalize(stage_prompts, dim=-1)
        if v.shape[-2] == 1:  # one prompt for all templates (a refinement crop): the mix is a row sum
            return self.proj.weight.sum(dim=1)[:, None] * v  # (c, 1) * (…, K, 1, D) -> (…, K, c, D)
        return torch.einsum("cm,...kmd->...kcd", self.proj.weight, v)  # (c, M) · (…, K, M, D) -> (…, K, c, D)

    def mixed(self, stage_features: Tensor, stage_prompts: Tensor) -> Tensor:
        """Σ_m W[c, m] cos(E_j, v_{k,m}) without bias: (B, D_j, h, w) × (K or B×K, M, D_j) -> (B, K, c, h, w)."""
        f = F.normalize(stage_features, dim=1)
        u = self.fold(stage_prompts)
        if u.ndim == 3:
            return torch.einsum("bdhw,kcd->bkchw", f, u)  # (B, D, h, w) · (K, c, D) -> (B, K, c, h, w)
        return torch.einsum("bdhw,bkcd->bkchw", f, u)  # per-image prompts (B, K, c, D)

    def class_statistics(
        self, stage_features: Tensor, stage_prompts: Tensor, chunks: list[slice]
    ) -> tuple[Tensor, Tensor]:
        """Mean and std over all K classes of the mixed map, chunk by chunk: 2 × (B, 1, c, h, w).

        The classes differ by ~1e-3 of the common value, so the sums are taken around the first class's map (the
        shifted-data formula): a plain E[x²] - E[x]² would cancel to float32 noise.
        """
        shift: Optional[Tensor] = None
        sums: Optional[tuple[Tensor, Tensor]] = None  # (Σ d, Σ d²) over the classes seen so far
        for c in chunks:
            x = self.mixed(stage_features, stage_prompts[..., c, :, :])  # (B, k, c, h, w)
            if shift is None:
                shift = x[:, :1].detach()
            d = x - shift
            s1, s2 = d.sum(dim=1, keepdim=True), d.square().sum(dim=1, keepdim=True)
            sums = (s1, s2) if sums is None else (sums[0] + s1, sums[1] + s2)
        assert shift is not None and sums is not None, "class_statistics needs at least one class chunk"
        total, squares = sums
        K = stage_prompts.shape[-3]
        mean = total / K
        return shift + mean, (squares / K - mean.square()).clamp(min=0).sqrt()

    def forward(
        self, stage_features: Tensor, stage_prompts: Tensor, statistics: Optional[tuple[Tensor, Tensor]] = None
    ) -> Tensor:
        """(B, D_j, h, w) encoder stage × (K or B×K, M, D_j) prompts -> (B, K, c, h, w). With ``norm="class"``,
        ``statistics`` are :meth:`class_statistics` over the whole vocabulary (computed here when not given, which
        is only right when ``stage_prompts`` hold every class)."""
        out = self.mixed(stage_features, stage_prompts)
        if self.norm == "class":
            mean, std = (
                statistics
                if statistics is not None
                else self.class_statistics(stage_features, stage_prompts, [slice(0, stage_prompts.shape[-3])])
            )
            out = (out - mean) / (std + self.eps)
        out = out + self.proj.bias.view(1, 1, -1, 1, 1)
        if self.batch_norm is not None:
            B, K, c, h, w = out.shape
            out = self.batch_norm(out.reshape(B * K, c, h, w)).view(B, K, c, h, w)  # classes folded into the batch
        return out

    def reference(self, stage_features: Tensor, stage_prompts: Tensor) -> Tensor:
        """Unfolded F_v^j then the linear map over M: memory-hungry, for tests and ablations only."""
        volume = visual_cost_volume(stage_features, stage_prompts, self.num_templates)  # (B, K, M, h, w)
        return torch.einsum("bkmhw,cm->bkchw", volume, self.proj.weight) + self.proj.bias.view(1, 1, -1, 1, 1)


def visual_cost_volume(stage_features: Tensor, stage_prompts: Tensor, num_templates: int) -> Tensor:
    """F_v^j = cos(E_j, v_j) materialised: -> (B, K, M, h_j, w_j)."""
    if stage_prompts.shape[-2] == 1 and num_templates > 1:
        stage_prompts = stage_prompts.expand(*stage_prompts.shape[:-2], num_templates, stage_prompts.shape[-1])
    return cosine_cost_volume(stage_features, stage_prompts)


class UpsampledCostGuidance(nn.Module):
    """SED's guidance: raw F_c (B, K, M, h5, w5) through ConvTranspose(×2)+ReLU steps, one output per stage (the
    first step a 1×1 projection instead when F_c is at E_4's stride already: ``upsample_first=False``)."""

    def __init__(self, num_templates: int, dims: list[int], upsample_first: bool = True):
        super().__init__()
        chans = [num_templates] + list(dims)
        self.steps = nn.ModuleList(
            nn.Sequential(step_up(chans[i], chans[i + 1], i > 0 or upsample_first), nn.ReLU()) for i in range(len(dims))
        )

    def forward(self, volume: Tensor, stage: int) -> Tensor:
        """Guidance for decoder stage ``stage`` (0, 1, 2): (B, K, g_s, h5·2^(s+1), w5·2^(s+1)) (2^s without
        ``upsample_first``)."""
        B, K, M, h, w = volume.shape
        x = volume.reshape(B * K, M, h, w)  # classes folded into the batch
        for step in self.steps[: stage + 1]:
            x = step(x)
        return x.view(B, K, *x.shape[1:])  # (B*K, g, h', w') -> (B, K, g, h', w')
