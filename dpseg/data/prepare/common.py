"""Shared machinery of the dataset converters: atomic writes, resumable parallel jobs, id tables, image links.

A job writes its output files atomically (temp file + ``os.replace``), so an output that exists is complete:
a rerun skips it (resume) unless ``force``. Leftover temp files of an interrupted run are removed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from dpseg.errors import DataError
from dpseg.progress import progress as progress_bar

PREPARE_DATA = Path(__file__).parent


def id_table(name: str) -> list[str]:
    """A shipped id list (``ade847_object_ids``, ``coco_stuff_ids``, ``pc59_ids``, ``pascalcontext_val``)."""
    path = PREPARE_DATA / f"{name}.txt"
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise DataError(f"package file {path} is missing ({e.strerror}); reinstall dpseg") from None


def lookup_table(ids: Sequence[int], size: int, fill: int, dtype, first: int = 0) -> np.ndarray:
    """lut[ids[i]] = first + i, everything else = fill."""
    lut = np.full(size, fill, dtype=np.int64)
    lut[np.asarray(ids, dtype=np.int64)] = np.arange(first, first + len(ids))
    return lut.astype(dtype)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save_array(arr: np.ndarray, path: Path, fmt: str) -> None:
    """Write an image atomically with PIL's defaults for ``fmt`` (PNG / TIFF / JPEG quality 75, as the peers)."""
    tmp = _tmp(path)
    try:
        Image.fromarray(arr).save(tmp, format=fmt)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def clean_temp_files(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def link_folder(src: Path, dst: Path) -> str:
    """Make ``dst`` (inside the dataset root) show the images of ``src`` (the raw download): nothing to do when
    they are the same folder, else a symlink. Returns a one-line note for the user."""
    if not src.is_dir():
        return f"note: {src} not found; put the images at {dst} before evaluating"
    if dst.exists() or dst.is_symlink():
        if dst.resolve() == src.resolve():
            return ""
        if dst.is_dir():
            return f"note: keeping the existing {dst} (not replaced by {src})"
        raise DataError(f"{dst} exists and is not a folder; remove it or choose another --root")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst, target_is_directory=True)
    except OSError as e:
        raise DataError(
            f"cannot link {dst} -> {src} ({e.strerror}); move or copy the images to {dst} yourself"
        ) from None
    return f"linked {dst} -> {src.resolve()}"


@dataclass
class Job:
    """One conversion: ``fn(*args)`` writes ``outputs`` (all of them, or none when it returns "skipped")."""

    outputs: tuple[Path, ...]
    fn: Callable
    args: tuple = ()


@dataclass
class RunStats:
    written: int = 0
    resumed: int = 0  # already present from an earlier run
    skipped: int = 0  # converter chose not to write (e.g. an all-ignore VOC label, as the peers)
    failed: list[str] = field(default_factory=list)

    def line(self, what: str) -> str:
        parts = [f"{self.written} written", f"{self.resumed} already done"]
        if self.skipped:
            parts.append(f"{self.skipped} not written by design")
        if self.failed:
            parts.append(f"{len(self.failed)} FAILED")
        return f"{what}: " + ", ".join(parts)


def require_inputs(jobs: Sequence, what: str, expected: str) -> None:
    """A split with nothing to convert is an error (never "0 written" and success); ``expected`` says what was
    looked for where."""
    if not jobs:
        raise DataError(f"{what}: nothing to convert; {expected}")


def _run_one(job: Job) -> tuple[str, Optional[str]]:
    try:
        return (job.fn(*job.args) or "written"), None
    except Exception as e:  # noqa: BLE001 - reported per file, the run goes on
        return "failed", f"{job.outputs[0].name}: {type(e).__name__}: {e}"


def run_jobs(jobs: Sequence[Job], desc: str, workers: int = 1, force: bool = False, progress: bool = True) -> RunStats:
    """Run the jobs whose outputs are not all present yet, in ``workers`` processes, with a progress bar."""
    stats = RunStats()
    for folder in {p.parent for j in jobs for p in j.outputs}:
        folder.mkdir(parents=True, exist_ok=True)
        clean_temp_files(folder)
    todo = [j for j in jobs if force or not all(p.exists() for p in j.outputs)]
    stats.resumed = len(jobs) - len(todo)
    bar = progress_bar(len(todo), desc, unit="file", enabled=progress and bool(todo))
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn" if sys.platform == "win32" else "fork").Pool(workers) as pool:
            results = pool.imap_unordered(_run_one, todo, chunksize=max(1, min(64, len(todo) // (workers * 8))))
            for status, err in results:
                _count(stats, status, err)
                bar.update()
    else:
        for job in todo:
            _count(stats, *_run_one(job))
            bar.update()
    bar.close()
    return stats


def _count(stats: RunStats, status: str, err: Optional[str]) -> None:
    if status == "failed":
        stats.failed.append(err or "?")
    elif status == "skipped":
        stats.skipped += 1
    else:
        stats.written += 1


def finish(stats_by_part: dict[str, RunStats], notes: Sequence[str] = ()) -> None:
    """Print the summary; raise DataError if any file failed (the run can simply be repeated: it resumes)."""
    for note in notes:
        if note:
            print(note)
    failed = [f for s in stats_by_part.values() for f in s.failed]
    for what, s in stats_by_part.items():
        print(s.line(what))
    if failed:
        for f in failed[:10]:
            print(f"  failed: {f}", file=sys.stderr)
        raise DataError(
            f"{len(failed)} file(s) could not be converted (first: {failed[0]}); "
            "fix them and rerun (finished files are kept)"
        )
