"""Pascal-Context-59, Pascal-Context-459 (both on VOC2010 images) and Pascal VOC 2012 (PAS-20 / PAS-20b).

PC-59: ``trainval_merged.json`` (Detail API), images of phase "val"; each image's annotations are painted in
json order (later wins) from their RLE masks onto a map of zeros; the 59 class ids (sorted, ``pc59_ids.txt``) ->
0..58, id 0 (unannotated) and every other id -> 255; uint8 PNG named like the image.

PC-459: ``trainval/<id>.mat`` ``LabelMap`` minus 1 -> 0..458 as uint16 TIFF, for the ids of the peers'
``pascalcontext_val.txt`` (5104 ids, shipped with dpseg; ids without a .mat are skipped as the peers do; the
official archive gives 5010 labels). This list is the PC-459 trap: generating labels for another id list, or
from another source, silently changes the numbers; ``dpseg prepare pc459 --verify`` checks it.

VOC: ``SegmentationClassAug/<id>.png`` for the ids in ``ImageSets/Segmentation/val.txt`` (1449). PAS-20:
0 background -> 255, 1..20 -> 0..19; PAS-20b: background -> 20. A map that is all 255 after mapping is not
written (as the peers), so the two sets may differ.
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
from dpseg.safe_load import read_json


def pc59_lut(size: int) -> np.ndarray:
    ids = [int(x) for x in id_table("pc59_ids")]
    assert len(ids) == 59 and ids == sorted(ids)
    return lookup_table(ids, max(size, max(ids) + 1), 255, np.uint8)


def convert_pc59(dst: Path, height: int, width: int, segmentations: list, category_ids: list) -> str:
    from pycocotools import mask as mask_utils

    ids = np.zeros((height, width), np.int64)
    for seg, cat in zip(segmentations, category_ids):
        if isinstance(seg.get("counts"), list):  # uncompressed RLE
            seg = mask_utils.frPyObjects(seg, *seg["size"])
        m = mask_utils.decode(seg)
        if m.shape[:2] != (height, width):
            raise ValueError(f"an annotation mask is {m.shape[1]}x{m.shape[0]} but the image is {width}x{height}")
        ids[np.nonzero(m)] = cat
    lut = pc59_lut(int(ids.max()) + 1)
    save_array(lut[ids], dst, "PNG")
    return "written"


def prepare_pc59(src: Path, root: Path, workers: int = 1, force: bool = False, progress: bool = True) -> None:
    json_path = src / "trainval_merged.json"
    if not json_path.is_file():
        raise DataError(
            f"{json_path} not found; download trainval_merged.json (PASCAL-Context, Detail API) into the VOC2010 folder"
        )
    print(f"reading {json_path} ...")
    try:
        data = read_json(json_path, "PASCAL-Context annotations", dict, DataError, max_bytes=8 << 30)
        images = {d["image_id"]: d for d in data["images"] if d["phase"] == "val"}
        annos: dict = {k: [] for k in images}
        for ann in data["annos_segmentation"]:
            if ann["image_id"] in annos:
                annos[ann["image_id"]].append(ann)
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{json_path} is not a Detail-API trainval_merged.json ({type(e).__name__}: {e})") from None
    out_root = root / "VOCdevkit" / "VOC2010"
    out_dir = out_root / "annotations_detectron2" / "pc59_val"
    jobs = []
    for k, info in images.items():
        dst = out_dir / Path(info["file_name"].replace("jpg", "png")).name
        segs = [a["segmentation"] for a in annos[k]]
        cats = [int(a["category_id"]) for a in annos[k]]
        jobs.append(Job((dst,), convert_pc59, (dst, int(info["height"]), int(info["width"]), segs, cats)))
    del data
    require_inputs(jobs, "pc59 val", f"expected images of phase 'val' in {json_path} (Detail-API trainval_merged.json)")
    stats = run_jobs(jobs, "pc59 val", workers, force, progress)
    finish({"pc59 val": stats}, [link_folder(src / "JPEGImages", out_root / "JPEGImages")])


def convert_pc459(mat_path: Path, dst: Path) -> str:
    import scipy.io

    mat = scipy.io.loadmat(str(mat_path))
    if "LabelMap" not in mat:
        raise ValueError("no LabelMap variable in the .mat file")
    lab = mat["LabelMap"].astype(np.int64) - 1
    save_array(np.where(lab < 0, 65535, lab).astype(np.uint16), dst, "TIFF")  # a 0 wraps to 65535 as in uint16
    return "written"


def pc459_val_ids() -> list[str]:
    ids = id_table("pascalcontext_val")
    assert len(ids) == 5104
    return ids


def prepare_pc459(src: Path, root: Path, workers: int = 1, force: bool = False, progress: bool = True) -> None:
    mat_dir = src / "trainval"
    if not mat_dir.is_dir():
        raise DataError(
            f"{mat_dir} not found; unpack trainval.tar.gz (PASCAL-Context 459-class .mat files) into the VOC2010 folder"
        )
    ids = pc459_val_ids()
    notes = []
    user_list = src / "pascalcontext_val.txt"
    if user_list.is_file() and sorted(user_list.read_text().split()) != sorted(ids):
        notes.append(f"note: {user_list} differs from the peers' list shipped with dpseg; the shipped list is used")
    out_root = root / "VOCdevkit" / "VOC2010"
    out_dir = out_root / "annotations_detectron2" / "pc459_val"
    present = [i for i in ids if (mat_dir / f"{i}.mat").is_file()]
    notes.append(
        f"pc459: {len(present)} of the {len(ids)} listed val ids have a .mat file (the official archive gives 5010)"
    )
    jobs = [Job((out_dir / f"{i}.tif",), convert_pc459, (mat_dir / f"{i}.mat", out_dir / f"{i}.tif")) for i in present]
    require_inputs(
        jobs,
        "pc459 val",
        f"none of the {len(ids)} listed val ids has a .mat file in {mat_dir} (expected "
        f"e.g. {mat_dir / (ids[0] + '.mat')}); unpack trainval.tar.gz (PASCAL-Context 459 labels) there",
    )
    stats = run_jobs(jobs, "pc459 val", workers, force, progress)
    notes.append(link_folder(src / "JPEGImages", out_root / "JPEGImages"))
    finish({"pc459 val": stats}, notes)


def voc_luts() -> tuple[np.ndarray, np.ndarray]:
    plain = np.full(256, 255, np.uint8)
    plain[1:21] = np.arange(20)
    with_bg = plain.copy()
    with_bg[0] = 20
    return plain, with_bg


def convert_voc(src: Path, dst: Path, lut: np.ndarray) -> str:
    with Image.open(src) as img:
        lab = np.asarray(img)
    if lab.dtype != np.uint8 or lab.ndim != 2:
        raise ValueError(f"expected a single-channel 8-bit class map, got {lab.dtype} {lab.shape}")
    out = lut[lab]
    if (out == 255).all():
        return "skipped"
    save_array(out, dst, "PNG")
    return "written"


def prepare_voc(src: Path, root: Path, workers: int = 1, force: bool = False, progress: bool = True) -> None:
    list_file = src / "ImageSets" / "Segmentation" / "val.txt"
    if not list_file.is_file():
        raise DataError(f"{list_file} not found; --src must be the VOC2012 folder of VOCtrainval_11-May-2012.tar")
    label_dir, notes = src / "SegmentationClassAug", []
    if not label_dir.is_dir():
        if not (src / "SegmentationClass").is_dir():
            raise DataError(
                f"neither {label_dir} nor {src / 'SegmentationClass'} exists; unzip SegmentationClassAug.zip into {src}"
            )
        label_dir = src / "SegmentationClass"
        notes.append(
            "note: SegmentationClassAug not found; using SegmentationClass (same class ids for the val images)"
        )
    ids = list_file.read_text().split()
    if not ids:
        raise DataError(f"voc val: nothing to convert; {list_file} lists no image ids (expected the 1449 val ids)")
    missing = [i for i in ids if not (label_dir / f"{i}.png").is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(ids)} val labels are missing from {label_dir} (e.g. {missing[0]}.png)"
        )
    out_root = root / "VOCdevkit" / "VOC2012"
    plain, with_bg = voc_luts()
    stats = {}
    for what, sub, lut in (
        ("voc20 val", "annotations_detectron2", plain),
        ("voc20b val", "annotations_detectron2_bg", with_bg),
    ):
        out_dir = out_root / sub / "val"
        jobs = [
            Job((out_dir / f"{i}.png",), convert_voc, (label_dir / f"{i}.png", out_dir / f"{i}.png", lut)) for i in ids
        ]
        stats[what] = run_jobs(jobs, what, workers, force, progress)
    notes.append(link_folder(src / "JPEGImages", out_root / "JPEGImages"))
    finish(stats, notes)
