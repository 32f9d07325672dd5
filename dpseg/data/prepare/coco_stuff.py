"""COCO-Stuff-171 labels from the official ``stuffthingmaps_trainval2017`` PNGs.

Input ids are COCO's 0-based ids 0..181 with gaps (255 = unlabelled). The 171 ids in use map to contiguous
train ids 0..170 (80 things, then 91 stuff; table in ``coco_stuff_ids.txt``); everything else -> 255. Every PNG of
both splits is converted, including all-unlabelled ones; output is a greyscale uint8 PNG even for palette input.

Layout (as the peers'): ``SRC/annotations/{train2017,val2017}/*.png`` and ``SRC/images/{train2017,val2017}/*.jpg``
-> ``ROOT/coco-stuff/annotations_detectron2/{train2017,val2017}/*.png`` (+ a link to the images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dpseg.data.prepare.common import (
    Job,
    finish,
    id_table,
    link_folder,
    lookup_table,
    require_inputs,
    run_jobs,
    save_array,
)
from dpseg.errors import DataError

SPLITS = ("train2017", "val2017")


def coco_lut() -> np.ndarray:
    ids = [int(x) for x in id_table("coco_stuff_ids")]
    assert len(ids) == 171
    return lookup_table(ids, 256, 255, np.uint8)


def convert_coco_label(src: Path, dst: Path, lut: np.ndarray) -> str:
    with Image.open(src) as img:
        lab = np.asarray(img)
    if lab.dtype != np.uint8 or lab.ndim != 2:
        raise ValueError(f"expected a single-channel 8-bit stuffthingmap, got {lab.dtype} {lab.shape}")
    save_array(lut[lab], dst, "PNG")
    return "written"


def prepare_coco_stuff(src: Path, root: Path, workers: int = 1, force: bool = False, progress: bool = True) -> None:
    out_root = root / "coco-stuff"
    lut = coco_lut()
    stats, notes = {}, []
    found = [s for s in SPLITS if (src / "annotations" / s).is_dir()]
    if not found:
        raise DataError(
            f"no stuffthingmaps under {src}/annotations/{{train2017,val2017}}; unzip stuffthingmaps_trainval2017.zip "
            f"into {src}/annotations and the COCO images into {src}/images"
        )
    for split in SPLITS:
        if split not in found:
            notes.append(f"note: {src}/annotations/{split} not found; {split} skipped")
            continue
        ann_dir, out_dir = src / "annotations" / split, out_root / "annotations_detectron2" / split
        jobs = [
            Job((out_dir / p.name,), convert_coco_label, (p, out_dir / p.name, lut))
            for p in sorted(ann_dir.glob("*.png"))
        ]
        require_inputs(jobs, f"coco-stuff {split}", f"expected the stuffthingmaps PNGs of {split} in {ann_dir}")
        stats[f"coco-stuff {split}"] = run_jobs(jobs, f"coco-stuff {split}", workers, force, progress)
        notes.append(link_folder(src / "images" / split, out_root / "images" / split))
    finish(stats, notes)
