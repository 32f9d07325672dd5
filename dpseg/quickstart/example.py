"""What a user segments after the quickstart: a few of its unseen-class test scenes, copied next to the results as
a custom-dataset folder (``OUT/example``: ``classes.txt``, ``images/val``, ``labels/val`` - the split ``dpseg eval``
reads by default), so that the README's next commands (``dpseg segment``, ``dpseg eval``) have short paths that do
not depend on cache keys."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from dpseg.errors import DataError

EXAMPLE_DIR = "example"


def write_example(out: Path, unseen: Path, split: str = "test", count: int = 8) -> Path:
    """Copy the first ``count`` scenes of split ``split`` of the dataset folder ``unseen`` (and its classes.txt) to
    ``out/example`` (as its ``val`` split), replacing an older copy; returns that folder."""
    images = sorted((unseen / "images" / split).glob("*.png"))[:count]
    if not images or not (unseen / "classes.txt").is_file():
        raise DataError(f"{unseen} holds no {split} scenes to copy as the quickstart example")
    out.mkdir(parents=True, exist_ok=True)
    target = out / EXAMPLE_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{EXAMPLE_DIR}-", dir=out))
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
