"""Test-time inference protocols, shared by ``dpseg eval``, ``dpseg segment`` and the Python API.

* ``whole`` (SED, the DPSeg paper's protocol): resize the short side to ``short_side`` (long side capped at
  ``max_side``), squash the whole image to ``input_size`` x ``input_size``, run the model once, take sigmoid
  probabilities at stride 4 and resize them bilinearly to the original image size; argmax.
* ``slide`` (CAT-Seg): resize the short side to ``short_side``, squash to ``short_side`` x ``short_side``, cut
  ``slide_window`` windows with overlap ``slide_overlap`` (last window flush with the border) plus one global view
  of the whole image; every view is resized to ``input_size`` for the model; window probabilities are averaged
  where windows overlap, then averaged 50/50 with the global view's, resized to the original size; argmax.

Any input size works. Memory: the model's stride-4 logits are the only (K, h, w) tensor held at once; the
full-resolution maps are built, reduced by a running max/argmax and freed ``class_chunk`` classes at a time
(further capped so one chunk holds at most ``MAX_CHUNK_ELEMS`` floats), so K = 847 never materialises
(K, H, W) at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from dpseg.data.transforms import resize_image, shortest_edge_size
from dpseg.errors import ConfigError, InputError
from dpseg.model.refine import RefinePolicy
from dpseg.model.refine import two_pass as two_pass_refinement

MAX_CHUNK_ELEMS = 1 << 27  # 512 MiB of fp32 per full-resolution chunk
ForwardFn = Callable[[torch.Tensor], dict]  # images (B, 3, H, W) in [0, 1] -> {pass: logits (B, K, H/4, W/4)}


class Prediction(NamedTuple):
    labels: torch.Tensor  # int64 (H, W) class indices into the prompted vocabulary
    scores: torch.Tensor  # float (H, W) probability of the winning class


@dataclass(frozen=True)
class Protocol:
    name: str = "whole"
    short_side: int = 640
    max_side: int = 2560  # detectron2 test mapper cap on the long side
    input_size: int = 768
    window: int = 384
    overlap: float = 0.333
    class_chunk: int = 128

    def __post_init__(self):
        if self.name not in ("whole", "slide"):
            raise ConfigError(f"config key 'eval.protocol' must be 'whole' or 'slide', got {self.name!r}")
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"config key 'eval.input_size' must be a positive multiple of 32, got {self.input_size}")
        if self.short_side < 1 or self.window < 1:
            raise ConfigError("config keys 'eval.short_side' and 'eval.slide_window' must be >= 1")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"config key 'eval.slide_overlap' must be in [0, 1), got {self.overlap}")


def protocol_from_config(eval_cfg) -> Protocol:
    return Protocol(
        eval_cfg.protocol,
        eval_cfg.short_side,
        eval_cfg.max_side,
        eval_cfg.input_size,
        eval_cfg.slide_window,
        eval_cfg.slide_overlap,
        eval_cfg.class_chunk,
    )


def refine_policy(eval_cfg) -> RefinePolicy:
    """The two-pass refinement policy of the ``eval`` section."""
    return RefinePolicy(
        eval_cfg.refine_min_score,
        eval_cfg.refine_min_area,
        eval_cfg.refine_max_classes,
        eval_cfg.refine_scope,
        eval_cfg.refine_crop_weight,
    )


def model_forward(
    model,
    prompts,
    two_pass: bool = False,
    class_chunk: int = 0,
    refine: RefinePolicy = RefinePolicy(),
    refine_fn=None,
    early_rejection_topk: int = 0,
) -> ForwardFn:
    """Wrap a DPSeg model as ``images -> {"pass1": logits[, "pass2": logits]}``. With ``early_rejection_topk``
    (SED's category early rejection) rejected classes come back at ``REJECTED_LOGIT``: probability exactly 0."""

    extra = {"early_rejection_topk": early_rejection_topk} if early_rejection_topk else {}

    def forward(images: torch.Tensor) -> dict:
        if not two_pass:
            return {"pass1": model(images, prompts, class_chunk=class_chunk, **extra)["logits"]}
        fn = two_pass_refinement if refine_fn is None else refine_fn
        out = fn(model, images, prompts, refine, class_chunk=class_chunk, **extra)
        return {"pass1": out["logits_pass1"], "pass2": out["logits"]}

    return forward


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, size): regular stride, plus a last window flush with the end if needed."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, max(1, stride)))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def _to_float(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device=device, dtype=torch.float32) / 255.0


def _squash(x: torch.Tensor, size: int) -> torch.Tensor:
    return (
        x if x.shape[-2:] == (size, size) else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    )


def _check_logits(logits: torch.Tensor, n: int, k: Optional[int]) -> torch.Tensor:
    if logits.ndim != 4 or logits.shape[0] != n or (k is not None and logits.shape[1] != k):
        raise InputError(f"model returned logits of shape {tuple(logits.shape)}; expected ({n}, K={k}, h, w)")
    return logits.float()


def chunked_argmax(
    scores_for: Callable[[int, int], torch.Tensor], num_classes: int, out_hw: tuple[int, int], class_chunk: int, device
) -> Prediction:
    """Argmax over classes of full-resolution maps produced ``chunk`` classes at a time by ``scores_for(k0, k1)``
    -> (k1 - k0, H, W). Ties go to the lower class index, as a global argmax would."""
    h, w = out_hw
    chunk = max(1, min(class_chunk or num_classes, num_classes, MAX_CHUNK_ELEMS // max(1, h * w)))
    best = torch.full((h, w), -float("inf"), device=device)
    labels = torch.zeros((h, w), dtype=torch.int64, device=device)
    for k0 in range(0, num_classes, chunk):
        k1 = min(num_classes, k0 + chunk)
        s = scores_for(k0, k1)
        val, idx = s.max(dim=0)  # (k, H, W) -> (H, W)
        better = val > best
        best = torch.where(better, val, best)
        labels = torch.where(better, idx + k0, labels)
        del s, val, idx
    return Prediction(labels.cpu(), best.cpu())


@torch.no_grad()
def predict_whole(
    forward: ForwardFn, images: Sequence[torch.Tensor], p: Protocol, device="cpu", num_classes: Optional[int] = None
) -> list[dict]:
    """SED protocol for a batch of uint8 (3, H_i, W_i) images of any sizes -> per image {pass: Prediction}."""
    views = []
    for img in images:
        h, w = img.shape[-2:]
        small = resize_image(img, shortest_edge_size(h, w, p.short_side, p.max_side))
        views.append(_squash(_to_float(small[None], device), p.input_size))  # (1, 3, S, S)
    batch = torch.cat(views)  # (B, 3, input, input)
    outs = {key: _check_logits(v, len(images), num_classes) for key, v in forward(batch).items()}
    results = []
    for i, img in enumerate(images):
        hw = (int(img.shape[-2]), int(img.shape[-1]))
        res = {}
        for key, logits in outs.items():
            one = logits[i : i + 1]  # (1, K, h, w)

            def scores(k0, k1, one=one, hw=hw):
                probs = one[:, k0:k1].sigmoid()
                return F.interpolate(probs, size=hw, mode="bilinear", align_corners=False)[0]  # (k, H, W)

            res[key] = chunked_argmax(scores, one.shape[1], hw, p.class_chunk, device)
        results.append(res)
    return results


@torch.no_grad()
def predict_slide(
    forward: ForwardFn, image: torch.Tensor, p: Protocol, device="cpu", num_classes: Optional[int] = None
) -> dict:
    """CAT-Seg protocol for one uint8 (3, H, W) image -> {pass: Prediction}."""
    h, w = image.shape[-2:]
    small = _to_float(resize_image(image, shortest_edge_size(h, w, p.short_side, p.max_side))[None], device)
    s = p.short_side
    canvas_img = _squash(small, s)  # (1, 3, S, S)
    win = min(p.window, s)
    starts = window_starts(s, win, int(win * (1 - p.overlap)))
    boxes = [(y, x) for y in starts for x in starts]
    crops = [canvas_img[:, :, y : y + win, x : x + win] for y, x in boxes]
    crops.append(_squash(small, win))  # the global view
    views = torch.cat([_squash(c, p.input_size) for c in crops])  # (N + 1, 3, input, input)
    count = torch.zeros(s, s, device=device)
    for y, x in boxes:
        count[y : y + win, x : x + win] += 1
    res = {}
    for key, logits in forward(views).items():
        logits = _check_logits(logits, len(boxes) + 1, num_classes)

        def scores(k0, k1, logits=logits):
            probs = F.interpolate(logits[:, k0:k1], size=(win, win), mode="bilinear", align_corners=False).sigmoid()
            canvas = torch.zeros(k1 - k0, s, s, device=device)
            for (y, x), pr in zip(boxes, probs[:-1]):
                canvas[:, y : y + win, x : x + win] += pr
            glob = F.interpolate(probs[-1:], size=(s, s), mode="bilinear", align_corners=False)[0]  # (k, S, S)
            fused = (canvas / count + glob) / 2
            return F.interpolate(fused[None], size=(h, w), mode="bilinear", align_corners=False)[0]  # (k, H, W)

        res[key] = chunked_argmax(scores, logits.shape[1], (h, w), p.class_chunk, device)
    return res


def predict(
    forward: ForwardFn, images: Sequence[torch.Tensor], p: Protocol, device="cpu", num_classes: Optional[int] = None
) -> list[dict]:
    """Run the selected protocol on uint8 (3, H, W) images -> per image {"pass1": Prediction[, "pass2": ...]}."""
    for img in images:
        if img.ndim != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
            raise InputError(f"images must be uint8 tensors (3, H, W), got {img.dtype} {tuple(img.shape)}")
    if p.name == "whole":
        return predict_whole(forward, images, p, device, num_classes)
    return [predict_slide(forward, img, p, device, num_classes) for img in images]
