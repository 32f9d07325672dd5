"""Image + label-map datasets read from folders (benchmarks in the detectron2 layout, and custom folders).

Items are ``{"image": uint8 (3, H, W) RGB, "label": int64 (H, W), "name": stem}`` with every on-disk ignore
value mapped to :data:`~dpseg.data.IGNORE_INDEX`. A label value that is neither a class nor an ignore value
raises :class:`~dpseg.errors.DataError` naming the file: a silently mis-prepared label would corrupt the mIoU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from dpseg import image_io
from dpseg.errors import DataError
from dpseg.image_io import IMAGE_SUFFIXES
from dpseg.safe_load import open_regular
from dpseg.vocab import IGNORE_INDEX, read_class_list


def read_image(path: os.PathLike) -> torch.Tensor:
    """uint8 RGB tensor (3, H, W) of a dataset image. EXIF orientation is deliberately NOT applied: labels were
    drawn on the stored pixel array, so rotating the image alone would misalign it with its label."""
    return image_io.read_image(path, max_pixels=0, exif=False)


def read_label_array(path: os.PathLike) -> np.ndarray:
    """The raw stored label values as an integer array (H, W): uint8/palette PNG, 16-bit PNG or TIFF."""
    try:
        with open_regular(path, "label file", DataError) as f, Image.open(f) as img:
            if img.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
                raise DataError(
                    f"label file {path} has image mode {img.mode}; expected a single-channel 8- or 16-bit map"
                )
            arr = np.array(img)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # not an image, bomb, truncated
        raise DataError(
            f"cannot read label file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    if arr.ndim != 2:
        raise DataError(f"label file {path} has shape {arr.shape}; expected a single-channel map")
    return arr


AUTO_IGNORE = "auto"  # 255 for 8-bit label files, 65535 for 16-bit ones (custom folders)


def to_train_ids(raw: np.ndarray, num_classes: int, ignore_values, path: os.PathLike) -> torch.Tensor:
    """Map ignore values to IGNORE_INDEX and check that everything else is a class index in [0, num_classes)."""
    if ignore_values == AUTO_IGNORE:
        # in a 16-bit file 255 is an ordinary class, so the ignore value must follow the file's bit depth
        ignore_values = (255,) if raw.dtype == np.uint8 else (65535,)
    label = raw.astype(np.int64)
    ignore = np.isin(label, np.asarray(list(ignore_values), dtype=np.int64))
    bad = (~ignore) & ((label < 0) | (label >= num_classes))
    if bad.any():
        vals = np.unique(label[bad])[:8].tolist()
        raise DataError(
            f"label file {path} holds values {vals} that are neither classes 0..{num_classes - 1} nor ignore "
            f"{list(ignore_values)}; prepare it again ('dpseg prepare DATASET --force --root ROOT') or check the "
            "class list"
        )
    label[ignore] = IGNORE_INDEX
    return torch.from_numpy(label)


def list_pairs(
    image_dir: Path, label_dir: Path, label_exts: Sequence[str], image_exts: Sequence[str]
) -> list[tuple[Path, Path]]:
    """(image, label) pairs matched by file stem, driven by the label files (as detectron2's load_sem_seg:
    PC-59 reads a 5010-label subset of the 21k-image VOC2010 folder). A label without an image is an error."""
    labels = sorted(
        e.name
        for e in os.scandir(label_dir)
        if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in label_exts
    )
    images: dict[str, str] = {}
    for e in os.scandir(image_dir):
        stem, ext = os.path.splitext(e.name)
        if ext.lower() in image_exts and not e.name.startswith("."):
            images.setdefault(stem, e.name)  # first found (scandir order) when a stem has several extensions
    pairs, orphans = [], []
    for name in labels:
        stem = os.path.splitext(name)[0]
        if stem in images:
            pairs.append((image_dir / images[stem], label_dir / name))
        else:
            orphans.append(name)
    if orphans:
        raise DataError(
            f"{len(orphans)} label file(s) in {label_dir} have no image in {image_dir} (e.g. {orphans[0]}); "
            "the images folder is incomplete or belongs to another dataset"
        )
    return pairs


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label pairs with a class list.

    ``class_names`` are the label classes in label order. ``vocabulary`` is what the model is asked to
    segment (defaults to ``class_names``); it differs only for PAS-20b, where the model sees 59 names and every
    prediction >= ``merge_predictions_from`` counts as the background class (see the evaluator).
    """

    def __init__(
        self,
        name: str,
        pairs: list[tuple[Path, Path]],
        class_names: list[str],
        ignore_values,
        transform: Optional[Callable[[dict], dict]] = None,
        vocabulary: Optional[list[str]] = None,
        merge_predictions_from: Optional[int] = None,
        root: Optional[Path] = None,
    ):
        self.name = name
        self.pairs = list(pairs)
        self.class_names = list(class_names)
        self.ignore_values = ignore_values if ignore_values == AUTO_IGNORE else tuple(ignore_values)
        self.transform = transform
        self.vocabulary = list(vocabulary) if vocabulary is not None else list(class_names)
        self.merge_predictions_from = merge_predictions_from
        self.root = root

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> dict:
        """The item before any transform."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = to_train_ids(read_label_array(label_path), self.num_classes, self.ignore_values, label_path)
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise DataError(
                f"image {image_path} is {image.shape[2]}x{image.shape[1]} but its label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]}; prepare it again ('dpseg prepare DATASET --force --root ROOT')"
            )
        return {"image": image, "label": label, "name": Path(label_path).stem}

    def __getitem__(self, index: int) -> dict:
        item = self.load(index)
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        return f"SegmentationDataset(name={self.name!r}, images={len(self)}, classes={self.num_classes})"


def custom_folder(root: Path, split: str, transform=None) -> SegmentationDataset:
    """``ROOT/classes.txt`` + ``ROOT/images/<split>/<stem>.<img>`` + ``ROOT/labels/<split>/<stem>.png``.

    Labels: uint8 PNG with 255 = ignore, or 16-bit PNG with 65535 = ignore (use 16 bits for > 255 classes).
    """
    root = Path(root)
    classes = root / "classes.txt"
    if not classes.is_file():
        raise DataError(f"custom dataset {root} has no classes.txt (one class name per line, line i = label value i)")
    names = read_class_list(classes)
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    for d, what in ((image_dir, "images"), (label_dir, "labels")):
        if not d.is_dir():
            have = sorted(p.name for p in (root / what).iterdir() if p.is_dir()) if (root / what).is_dir() else []
            hint = f" (splits present: {', '.join(have)})" if have else f" (expected {root}/{what}/<split>/...)"
            raise DataError(f"custom dataset {root} has no {what} folder for split '{split}': {d} is missing{hint}")
    pairs = list_pairs(image_dir, label_dir, (".png",), IMAGE_SUFFIXES)
    if not pairs:
        raise DataError(f"custom dataset {root} split '{split}' has no label PNGs in {label_dir}")
    if len(names) > 255 and read_label_array(pairs[0][1]).dtype == np.uint8:
        raise DataError(
            f"custom dataset {root} has {len(names)} classes but 8-bit labels; "
            "store labels as 16-bit PNG (65535 = ignore)"
        )
    return SegmentationDataset(f"{root.name}:{split}", pairs, names, AUTO_IGNORE, transform=transform, root=root)
