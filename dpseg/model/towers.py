"""CLIP towers on top of open_clip.

* :class:`ImageTower` - an OpenCLIP ConvNeXt image tower that returns the four stage maps E_2..E_5
  (strides 4/8/16/32) and the dense joint-space embedding E: the CLIP head applied at every stride-32
  position. Identity (tested): ``head(LN(GAP(E_5)))`` is exactly open_clip's ``encode_image``; the dense
  embedding is the same head applied per position *before* pooling, ``E[:, :, y, x] = head(LN(E_5[:, :, y, x]))``.
  The trainable image encoder and the frozen visual-prompt encoder are two instances of this class.
* :class:`TextTower` - the frozen CLIP text tower with template ensembling and synonym averaging.
* :func:`make_frozen_copy` - the visual-prompt encoder: a frozen copy of the image tower.

Building the OpenCLIP model from a config and loading its weights is :mod:`dpseg.clip_loading`'s job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence, Union

import open_clip
import timm
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from timm.models import register_model
from torch import Tensor, nn

from dpseg.errors import ConfigError, InputError
from dpseg.init_patch import init_skipped
from dpseg.vocab import split_synonyms

# ------------------------------------------------------------------------------------- tiny ConvNeXt trunks
# Registered with timm so that an OpenCLIP model config can name them like any timm trunk.


def _tiny_convnext(depths, dims, **kwargs):
    from timm.models.convnext import _create_convnext

    kwargs.pop("pretrained", None)
    return _create_convnext("convnext_atto", pretrained=False, depths=depths, dims=dims, **kwargs)


if "dpseg_convnext_pico" not in timm.list_models("dpseg_*"):

    @register_model
    def dpseg_convnext_pico(pretrained: bool = False, **kwargs):
        """ConvNeXt with widths 16/32/64/128, one block per stage: the test tower."""
        return _tiny_convnext((1, 1, 1, 1), (16, 32, 64, 128), **kwargs)

    @register_model
    def dpseg_convnext_nano(pretrained: bool = False, **kwargs):
        """ConvNeXt with widths 32/64/128/256, depths 1/1/2/1: the synthetic-world tower."""
        return _tiny_convnext((1, 1, 2, 1), (32, 64, 128, 256), **kwargs)

    @register_model
    def dpseg_convnext_nano_os16(pretrained: bool = False, **kwargs):
        """The synthetic-world tower with its last stage dilated instead of downsampled (timm ``output_stride=16``):
        stage strides 4/8/16/16, so the dense embedding of a 128-px scene is 8x8 cells instead of 4x4."""
        return _tiny_convnext((1, 1, 2, 1), (32, 64, 128, 256), output_stride=16, **kwargs)

    @register_model
    def dpseg_convnext_femto(pretrained: bool = False, **kwargs):
        """ConvNeXt with widths 8/16/32/64, one block per stage: the tower of the SED equality fixture."""
        return _tiny_convnext((1, 1, 1, 1), (8, 16, 32, 64), **kwargs)


# ------------------------------------------------------------------------------------------ model configs


# ------------------------------------------------------------------------------------------- image tower


@dataclass
class ImageFeatures:
    """Output of :class:`ImageTower`: stage maps E_2..E_5 and the dense joint-space embedding E."""

    stages: list[Tensor]  # [(B, D_j, h_j, w_j) for j = 2, 3, 4, 5]
    dense: Tensor  # (B, d, h_5, w_5)


class ImageTower(nn.Module):
    """ConvNeXt CLIP image tower that exposes its pyramid. Takes RGB in [0, 1]; normalises internally."""

    trunk: Any  # the timm ConvNeXt inside open_clip's TimmModel (open_clip is untyped)
    head: nn.Module
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        visual: open_clip.timm_model.TimmModel,
        mean: Sequence[float],
        std: Sequence[float],
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if not hasattr(visual, "trunk") or not hasattr(visual.trunk, "stages"):
            raise ConfigError("the OpenCLIP image tower is not a timm ConvNeXt (no trunk.stages)")
        self.trunk = visual.trunk
        self.head = visual.head
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.stage_dims = [self._stage_width(s) for s in self.trunk.stages]
        # pixels per cell of E_5 and of the dense embedding: 32 for every OpenCLIP ConvNeXt, 16 for a dilated one
        self.stage_strides = [int(f["reduction"]) for f in self.trunk.feature_info]  # E_2..E_5: 4/8/16/32
        self.dense_stride = self.stage_strides[-1]
        self.embed_dim = self._embed_dim()
        self.grad_checkpointing = grad_checkpointing

    @staticmethod
    def _stage_width(stage: nn.Module) -> int:
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    def _embed_dim(self) -> int:
        linears = [m for m in self.head.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features

    def forward(self, images: Tensor) -> ImageFeatures:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        x = self.trunk.stem(x)
        x = self.trunk.norm_pre(x) if hasattr(self.trunk, "norm_pre") else x
        stages = []
        for stage in self.trunk.stages:
            if self.grad_checkpointing and self.training and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            stages.append(x)
        return ImageFeatures(stages=stages, dense=self.dense_head(stages[-1]))

    def dense_head(self, e5: Tensor) -> Tensor:
        """CLIP head at every position: (B, D_5, h, w) -> (B, d, h, w)."""
        x = self.trunk.head.norm(e5)  # LayerNorm2d over channels, per position
        x = self.head(x.permute(0, 2, 3, 1))  # (B, h, w, D_5) -> (B, h, w, d)
        return x.permute(0, 3, 1, 2)  # (B, h, w, d) -> (B, d, h, w)

    def pooled(self, feats: ImageFeatures) -> Tensor:
        """Global CLIP embedding (open_clip's encode_image, unnormalised) from already computed stages: (B, d)."""
        e5 = feats.stages[-1].mean(dim=(2, 3), keepdim=True)  # (B, D_5, 1, 1)
        return self.dense_head(e5).flatten(1)  # (B, d, 1, 1) -> (B, d)

    def encode_prompts(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Visual-prompt embeddings: global V (B, d), L2-normalised, and GAP'd stage features v_2..v_4 (B, D_j)."""
        feats = self(images)
        global_ = F.normalize(self.pooled(feats), dim=-1)
        pooled_stages = [s.mean(dim=(2, 3)) for s in feats.stages[:3]]  # (B, D_j, h_j, w_j) -> (B, D_j)
        return global_, pooled_stages


# -------------------------------------------------------------------------------------------- text tower


class TextTower(nn.Module):
    """Frozen CLIP text tower: class names x templates -> (K, M, d) L2-normalised embeddings."""

    token_embedding: nn.Embedding
    positional_embedding: Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Union[Tensor, nn.Linear]
    attn_mask: Tensor

    def __init__(self, clip: open_clip.model.CLIP, tokenizer):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, "text_eos_id", None)
        self.tokenizer = tokenizer
        self.embed_dim = int(
            clip.text_projection.shape[1]
            if isinstance(clip.text_projection, Tensor)
            else clip.text_projection.out_features
        )

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """(N, L) token ids -> (N, d) unnormalised sentence embeddings (EOT pooling + projection)."""
        x = self.token_embedding(tokens) + self.positional_embedding  # (N, L, width)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)  # (N, width)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection  # (N, width) @ (width, d) -> (N, d)

    @torch.no_grad()
    def encode_sentences(self, sentences: Sequence[str], batch_size: int = 256) -> Tensor:
        """(N,) sentences -> (N, d) L2-normalised embeddings."""
        device = self.token_embedding.weight.device
        out = []
        for i in range(0, len(sentences), batch_size):
            tokens = self.tokenizer(list(sentences[i : i + batch_size])).to(device)
            out.append(F.normalize(self.encode_tokens(tokens).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=device)

    @torch.no_grad()
    def encode(self, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> Tensor:
        """Class names x templates -> T (K, M, d), L2-normalised.

        A class name may list synonyms separated by commas ("sofa, couch"): every synonym is put in every
        template, each sentence embedding is L2-normalised, the synonyms are averaged per template and the
        mean is L2-normalised again (SED's convention; CAT-Seg uses the first synonym only).
        """
        if not class_names:
            raise InputError("the class list is empty; give at least one class name")
        if not templates or any("{}" not in t for t in templates):
            raise InputError("every template must contain '{}' where the class name goes")
        sentences, owner = [], []
        for k, name in enumerate(class_names):
            synonyms = split_synonyms(name)
            for m, template in enumerate(templates):
                for syn in synonyms:
                    sentences.append(template.format(syn))
                    owner.append(k * len(templates) + m)
        emb = self.encode_sentences(sentences, batch_size)  # (N_sentences, d)
        index = torch.tensor(owner, device=emb.device)
        sums = torch.zeros(len(class_names) * len(templates), emb.shape[1], device=emb.device)
        sums.index_add_(0, index, emb)  # sum the synonyms of each (class, template)
        out = F.normalize(sums, dim=-1)  # the mean and the sum have the same direction
        return out.view(len(class_names), len(templates), -1)  # (K*M, d) -> (K, M, d)


# -------------------------------------------------------------------------------------------- factories


class LazyTokenizer:
    """The OpenCLIP BPE tokenizer, built on its first call: reading the bundled vocabulary costs ~0.3 s, which a
    model whose text prompts come from a prompt bank (``dpseg segment`` with a bank) never needs to pay."""

    def __init__(self, context_length: int):
        self.context_length = context_length
        self._tokenizer = None

    def _get(self):
        if self._tokenizer is None:
            self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def __call__(self, texts):
        return self._get()(texts)

    def __getattr__(self, name: str):  # sot_token_id, encode, ...: the real tokenizer's
        if name.startswith("__") or name == "_tokenizer":
            raise AttributeError(name)
        return getattr(self._get(), name)


def make_frozen_copy(tower: ImageTower) -> ImageTower:
    """The visual-prompt encoder: a separate copy with the same weights, frozen and in eval mode. When the model is
    built for a checkpoint's weights (:func:`dpseg.init_patch.skip_random_init`), its parameters are left unfilled:
    copying them would write hundreds of MB that loading overwrites."""
    memo = {}
    if init_skipped():
        memo = {id(p): nn.Parameter(torch.empty_like(p), requires_grad=p.requires_grad) for p in tower.parameters()}
    frozen = copy.deepcopy(tower, memo)
    frozen.grad_checkpointing = False
    frozen.requires_grad_(False)
    frozen.eval()
    return frozen
