"""The one rule that turns an image - a generated prompt image, a user's exemplar, or a region of the input image in
the second inference pass - into the square visual-prompt image the encoder sees (docs/paper-choices.md #6, #18).

A generated prompt image shows one object with its surroundings, filling most of a square frame. Every other
prompt is framed the same way, so that the frozen prompt encoder always sees the kind of picture it is given
for the bank:

* the *region* is the whole image, or the bounding box of a mask (a class's predicted pixels in pass 2) or of an
  alpha channel (a cut-out exemplar);
* the frame is the square centred on the region whose side is the region's longer side divided by
  :data:`OBJECT_FILL` (1 for the whole image: nothing is cut), moved inside the image where it fits;
* the pixels keep their content - the object's context is not masked out, as in a generated image; only
  transparent pixels (alpha) and frame areas beyond the image border take the CLIP mean colour, which the
  tower's own normalisation maps to zero;
* the frame is resized to ``size`` x ``size``.

So a whole square image is only resized; a non-square one is padded to a square with the mean colour; a masked
region becomes an object filling ~70 % of the frame, as the objects of generated prompt images do.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dpseg.errors import InputError
from dpseg.image_io import CLIP_MEAN

ImageLike = Union[Image.Image, Tensor, np.ndarray]


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


OBJECT_FILL = 0.7  # share of the frame's side a masked region spans (generated objects span ~0.55-0.8 of theirs)


def prompt_frame(region: tuple[int, int, int, int], hw: tuple[int, int], fill: float) -> tuple[int, int, int]:
    """(top, left, side) of the square frame around ``region`` = (y0, y1, x0, x1) in an image of size ``hw``."""
    y0, y1, x0, x1 = region
    H, W = hw
    side = max(1, int(round(max(y1 - y0, x1 - x0) / fill)))
    top, left = (y0 + y1 - side) // 2, (x0 + x1 - side) // 2

    def inside(start: int, extent: int) -> int:  # shift the frame into the image along one axis where it fits
        return min(max(start, 0), extent - side) if side <= extent else (extent - side) // 2

    return inside(top, H), inside(left, W), side


def prepare_prompt_image(
    image: ImageLike,
    size: int,
    mask: Optional[ImageLike] = None,
    fill: float = OBJECT_FILL,
    mask_outside: bool = False,
) -> Tensor:
    """A visual-prompt image as float (3, size, size) in [0, 1] on the input's device (rule in the module doc).

    ``image``: PIL image (an alpha channel marks the object and its transparent pixels), uint8 or float [0, 1]
    tensor (3, H, W), or an (H, W, 3) uint8 array. ``mask``: (H, W) bool / 0-1 / 0-255, True = the region.
    ``mask_outside``: pixels outside the mask take the CLIP mean colour too (the region alone, no surroundings:
    refinement's ``masked`` framing).
    """
    if size < 1:
        raise InputError(f"prompt image size must be >= 1, got {size}")
    if not 0 < fill <= 1:
        raise InputError(f"the object fill of a prompt frame must be in (0, 1], got {fill}")
    x, alpha = _to_tensor(image)
    H, W = x.shape[-2:]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(3, 1, 1)
    if alpha is not None:
        alpha = alpha.to(x.device)
        x = torch.where(alpha, x, mean)  # transparent pixels carry nothing
    region_mask = alpha
    if mask is not None:
        m = _to_mask(mask, (H, W)).to(x.device)
        region_mask = m if region_mask is None else region_mask & m
        if mask_outside:
            x = torch.where(m, x, mean)
    if region_mask is None:
        region, fill = (0, H, 0, W), 1.0
    else:
        if not region_mask.any():
            raise InputError("the mask (or alpha channel) of a visual prompt image is empty; nothing to crop")
        rows, cols = region_mask.any(dim=1).nonzero().flatten(), region_mask.any(dim=0).nonzero().flatten()
        region = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    top, left, side = prompt_frame(region, (H, W), fill)
    # the part of the frame inside the image, resized into its place on a mean-colour canvas (exact borders)
    ys, xs, ye, xe = max(top, 0), max(left, 0), min(top + side, H), min(left + side, W)
    scale = size / side
    oy, ox = int(round((ys - top) * scale)), int(round((xs - left) * scale))
    nh = max(1, min(size - oy, int(round((ye - ys) * scale))))
    nw = max(1, min(size - ox, int(round((xe - xs) * scale))))
    content = x[:, ys:ye, xs:xe]
    if (nh, nw) != tuple(content.shape[-2:]):
        content = F.interpolate(content[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    out = mean.expand(3, size, size).clone()
    out[:, oy : oy + nh, ox : ox + nw] = content.clamp(0, 1)
    return out
