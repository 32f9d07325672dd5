"""The image list of a labelling job: inputs expanded once, sorted, written to ``OUT/manifest.jsonl``, and cut into
fixed batches that the ranks share.

Inputs are image files, folders (every image below them, sub-folders included; hidden files and folders skipped),
quoted globs (``**`` recurses) and list files (one path per line, relative paths taken from the list's folder). The
job's **root** is the deepest folder that holds them all; each image is named by its path relative to the root
(``sub/dir/cat.jpg``), which is its ``file_name`` in the COCO file, and its outputs are that path without the suffix
(``sub/dir/cat``; a second image with the same path but another suffix gets ``-2``, in sorted order, so names never
change between runs). Paths seen twice (the same file through two inputs) count once.

**Batches** are fixed slices of the manifest: batch j = images [j B, (j + 1) B). An image is therefore always
predicted with the same companions, whatever the number of processes and however often the job was resumed, so a
resumed or re-sharded run writes the very bytes an uninterrupted one writes (batching changes float rounding, hence
a few pixels at near-ties: the batch size is part of the job's key). The batches still to do are dealt round-robin to
the ranks (:func:`rank_batches`).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dpseg.atomic import atomic_target
from dpseg.errors import InputError
from dpseg.image_io import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Entry:
    index: int  # position in the sorted manifest (COCO image id = index + 1)
    image: str  # absolute path
    file_name: str  # path relative to the job's root, '/'-separated
    name: str  # output name: file_name without its suffix (made unique)

    def to_dict(self) -> dict:
        return {"index": self.index, "image": self.image, "file_name": self.file_name, "name": self.name}


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(folder: Path, skip: Path) -> list[Path]:
    """Every image file below ``folder`` (hidden files and folders, and ``skip``, left out), in sorted order."""
    found = []
    for top, dirs, files in os.walk(folder):
        here = Path(top)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip)
        found += [here / f for f in sorted(files) if _is_image(f) and (here / f).is_file()]
    return found


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard (the folder its matches lie under)."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(*fixed) if fixed else Path(".")


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the image list {path}: {e}") from None
    items = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not items:
        raise InputError(f"the image list {path} names no images")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, items)]


def expand(specs: list[str], lists: Iterable[str], out: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """Inputs -> (root, [(absolute image path, path relative to root)] sorted by the relative path).

    Raises InputError naming the input when one names nothing (a missing path, an empty folder, a glob without
    matches) - at the scale of a job a typo must not silently drop a folder."""
    out = out.expanduser().resolve()
    found: list[Path] = []
    bases: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            items, base = _walk(path, out), path
            what = "folder holds no image files (" + ", ".join(IMAGE_SUFFIXES) + ")"
        elif path.is_file():
            items, base, what = [path], path.parent, ""
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            items, base = [Path(p) for p in matches if _is_image(Path(p).name) and Path(p).is_file()], _glob_base(spec)
            what = "pattern matches no image files"
        else:
            raise InputError(f"{spec}: no such file or folder")
        if not items:
            raise InputError(f"{spec}: {what}")
        found += items
        bases.append(base)
    for list_file in lists:
        items = _read_list(Path(list_file).expanduser())
        missing = next((p for p in items if not p.is_file()), None)
        if missing is not None:
            raise InputError(f"the image list {list_file} names {missing}, which is not a file")
        found += items
        bases += [p.parent for p in items]
    if not found:
        raise InputError("no images given: name files, folders, globs or --list FILE")
    root = Path(os.path.commonpath([str(b.resolve()) for b in bases]))
    seen: set[Path] = set()
    pairs = []
    for p in found:
        real = p.resolve()
        if real in seen or out == real or out in real.parents:  # never label our own outputs
            continue
        seen.add(real)
        absolute = Path(os.path.abspath(p))
        try:
            rel = absolute.relative_to(root)
        except ValueError:  # reached through a symlink that leaves the root: name it by its real path
            rel = real.relative_to(root) if root in real.parents else Path(absolute.name)
        pairs.append((absolute, rel.as_posix()))
    if not pairs:
        raise InputError(f"no images to label: every input lies inside the output folder {out}")
    pairs.sort(key=lambda pr: (pr[1], str(pr[0])))
    return root, pairs


def build_entries(pairs: list[tuple[Path, str]]) -> list[Entry]:
    entries, used = [], set()
    for i, (image, rel) in enumerate(pairs):
        stem = os.path.splitext(rel)[0] or "image"
        name, n = stem, 2
        while name.lower() in used:  # case-insensitive: outputs may land on a case-insensitive filesystem
            name, n = f"{stem}-{n}", n + 1
        used.add(name.lower())
        entries.append(Entry(i, str(image), rel, name))
    return entries


def write_manifest(path: Path, entries: list[Entry]) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "w") as f:
            for e in entries:
                f.write(json.dumps(e.to_dict(), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_manifest(path: Path) -> list[Entry]:
    try:
        with open(path) as f:
            entries = [Entry(**json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{path} is unreadable ({e}); delete the output folder or label into a new --out") from None
    if any(e.index != i for i, e in enumerate(entries)):
        raise InputError(f"{path} is not a manifest written by dpseg label; label into a new --out")
    return entries


def batches(num_images: int, batch_size: int) -> list[list[int]]:
    """The fixed batches of the job: [0, B), [B, 2B), ... (module doc)."""
    b = max(1, batch_size)
    return [list(range(s, min(s + b, num_images))) for s in range(0, num_images, b)]


def rank_batches(todo: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """The batches of ``todo`` this rank runs: every ``world``-th, starting at ``rank``."""
    return todo[rank::world]
