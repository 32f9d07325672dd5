"""A dpseg checkpoint folder, Hugging Face style: ``config.json`` + ``model.safetensors``, written atomically and
loaded strictly (:func:`save_model`, :func:`load_model`, :func:`check_model_dir`).

A saved model is self-contained: it holds the trained image encoder, the decoder, *and* the frozen text tower and
visual-prompt encoder (a model that uses no visual prompts has none), so loading it never needs the original CLIP
weights (``model.clip_pretrained`` is kept in the config as provenance only).

**Portable paths.** The files a checkpoint folder needs besides its weights, stored so that the folder can be
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import torch

from dpseg import __version__
from dpseg.atomic import atomic_write_json
from dpseg.build import build_model
from dpseg.config import Config, config_from_dict
from dpseg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from dpseg.hub import hub_reachable
from dpseg.init_patch import skip_random_init
from dpseg.model.dpseg import DPSeg
from dpseg.prompts.templates import TEMPLATE_SETS
from dpseg.safe_load import read_json
from dpseg.weights import (
    load_strict,
    read_state_dict,
    remember_fingerprint,
    safetensors_check,
    safetensors_integrity,
    safetensors_metadata,
    save_safetensors,
    state_fingerprint,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_FIX = (
    "restore it from a backup or export the model again (training writes OUTPUT/final and OUTPUT/best); "
    "for a hub checkpoint, delete it from the Hugging Face cache and download it again"
)
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


# ------------------------------------------------------------------------------------------ the folder


def save_model(model: DPSeg, cfg: Config, directory: Union[str, os.PathLike], metadata: Optional[dict] = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically into ``directory`` (``metadata``: extra provenance;
    paths the checkpoint needs are stored portably: the module doc)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prompt_encoder = "none" if model.prompt_encoder is None else state_fingerprint(model.prompt_encoder)
    meta = {
        "dpseg_version": __version__,
        "prompt_encoder": prompt_encoder,
        "text_encoder": state_fingerprint(model.text_encoder),
        **(metadata or {}),
    }
    data = export_paths(cfg.to_dict(), directory)
    save_safetensors(model.state_dict(), directory / WEIGHTS_NAME, metadata=meta)
    atomic_write_json(directory / CONFIG_NAME, {"dpseg": {**meta, "paths": PATHS_RULE}, **data})
    return directory


def _resolve_checkpoint(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file; a dpseg checkpoint is a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    parent = path.parent
    if source.count("/") != 1 or source.startswith((".", "/", "~")) or parent.is_dir():  # a local path, not an id
        where = f"{parent} holds no folder {path.name}" if parent.is_dir() else f"no folder {path} here"
        raise CheckpointError(
            f"checkpoint {source} does not exist ({where}; expected a checkpoint folder or a Hugging Face hub id "
            "org/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached
        pass
    if not hub_reachable():
        raise WeightsUnavailableError(
            f"checkpoint {source} is no folder here (no {path.parent}/ in {Path.cwd()}) and no Hugging Face hub id "
            "in the local cache, and the hub is unreachable; check the path, or download the hub model on a "
            "connected machine and pass its folder"
        )
    return Path(snapshot_download(source, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))


def load_model(
    source: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None
) -> tuple[DPSeg, Config]:
    """Load our checkpoint directory (or hub id) strictly; returns (model in eval mode, its config)."""
    cfg_path, weights = checkpoint_files(source)
    directory = cfg_path.parent
    data = read_config_json(cfg_path)
    meta = data.pop("dpseg", None)
    data = load_paths(data, directory, isinstance(meta, dict) and meta.get("paths") == PATHS_RULE)
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path} is not a dpseg config this version can read: {e}") from None
    with ThreadPoolExecutor(1) as pool:  # hash the weights while the model is built (hashlib releases the GIL)
        integrity = pool.submit(safetensors_integrity, weights)
        with skip_random_init():  # every parameter is loaded strictly below
            model = build_model(cfg, load_clip_weights=False)
    state = read_state_dict(weights, "dpseg checkpoint", fix=WEIGHTS_FIX)  # content hash verified (cached above)
    if model.prompt_encoder is None:  # text-only models saved before they dropped the (unused) visual-prompt encoder
        state = {k: v for k, v in state.items() if not k.startswith("prompt_encoder.")}
    load_strict(model, state, "DPSeg model of this config", str(weights), assign=True)  # no second copy
    if integrity.result()[0] == "ok":  # the frozen encoders' fingerprints saved with verified weights: banks are
        meta = safetensors_metadata(weights)  # checked against them without hashing the encoders again
        for name in ("prompt_encoder", "text_encoder"):
            if meta.get(name) and meta[name] != "none" and getattr(model, name) is not None:
                remember_fingerprint(getattr(model, name), meta[name])
    model.eval()
    return (model.to(device) if device is not None else model), cfg


def read_config_json(path: Path) -> dict:
    """A checkpoint's ``config.json`` as a dict, through the bounded reader (size, depth, a JSON object)."""
    return read_json(path, "checkpoint config", dict, CheckpointError)


def check_model_dir(directory: Union[str, os.PathLike]) -> list[tuple[str, str, str]]:
    """Integrity of a checkpoint directory without building the model: [(file, ok|unverified|damaged, detail)]
    (the config must be one this version reads; the weights' hash must match and every weight be finite)."""
    directory = Path(directory)
    rows = []
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    try:
        config_from_dict({k: v for k, v in read_config_json(cfg_path).items() if k != "dpseg"})
        rows.append((str(cfg_path), "ok", "a config this version reads"))
    except (CheckpointError, ConfigError) as e:
        rows.append((str(cfg_path), "damaged", f"unreadable ({str(e)[:300]})"))
    if not weights.exists():
        rows.append((str(weights), "damaged", "missing"))
    else:
        status, detail = safetensors_check(weights)
        rows.append((str(weights), status, detail if status != "damaged" else f"{detail}; {WEIGHTS_FIX}"))
    return rows


def checkpoint_files(source: Union[str, os.PathLike]) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a checkpoint directory or hub id; CheckpointError if incomplete."""
    directory = _resolve_checkpoint(str(source))
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"checkpoint directory {directory} must hold {CONFIG_NAME} and {WEIGHTS_NAME}")
    return cfg_path, weights
