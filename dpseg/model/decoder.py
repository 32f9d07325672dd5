"""Cost-Volume-Guided Decoder (docs/paper-choices.md #8-#12): the parts of its three stages and its head.

Each stage s takes class maps at stride 32 / 2^s (24 → 48 → 96 at 768²) one step up (with a dense embedding at
stride 16 - the synthetic preset's dilated tower - stage 0 stays at stride 16 and only projects):

1. spatial aggregation per class map, then class aggregation across the K classes, at the input resolution;
2. ×2 transposed-conv upsampling per class;
3. fusion: concatenate a 3×3-conv projection of encoder stage E_j (j = 4, 3, 2; shared by all classes) and the
   stage's *cost guidance* (the embedded visual cost volume F_v^j of DPSeg, SED's upsampled F_c, both, or nothing),
   then a DoubleConv (3×3 conv + GroupNorm + ReLU, twice).

A 3×3 head then gives one logit per class at stride 4. SED's decoder also has *auxiliary heads*: the same kind of
head on the class maps entering each stage (strides 32, 16, 8), fed with detached features so that they learn from
their own loss without steering the decoder; they rank the classes for early rejection. The order in which these
parts run - and the class chunking that bounds memory - reads top-down in :meth:`dpseg.model.dpseg.DPSeg.decode`.
"""

from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpseg.model.aggregation import group_count


def step_up(cin: int, cout: int, upsample: bool = True) -> nn.Module:
    """One step up the decoder's pyramid: a ×2 transposed conv, or a 1×1 projection where the maps are at the target
    stride already (a tower whose dense embedding is at E_4's stride - a dilated last stage - enters stage 0 there)."""
    return nn.ConvTranspose2d(cin, cout, 2, stride=2) if upsample else nn.Conv2d(cin, cout, 1)


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.GroupNorm(group_count(cout), cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(group_count(cout), cout),
            nn.ReLU(),
        )


class DecoderStage(nn.Module):
    """Aggregate at resolution h×w (``spatial``, ``classes``), then upsample ×2 and fuse with E_j and the guidance."""

    def __init__(
        self,
        spatial: nn.Module,
        classes: nn.Module,
        cin: int,
        cout: int,
        encoder_dim: int,
        encoder_guidance: int,
        cost_guidance: int,
        upsample: bool = True,
    ):
        super().__init__()
        if encoder_guidance >= cin:
            raise ValueError(f"encoder guidance width {encoder_guidance} must be below the stage width {cin}")
        self.spatial = spatial
        self.classes = classes
        self.up = step_up(cin, cin - encoder_guidance, upsample)
        self.up_channels, self.out_channels = cin - encoder_guidance, cout
        self.encoder_proj = nn.Sequential(nn.Conv2d(encoder_dim, encoder_guidance, 3, padding=1), nn.ReLU())
        self.cost_guidance = cost_guidance
        self.fuse = DoubleConv(cin + cost_guidance, cout)
        self.shared_encoder_term = True  # upsample_fuse: the E_j share of the fusion once per image (exact)

    def encoder_term(self, encoder_guidance: Tensor) -> Tensor:
        """The first fusion convolution's share of the projected E_j, the same for every class (the convolution is
        linear and has no bias, so conv(cat[up, E, g]) = conv_up,g(cat[up, g]) + conv_E(E)): (B, g_e, 2h, 2w) ->
        (B, C_out, 2h, 2w). Computing it once per image instead of once per class is exact up to rounding."""
        conv = cast(nn.Conv2d, self.fuse[0])
        start, stop = self.up_channels, self.up_channels + encoder_guidance.shape[1]
        return F.conv2d(encoder_guidance, conv.weight[:, start:stop], padding=conv.padding)

    def upsample_fuse(
        self,
        x: Tensor,
        encoder_guidance: Tensor,
        cost_guidance: Optional[Tensor],
        encoder_term: Optional[Tensor] = None,
    ) -> Tensor:
        """(B, k, C_in, h, w) -> (B, k, C_out, 2h, 2w) (h, w without upsampling); encoder_guidance is the projected
        E_j (B, g_e, 2h, 2w); ``encoder_term`` its :meth:`encoder_term` when already computed. The output has the
        memory layout of ``x`` (channels-last class maps stay so)."""
        if self.cost_guidance:
            if cost_guidance is None or cost_guidance.shape[2] != self.cost_guidance:
                got = None if cost_guidance is None else cost_guidance.shape[2]
                raise ValueError(f"this decoder stage was built for {self.cost_guidance} guidance channels, got {got}")
        if not self.shared_encoder_term:
            return self.upsample_fuse_reference(x, encoder_guidance, cost_guidance)
        B, k, C, h, w = x.shape
        up = self.up(x.reshape(B * k, C, h, w))  # classes folded into the batch: (B*k, C_in - g_e, 2h, 2w)
        conv = cast(nn.Conv2d, self.fuse[0])
        start, stop = up.shape[1], up.shape[1] + encoder_guidance.shape[1]
        if self.cost_guidance:
            assert cost_guidance is not None
            layout = torch.channels_last if _channels_last(up) else torch.contiguous_format
            guidance = cost_guidance.reshape(B * k, *cost_guidance.shape[2:]).contiguous(memory_format=layout)
            y = F.conv2d(  # the fusion conv without its E_j channels: (B*k, C_out, 2h, 2w)
                torch.cat([up, guidance], dim=1),
                torch.cat([conv.weight[:, :start], conv.weight[:, stop:]], dim=1),
                padding=conv.padding,
            )
        else:
            y = F.conv2d(up, conv.weight[:, :start], padding=conv.padding)
        term = self.encoder_term(encoder_guidance) if encoder_term is None else encoder_term  # (B, C_out, 2h, 2w)
        y = y.view(B, k, *y.shape[1:]).add_(term.unsqueeze(1))  # + the E_j share, broadcast over the classes
        y = y.view(B * k, *y.shape[2:])
        for layer in list(self.fuse)[1:]:  # the fusion's norm, activation and second convolution
            y = layer(y)
        return y.view(B, k, *y.shape[1:])  # (B*k, C_out, 2h, 2w) -> (B, k, C_out, 2h, 2w)

    def upsample_fuse_reference(self, x: Tensor, encoder_guidance: Tensor, cost_guidance: Optional[Tensor]) -> Tensor:
        """:meth:`upsample_fuse` as written in the paper's terms: the projected E_j repeated for every class and
        concatenated with the upsampled maps and the guidance before the fusion convolutions (tests compare)."""
        B, k, C, h, w = x.shape
        up = self.up(x.reshape(B * k, C, h, w))  # classes folded into the batch: (B*k, C_in - g_e, 2h, 2w)
        parts = [up, encoder_guidance.repeat_interleave(k, dim=0)]  # (B, g_e, 2h, 2w) -> (B*k, g_e, 2h, 2w)
        if self.cost_guidance:
            assert cost_guidance is not None
            parts.append(cost_guidance.reshape(B * k, *cost_guidance.shape[2:]))  # (B, k, g, 2h, 2w) -> (B*k, …)
        y = self.fuse(torch.cat(parts, dim=1))
        return y.view(B, k, *y.shape[1:])  # (B*k, C_out, 2h, 2w) -> (B, k, C_out, 2h, 2w)


def _channels_last(x: Tensor) -> bool:
    """Whether a 4-D tensor is channels-last (and not also plainly contiguous, as 1-channel or 1x1 maps are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class ClassHead(nn.Conv2d):
    """3×3 conv to one logit per class map: (B, k, C, h, w) -> (B, k, h, w)."""

    def __init__(self, dim: int):
        super().__init__(dim, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        B, k, C, h, w = x.shape
        return super().forward(x.reshape(B * k, C, h, w)).view(B, k, h, w)  # (B*k, 1, h, w) -> (B, k, h, w)


class CostVolumeGuidedDecoder(nn.Module):
    """Three :class:`DecoderStage` s, the :class:`ClassHead` and optionally one auxiliary head per stage (SED),
    built by :func:`dpseg.build.build_model`."""

    def __init__(self, stages: list[DecoderStage], head: ClassHead, aux_heads: Optional[list[ClassHead]] = None):
        super().__init__()
        if len(stages) != 3:
            raise ValueError(f"the decoder has 3 stages (strides 32 -> 16 -> 8 -> 4), got {len(stages)}")
        if aux_heads is not None and len(aux_heads) != len(stages):
            raise ValueError(f"one auxiliary head per decoder stage is needed, got {len(aux_heads)}")
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.aux_heads = nn.ModuleList(aux_heads) if aux_heads is not None else None
