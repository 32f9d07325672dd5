"""``dpseg prepare DATASET --verify``: is a prepared benchmark exactly what the peers' numbers were computed on?

Per catalog entry: the folders exist; the number of labelled images is the expected one; the label set is the
right split (PC-459: the 5104-id list, 5010 present, the same ids as PC-59; VOC: the val list; ADE: ``ADE_val_*``);
every label has its image at the same size, the right file type (uint8 PNG / uint16 TIFF) and only class values
or the ignore value (PC-459 labels never contain 459: if they do, LabelMap was not shifted by one); A-847 images
have a short side <= 512. Also prints a fingerprint of all label files to compare installations.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from dpseg.data.catalog import CatalogEntry, get_entry, prepare_hint
from dpseg.data.prepare.common import id_table
from dpseg.image_io import IMAGE_SUFFIXES
from dpseg.progress import progress as progress_bar

MAX_LISTED = 5  # example file names per problem


@dataclass
class LabelStats:
    name: str
    sha256: str
    problem: Optional[tuple[str, str]] = None  # (kind, detail)
    values: list[int] = field(default_factory=list)  # distinct stored values


def _check_label(
    path: str, image: Optional[str], label_ext: str, num_classes: int, ignore: int, max_short: int
) -> LabelStats:
    name = os.path.basename(path)
    try:
        raw = Path(path).read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        with Image.open(path) as img:
            fmt, arr = img.format, np.array(img)
        want_format, want_type = ("TIFF", np.uint16) if label_ext == ".tif" else ("PNG", np.uint8)
        if fmt != want_format or arr.dtype != want_type or arr.ndim != 2:
            return LabelStats(
                name,
                sha,
                (
                    "have the wrong file type",
                    f"{fmt} {arr.dtype} {arr.shape}, expected single-channel {want_type.__name__} {want_format}",
                ),
            )
        values = np.unique(arr)
        bad = values[(values >= num_classes) & (values != ignore)]
        if len(bad):
            return LabelStats(
                name,
                sha,
                (
                    "hold out-of-range values",
                    f"values {bad[:6].tolist()} outside classes 0..{num_classes - 1} and ignore {ignore}",
                ),
            )
        if image is not None:
            with Image.open(image) as im:
                w, h = im.size
            if (h, w) != arr.shape:
                return LabelStats(
                    name,
                    sha,
                    ("differ in size from their image", f"label {arr.shape[1]}x{arr.shape[0]}, image {w}x{h}"),
                )
            if max_short and min(h, w) > max_short:
                return LabelStats(
                    name,
                    sha,
                    (
                        "belong to images that were not resized as the A-847 prep does",
                        f"short side {min(h, w)} > {max_short}",
                    ),
                )
        return LabelStats(name, sha, None, values.tolist())
    except Exception as e:  # noqa: BLE001 - an unreadable file is a finding, not a crash
        return LabelStats(name, "", ("cannot be read", f"{type(e).__name__}: {e}"))


def _check_star(args):
    return _check_label(*args)


def _stems(folder: Path, exts) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in os.scandir(folder):
        stem, ext = os.path.splitext(e.name)
        if ext.lower() in exts and not e.name.startswith("."):
            out.setdefault(stem, e.path)
    return out


def _examples(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def split_problems(entry: CatalogEntry, root: Path, stems: set[str]) -> list[str]:
    """Is the set of labelled ids the right split?"""
    out = []
    if entry.name == "pc459":
        listed = set(id_table("pascalcontext_val"))
        extra = stems - listed
        if extra:
            out.append(
                f"wrong split list: {len(extra)} label(s) are not in the PC-459 val list (5104 ids) "
                f"(e.g. {_examples(extra)}); "
                "they were generated from another list; delete the folder and rerun dpseg prepare pc459"
            )
        pc59_entry = get_entry("pc59")
        assert pc59_entry is not None  # a catalog name
        pc59_dir = root / pc59_entry.label_dir
        if pc59_dir.is_dir():
            pc59 = set(_stems(pc59_dir, (".png",)))
            if pc59 and pc59 != stems:
                out.append(
                    f"PC-459 and PC-59 label sets differ: {len(stems - pc59)} only in pc459 "
                    f"({_examples(stems - pc59)}), {len(pc59 - stems)} only in pc59 ({_examples(pc59 - stems)}); "
                    "both must be the same 5010 val images"
                )
    elif entry.name in ("voc20", "voc20b"):
        list_file = root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
        if list_file.is_file():
            extra = stems - set(list_file.read_text().split())
            if extra:
                out.append(
                    f"wrong split list: {len(extra)} label(s) are not in ImageSets/Segmentation/val.txt "
                    f"(e.g. {_examples(extra)})"
                )
    elif entry.name in ("a150", "a847"):
        extra = {s for s in stems if not s.startswith("ADE_val_")}
        if extra:
            out.append(
                f"wrong split: {len(extra)} label(s) are not ADE_val_* validation files (e.g. {_examples(extra)})"
            )
    return out


def verify_entry(
    entry: CatalogEntry, root: Path, workers: int = 1, progress: bool = True
) -> tuple[list[str], list[str]]:
    """(problems, info lines) for one catalog entry."""
    image_dir, label_dir = root / entry.image_dir, root / entry.label_dir
    fix = prepare_hint(entry, root)
    if not image_dir.is_dir():
        return [f"images folder {image_dir} is missing (run: {fix})"], []
    if not label_dir.is_dir():
        return [f"label folder {label_dir} is missing: not prepared (run: {fix})"], []
    labels = _stems(label_dir, (entry.label_ext,))
    other = {Path(p).name for p in _stems(label_dir, (".png", ".tif", ".tiff")).values()} - {
        Path(p).name for p in labels.values()
    }
    images = _stems(image_dir, IMAGE_SUFFIXES)
    problems, info = [], []
    if other:
        problems.append(
            f"{len(other)} label file(s) with the wrong extension (expected {entry.label_ext}): {_examples(other)}"
        )
    if len(labels) != entry.num_images:
        hint = ""
        if entry.name == "pc459" and len(labels) == len(id_table("pascalcontext_val")):
            hint = (
                " (every id of the 5104-id list was converted: the set that gave 14.6 instead of 19.0 mIoU with the "
                "official CAT-Seg-B weights, CAT-Seg issue #24; the 5010-image set of the reported numbers is not "
                "this one — compare with your PC-59 labels)"
            )
        problems.append(f"{len(labels)} labelled images, expected {entry.num_images}{hint}")
    no_image = set(labels) - set(images)
    if no_image:
        problems.append(f"{len(no_image)} label(s) have no image in {image_dir}: {_examples(no_image)}")
    problems += split_problems(entry, root, set(labels))
    k = len(entry.class_names())
    max_short = 512 if entry.name == "a847" else 0
    jobs = [(p, images.get(s), entry.label_ext, k, entry.ignore_value, max_short) for s, p in sorted(labels.items())]
    bar = progress_bar(len(jobs), f"verify {entry.name}", unit="file", enabled=progress)
    results = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for r in pool.imap(_check_star, jobs, chunksize=32):
                results.append(r)
                bar.update()
    else:
        for j in jobs:
            results.append(_check_label(*j))
            bar.update()
    bar.close()
    by_kind: dict[str, list[LabelStats]] = {}
    first_detail: dict[str, str] = {}
    for r in results:
        if r.problem:
            kind, detail = r.problem
            by_kind.setdefault(kind, []).append(r)
            first_detail.setdefault(kind, detail)
    for kind, rs in by_kind.items():
        problems.append(
            f"{len(rs)} label(s) {kind}: {_examples(r.name for r in rs)} (e.g. {rs[0].name}: {first_detail[kind]})"
        )
    seen = sorted({v for r in results for v in r.values})
    classes = [v for v in seen if v != entry.ignore_value]
    if entry.name == "pc459" and entry.ignore_value in seen:
        n = sum(entry.ignore_value in r.values for r in results)
        problems.append(
            f"{n} label(s) contain the value 459, which correctly prepared PC-459 labels never hold: "
            "LabelMap was probably not shifted by one (delete the folder and rerun dpseg prepare pc459)"
        )
    if classes:
        info.append(
            f"values: {len(classes)} distinct classes in {classes[0]}..{classes[-1]} (of 0..{k - 1})"
            + (f", ignore {entry.ignore_value} present" if entry.ignore_value in seen else "")
        )
    digest = hashlib.sha256("".join(f"{r.name}:{r.sha256}\n" for r in sorted(results, key=lambda r: r.name)).encode())
    info.append(
        f"{len(labels)} labels, fingerprint sha256 {digest.hexdigest()[:16]} (compare with another installation)"
    )
    return problems, info
