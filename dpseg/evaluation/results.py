"""The results file of ``dpseg eval`` (JSON, resumable per dataset) and its Markdown tables.

``results.json``::

    {"format": "dpseg-eval", "version": 1, "checkpoint": ..., "datasets": {
        "a150": {"settings": {...}, "pass1": {metrics}, "pass2": {metrics}, "num_images": 2000, "seconds": ...}}}

A dataset whose stored ``settings`` (model and prompt fingerprints, protocol, passes, image limit) equal the
current run's is finished and skipped; different settings are an error unless ``--force``, so one file never
mixes numbers computed in different ways.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dpseg.atomic import atomic_write_json
from dpseg.config import atomic_write_text
from dpseg.errors import InputError
from dpseg.safe_load import read_json

FORMAT, VERSION = "dpseg-eval", 1
# the paper's column order, then the rest
PAPER_ORDER = ["a847", "pc459", "a150", "pc59", "voc20", "voc20b", "coco_stuff_171_val"]
TITLES = {
    "a847": "A-847",
    "pc459": "PC-459",
    "a150": "A-150",
    "pc59": "PC-59",
    "voc20": "PAS-20",
    "voc20b": "PAS-20b",
    "coco_stuff_171_val": "COCO-171",
}
PASS_TITLES = {"pass1": "pass 1", "pass2": "pass 2 (refined prompts)"}


def empty_results(checkpoint: str) -> dict:
    return {"format": FORMAT, "version": VERSION, "checkpoint": checkpoint, "datasets": {}}


def load_results(path: Path, checkpoint: str) -> dict:
    if not path.is_file():
        return empty_results(checkpoint)
    try:
        data = read_json(path, "results file", dict, InputError)
    except InputError as e:
        raise InputError(f"{e}; delete it or pass another --output") from None
    if data.get("format") != FORMAT or not isinstance(data.get("datasets"), dict):
        raise InputError(f"{path} is not a dpseg eval results file; pass another --output")
    return data


def settings_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def is_finished(results: dict, name: str, settings: dict, force: bool, path: Path) -> bool:
    """True if ``name`` is already in the results with the same settings; raises on a settings clash."""
    old = results["datasets"].get(name)
    if old is None or force:
        return False
    diff = settings_diff(old.get("settings", {}), settings)
    if diff:
        raise InputError(
            f"{path} already holds '{name}' computed with other settings ({'; '.join(diff[:3])}); "
            "pass --force to recompute it or --output to write elsewhere"
        )
    return True


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.1f}"


def _order(names) -> list[str]:
    return [n for n in PAPER_ORDER if n in names] + sorted(n for n in names if n not in PAPER_ORDER)


def markdown_table(results: dict) -> str:
    """mIoU per dataset (paper order) for each pass, then the secondary metrics."""
    ds = results["datasets"]
    names = _order(ds)
    passes = [p for p in ("pass1", "pass2") if any(p in ds[n] for n in names)]
    head = "| mIoU (%) | " + " | ".join(TITLES.get(n, n) for n in names) + " |"
    lines = [f"Checkpoint: `{results.get('checkpoint', '?')}`", "", head, "|---" * (len(names) + 1) + "|"]
    for p in passes:
        cells = [_fmt(ds[n].get(p, {}).get("mIoU")) for n in names]
        lines.append(f"| {PASS_TITLES[p]} | " + " | ".join(cells) + " |")
    lines += ["", "| dataset | pass | mIoU | fwIoU | mAcc | pAcc | images | protocol | seconds |", "|---" * 9 + "|"]
    for n in names:
        r = ds[n]
        proto = r.get("protocol", {}).get("name", "?")
        for p in passes:
            if p in r:
                m = r[p]
                lines.append(
                    f"| {TITLES.get(n, n)} | {p[-1]} | {_fmt(m['mIoU'])} | {_fmt(m['fwIoU'])} | {_fmt(m['mAcc'])} | "
                    f"{_fmt(m['pAcc'])} | {r.get('num_images', '?')} | {proto} | {r.get('seconds', '?')} |"
                )
    return "\n".join(lines) + "\n"


def save_results(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    atomic_write_json(json_path, results, indent=1)
    atomic_write_text(md_path, markdown_table(results))
    return json_path, md_path
