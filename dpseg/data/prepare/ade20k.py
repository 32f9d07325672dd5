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

``index_ade20k.pkl`` is read with a restricted unpickler (:func:`load_ade_index`), never ``pickle.load``: a pickle
can name any importable function and have it called while loading, so a tampered download could run code. The
official index (documented in the ADE20K toolkit's starter notebook) is a dict of plain values: ``filename``,
``folder``, ``scene``, ``objectnames``, ``objectcounts``, ``objectPresence``, ``objectIsPart``,
``proportionClassIsPart``, ``wordnet_found``, ``wordnet_frequency`` (numpy arrays), ``wordnet_level1``,
``wordnet_synset``, ``wordnet_hypernym``, ``wordnet_gloss``, ``wordnet_synonyms`` (lists of strings) and
``description`` (a dict of strings). Dicts, lists, strings and numbers need no global at all; the only globals
admitted are those numpy's own pickling of arrays and numpy scalars refers to (``INDEX_GLOBALS``), under numpy 1.x
module names (``numpy.core.*``, which the 2021 file was written with) and numpy 2.x names (``numpy._core.*``),
for every pickle protocol (protocol 2 stores bytes through ``_codecs.encode``; protocol 5 arrays use
``_frombuffer``). Any other global is refused with an error naming the file and the global; nothing is called.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import cv2
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
    require_inputs(
        jobs, "a150 validation", f"expected the label PNGs (ADE_val_*.png) of ADEChallengeData2016.zip in {ann_dir}"
    )
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
        raise ValueError(
            f"{seg_path.name} is {lab.shape[1]}x{lab.shape[0]} but the image is {img.shape[1]}x{img.shape[0]}"
        )
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


def _numpy_pickle_globals() -> dict[str, object]:
    """The callables numpy's pickles of arrays and scalars name, resolved from the installed numpy itself."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # _reconstruct
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 in-band arrays
    out: dict[str, object] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype, "_codecs.encode": codecs.encode}
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x module names
        out[f"{core}.multiarray._reconstruct"] = reconstruct
        out[f"{core}.multiarray.scalar"] = scalar
        out[f"{core}.numeric._frombuffer"] = frombuffer
    return out


INDEX_GLOBALS = tuple(sorted(_numpy_pickle_globals()))


class _IndexUnpickler(pickle.Unpickler):
    allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str):
        key = f"{module}.{name}"
        if key not in self.allowed:
            raise pickle.UnpicklingError(f"global '{key}'")
        return self.allowed[key]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a persistent id")


def load_ade_index(path: Path) -> dict:
    """The ADE20K index pickle, with only plain values and numpy arrays admitted (module doc); DataError otherwise."""
    try:
        with open(path, "rb") as f:
            index = _IndexUnpickler(f, encoding="latin1").load()  # latin1: numpy's advice for Python 2 pickles
    except pickle.UnpicklingError as e:
        reason = str(e)
        if reason.startswith(("global", "a persistent")):
            raise DataError(
                f"{path} refers to {reason}, which the official ADE20K index never holds; refusing to load "
                "it (a pickle can run code): download index_ade20k.pkl again from the ADE20K site"
            ) from None
        raise DataError(
            f"{path} is truncated or not a pickle file ({reason[:120]}); download index_ade20k.pkl again"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as e:
        raise DataError(
            f"{path} is truncated or not a pickle file ({type(e).__name__}: {str(e)[:120]}); "
            "download index_ade20k.pkl again"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(index, dict):
        raise DataError(
            f"{path} holds a {type(index).__name__}, not the ADE20K index dict; download index_ade20k.pkl again"
        )
    return index


def a847_val_entries(src: Path) -> list[tuple[Path, str]]:
    index_file = src / "index_ade20k.pkl"
    if not index_file.is_file():
        raise DataError(
            f"{index_file} not found; --src must be the unzipped ADE20K_2021_17_01 folder (full ADE20K release)"
        )
    index = load_ade_index(index_file)
    try:
        folders, names = list(index["folder"]), list(index["filename"])
    except (KeyError, TypeError):
        raise DataError(
            f"{index_file} has no 'folder'/'filename' entries; is it the ADE20K 2021_17_01 index?"
        ) from None
    if len(folders) != len(names):
        raise DataError(f"{index_file} lists {len(names)} file names but {len(folders)} folders; download it again")
    return [
        (_resolve_folder(src, str(d)) / str(n), str(n))
        for d, n in zip(folders, names)
        if str(n).split("_")[1:2] == ["val"]
    ]


def prepare_a847(src: Path, root: Path, workers: int = 1, force: bool = False, progress: bool = True) -> None:
    entries = a847_val_entries(src)
    require_inputs(
        entries,
        "a847 validation",
        f"{src / 'index_ade20k.pkl'} lists no ADE_val_* images; expected the "
        "2000 validation entries of the ADE20K_2021_17_01 index",
    )
    missing = [p for p, _ in entries if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(entries)} validation images listed in index_ade20k.pkl are missing "
            f"(e.g. {missing[0]})"
        )
    out_root = root / "ADE20K_2021_17_01"
    img_dir = out_root / "images_detectron2" / "validation"
    lab_dir = out_root / "annotations_detectron2" / "validation"
    lut = a847_lut()
    jobs = []
    for path, name in entries:
        img_out, lab_out = img_dir / name, lab_dir / name.replace(".jpg", ".tif")
        jobs.append(Job((lab_out, img_out), convert_a847, (path, img_out, lab_out, lut)))
    finish({"a847 validation": run_jobs(jobs, "a847 validation", workers, force, progress)})
