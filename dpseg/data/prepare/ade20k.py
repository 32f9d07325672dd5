"""ADE20K-150 (SceneParsing ``ADEChallengeData2016``) and ADE20K-847 (full release ``ADE20K_2021_17_01``).

A-150: the uint8 validation PNGs minus 1 (0 "other" wraps to 255 = ignore; classes become 0..149).

A-847, exactly as the peers' script (checked on crafted inputs, see docs/paper-choices.md, Dataset preparation details):
* validation images = entries of ``index_ade20k.pkl`` whose file name reads ``ADE_val_*``;
* class map from the ``_seg.png``: ``(R // 10) * 256 + G`` (ADE object ids), before any resize;
* an image whose short side is > 512 is resized to short side 512, the long side rounded half-to-even:
  image with cv2 INTER_LINEAR, the raw id map with cv2 INTER_NEAREST (not PIL, whose nearest differs);
* ids of the 847 frequent classes (table ``ade847_object_ids.txt``, line = train id) -> 0..846, others 65535;
* labels as uint16 TIFF; *every* image re-written as a PIL-default JPEG (quality 75), resized or not, EXIF
  ignored, greyscale kept single-channel.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dpseg.data.prepare.common import Job, finish, id_table, link_folder, lookup_table, run_jobs, save_array
from dpseg.errors import DataError

A847_MAX_SHORT = 512
ADE_ID_LIMIT = (255 // 10) * 256 + 256  # largest value (R // 10) * 256 + G can take, plus one


def convert_a150_label(src: Path, dst: Path) -> str:
    with Image.open(src) as img:
        lab = np.asarray(img)
    if lab.dtype != np.uint8 or lab.ndim != 2:
        raise ValueError(f"expected a single-channel 8-bit annotation, got {lab.dtype} {lab.shape}")
    save_array(lab - np.uint8(1), dst, "PNG")  # uint8 arithmetic: 0 wraps to 255
    return "written"


def prepare_a150(src: Path, root: Path, workers: int = 1, force: bool = False, progress: bool = True) -> None:
    ann_dir = src / "annotations" / "validation"
    if not ann_dir.is_dir():
        raise DataError(f"{ann_dir} not found; --src must be the unzipped ADEChallengeData2016 folder")
    out_root = root / "ADEChallengeData2016"
    out_dir = out_root / "annotations_detectron2" / "validation"
    jobs = [Job((out_dir / p.name,), convert_a150_label, (p, out_dir / p.name)) for p in sorted(ann_dir.glob("*.png"))]
    stats = run_jobs(jobs, "a150 validation", workers, force, progress)
    finish({"a150 validation": stats}, [link_folder(src / "images" / "validation", out_root / "images" / "validation")])


def a847_lut() -> np.ndarray:
    ids = [int(x) for x in id_table("ade847_object_ids")]
    assert len(ids) == 847
    return lookup_table(ids, ADE_ID_LIMIT, 65535, np.uint16)


def a847_size(h: int, w: int, max_short: int = A847_MAX_SHORT) -> tuple[int, int]:
    """(new_h, new_w); unchanged unless the short side exceeds ``max_short`` (Python round = half to even)."""
    if w >= h > max_short:
        return max_short, round(w / float(h) * max_short)
    if h >= w > max_short:
        return round(h / float(w) * max_short), max_short
    return h, w


def decode_ade_seg(seg: np.ndarray) -> np.ndarray:
    """Full-ADE ``_seg.png`` (H, W, 3) -> object class ids (H, W) int32."""
    if seg.ndim != 3 or seg.shape[2] < 3:
        raise ValueError(f"expected an RGB _seg.png, got shape {seg.shape}")
    return (seg[:, :, 0] // 10).astype(np.int32) * 256 + seg[:, :, 1].astype(np.int32)


def convert_a847(image_src: Path, image_dst: Path, label_dst: Path, lut: np.ndarray) -> str:
    with Image.open(image_src) as im:
        img = np.asarray(im)
    seg_path = image_src.with_name(image_src.name.replace(".jpg", "_seg.png"))
    with Image.open(seg_path) as s:
        lab = decode_ade_seg(np.asarray(s))
    if lab.shape != img.shape[:2]:
        raise ValueError(f"{seg_path.name} is {lab.shape[1]}x{lab.shape[0]} but the image is {img.shape[1]}x{img.shape[0]}")
    h, w = img.shape[:2]
    nh, nw = a847_size(h, w)
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(lab, (nw, nh), interpolation=cv2.INTER_NEAREST)
    save_array(lut[lab], label_dst, "TIFF")  # label first: an image without a label is never left behind
    save_array(np.ascontiguousarray(img), image_dst, "JPEG")
    return "written"


def _resolve_folder(src: Path, folder: str) -> Path:
    """index_ade20k.pkl folders start with the release's folder name, e.g. ``ADE20K_2021_17_01/images/ADE/...``."""
    parts = Path(folder).parts
    candidates = [src.joinpath(*parts[1:])] if parts and parts[0] == src.name else []
    candidates += [src / folder, src.parent / folder]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def a847_val_entries(src: Path) -> list[tuple[Path, str]]:
    index_file = src / "index_ade20k.pkl"
    if not index_file.is_file():
        raise DataError(f"{index_file} not found; --src must be the unzipped ADE20K_2021_17_01 folder (full ADE20K release)")
    with open(index_file, "rb") as f:
        index = pickle.load(f)  # the official index (a trusted local file); holds numpy arrays
    try:
        folders, names = list(index["folder"]), list(index["filename"])
    except (KeyError, TypeError):
        raise DataError(f"{index_file} has no 'folder'/'filename' entries; is it the ADE20K 2021_17_01 index?") from None
    return [(_resolve_folder(src, str(d)) / str(n), str(n)) for d, n in zip(folders, names) if str(n).split("_")[1:2] == ["val"]]


def prepare_a847(src: Path, root: Path, workers: int = 1, force: bool = False, progress: bool = True) -> None:
    entries = a847_val_entries(src)
    missing = [p for p, _ in entries if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(entries)} validation images listed in index_ade20k.pkl are missing (e.g. {missing[0]})")
    out_root = root / "ADE20K_2021_17_01"
    img_dir = out_root / "images_detectron2" / "validation"
    lab_dir = out_root / "annotations_detectron2" / "validation"
    lut = a847_lut()
    jobs = []
    for path, name in entries:
        img_out, lab_out = img_dir / name, lab_dir / name.replace(".jpg", ".tif")
        jobs.append(Job((lab_out, img_out), convert_a847, (path, img_out, lab_out, lut)))
    finish({"a847 validation": run_jobs(jobs, "a847 validation", workers, force, progress)})
