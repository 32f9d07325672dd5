"""The synthetic world on disk, as custom-dataset folders (no code needed to train or evaluate on them).

``build_datasets(cache_dir, seed, size, num_train, num_val, num_test)`` writes (or reuses) one folder per evaluation
vocabulary under ``cache_dir/synthetic-<key>/``::

    world.json                              the key, the class lists and the counts (written last: marks completion)
    seen/classes.txt                        the 59 seen classes; line i = label value i
    seen/{images,labels}/train/*.png        training scenes: seen classes only
    seen/{images,labels}/val/*.png          held-out seen-class scenes: choices and calibration, never reported
    seen/{images,labels}/test/*.png         held-out seen-class scenes                  -> reported "seen" mIoU
    unseen/classes.txt                      the 16 unseen classes
    unseen/{images,labels}/test/*.png       scenes of unseen classes only               -> zero-shot "unseen" mIoU
    unseen-all/classes.txt                  seen then unseen (75)
    unseen-all/{images,labels}/test/*.png   the unseen/test scenes, labels indexed into all 75 names
                                                                                        -> generalised zero-shot

Labels are uint8 PNGs, 255 = ignore (the background, see :mod:`~dpseg.data.synthetic.world`). Training must use
``seen/`` (train) only: its vocabulary never names an unseen class; anything chosen (defaults, thresholds) is chosen
on ``seen/val``; ``seen/test`` and ``unseen/test`` are only reported. ``unseen-all/`` holds exactly the images of
``unseen/test`` (same files): scored with all 75 names, an unseen object can be mistaken for a seen class. Every
image is rendered from its own seed (seed, split id, index; a split id per folder and split, so no scene repeats
across splits), so a folder's content does not depend on how many images the others hold. The folder is written
under a temporary name and renamed into place; ``key`` (world version, seed, sizes, counts) names the folder, so a
changed world or setting never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from dpseg.atomic import json_text
from dpseg.data.synthetic.render import IGNORE, random_scene
from dpseg.data.synthetic.world import WORLD_VERSION, ObjectClass, vocabulary
from dpseg.errors import DataError, DPSegError, InputError
from dpseg.fingerprint import code_fingerprint
from dpseg.safe_load import read_json
from dpseg.vocab import read_class_list

IGNORE_ON_DISK = 255
# (vocabulary folder, split, split id used in the per-image seed); the folder's scenes draw objects from its
# vocabulary. World v3: seen/val for choices and calibration, seen/test and unseen/test reported (README).
SPLITS: tuple[tuple[str, str, int], ...] = (
    ("seen", "train", 0),
    ("seen", "val", 1),
    ("seen", "test", 2),
    ("unseen", "test", 3),
)
# Folders that hold another folder's scenes with labels indexed into a larger vocabulary: (folder, source, split).
RELABELLED: tuple[tuple[str, str, str], ...] = (("unseen-all", "unseen", "test"),)
FOLDER_VOCABULARY = {"seen": "seen", "unseen": "unseen", "unseen-all": "all"}
# The split every evaluation reports (the quickstart's tables), and the one choices and calibration use.
TEST_SPLIT = "test"
CHOICE_SPLIT = "val"


@dataclass(frozen=True)
class WorldDatasets:
    """Paths of the written dataset folders (each a custom-dataset root) and the cache key."""

    root: Path
    key: str

    @property
    def seen(self) -> Path:
        return self.root / "seen"

    @property
    def unseen(self) -> Path:
        return self.root / "unseen"

    @property
    def unseen_all(self) -> Path:
        """The unseen/test scenes scored against all 75 names (generalised zero-shot)."""
        return self.root / "unseen-all"


def dataset_key(seed: int, size: int, num_train: int, num_val: int, num_test: int) -> dict:
    """Everything the pixels depend on: the settings, and the code that renders them (a copy rendered by other code
    is not reused, even under the same world version)."""
    return {
        "world_version": WORLD_VERSION,
        "code": code_fingerprint("dpseg.data.synthetic.folders"),
        "seed": seed,
        "size": size,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
    }


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def label_to_disk(label: np.ndarray) -> np.ndarray:
    """(H, W) int labels with IGNORE -> uint8 with 255."""
    if label.max(initial=0) >= IGNORE_ON_DISK:
        raise InputError(f"label value {int(label.max())} does not fit a uint8 label PNG (max {IGNORE_ON_DISK - 1})")
    return np.where(label == IGNORE, IGNORE_ON_DISK, label).astype(np.uint8)


def read_classes(folder: Path) -> list[str]:
    return read_class_list(Path(folder) / "classes.txt")


def render_split(vocab: Sequence[ObjectClass], seed: int, split_id: int, count: int, size: int):
    """Yield (stem, Scene) for every image of one split, each from its own seed."""
    for i in range(count):
        rng = np.random.default_rng([seed, split_id, i, WORLD_VERSION])
        yield f"{i:05d}", random_scene(vocab, rng, size=size)


def _relabel_table(source: str, target: str) -> np.ndarray:
    """uint8 lookup: label value in ``source``'s vocabulary -> value in ``target``'s (255 stays 255)."""
    table = np.full(256, IGNORE_ON_DISK, np.uint8)
    big = vocabulary(FOLDER_VOCABULARY[target])
    for i, k in enumerate(vocabulary(FOLDER_VOCABULARY[source])):
        table[i] = big.index(k)
    return table


def _write_all(tmp: Path, key: dict, log: Callable[[str], None]) -> None:
    counts = {}
    for folder, vocab in FOLDER_VOCABULARY.items():
        (tmp / folder).mkdir(parents=True)
        (tmp / folder / "classes.txt").write_text("".join(k.name + "\n" for k in vocabulary(vocab)))
    for folder, split, split_id in SPLITS:
        count = key[f"num_{split}"]
        log(f"rendering {count} {folder}/{split} scenes at {key['size']}px")
        copies = [
            (target, _relabel_table(folder, target))
            for target, source, source_split in RELABELLED
            if (source, source_split) == (folder, split)
        ]
        for out in [folder] + [target for target, _ in copies]:
            for sub in ("images", "labels"):
                (tmp / out / sub / split).mkdir(parents=True)
        for stem, scene in render_split(vocabulary(folder), key["seed"], split_id, count, key["size"]):
            image, label = tmp / folder / "images" / split / f"{stem}.png", label_to_disk(scene.label)
            Image.fromarray(scene.image).save(image)
            Image.fromarray(label).save(tmp / folder / "labels" / split / f"{stem}.png")
            for target, table in copies:
                shutil.copyfile(image, tmp / target / "images" / split / f"{stem}.png")
                Image.fromarray(table[label]).save(tmp / target / "labels" / split / f"{stem}.png")
        counts[f"{folder}/{split}"] = count
        counts.update({f"{target}/{split}": count for target, _ in copies})
    meta = {
        "key": key,
        "counts": counts,
        "ignore_label": IGNORE_ON_DISK,
        "background": "ignore (255): the background is not a class",
        "seen_classes": [k.name for k in vocabulary("seen")],
        "unseen_classes": [k.name for k in vocabulary("unseen")],
    }
    (tmp / "world.json").write_text(json_text(meta))  # the folder is renamed into place: atomic as a whole


def _is_complete(root: Path, key: dict) -> bool:
    try:
        meta = read_json(root / "world.json", "synthetic world index")
    except DPSegError:
        return False  # missing or damaged: rebuilt
    if meta.get("key") != key:
        return False
    for name, count in meta.get("counts", {}).items():
        folder, split = name.split("/")
        for sub in ("images", "labels"):
            d = root / folder / sub / split
            if not d.is_dir() or sum(1 for _ in d.glob("*.png")) != count:
                return False
    return True


def build_datasets(
    cache_dir: str | os.PathLike,
    seed: int = 0,
    size: int = 128,
    num_train: int = 2000,
    num_val: int = 200,
    num_test: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> WorldDatasets:
    """Render the world's datasets into ``cache_dir`` (or reuse a complete copy with the same key); ``num_test``
    scenes per test split (default: ``num_val``)."""
    num_test = num_val if num_test is None else num_test
    if size < 32 or size % 32:
        raise InputError(f"synthetic image size must be a multiple of 32 (the encoder stride), got {size}")
    if num_train < 1 or num_val < 1 or num_test < 1:
        raise InputError(
            f"synthetic dataset sizes must be >= 1, got num_train={num_train}, num_val={num_val}, num_test={num_test}"
        )
    log = log or (lambda msg: None)
    key = dataset_key(seed, size, num_train, num_val, num_test)
    cache_dir = Path(cache_dir)
    root = cache_dir / f"synthetic-{key_hash(key)}"
    if _is_complete(root, key):
        log(f"reusing synthetic datasets in {root}")
        return WorldDatasets(root, key_hash(key))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{root.name}.tmp-"))
    except OSError as e:
        raise DataError(
            f"cannot write synthetic datasets to {cache_dir}: {e.strerror}; choose a writable directory"
        ) from None
    try:
        shutil.rmtree(tmp)
        _write_all(tmp, key, log)
        if root.exists():  # an incomplete or corrupted copy: move it aside before replacing it
            stale = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{root.name}.stale-"))
            os.replace(root, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished the same datasets first
            if not _is_complete(root, key):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote synthetic datasets to {root}")
    return WorldDatasets(root, key_hash(key))
