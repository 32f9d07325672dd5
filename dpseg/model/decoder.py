"""Cost-Volume-Guided Decoder (paper §4.5, notes §9 #8-#12).

Three stages take the embedded cost volume from stride 32 to stride 4 (24 → 48 → 96 → 192 at 768²). Stage s:

1. spatial aggregation (hybrid dilated convs, per class) and class aggregation (attention across K) at the
   input resolution;
2. ×2 transposed-conv upsampling per class;
3. fusion: concatenate a 3×3-conv projection of encoder stage E_j (j = 4, 3, 2; shared by all classes) and the
   stage's *cost guidance* - the embedded visual cost volume F_v^j (DPSeg), SED's upsampled F_c, or nothing -
   then a DoubleConv (3×3 conv + GroupNorm + ReLU, twice).

A 3×3 head then gives one logit per class at stride 4.

Class chunking: every step except class aggregation is per class, so they run ``chunk`` classes at a time and
only the class-aggregation input of each stage is held for all K; class aggregation itself is exact under
chunking (see aggregation.py). The guidance for a chunk is produced on demand by ``guidance_fn(stage, slice)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from dpseg.model.aggregation import ClassAggregation, SpatialAggregation, class_chunks, group_count

GuidanceFn = Callable[[int, slice], Optional[Tensor]]  # (stage, class slice) -> (B, k, g, h, w) or None


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(group_count(cout), cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(group_count(cout), cout), nn.ReLU(),
        )


class DecoderStage(nn.Module):
    """Aggregate at resolution h×w, then upsample ×2 and fuse with E_j and the cost guidance."""

    def __init__(self, cin: int, cout: int, encoder_dim: int, encoder_guidance: int, cost_guidance: int,
                 heads: int, mlp_ratio: int, pool_train: int, pool_test: int):
        super().__init__()
        if encoder_guidance >= cin:
            raise ValueError(f"encoder guidance width {encoder_guidance} must be below the stage width {cin}")
        self.spatial = SpatialAggregation(cin)
        self.classes = ClassAggregation(cin, heads, mlp_ratio, pool_train, pool_test)
        self.up = nn.ConvTranspose2d(cin, cin - encoder_guidance, 2, stride=2)
        self.encoder_proj = nn.Sequential(nn.Conv2d(encoder_dim, encoder_guidance, 3, padding=1), nn.ReLU())
        self.cost_guidance = cost_guidance
        self.fuse = DoubleConv(cin + cost_guidance, cout)

    def upsample_fuse(self, x: Tensor, encoder_guidance: Tensor, cost_guidance: Optional[Tensor]) -> Tensor:
        """(B, k, C_in, h, w) -> (B, k, C_out, 2h, 2w); encoder_guidance is the projected E_j (B, g_e, 2h, 2w)."""
        B, k, C, h, w = x.shape
        up = self.up(x.reshape(B * k, C, h, w))  # classes folded into the batch: (B*k, C_in - g_e, 2h, 2w)
        parts = [up, encoder_guidance.repeat_interleave(k, dim=0)]  # (B, g_e, 2h, 2w) -> (B*k, g_e, 2h, 2w)
        if self.cost_guidance:
            if cost_guidance is None:
                raise ValueError("this decoder stage was built with cost guidance but none was given")
            parts.append(cost_guidance.reshape(B * k, *cost_guidance.shape[2:]))  # (B, k, g, 2h, 2w) -> (B*k, …)
        y = self.fuse(torch.cat(parts, dim=1))
        return y.view(B, k, *y.shape[1:])  # (B*k, C_out, 2h, 2w) -> (B, k, C_out, 2h, 2w)


class CostVolumeGuidedDecoder(nn.Module):
    def __init__(self, cost_dim: int, dims: list[int], encoder_dims: list[int], encoder_guidance: list[int],
                 cost_guidance: list[int], heads: int = 4, mlp_ratio: int = 4, pool_train: int = 2, pool_test: int = 1):
        """``encoder_dims`` are D_4, D_3, D_2 (the stages fused at decoder stages 0, 1, 2); a cost-guidance width
        of 0 means no guidance at that stage."""
        super().__init__()
        widths = [cost_dim] + list(dims)
        self.stages = nn.ModuleList(
            DecoderStage(widths[s], widths[s + 1], encoder_dims[s], encoder_guidance[s], cost_guidance[s],
                         heads, mlp_ratio, pool_train, pool_test)
            for s in range(3)
        )
        self.head = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(self, cost: Callable[[slice], Tensor], num_classes: int, encoder_stages: list[Tensor],
                guidance_fn: GuidanceFn, chunk: int = 0) -> Tensor:
        """Decode to logits (B, K, 4·h5·2, …) = (B, K, H/4, W/4).

        ``cost(slice)`` returns the embedded cost volume of a class slice (B, k, C_0, h5, w5);
        ``encoder_stages`` are E_4, E_3, E_2.
        """
        pieces = class_chunks(num_classes, chunk)
        projected = [stage.encoder_proj(e) for stage, e in zip(self.stages, encoder_stages)]  # (B, g_e, h_j, w_j)
        x = self._per_chunk(pieces, lambda s: self.stages[0].spatial(cost(s)))  # (B, K, C_0, h5, w5)
        for i, stage in enumerate(self.stages):
            x = stage.classes(x, chunk)
            if i + 1 < len(self.stages):
                nxt = self.stages[i + 1]
                x = self._per_chunk(pieces, lambda s: nxt.spatial(stage.upsample_fuse(x[:, s], projected[i], guidance_fn(i, s))))
            else:
                x = self._per_chunk(pieces, lambda s: self._head(stage.upsample_fuse(x[:, s], projected[i], guidance_fn(i, s))))
        return x

    def _head(self, x: Tensor) -> Tensor:
        B, k, C, h, w = x.shape
        return self.head(x.reshape(B * k, C, h, w)).view(B, k, h, w)  # (B*k, 1, h, w) -> (B, k, h, w)

    @staticmethod
    def _per_chunk(pieces: list[slice], fn: Callable[[slice], Tensor]) -> Tensor:
        outs = [fn(s) for s in pieces]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
