"""What a user segments after the quickstart: a few of its unseen-class test scenes, copied next to the results as
a custom-dataset folder (``OUT/example``: ``classes.txt``, ``images/val``, ``labels/val`` - the split ``dpseg eval``
reads by default), so that the README's next commands (``dpseg segment``, ``dpseg eval``) have short paths that do
not depend on cache keys; and the check that what they show is what the quickstart measured (:func:`check_example`):
the quickstart segments these scenes with the model and settings ``dpseg segment`` and ``dpseg demo`` use by default,
scores every object right, wrong or unlabelled, and names the demo's example scene and its verdicts for the demo
page."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from dpseg.atomic import atomic_write_json
from dpseg.errors import DataError
from dpseg.quickstart import EXAMPLE_POINTER
from dpseg.vocab import read_class_list

EXAMPLE_DIR = "example"
IGNORE_ON_DISK = 255  # uint8 label PNGs of the synthetic world: 255 = background (ignore)
VERDICTS = ("right", "wrong", "unlabelled")


def write_example(out: Path, unseen: Path, split: str = "test", count: int = 8) -> Path:
    """Copy the first ``count`` scenes of split ``split`` of the dataset folder ``unseen`` (and its classes.txt) to
    ``out/example`` (as its ``val`` split), replacing an older copy; returns that folder."""
    images = sorted((unseen / "images" / split).glob("*.png"))[:count]
    if not images or not (unseen / "classes.txt").is_file():
        raise DataError(f"{unseen} holds no {split} scenes to copy as the quickstart example")
    out.mkdir(parents=True, exist_ok=True)
    target = out / EXAMPLE_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{EXAMPLE_DIR}-", dir=out))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the example is an ordinary folder
    try:
        shutil.copyfile(unseen / "classes.txt", tmp / "classes.txt")
        for sub in ("images", "labels"):
            (tmp / sub / "val").mkdir(parents=True)
            for image in images:
                shutil.copyfile(unseen / sub / split / image.name, tmp / sub / "val" / image.name)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{EXAMPLE_DIR}-old-", dir=out))
            os.replace(target, old / EXAMPLE_DIR)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------------- the check
MIN_OBJECT_PIXELS = 20  # smaller pieces of a class (an object cut by another in front of it) are not scored


def ground_truth_objects(label: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS) -> list[tuple[int, np.ndarray]]:
    """(class index, (H, W) bool mask) of every connected piece (4-neighbours) of each class with at least
    ``min_pixels`` pixels, in class order, then top-to-bottom; ignore (background) pixels are not objects."""
    from scipy import ndimage

    objects = []
    for k in sorted(int(v) for v in np.unique(label) if 0 <= v < IGNORE_ON_DISK):
        pieces, n = ndimage.label(label == k)
        for i in range(1, n + 1):
            mask = pieces == i
            if int(mask.sum()) >= min_pixels:
                objects.append((k, mask))
    return objects


def score_objects(label: np.ndarray, predicted: np.ndarray, names: list[str], unlabelled: int) -> list[dict]:
    """Per ground-truth object: the majority of its predicted pixels, and whether that is its class (``right``),
    another class (``wrong``, naming it) or no class (``unlabelled``: below the score threshold)."""
    rows = []
    for k, mask in ground_truth_objects(label):
        values, counts = np.unique(predicted[mask], return_counts=True)
        top = int(values[np.argmax(counts)])
        verdict = "unlabelled" if top == unlabelled else "right" if top == k else "wrong"
        rows.append(
            {
                "class": names[k],
                "pixels": int(mask.sum()),
                "verdict": verdict,
                "predicted": None if verdict == "unlabelled" else names[top],
                "majority": round(float(counts.max() / mask.sum()), 3),
            }
        )
    return rows


def describe(objects: list[dict]) -> str:
    """'red solid square right, yellow dotted square unlabelled, blue dotted triangle wrong (blue solid triangle)'."""
    return ", ".join(
        f"{o['class']} {o['verdict']}" + (f" ({o['predicted']})" if o["verdict"] == "wrong" else "") for o in objects
    )


def check_example(
    example: Path,
    model_dir: Path,
    bank: Optional[Path],
    log=print,
    min_score: Optional[float] = None,
    point_demo: bool = True,
) -> dict:
    """Segment the example scenes (the folder :func:`write_example` wrote) as ``dpseg segment`` and the demo do by
    default - the quickstart's demo model and bank through :class:`~dpseg.segmenter.Segmenter` with the checkpoint's
    own threshold and refinement, every class of ``classes.txt`` - and score every object of the ground truth
    (:func:`score_objects`). The first scene is the demo's example: it is named, with the vocabulary and its
    verdicts, in the model's folder (``quickstart_example.json``; :func:`dpseg.quickstart.demo_example` reads it).
    Returns the results (``summary`` is the one line for results.md and the console). ``min_score``: another
    threshold than the checkpoint's (0 labels every pixel: what the model recognises, whatever its confidence);
    ``point_demo=False`` leaves the folder's pointer alone (checking a model that is not the demo's)."""
    from dpseg.segmenter import Segmenter

    names = read_class_list(example / "classes.txt")
    seg = Segmenter.from_pretrained(model_dir, device="cpu", bank=None if bank is None else str(bank))
    seg.set_vocabulary(names)
    scenes, refined = [], False
    for path in sorted((example / "images" / "val").glob("*.png")):
        result = seg.segment(path, min_score=min_score)
        refined = result.refined
        label = np.asarray(Image.open(example / "labels" / "val" / path.name))
        objects = score_objects(label, result.labels, names, result.unlabelled_value)
        scenes.append({"image": path.name, "objects": objects, "unlabelled": result.unlabelled_pixels / label.size})
    threshold = seg.min_score if min_score is None else min_score
    counts = {v: sum(o["verdict"] == v for s in scenes for o in s["objects"]) for v in VERDICTS}
    total = sum(counts.values())
    demo = scenes[0]
    summary = (
        f"example scenes ({len(scenes)} unseen-class test scenes in {example}, segmented as `dpseg segment` and the "
        f"demo do, threshold {threshold:g}, {'two passes' if refined else 'one pass'}): "
        f"{counts['right']} of {total} objects right, {counts['wrong']} wrong, {counts['unlabelled']} unlabelled; "
        f"the demo's example ({demo['image']}): {describe(demo['objects'])}"
    )
    results = {
        "model": str(model_dir),
        "bank": None if bank is None else str(bank),
        "min_score": threshold,
        "refine": refined,
        "classes": names,
        "min_object_pixels": MIN_OBJECT_PIXELS,
        "scenes": scenes,
        "counts": {"objects": total, **counts},
        "demo_example": {
            "model": str(Path(model_dir).resolve()),
            "image": str((example / "images" / "val" / demo["image"]).resolve()),
            "classes": "; ".join(names),
            "objects": demo["objects"],
        },
        "summary": summary,
    }
    if point_demo:
        atomic_write_json(Path(model_dir) / EXAMPLE_POINTER, results["demo_example"])
    log(summary)
    return results
