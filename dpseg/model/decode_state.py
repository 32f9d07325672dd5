"""What one decode of an image's features hands to the next decode of the same features (two-pass refinement).

Pass 2 of the refinement (:func:`dpseg.model.refine.two_pass`) decodes the same image features with prompts that
differ only for the detected classes. Everything of pass 1 that does not depend on those prompts is exactly the
same in pass 2 and is reused instead of recomputed:

* the projected encoder stages E_4, E_3, E_2 and their share of each stage's fusion (they depend on the image only);
* the stage-0 class maps - cost volume, cost embedding, spatial aggregation (and the first auxiliary head) - of every
  (image, class) whose prompts did not change: these steps are per class, and only class aggregation, which comes
  next, mixes the classes. Pass 2 computes them for the changed pairs only.

From class aggregation on every class sees the changed ones, so the rest of the decoder runs again for all K (the
paper's pass 2); tests check that the result equals a decode from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass
class DecodeState:
    """Filled by a decode given an empty state; read by the next decode of the same ``feats`` given ``changed``."""

    feats: object = None  # the ImageFeatures the state belongs to (checked by identity)
    projected: Optional[list[Tensor]] = None  # projected E_4, E_3, E_2: [(B, g_s, h, w)]
    terms: Optional[list] = None  # their fusion shares [(B, C_s+1, h, w) or None]
    stage0: Optional[Tensor] = None  # (B, K, C_0, h5, w5) stage-0 maps before class aggregation
    stage0_aux: Optional[Tensor] = None  # (B, K, h5, w5) the first auxiliary head's logits, when the model has them
    changed: Optional[Tensor] = None  # (B, K) bool: the (image, class) pairs whose prompts the next decode changes

    def matches(self, feats: object, batch: int, classes: int) -> bool:
        """Whether the stage-0 maps can serve a decode of ``feats`` with ``classes`` classes."""
        return (
            self.feats is feats
            and self.stage0 is not None
            and self.changed is not None
            and tuple(self.changed.shape) == (batch, classes)
            and tuple(self.stage0.shape[:2]) == (batch, classes)
        )
