"""The dataset catalog: benchmark names -> folders in the detectron2 layout used by SED / CAT-Seg.

Root: the ``root`` argument, else ``$DETECTRON2_DATASETS``, else ``./datasets``; data prepared for SED or
CAT-Seg works unchanged. Anything that is not a catalog name is a custom folder ``PATH`` or ``PATH:SPLIT``
(see :func:`dpseg.data.datasets.custom_folder`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from dpseg.data.datasets import SegmentationDataset, custom_folder, list_pairs
from dpseg.errors import DataError, InputError
from dpseg.image_io import IMAGE_SUFFIXES
from dpseg.vocab import builtin_class_names


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    title: str
    split: str
    image_dir: str  # relative to the dataset root
    label_dir: str
    label_ext: str
    ignore_value: int
    class_list: str  # builtin class-name list (label order)
    num_images: int  # expected number of labelled images
    prepare: str  # the ``dpseg prepare`` dataset that writes the labels
    raw_folder: str  # the official archive's folder that --src points at
    aliases: tuple[str, ...] = ()
    vocabulary: Optional[str] = None  # builtin list the model is prompted with, when not the label classes
    extra_class: Optional[str] = None  # a label class appended after class_list (PAS-20b background)
    merge_predictions_from: Optional[int] = None

    def class_names(self) -> list[str]:
        names = builtin_class_names(self.class_list)
        return names + [self.extra_class] if self.extra_class else names


_VOC10 = "VOCdevkit/VOC2010"
_VOC12 = "VOCdevkit/VOC2012"
ENTRIES: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "coco_stuff_171_train",
        "COCO-Stuff-171 train2017",
        "train",
        "coco-stuff/images/train2017",
        "coco-stuff/annotations_detectron2/train2017",
        ".png",
        255,
        "coco",
        118287,
        "coco_stuff",
        "coco-stuff",
        ("coco171_train", "coco_2017_train_stuff_all_sem_seg"),
    ),
    CatalogEntry(
        "coco_stuff_171_val",
        "COCO-Stuff-171 val2017",
        "val",
        "coco-stuff/images/val2017",
        "coco-stuff/annotations_detectron2/val2017",
        ".png",
        255,
        "coco",
        5000,
        "coco_stuff",
        "coco-stuff",
        ("coco171", "coco171_val", "coco_stuff", "coco_2017_test_stuff_all_sem_seg"),
    ),
    CatalogEntry(
        "a150",
        "ADE20K-150 validation",
        "val",
        "ADEChallengeData2016/images/validation",
        "ADEChallengeData2016/annotations_detectron2/validation",
        ".png",
        255,
        "ade150",
        2000,
        "a150",
        "ADEChallengeData2016",
        ("ade150", "ade20k_150", "ade20k_150_test_sem_seg"),
    ),
    CatalogEntry(
        "a847",
        "ADE20K-847 (full, 2021_17_01) validation",
        "val",
        "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation",
        ".tif",
        65535,
        "ade847",
        2000,
        "a847",
        "ADE20K_2021_17_01",
        ("ade847", "ade20k_847", "ade20k_full_sem_seg_freq_val_all"),
    ),
    CatalogEntry(
        "pc59",
        "Pascal-Context-59 validation",
        "val",
        f"{_VOC10}/JPEGImages",
        f"{_VOC10}/annotations_detectron2/pc59_val",
        ".png",
        255,
        "pc59",
        5010,
        "pc59",
        _VOC10,
        ("pascal_context_59", "context_59_test_sem_seg"),
    ),
    CatalogEntry(
        "pc459",
        "Pascal-Context-459 validation",
        "val",
        f"{_VOC10}/JPEGImages",
        f"{_VOC10}/annotations_detectron2/pc459_val",
        ".tif",
        459,
        "pc459",
        5010,
        "pc459",
        _VOC10,
        ("pascal_context_459", "context_459_test_sem_seg"),
    ),
    CatalogEntry(
        "voc20",
        "Pascal VOC 2012 val, 20 classes (background ignored)",
        "val",
        f"{_VOC12}/JPEGImages",
        f"{_VOC12}/annotations_detectron2/val",
        ".png",
        255,
        "voc20",
        1449,
        "voc",
        _VOC12,
        ("pas20", "voc", "voc_2012_test_sem_seg"),
    ),
    CatalogEntry(
        "voc20b",
        "Pascal VOC 2012 val, 20 classes + background (59-name vocabulary)",
        "val",
        f"{_VOC12}/JPEGImages",
        f"{_VOC12}/annotations_detectron2_bg/val",
        ".png",
        255,
        "voc20",
        1449,
        "voc",
        _VOC12,
        ("pas20b", "voc_2012_test_background_sem_seg"),
        vocabulary="voc20b",
        extra_class="background",
        merge_predictions_from=20,
    ),
)
_BY_NAME = {n: e for e in ENTRIES for n in (e.name, *e.aliases)}
_SPLIT_FAMILIES = {"coco_stuff_171": {"train": "coco_stuff_171_train", "val": "coco_stuff_171_val"}}


def default_root(root: Union[str, Path] = "") -> Path:
    return Path(root or os.environ.get("DETECTRON2_DATASETS") or "datasets")


def get_entry(name: str, split: Optional[str] = None) -> Optional[CatalogEntry]:
    """The catalog entry for a name or alias (``split`` picks train/val for COCO-Stuff), else None."""
    key = name.strip().lower()
    if key in _SPLIT_FAMILIES:
        return _BY_NAME[_SPLIT_FAMILIES[key][split or "val"]] if (split or "val") in _SPLIT_FAMILIES[key] else None
    entry = _BY_NAME.get(key)
    if entry is not None and split is not None and split != entry.split:
        raise InputError(f"dataset '{name}' is the {entry.split} split of {entry.title}; it has no '{split}' split")
    return entry


def split_spec(spec: str) -> tuple[str, Optional[str]]:
    """``PATH:SPLIT`` -> (PATH, SPLIT); a plain path -> (path, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail:
        return head, tail
    return spec, None


def prepare_hint(entry: CatalogEntry, root: Path) -> str:
    return f"dpseg prepare {entry.prepare} --src /path/to/{entry.raw_folder} --root {root}"


def build_dataset(
    name_or_path: Union[str, Path],
    root: Union[str, Path] = "",
    split: Optional[str] = None,
    transform: Optional[Callable[[dict], dict]] = None,
) -> SegmentationDataset:
    """A catalog dataset (``a150``, ``coco_stuff_171_train``, ...) or a custom folder ``PATH[:SPLIT]``.

    For a custom folder the split is, in order: the ``:SPLIT`` suffix, the ``split`` argument, ``val``.
    """
    spec = str(name_or_path)
    entry = get_entry(spec, split)
    if entry is not None:
        return _build_catalog(entry, default_root(root), transform)
    path, spec_split = split_spec(spec)
    if Path(path).is_dir():
        return custom_folder(Path(path), spec_split or split or "val", transform)
    if not any(c in spec for c in "/\\.") and spec.lower() not in _BY_NAME:
        names = ", ".join(e.name for e in ENTRIES)
        raise DataError(f"unknown dataset '{spec}' (catalog: {names}; or a custom folder PATH[:SPLIT])")
    raise DataError(
        f"custom dataset folder {path} does not exist "
        "(expected PATH/classes.txt, PATH/images/<split>, PATH/labels/<split>)"
    )


def _build_catalog(entry: CatalogEntry, root: Path, transform) -> SegmentationDataset:
    image_dir, label_dir = root / entry.image_dir, root / entry.label_dir
    if not image_dir.is_dir():
        raise DataError(
            f"dataset '{entry.name}' ({entry.title}): images folder {image_dir} is missing; "
            f"set --root / $DETECTRON2_DATASETS to your datasets folder or run: {prepare_hint(entry, root)}"
        )
    if not label_dir.is_dir():
        raise DataError(
            f"dataset '{entry.name}' is not prepared: label folder {label_dir} is missing; "
            f"run: {prepare_hint(entry, root)}"
        )
    pairs = list_pairs(image_dir, label_dir, (entry.label_ext,), IMAGE_SUFFIXES)
    if not pairs:
        raise DataError(
            f"dataset '{entry.name}' is not prepared: no {entry.label_ext} labels in {label_dir}; "
            f"run: {prepare_hint(entry, root)}"
        )
    vocab = builtin_class_names(entry.vocabulary) if entry.vocabulary else None
    return SegmentationDataset(
        entry.name,
        pairs,
        entry.class_names(),
        (entry.ignore_value,),
        transform=transform,
        vocabulary=vocab,
        merge_predictions_from=entry.merge_predictions_from,
        root=root,
    )


def describe_dataset(name: str, root: Union[str, Path] = "") -> dict:
    """Facts and on-disk status of one catalog entry: ready / not prepared / missing, label count."""
    entry = get_entry(name)
    if entry is None:
        raise DataError(f"'{name}' is not a catalog dataset (catalog: {', '.join(e.name for e in ENTRIES)})")
    root = default_root(root)
    label_dir = root / entry.label_dir
    if not (root / entry.image_dir).is_dir():
        status, count = "missing", 0
    elif not label_dir.is_dir():
        status, count = "not prepared", 0
    else:
        count = sum(1 for e in os.scandir(label_dir) if e.name.endswith(entry.label_ext) and not e.name.startswith("."))
        status = (
            "ready"
            if count == entry.num_images
            else f"incomplete ({count}/{entry.num_images}; run dpseg prepare {entry.prepare} --verify)"
        )
    return {
        "name": entry.name,
        "aliases": list(entry.aliases),
        "title": entry.title,
        "split": entry.split,
        "classes": len(entry.class_names()),
        "vocabulary": entry.vocabulary or entry.class_list,
        "expected_images": entry.num_images,
        "images": str(root / entry.image_dir),
        "labels": str(label_dir),
        "status": status,
        "labelled_images": count,
        "prepare": prepare_hint(entry, root),
    }


def list_datasets(root: Union[str, Path] = "") -> list[dict]:
    return [describe_dataset(e.name, root) for e in ENTRIES]
