"""Turning images into visual prompts: the crop/pad/resize rule, image reading, encoding, exemplar folders.

One preprocessing rule serves every visual-prompt source (generated images, user exemplars, the crops of the
second inference pass, notes §9 #6 and #18): with a mask, pixels outside it become the CLIP mean colour and the
image is cropped to the mask's bounding box; the result is resized keeping its aspect ratio so that its longer
side is ``size`` and padded to a square with the CLIP mean colour. The mean colour is what the tower's own
normalisation maps to zero, so the padding carries no signal of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from dpseg.classnames import describe_duplicates, duplicate_groups
from dpseg.errors import DataError, InputError

CLIP_MEAN = tuple(float(c) for c in OPENAI_DATASET_MEAN)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
ImageLike = Union[Image.Image, Tensor, np.ndarray]


def load_image(path: Union[str, Path]) -> Image.Image:
    """Read an image file as RGB (or RGBA when it has transparency), EXIF orientation applied."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grayscale: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    return im.convert("RGB")


def _to_tensor(image: ImageLike) -> tuple[Tensor, Optional[Tensor]]:
    """An image as float RGB in [0, 1] (3, H, W) and its alpha mask (H, W) bool or None."""
    alpha = None
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        arr = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, C)
        if arr.shape[-1] == 4:
            alpha = arr[..., 3] > 127
        return arr[..., :3].permute(2, 0, 1).float() / 255.0, alpha  # (H, W, 3) -> (3, H, W)
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] not in (3, 4):
            image = np.ascontiguousarray(image.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise InputError(f"a visual prompt image must be a PIL image, tensor or array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3, 4) or image.shape[1] < 1 or image.shape[2] < 1:
        raise InputError(f"a visual prompt image tensor must have shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif not image.is_floating_point():
        raise InputError(f"a visual prompt image tensor must be uint8 or float in [0, 1], got {image.dtype}")
    if image.shape[0] == 4:
        alpha, image = image[3] > 0.5, image[:3]
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.float(), alpha


def _to_mask(mask: ImageLike, hw: tuple[int, int]) -> Tensor:
    if isinstance(mask, Image.Image):
        mask = np.array(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor) or mask.ndim != 2 or tuple(mask.shape) != tuple(hw):
        shape = tuple(mask.shape) if hasattr(mask, "shape") else type(mask).__name__
        raise InputError(f"the mask must have the image's size {tuple(hw)} (H, W), got {shape}")
    return mask.float() > 0.5


def prepare_prompt_image(image: ImageLike, size: int, mask: Optional[ImageLike] = None) -> Tensor:
    """A visual-prompt image as float (3, size, size) in [0, 1] on the input's device (rule in the module doc).

    ``image``: PIL image (an alpha channel acts as a mask), uint8 or float [0, 1] tensor (3, H, W), or an
    (H, W, 3) uint8 array. ``mask``: (H, W) bool / 0-1 / 0-255, True = the object.
    """
    if size < 1:
        raise InputError(f"prompt image size must be >= 1, got {size}")
    x, alpha = _to_tensor(image)
    keep = alpha
    if mask is not None:
        m = _to_mask(mask, x.shape[-2:]).to(x.device)
        keep = m if keep is None else keep.to(x.device) & m
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(3, 1, 1)
    if keep is not None:
        keep = keep.to(x.device)
        if not keep.any():
            raise InputError("the mask (or alpha channel) of a visual prompt image is empty; nothing to crop")
        rows, cols = keep.any(dim=1).nonzero().flatten(), keep.any(dim=0).nonzero().flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        x = torch.where(keep, x, mean)[:, y0:y1, x0:x1]  # (3, h_box, w_box)
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    out = mean.expand(3, size, size).clone()
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, top : top + nh, left : left + nw] = x.clamp(0, 1)
    return out


@torch.no_grad()
def encode_prompt_images(
    prompt_encoder, images: Sequence[ImageLike], size: int, batch_size: int = 32
) -> tuple[Tensor, list[Tensor]]:
    """Encode images with the frozen visual-prompt encoder: V (N, d) L2-normalised, [v_j (N, D_j), j = 2, 3, 4].

    Outputs are float32 on the encoder's device. Each batch is computed independently, so results do not depend
    on how a list is split across calls of the same batch composition.
    """
    if not len(images):
        raise InputError("no images to encode")
    param = next(prompt_encoder.parameters())
    globals_, stages = [], [[], [], []]
    for i in range(0, len(images), max(1, batch_size)):
        batch = torch.stack([prepare_prompt_image(im, size) for im in images[i : i + batch_size]])  # (b, 3, s, s)
        v, pooled = prompt_encoder.encode_prompts(batch.to(device=param.device, dtype=param.dtype))
        globals_.append(v.float())
        for j, p in enumerate(pooled):
            stages[j].append(p.float())
    return torch.cat(globals_), [torch.cat(s) for s in stages]


def average_prompts(v: Tensor, stages: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One visual prompt from several images: mean of the L2-normalised V, renormalised; mean of each v_j."""
    return F.normalize(F.normalize(v, dim=-1).mean(dim=0), dim=-1), [s.mean(dim=0) for s in stages]


def find_exemplars(folder: Union[str, Path]) -> dict[str, list[Path]]:
    """``folder/<class name>/*.jpg`` -> {class name: sorted image paths}; hidden files and folders are skipped."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DataError(f"exemplar folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"exemplar folder {folder} is not a directory; pass a folder of class_name/*.jpg")
    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p for p in sub.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(f"exemplar class folder {sub} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        found[sub.name] = files
    if not found:
        raise DataError(f"exemplar folder {folder} has no class sub-folders; expected {folder}/<class name>/*.jpg")
    try:
        dup = duplicate_groups(list(found))
    except ValueError as e:  # a folder named only by spaces and commas
        raise DataError(f"exemplar folder {folder}: {e}; rename that sub-folder after its class") from None
    if dup:
        raise DataError(f"exemplar folder {folder} has sub-folders for {describe_duplicates(dup)} more than once; "
                        "merge them into one folder per class")
    return found
