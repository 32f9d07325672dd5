"""Portable checkpoints: the files a checkpoint folder needs besides its weights, stored so that the folder can be
moved and used from any working directory.

A checkpoint's config names two files it needs at inference:

* ``prompts.bank`` - the prompt bank of its visual prompts (large; stays where it is): resolved and checked at
  export, and stored **relative to the checkpoint folder** when it lies inside the folder's parent (the folder
  itself, or next to it: ``run/final`` + ``run/bank``), else as an absolute path. Moving the run folder with its
  bank, or using the checkpoint from another directory, keeps it working;
* ``prompts.templates`` when it is a template *file* (not a set name such as ``imagenet80``): copied into the
  folder as ``templates.txt`` at export, so the checkpoint carries it.

``config.json`` records the rule (``"dpseg": {"paths": "relative to this folder"}``); at load, relative paths
are resolved against the folder. Configs written before this rule held paths relative to the working directory
of the run: those are kept when they exist from the current directory, else tried relative to the folder. A bank
that is still missing is named, with the fix, when a vocabulary needs it (:class:`~dpseg.segmenter.Segmenter`,
``dpseg segment``, the demo); a missing template file is an error at load.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from dpseg.errors import CheckpointError
from dpseg.prompts.templates import TEMPLATE_SETS

log = logging.getLogger("dpseg")
PATHS_RULE = "relative to this folder"
TEMPLATES_FILE = "templates.txt"


def _absolute(value: str) -> Path:
    return Path(os.path.normpath(Path(value).expanduser().absolute()))


def _is_template_file(value: str) -> bool:
    return bool(value) and value not in TEMPLATE_SETS


def export_paths(data: dict, directory: Path) -> dict:
    """The config dict as a checkpoint folder stores it (a changed copy; module doc). Call before writing."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    prompts = data.get("prompts", {})
    folder = _absolute(str(directory))
    bank = prompts.get("bank") or ""
    if bank:
        path = _absolute(bank)
        if not path.is_dir():
            log.warning(
                "the prompt bank %s (prompts.bank) does not exist at export; the checkpoint %s names it "
                "anyway (give --bank when using it)",
                path,
                directory,
            )
            prompts["bank"] = str(path)
        elif folder.parent == path or folder.parent in path.parents:
            prompts["bank"] = os.path.relpath(path, folder)
        else:
            prompts["bank"] = str(path)
    templates = prompts.get("templates") or ""
    if _is_template_file(templates):
        source = _absolute(templates)
        target = folder / TEMPLATES_FILE
        if not source.is_file():
            raise CheckpointError(
                f"the template file {templates} (prompts.templates) does not exist; the checkpoint "
                "needs it to run - export from the directory the run used, or fix prompts.templates"
            )
        if source != target:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{TEMPLATES_FILE}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        prompts["templates"] = TEMPLATES_FILE
    data["prompts"] = prompts
    return data


def load_paths(data: dict, directory: Path, relative_to_folder: bool) -> dict:
    """A stored config dict with its paths made usable from here (a changed copy; module doc)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    prompts = data.get("prompts")
    if not isinstance(prompts, dict):
        return data
    folder = Path(directory)
    for key in ("bank", "templates"):
        value = prompts.get(key)
        if not isinstance(value, str) or not value or (key == "templates" and not _is_template_file(value)):
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            continue
        here = folder / path
        if relative_to_folder or (not path.exists() and here.exists()):
            prompts[key] = os.path.normpath(here)
    templates = prompts.get("templates")
    if isinstance(templates, str) and _is_template_file(templates) and not Path(templates).expanduser().is_file():
        raise CheckpointError(
            f"checkpoint {directory} needs its template file {templates} (prompts.templates in "
            f"config.json), which does not exist; copy the file to {folder / TEMPLATES_FILE} and set "
            f'"templates": "{TEMPLATES_FILE}" there'
        )
    return data


def missing_bank_message(bank: str, checkpoint: str) -> str:
    """The one-line error for a checkpoint whose prompt bank is not where its config says."""
    return (
        f"the prompt bank of checkpoint {checkpoint}, {bank} (prompts.bank in its config.json), does not exist; "
        f"pass the bank with --bank BANK (bank=BANK in Python), put it back at {bank}, or rebuild it with "
        f"'dpseg prompts build --checkpoint {checkpoint} --vocab CLASS_LIST --generator GEN --out BANK'; "
        "--text-only runs without visual prompts (degraded)"
    )
