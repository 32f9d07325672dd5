"""Prompts for one vocabulary and the dual prompt R.

A :class:`PromptSet` holds, for K classes and M templates,

* ``text``  T  (K, M, d)   L2-normalised CLIP text embeddings of the templated class names;
* ``visual`` V (K, M, d)   L2-normalised global embeddings of visual prompts (generated images, exemplars or crops);
* ``visual_stages`` v_j (K, M, D_j) for j = 2, 3, 4: globally average-pooled stage-j features of the same images
  from the frozen visual-prompt encoder (raw, not normalised: the visual cost volume takes a cosine).

Any tensor may carry a leading batch dimension B (per-image prompts, as produced by refinement).
The dual prompt is ``R = normalize((normalize(V) + normalize(T)) / 2)`` (docs/paper-choices.md #5: both modalities are
normalised before averaging so neither dominates by its norm; the final normalisation does not change a cosine).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dpseg.errors import InputError
from dpseg.vocab import describe_duplicates, duplicate_groups


@dataclass
class PromptSet:
    class_names: list[str]
    text: Tensor  # (K, M, d) or (B, K, M, d)
    visual: Optional[Tensor] = None  # (K, M, d) or (B, K, M, d)
    visual_stages: Optional[list[Tensor]] = None  # [(K, M, D_j) or (B, K, M, D_j) for j = 2, 3, 4]

    def __post_init__(self):
        k = len(self.class_names)
        if k == 0:
            raise InputError("a prompt set needs at least one class")
        try:
            dup = duplicate_groups(self.class_names)
        except (TypeError, ValueError) as e:
            raise InputError(f"bad class name in a prompt set: {e}") from None
        if dup:  # names differing only in case or spacing are one class (dpseg.vocab.class_key)
            raise InputError(f"duplicate class names: {describe_duplicates(dup)}; each class must appear once")
        for name, t in self._tensors():
            if t.ndim not in (3, 4) or t.shape[-3] != k:
                raise InputError(
                    f"prompt tensor '{name}' has shape {tuple(t.shape)}; expected (K={k}, M, dim) or (B, K, M, dim)"
                )
        m = self.text.shape[-2]
        if self.visual is not None and self.visual.shape[-1] != self.text.shape[-1]:
            raise InputError(
                f"visual prompts have width {self.visual.shape[-1]} but text prompts {self.text.shape[-1]}"
            )
        for name, t in self._tensors():
            if t.shape[-2] not in (m, 1):
                raise InputError(f"prompt tensor '{name}' has {t.shape[-2]} templates but the text prompts have {m}")
        if self.visual_stages is not None and len(self.visual_stages) != 3:
            raise InputError("visual_stages must hold 3 tensors (stages 2, 3, 4)")

    def _tensors(self):
        yield "text", self.text
        if self.visual is not None:
            yield "visual", self.visual
        for j, v in enumerate(self.visual_stages or [], start=2):
            yield f"visual_stages[{j}]", v

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_templates(self) -> int:
        return self.text.shape[-2]

    @property
    def has_visual(self) -> bool:
        return self.visual is not None and self.visual_stages is not None

    @property
    def batched(self) -> bool:
        return any(t.ndim == 4 for _, t in self._tensors())

    def to(self, device=None, dtype=None) -> PromptSet:
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        return replace(
            self,
            text=move(self.text),
            visual=None if self.visual is None else move(self.visual),
            visual_stages=None if self.visual_stages is None else [move(v) for v in self.visual_stages],
        )

    def select(self, indices: Sequence[int]) -> PromptSet:
        """The prompts of a subset of classes, in the given order."""
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.text.device)

        def pick(t: Tensor) -> Tensor:
            return t.index_select(t.ndim - 3, idx)

        return PromptSet(
            class_names=[self.class_names[i] for i in idx.tolist()],
            text=pick(self.text),
            visual=None if self.visual is None else pick(self.visual),
            visual_stages=None if self.visual_stages is None else [pick(v) for v in self.visual_stages],
        )

    def text_only(self) -> PromptSet:
        return PromptSet(self.class_names, self.text)


def dual_prompt(text: Tensor, visual: Optional[Tensor], prompt_type: str) -> Tensor:
    """The prompt embeddings the cost volume is built from: T, V or R = normalize(norm V + norm T): (..., K, M, d)."""
    if prompt_type == "text":
        return F.normalize(text, dim=-1)
    if visual is None:
        raise InputError(
            f"prompt_type '{prompt_type}' needs visual prompts but none were given; build a prompt bank "
            "(dpseg prompts build) or use text-only prompts (model.prompt_type=text)"
        )
    v = F.normalize(visual, dim=-1)
    if prompt_type == "visual":
        return v.expand(*text.shape[:-1], v.shape[-1]) if v.shape[-2] == 1 else v
    if prompt_type == "dual":
        t = F.normalize(text, dim=-1)
        return F.normalize((v + t) / 2, dim=-1)  # (..., K, M, d); V broadcasts over M when it has one template
    raise InputError(f"unknown prompt_type '{prompt_type}' (text | visual | dual)")
