"""Training augmentation (the SED / CAT-Seg detectron2 mapper, rewritten on tensors).

Order, as the peers' ``MaskFormerSemanticDatasetMapper``: resize shortest edge (capped long side) -> random crop
with the category-area constraint -> SSD photometric jitter -> horizontal flip -> pad to the crop size.
Every transform maps an item ``{"image": uint8 (3, H, W), "label": int64 (H, W), ...}`` to a new item with the
image and label geometrically aligned; labels are only ever indexed (nearest, crop, flip) or padded with
:data:`~dpseg.data.IGNORE_INDEX`, so -1 and every class value survive unchanged.

Randomness comes from torch: pass ``generator`` for reproducible streams (e.g. seeded per sample for exact
resume), otherwise the global torch RNG (seeded per DataLoader worker by torch) is used.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dpseg.errors import ConfigError
from dpseg.vocab import IGNORE_INDEX


def _uniform(lo: float, hi: float, g: Optional[torch.Generator]) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(lo: int, hi: int, g: Optional[torch.Generator]) -> int:
    """Uniform integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (), generator=g).item())


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, h, w) with PIL's bilinear filter on the uint8 image: exactly detectron2's
    ``ResizeTransform`` (``Image.resize((w, h), BILINEAR)``), the resize SED and CAT-Seg train and evaluate with."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())  # (3, H, W) -> (H, W, 3)
    out = np.asarray(pil.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR))
    return torch.from_numpy(out.copy()).permute(2, 0, 1)  # (h, w, 3) -> (3, h, w)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour by index gathering (source index floor(dst * in / out)), exact for any integer value."""
    h, w = label.shape
    if (h, w) == tuple(size):
        return label
    rows = (torch.arange(size[0]) * h // size[0]).clamp_(max=h - 1)
    cols = (torch.arange(size[1]) * w // size[1]).clamp_(max=w - 1)
    return label[rows][:, cols]


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """The output size of detectron2's ``ResizeShortestEdge`` (its ``get_output_shape``, the same float arithmetic
    and rounding): the short side becomes exactly ``short``, the long side is scaled and capped at ``max_size``
    (0 = no cap), each rounded half up."""
    size = float(short)
    scale = size / min(h, w)
    nh, nw = (size, scale * w) if h < w else (scale * h, size)
    if max_size > 0 and max(nh, nw) > max_size:
        s = max_size * 1.0 / max(nh, nw)
        nh, nw = nh * s, nw * s
    return int(nh + 0.5), int(nw + 0.5)


class ResizeShortestEdge:
    def __init__(self, short: int, max_size: int = 0):
        self.short, self.max_size = short, max_size

    def __call__(self, item: dict, generator=None) -> dict:
        h, w = item["label"].shape
        size = shortest_edge_size(h, w, self.short, self.max_size)
        return {**item, "image": resize_image(item["image"], size), "label": resize_label(item["label"], size)}


class RandomCropCategoryArea:
    """Random crop of min(crop, H) x min(crop, W); with ``cat_max_ratio`` < 1, retry up to ``tries`` times
    until no single class covers more than that share of the crop's labelled pixels and at least two classes
    appear (ignore excluded), else keep the last try (mmseg / detectron2 semantics)."""

    def __init__(self, crop_size: int, cat_max_ratio: float = 1.0, tries: int = 10):
        self.crop_size, self.cat_max_ratio, self.tries = crop_size, cat_max_ratio, tries

    def _window(self, h: int, w: int, g) -> tuple[int, int, int, int]:
        ch, cw = min(self.crop_size, h), min(self.crop_size, w)
        return _randint(0, h - ch + 1, g), _randint(0, w - cw + 1, g), ch, cw

    def __call__(self, item: dict, generator=None) -> dict:
        label = item["label"]
        h, w = label.shape
        y, x, ch, cw = self._window(h, w, generator)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.tries):
                patch = label[y : y + ch, x : x + cw]
                _, counts = torch.unique(patch[patch != IGNORE_INDEX], return_counts=True)
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                y, x, ch, cw = self._window(h, w, generator)
        return {**item, "image": item["image"][:, y : y + ch, x : x + cw], "label": label[y : y + ch, x : x + cw]}


class PhotometricJitterSSD:
    """SSD colour jitter with detectron2's ``ColorAugSSDTransform`` defaults: brightness +-32, then either
    (contrast, saturation, hue) or (saturation, hue, contrast); each step applied with probability 0.5;
    contrast and saturation factors in [0.5, 1.5], hue shift +-18 on OpenCV's 0..179 hue scale."""

    def __init__(
        self,
        brightness: float = 32,
        contrast: Sequence[float] = (0.5, 1.5),
        saturation: Sequence[float] = (0.5, 1.5),
        hue: int = 18,
    ):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, tuple(contrast), tuple(saturation), hue

    @staticmethod
    def _affine(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def __call__(self, item: dict, generator=None) -> dict:
        g = generator
        img = np.ascontiguousarray(item["image"].permute(1, 2, 0).numpy())  # (3, H, W) -> (H, W, 3) RGB

        def contrast(im):
            return self._affine(im, _uniform(self.contrast[0], self.contrast[1], g), 0) if _randint(0, 2, g) else im

        def sat_hue(im):
            do_sat, sat = _randint(0, 2, g), _uniform(self.saturation[0], self.saturation[1], g)
            do_hue, shift = _randint(0, 2, g), _randint(-self.hue, self.hue + 1, g)
            if not (do_sat or do_hue):
                return im
            import cv2  # here, not at the top: inference (dpseg segment) imports this module and never needs it

            hsv = cv2.cvtColor(im, cv2.COLOR_RGB2HSV).astype(np.int32)  # (H, W, 3): h 0..179, s, v 0..255
            if do_sat:
                hsv[..., 1] = np.clip(np.floor(hsv[..., 1] * sat), 0, 255)
            if do_hue:
                hsv[..., 0] = (hsv[..., 0] + shift) % 180
            return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)

        if _randint(0, 2, g):
            img = self._affine(img, 1.0, _uniform(-self.brightness, self.brightness, g))
        if _randint(0, 2, g):
            img = sat_hue(contrast(img))
        else:
            img = contrast(sat_hue(img))
        return {**item, "image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)}  # (H, W, 3) -> (3, H, W)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, item: dict, generator=None) -> dict:
        if torch.rand((), generator=generator).item() >= self.p:
            return item
        return {**item, "image": item["image"].flip(-1), "label": item["label"].flip(-1)}


class PadToSize:
    """Pad bottom/right up to ``size`` x ``size`` (image with ``image_value``, label with IGNORE_INDEX)."""

    def __init__(self, size: int, image_value: int = 128):
        self.size, self.image_value = size, image_value

    def __call__(self, item: dict, generator=None) -> dict:
        h, w = item["label"].shape
        ph, pw = max(0, self.size - h), max(0, self.size - w)
        if not (ph or pw):
            return item
        image = F.pad(item["image"], (0, pw, 0, ph), value=self.image_value)
        label = F.pad(item["label"], (0, pw, 0, ph), value=IGNORE_INDEX)
        return {**item, "image": image, "label": label}


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, item: dict, generator: Optional[torch.Generator] = None) -> dict:
        for t in self.transforms:
            item = t(item, generator)
        return item

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


def build_train_transform(data_cfg) -> Compose:
    """The training pipeline from a :class:`~dpseg.config.DataConfig`."""
    if data_cfg.crop_size < 1 or data_cfg.resize_short < 1:
        raise ConfigError("config keys 'data.crop_size' and 'data.resize_short' must be >= 1")
    if not 0 < data_cfg.cat_max_ratio <= 1:
        raise ConfigError(f"config key 'data.cat_max_ratio' must be in (0, 1], got {data_cfg.cat_max_ratio}")
    steps: list = [
        ResizeShortestEdge(data_cfg.resize_short, data_cfg.resize_max),
        RandomCropCategoryArea(data_cfg.crop_size, data_cfg.cat_max_ratio),
    ]
    if data_cfg.color_jitter:
        steps.append(PhotometricJitterSSD())
    if data_cfg.flip:
        steps.append(RandomHorizontalFlip())
    steps.append(PadToSize(data_cfg.crop_size, data_cfg.pad_value))
    return Compose(steps)
