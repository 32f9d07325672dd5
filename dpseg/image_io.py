"""The images users segment, in and out: any common file or in-memory image -> uint8 RGB; label maps -> PNG.

Input rules (one place, shared by :class:`~dpseg.segmenter.Segmenter`, ``dpseg segment`` and ``dpseg demo``):

* EXIF orientation is applied, so the label map matches the image as a viewer shows it;
* grayscale, palette and CMYK become RGB; 16-bit images are scaled to 8 bits (65535 -> 255);
* transparent pixels (RGBA, LA, palette with transparency) are composited onto the CLIP mean colour, the
  colour the encoder's normalisation maps to zero, so see-through areas carry no signal of their own;
* in-memory inputs: PIL images; numpy arrays (H, W) or (H, W, 3|4) as uint8, uint16 or float in [0, 1];
  torch tensors (3, H, W) or (H, W) as uint8 or float in [0, 1] (the model's channel-first convention).

Reading a file checks its size from the header before decoding, so an over-large image is refused without
allocating it (``max_pixels``; Pillow itself refuses more than ``2 * PIL.Image.MAX_IMAGE_PIXELS``). Only regular
files are opened (:func:`dpseg.safe_load.open_regular`): a FIFO or a device named ``.png`` is refused up front
instead of blocking the reader forever.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN
from PIL import Image, ImageOps, UnidentifiedImageError

from dpseg.atomic import atomic_target
from dpseg.errors import DataError, DPSegError, InputError
from dpseg.safe_load import open_regular
from dpseg.visualize import palette

# The one list of image file suffixes dpseg reads (segment inputs, exemplars, dataset folders).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CLIP_MEAN = tuple(float(c) for c in OPENAI_DATASET_MEAN)  # what the towers' normalisation maps to zero
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow's hard decompression-bomb limit (about 179 megapixels)
MEAN_RGB = tuple(int(round(c * 255)) for c in CLIP_MEAN)
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


LIMIT_HINT = "raise the limit (--max-pixels / max_pixels=)"


def check_pixels(width: int, height: int, max_pixels: int, what: str, limit_hint: str = LIMIT_HINT) -> None:
    if width < 1 or height < 1:
        raise InputError(f"{what} is empty ({width}x{height} pixels)")
    if max_pixels and width * height > max_pixels:
        raise DataError(
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.1f}; downscale it first or {limit_hint}"
        )


def load_image(path: Union[str, os.PathLike], exif: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file as RGB (or RGBA when it has transparency); 16-bit and float grayscale are scaled to
    8 bits. ``exif``: apply the EXIF orientation (what a viewer shows). Dataset images keep their stored pixel
    array (``exif=False``) because their labels were drawn on it. The size is checked against ``max_pixels``
    from the header, before decoding (exemplar images come here directly)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"cannot read image {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_regular(path, "image", DataError) as f, Image.open(f) as opened:
                check_pixels(opened.width, opened.height, max_pixels, f"image {path}")
                im: Image.Image = ImageOps.exif_transpose(opened) if exif else opened
                im.load()
    except DPSegError:
        raise
    except Image.DecompressionBombError:
        raise DataError(
            f"image {path} exceeds Pillow's safety limit of {DEFAULT_MAX_PIXELS / 1e6:.0f} megapixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float grayscale: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA")
    return im.convert("RGB")


def read_image(
    path: Union[str, os.PathLike],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif: bool = True,
    *,
    label: Optional[str] = None,
    limit_hint: str = LIMIT_HINT,
) -> torch.Tensor:
    """An image file -> uint8 (3, H, W) RGB, by the rules in the module doc (DataError if unreadable). The one
    image reader of dpseg: segment inputs, the demo, exemplars and dataset folders (``exif=False``) use it.

    ``label`` names the file in messages (default ``image PATH``; the demo names the upload, not its server path);
    ``limit_hint`` says how to raise ``max_pixels``."""
    path = Path(path)
    label = label or f"image {path}"
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an image")
    if not path.exists():
        raise DataError(f"{label} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_regular(path, label, DataError, show_path=False) as f, Image.open(f) as im:  # the header only
                width, height = im.size
    except DataError:
        raise
    except Image.DecompressionBombError:
        raise DataError(
            f"{label} exceeds Pillow's safety limit of {DEFAULT_MAX_PIXELS / 1e6:.0f} megapixels "
            "(a decompression bomb, or an image far too large to segment)"
        ) from None
    except UnidentifiedImageError:
        raise DataError(
            f"cannot read {label}: not an image file this reader knows (JPEG, PNG, WebP, BMP, TIFF, GIF)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure on a user file is a bad input, not a bug
        raise DataError(f"cannot read {label}: {_first_line(e).replace(str(path), '(file)')}") from None
    check_pixels(width, height, max_pixels, label, limit_hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = load_image(path, exif, max_pixels=0)  # size checked above
    except DataError as e:
        raise DataError(str(e).replace(f"image {path}", label).replace(str(path), "(file)")) from None
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data found while decoding
        raise DataError(f"cannot decode {label}: {_first_line(e).replace(str(path), '(file)')}") from None
    return pil_to_tensor(image)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image of any mode -> uint8 (3, H, W) RGB (alpha composited onto the CLIP mean colour)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, MEAN_RGB + (255,)), rgba)
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    check_pixels(arr.shape[1], arr.shape[0], 0, "the image")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise InputError(f"an image array must have shape (H, W) or (H, W, 3|4), got {arr.shape}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
            raise InputError("a float image array must hold values in [0, 1]; convert it to uint8 first")
        arr = (np.nan_to_num(arr) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"an image array must be uint8, uint16 or float in [0, 1], got {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr))


def to_image_tensor(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Any supported input (module doc) -> uint8 (3, H, W) RGB on the CPU."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels)
    if isinstance(image, Image.Image):
        check_pixels(image.width, image.height, max_pixels, "the image")
        return pil_to_tensor(image)
    if isinstance(image, np.ndarray):
        return pil_to_tensor(_array_to_pil(image))
    if isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise InputError(f"an image tensor must have shape (3, H, W) or (H, W), got {tuple(image.shape)}")
        if x.is_floating_point():
            if x.numel() and (x.min() < 0 or x.max() > 1):
                raise InputError("a float image tensor must hold values in [0, 1]")
            x = (x * 255.0 + 0.5).to(torch.uint8)
        elif x.dtype != torch.uint8:
            raise InputError(f"an image tensor must be uint8 or float in [0, 1], got {x.dtype}")
        check_pixels(x.shape[2], x.shape[1], max_pixels, "the image")
        return x.expand(3, -1, -1).contiguous()
    raise InputError(f"cannot segment a {type(image).__name__}; pass a file path, PIL image, numpy array or tensor")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def label_image(labels: np.ndarray, num_classes: int, colours: Optional[np.ndarray] = None) -> Image.Image:
    """(H, W) class indices -> PNG-ready image. K <= 255: a palette PNG (mode "P"): every viewer shows the classes
    in ``colours`` ((K, 3) uint8; pass :func:`dpseg.visualize.class_palette` of the class names, the overlay's
    colours; default :func:`dpseg.visualize.palette`), while the pixel values are still the
    class indices (``np.asarray(Image.open(f))`` gives them back). K > 255: 16-bit grayscale (mode I;16), which no
    palette can index: it looks dark in viewers, the values are the indices. Every label file of one vocabulary has
    the same format. Unlabelled pixels (255 / 65535 / -1 in memory) are written as 255 (black in the palette) in
    8-bit files and 65535 in 16-bit files; 255 is also the usual "ignore" value of datasets."""
    if num_classes > 65535:
        raise InputError(f"label maps of {num_classes} classes cannot be stored as PNG (at most 65535)")
    if labels.dtype == np.int32:
        labels = np.where(labels < 0, 65535, labels)
    free = 255 if num_classes <= 255 else 65535
    bad = (labels >= num_classes) & (labels != free)
    if bad.any():
        raise InputError(
            f"the label map holds index {int(labels[bad].max())} but the vocabulary has {num_classes} classes"
        )
    if num_classes <= 255:
        image = Image.fromarray(labels.astype(np.uint8), "L")
        table = np.zeros((256, 3), np.uint8)  # index 255 (unlabelled) and unused indices: black
        table[:num_classes] = palette(num_classes) if colours is None else colours
        image.putpalette(table.tobytes())  # "L" -> "P": the same bytes, now with colours
        return image
    return Image.fromarray(labels.astype(np.uint16))  # mode I;16


def score_image(scores: np.ndarray) -> Image.Image:
    """(H, W) probabilities in [0, 1] -> a 16-bit grayscale PNG-ready image: value = round(p * 65535), so
    ``p = value / 65535`` (steps of 1.5e-5); bright = confident."""
    return Image.fromarray((np.clip(np.nan_to_num(scores.astype(np.float64)), 0, 1) * 65535 + 0.5).astype(np.uint16))


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) bool -> an 8-bit grayscale PNG-ready image: 255 inside the class, 0 elsewhere."""
    return Image.fromarray(mask.astype(np.uint8) * 255, "L")


def save_atomic(image: Image.Image, path: Union[str, os.PathLike], **save_kwargs) -> Path:
    """Save a PIL image so that readers never see a partial file (temp file + rename)."""
    path = Path(path)
    with atomic_target(path) as tmp:
        image.save(tmp, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG"), **save_kwargs)
    return path
