"""The synthetic-world experiment behind ``dpseg quickstart``: the whole method end to end on a CPU.

* :mod:`~dpseg.quickstart.run` - the stages (datasets, tiny CLIP, prompt bank, DPSeg variants x seeds, report);
* :mod:`~dpseg.quickstart.clip_pretrain` - a tiny OpenCLIP pretrained contrastively on rendered objects;
* :mod:`~dpseg.quickstart.zeroshot` - its zero-shot accuracy;
* :mod:`~dpseg.quickstart.experiment` - one training + evaluation run of a variant;
* :mod:`~dpseg.quickstart.report` - mean ± spread, the table, verdicts and the figure.

This module itself only knows where the last finished run left its model (:func:`default_artifacts`), which is
what ``dpseg segment`` and ``dpseg demo`` use when no checkpoint is given, and the demo's example scene with what
the quickstart measured on it (:func:`demo_example`); it stays cheap to import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from dpseg.errors import CheckpointError
from dpseg.safe_load import read_json


def default_cache() -> Path:
    """The quickstart cache unless --cache says otherwise.

    ``$DPSEG_CACHE/quickstart``, else ``.dpseg_cache/quickstart``.
    """
    root = os.environ.get("DPSEG_CACHE")
    return Path(root).expanduser() / "quickstart" if root else Path(".dpseg_cache") / "quickstart"


def default_artifacts(cache: Optional[Path] = None) -> tuple[Path, Optional[Path]]:
    """(model folder, prompt bank folder or None) of the last finished quickstart in ``cache``.

    This is what ``dpseg demo`` shows.
    """
    cache = Path(cache) if cache is not None else default_cache()
    pointer = cache / "latest.json"
    if not pointer.is_file():
        raise CheckpointError(
            f"no quickstart model in {cache} (no latest.json): run `dpseg quickstart` first "
            "(or set DPSEG_CACHE to where it ran), or pass --checkpoint"
        )
    try:
        info = read_json(pointer, "quickstart pointer", dict, CheckpointError)
        model, bank = Path(info["model"]), info.get("bank")
    except (CheckpointError, KeyError, TypeError) as e:
        raise CheckpointError(f"{pointer} is unreadable ({e}); rerun `dpseg quickstart`") from None
    if not (model / "config.json").is_file():
        raise CheckpointError(f"the quickstart model {model} named in {pointer} is gone; rerun `dpseg quickstart`")
    return model, (Path(bank) if bank else None)


def demo_example(cache: Optional[Path] = None) -> Optional[dict]:
    """The demo's example of the last finished quickstart in ``cache`` (written by
    :func:`dpseg.quickstart.example.check_example`): ``{"image": path, "classes": "a; b; ...", "objects": [{"class",
    "verdict", "predicted", ...}]}``, or None when there is none (a quickstart before the check, or its example
    folder deleted)."""
    cache = Path(cache) if cache is not None else default_cache()
    try:
        info = read_json(cache / "example.json", "quickstart example pointer", dict, CheckpointError)
        image, classes = Path(info["image"]), str(info["classes"])
    except (CheckpointError, KeyError, TypeError):
        return None
    try:  # made with the model the demo shows (the pointers are written at different moments of a run)
        same = Path(info.get("model", "")).resolve() == default_artifacts(cache)[0].resolve()
    except CheckpointError:
        return None
    if not same or not image.is_file():
        return None
    return {**info, "image": str(image), "classes": classes}
