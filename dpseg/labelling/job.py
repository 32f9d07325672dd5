"""A labelling job's output folder: its layout, and its key (``job.json``) - what made the labels.

    OUT/job.json                    the key: model fingerprint, classes, prompts, inference settings, outputs, inputs
    OUT/manifest.jsonl              one image a line: index, absolute path, file_name (relative to the root), name
    OUT/labels/NAME.png             label map (palette PNG; 16-bit grayscale above 255 classes)
    OUT/labels/NAME.json            per image: size, classes present (pixels, share, mean probability); written last
    OUT/overlays/NAME.jpg           --overlays: the image tinted by class, with a legend
    OUT/scores/NAME.png             --save-scores: probability of the winning class, 16-bit (value / 65535)
    OUT/shards/rank-R-of-W.jsonl    per shard: one COCO image record with its RLE annotations a line (append-only)
    OUT/annotations.json            COCO: images, categories (the vocabulary), annotations (RLE, area, bbox, score)
    OUT/summary.json, summary.csv   per class: images containing it, pixels, pixel share, mean probability
    OUT/failures.jsonl              the images that could not be labelled, with the reason
    OUT/progress/                   per-rank progress and timings of the current run

An image is done when ``labels/NAME.json`` exists: every file is written atomically and that one last, so a rerun
skips done images and redoes the rest. A folder made with another key is refused, naming what changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from dpseg.errors import InputError

FORMAT = "dpseg-label/1"
# what must be equal for a rerun to continue a job (everything that changes a written byte)
KEY_FIELDS = ("model", "classes", "prompts", "inference", "min_score", "tile", "batch_size", "outputs", "inputs")
TEMPORARY = re.compile(r"^\..+\.tmp$")  # dpseg.atomic's temporary files, left behind by a kill -9


class Layout:
    """Where each output of a job lives (module doc)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.job = self.root / "job.json"
        self.manifest = self.root / "manifest.jsonl"
        self.labels = self.root / "labels"
        self.overlays = self.root / "overlays"
        self.scores = self.root / "scores"
        self.shards = self.root / "shards"
        self.progress = self.root / "progress"
        self.annotations = self.root / "annotations.json"
        self.summary = self.root / "summary.json"
        self.summary_csv = self.root / "summary.csv"
        self.failures = self.root / "failures.jsonl"
        self.run = self.progress / "run.json"

    def owned(self) -> list[Path]:
        """Every file and folder a job writes (what --overwrite removes)."""
        return [
            self.job,
            self.manifest,
            self.labels,
            self.overlays,
            self.scores,
            self.shards,
            self.progress,
            self.annotations,
            self.summary,
            self.summary_csv,
            self.failures,
        ]

    def label_png(self, name: str) -> Path:
        return self.labels / f"{name}.png"

    def marker(self, name: str) -> Path:
        return self.labels / f"{name}.json"

    def overlay(self, name: str) -> Path:
        return self.overlays / f"{name}.jpg"

    def score_png(self, name: str) -> Path:
        return self.scores / f"{name}.png"

    def shard(self, rank: int, world: int) -> Path:
        return self.shards / f"rank-{rank:05d}-of-{world:05d}.jsonl"

    def progress_file(self, rank: int) -> Path:
        return self.progress / f"rank-{rank:05d}.json"


def normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so that stored and new keys compare equal."""
    return json.loads(json.dumps(value, allow_nan=False))


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, allow_nan=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def changes(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for every key field (or sub-field of a dict) that differs."""
    out = []
    for field in KEY_FIELDS:
        a, b = old.get(field), new.get(field)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            keys.sort(key=lambda k: (k not in a or k not in b, k))  # changed values first, then keys that came or went
            out += [f"{field}.{k}: {_short(a.get(k, '(none)'))} -> {_short(b.get(k, '(none)'))}" for k in keys[:3]]
            out += [f"{len(keys) - 3} more {field} settings"] if len(keys) > 3 else []
        elif field == "classes" and isinstance(a, list) and isinstance(b, list):
            added, removed = [c for c in b if c not in a], [c for c in a if c not in b]
            what = [f"+{_short(added, 40)}"] if added else []
            what += [f"-{_short(removed, 40)}"] if removed else []
            out.append(f"classes: {len(a)} -> {len(b)}" + (f" ({' '.join(what)})" if what else " (reordered)"))
        else:
            out.append(f"{field}: {_short(a)} -> {_short(b)}")
    return out


def read_key(layout: Layout) -> dict:
    try:
        stored = json.loads(layout.job.read_text())
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} job file")
    except (OSError, ValueError) as e:
        raise InputError(
            f"{layout.job} is unreadable ({e}); label into a new --out, or pass --overwrite to start this one again"
        ) from None
    return stored


def open_job(layout: Layout, key: dict, overwrite: bool) -> bool:
    """Check ``OUT`` against ``key`` (rank 0, before any work). True if it continues an earlier run of this job.

    A new or empty folder starts a job; a folder of the same job continues it; a folder of another job is refused
    (or emptied of the job's files with ``overwrite``); a folder holding anything else is refused."""
    key = normalised(key)
    if layout.root.exists() and not layout.root.is_dir():
        raise InputError(f"--out {layout.root} is a file; give a folder (it is created if missing)")
    if not layout.job.exists():
        # a first run killed before it wrote job.json leaves at most its manifest, progress and temporary files
        ours = {layout.manifest.name, layout.progress.name}
        entries = layout.root.iterdir() if layout.root.is_dir() else iter(())
        foreign = sorted(p.name for p in entries if p.name not in ours and not TEMPORARY.match(p.name))
        if foreign:
            raise InputError(
                f"--out {layout.root} already holds files that are not a dpseg label job ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new folder"
            )
        return False
    stored = read_key(layout)
    diff = changes(stored, key)
    if diff and not overwrite:
        raise InputError(
            f"--out {layout.root} holds labels made with other settings ({'; '.join(diff)}); label into a new "
            "--out, or pass --overwrite to delete them and start again"
        )
    if overwrite:
        for path in layout.owned():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return False
    return True


def remove_temporaries(root: Path) -> int:
    """Delete the temporary files of interrupted atomic writes below ``root`` (rank 0, before any rank writes)."""
    removed = 0
    for top, _, files in os.walk(root):
        for name in files:
            if TEMPORARY.match(name):
                Path(top, name).unlink(missing_ok=True)
                removed += 1
    return removed
