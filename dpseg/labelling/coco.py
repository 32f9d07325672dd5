"""COCO output of a labelling job: one RLE mask per (image, class present), written per shard while the job runs and
merged into one ``annotations.json`` at the end, plus the class summary.

Per image, every class present in the label map gets one annotation: ``segmentation`` is its mask as compressed
RLE made by :func:`pycocotools.mask.encode` (``counts`` as a str, so that ``pycocotools.coco.COCO`` and
``mask.decode`` read it), ``area`` its pixels, ``bbox`` ``[x, y, w, h]``, ``score`` the mean probability of the
class over the mask (the ``mean_score`` of the image's JSON, rounded to 6 digits). Unlabelled pixels (below
``min_score``) are in no mask. Category ids are the vocabulary's order + 1; image ids the manifest index + 1;
annotation ids count from 1 in (image, category) order - so the merged file depends only on which images are
done, not on how many ranks made them or how often the job was resumed.

Shards are append-only JSON-lines files, one image record a line, flushed after each image: a kill can leave a torn
last line (cut off when the shard is opened again, skipped by the merge) or a record of an image whose JSON was not
yet written (the image is redone and its record appended again; the merge keeps one). An image that is done but
whose record is lost (a machine crash before the page cache reached the disk) is rebuilt from its label map and
JSON, which hold the same information.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from dpseg.atomic import atomic_target, atomic_write_text
from dpseg.labelling.job import Layout
from dpseg.labelling.manifest import Entry

Present = list[tuple[int, Optional[float]]]  # (class index, mean probability over its pixels) in vocabulary order


def _dumps(obj) -> str:
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def rle_annotations(labels: np.ndarray, present: Present) -> list[dict]:
    """(H, W) class indices -> one COCO annotation (without ids) per class in ``present``."""
    h, w = labels.shape
    out = []
    for k, score in present:
        rle = mask_utils.encode(np.asfortranarray(labels == k, dtype=np.uint8))
        out.append(
            {
                "category_id": k + 1,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "score": score,
            }
        )
    return out


def image_record(entry: Entry, labels: np.ndarray, present: Present) -> dict:
    """One shard line: the image (index, file name, size) and its annotations."""
    h, w = labels.shape
    return {
        "index": entry.index,
        "file_name": entry.file_name,
        "height": int(h),
        "width": int(w),
        "annotations": rle_annotations(labels, present),
    }


def record_from_outputs(layout: Layout, entry: Entry) -> dict:
    """The record of a done image rebuilt from its label map and JSON (when its shard line was lost)."""
    with Image.open(layout.label_png(entry.name)) as im:
        labels = np.asarray(im)  # palette indices, or uint16 values of a 16-bit map
    info = json.loads(layout.marker(entry.name).read_text())
    return image_record(entry, labels, [(c["index"], c["mean_score"]) for c in info["classes"]])


class ShardWriter:
    """Append image records to one shard file (module doc); a torn last line is cut off when it is opened."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        self.file = open(path, "a")

    def append(self, record: dict) -> None:
        self.file.write(_dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()


def _index_shards(shards: Iterable[Path]) -> dict[int, tuple[Path, int]]:
    """image index -> (shard, byte offset) of its last complete record in any shard."""
    where: dict[int, tuple[Path, int]] = {}
    for path in sorted(shards):
        with open(path, "rb") as f:
            offset = 0
            for line in f:
                if line.endswith(b"\n"):
                    try:
                        where[int(json.loads(line)["index"])] = (path, offset)
                    except (ValueError, KeyError, TypeError):
                        pass  # a torn line of an interrupted run
                offset += len(line)
    return where


def _read_at(path: Path, offset: int, cache: dict) -> dict:
    f = cache.get(path)
    if f is None:
        f = cache[path] = open(path, "rb")
    f.seek(offset)
    return json.loads(f.readline())


def merge(layout: Layout, entries: list[Entry], classes: list[str], root: str, failed: int) -> dict:
    """Write ``annotations.json`` and the summary from the shards, for the done images in manifest order."""
    where = _index_shards(layout.shards.glob("*.jsonl")) if layout.shards.is_dir() else {}
    K = len(classes)
    images, pixels = 0, 0
    class_images, class_pixels, class_score = np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K, np.float64)
    files: dict = {}
    ann_id = 0
    categories = [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(classes)]
    info = {"description": "labels made by dpseg label", "image_root": root, "format": "COCO, RLE masks"}
    try:
        with atomic_target(layout.annotations) as tmp, open(tmp, "w") as out:
            anns_tmp = Path(tmp[: -len(".tmp")] + ".annotations.tmp")  # removed with the others if we are killed
            with open(anns_tmp, "w") as anns:
                out.write(f'{{"info":{_dumps(info)},"categories":{_dumps(categories)},"images":[')
                for e in entries:
                    if not layout.marker(e.name).exists():
                        continue
                    rec = _read_at(*where[e.index], files) if e.index in where else record_from_outputs(layout, e)
                    h, w = rec["height"], rec["width"]
                    image = {"id": e.index + 1, "file_name": e.file_name, "height": h, "width": w}
                    out.write(("," if images else "") + _dumps(image))
                    images += 1
                    pixels += rec["height"] * rec["width"]
                    for a in rec["annotations"]:
                        ann_id += 1
                        ann = {"id": ann_id, "image_id": e.index + 1, **a, "iscrowd": 0}
                        anns.write(("," if ann_id > 1 else "") + _dumps(ann))
                        k = a["category_id"] - 1
                        class_images[k] += 1
                        class_pixels[k] += a["area"]
                        class_score[k] += (a["score"] or 0.0) * a["area"]
            out.write('],"annotations":[')
            with open(anns_tmp) as anns:
                shutil.copyfileobj(anns, out)
            anns_tmp.unlink()
            out.write("]}\n")
            out.flush()
            os.fsync(out.fileno())
    finally:
        for p in layout.root.glob(f".{layout.annotations.name}.*.annotations.tmp"):
            p.unlink(missing_ok=True)
        for f in files.values():
            f.close()
    return write_summary(layout, classes, images, failed, pixels, class_images, class_pixels, class_score)


def write_summary(layout, classes, images, failed, pixels, class_images, class_pixels, class_score) -> dict:
    share = lambda a, b: round(float(a) / b, 6) if b else 0.0  # noqa: E731
    rows = [
        {
            "id": k + 1,
            "name": name,
            "images": int(class_images[k]),
            "image_share": share(class_images[k], images),
            "pixels": int(class_pixels[k]),
            "pixel_share": share(class_pixels[k], pixels),
            "mean_score": round(float(class_score[k] / class_pixels[k]), 6) if class_pixels[k] else None,
        }
        for k, name in enumerate(classes)
    ]
    unlabelled = int(pixels - class_pixels.sum())
    summary = {
        "images": images,
        "failed": failed,
        "pixels": int(pixels),
        "unlabelled_pixels": unlabelled,
        "unlabelled_share": share(unlabelled, pixels),
        "classes": rows,
    }
    atomic_write_text(layout.summary, json.dumps(summary, indent=1, allow_nan=False) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(layout.summary_csv, text.getvalue())
    return summary
