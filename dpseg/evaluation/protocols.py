"""Test-time protocols: how an image of any size becomes model inputs, and logits become a full-resolution map.

* ``whole`` (SED, the DPSeg paper's protocol): detectron2's test mapper - the short side resized to
  ``eval.short_side`` (long side capped at ``eval.max_side``) with PIL's bilinear filter on the uint8 image, the
  size rounded as detectron2 rounds it - then the whole image squashed to ``eval.input_size`` squared (bilinear,
  float), run once; sigmoid probabilities at stride 4 resized bilinearly to the original size; argmax.
* ``slide`` (CAT-Seg): the same test mapper, the image squashed to ``short_side`` squared, ``slide_window`` windows
  with overlap ``slide_overlap`` (the last flush with the border) plus one global view of the mapped image; every
  view squashed to ``input_size`` for the model; window logits resized to the window size, sigmoid, averaged where
  windows overlap, then averaged 50/50 with the global view's probabilities, resized to the original size; argmax.

Any input size works. Memory: the model's stride-4 logits are the only (K, h, w) tensor held at once; the
full-resolution maps are built, reduced by a running max/argmax and freed ``class_chunk`` classes at a time (further
capped so one chunk holds at most ``MAX_CHUNK_ELEMS`` floats), so K = 847 never materialises (K, H, W) at full
resolution. :class:`dpseg.evaluation.inference.Inference` is the one caller.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from dpseg.config_schema import EvalConfig
from dpseg.data.transforms import resize_image, shortest_edge_size
from dpseg.errors import InputError

MAX_CHUNK_ELEMS = 1 << 27  # 512 MiB of fp32 per full-resolution chunk
ForwardFn = Callable[[torch.Tensor], dict]  # images (B, 3, H, W) in [0, 1] -> {pass: logits (B, K, H/4, W/4)}


class Prediction(NamedTuple):
    labels: torch.Tensor  # (H, W) class indices into the prompted vocabulary (the dtype of label_dtype(K))
    scores: torch.Tensor  # float (H, W) probability of the winning class


def label_dtype(num_classes: int) -> torch.dtype:
    """uint8 up to 255 classes, int16 up to 32767, else int32: the top value (or -1) stays free for 'unlabelled'."""
    return torch.uint8 if num_classes <= 255 else torch.int16 if num_classes <= 32767 else torch.int32


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets covering [0, size): regular stride, plus a last window flush with the end if needed."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, max(1, stride)))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def mapped(image: torch.Tensor, settings: EvalConfig) -> torch.Tensor:
    """detectron2's test mapper: uint8 (3, H, W) -> uint8 (3, h, w), the short side at ``eval.short_side``."""
    h, w = image.shape[-2:]
    return resize_image(image, shortest_edge_size(h, w, settings.short_side, settings.max_side))


def _to_float(images: torch.Tensor, device) -> torch.Tensor:
    return images.to(device=device, dtype=torch.float32) / 255.0


def _squash(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _check_logits(logits: torch.Tensor, n: int, k: int) -> torch.Tensor:
    if logits.ndim != 4 or logits.shape[0] != n or logits.shape[1] != k:
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
    return Prediction(labels.to(label_dtype(num_classes)).cpu(), best.cpu())


def predict_whole(
    forward: ForwardFn, images: Sequence[torch.Tensor], settings: EvalConfig, num_classes: int, device="cpu"
) -> list[dict]:
    """SED protocol for a batch of uint8 (3, H_i, W_i) images of any sizes -> per image {pass: Prediction}."""
    batch = torch.cat([whole_view(img, settings, device) for img in images])  # (B, 3, input, input)
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

            res[key] = chunked_argmax(scores, num_classes, hw, settings.class_chunk, device)
        results.append(res)
    return results


def predict_slide(
    forward: ForwardFn, image: torch.Tensor, settings: EvalConfig, num_classes: int, device="cpu"
) -> dict:
    """CAT-Seg protocol for one uint8 (3, H, W) image -> {pass: Prediction}."""
    h, w = image.shape[-2:]
    small = _to_float(mapped(image, settings)[None], device)  # (1, 3, h', w')
    s = settings.short_side
    canvas_img = _squash(small, s)  # (1, 3, S, S)
    win = min(settings.slide_window, s)
    starts = window_starts(s, win, int(win * (1 - settings.slide_overlap)))
    boxes = [(y, x) for y in starts for x in starts]
    crops = [canvas_img[:, :, y : y + win, x : x + win] for y, x in boxes]
    crops.append(_squash(small, win))  # the global view
    views = torch.cat([_squash(c, settings.input_size) for c in crops])  # (N + 1, 3, input, input)
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

        res[key] = chunked_argmax(scores, num_classes, (h, w), settings.class_chunk, device)
    return res


def predict(
    forward: ForwardFn, images: Sequence[torch.Tensor], settings: EvalConfig, num_classes: int, device="cpu"
) -> list[dict]:
    """The protocol of ``settings`` on uint8 (3, H, W) images -> per image {"pass1": Prediction[, "pass2": ...]}."""
    if settings.protocol == "whole":
        return predict_whole(forward, images, settings, num_classes, device)
    return [predict_slide(forward, img, settings, num_classes, device) for img in images]


def check_images(images: Sequence[torch.Tensor]) -> None:
    for img in images:
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
            what = f"{img.dtype} {tuple(img.shape)}" if isinstance(img, torch.Tensor) else type(img).__name__
            raise InputError(f"images must be uint8 tensors (3, H, W), got {what}")


def whole_view(image: torch.Tensor, settings: EvalConfig, device="cpu") -> torch.Tensor:
    """The model input the ``whole`` protocol makes of one uint8 (3, H, W) image: (1, 3, input, input) in [0, 1]."""
    return _squash(_to_float(mapped(image, settings)[None], device), settings.input_size)
