"""The one factory: config → DPSeg; and our checkpoint format (a directory with ``config.json`` and
``model.safetensors``, Hugging Face style) with strict loading.

A saved model is self-contained: it holds the trained image encoder, the decoder, *and* the frozen text tower and
visual-prompt encoder, so loading it never needs the original CLIP weights (``model.clip_pretrained`` is kept in
the config as provenance only).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import torch

from dpseg import __version__
from dpseg.config import Config, atomic_write_text, config_from_dict
from dpseg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from dpseg.model.dpseg import DPSeg
from dpseg.model.towers import _hub_reachable, build_towers
from dpseg.prompts.templates import get_templates
from dpseg.weights import load_strict, read_state_dict, safetensors_integrity, save_safetensors, state_fingerprint

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_FIX = ("restore it from a backup or export the model again (training writes OUTPUT/final and OUTPUT/best); "
               "for a hub checkpoint, delete it from the Hugging Face cache and download it again")


def model_templates(cfg: Config) -> list[str]:
    """The M templates the model is built for (``prompts.templates`` truncated to ``prompts.num_templates``)."""
    return get_templates(cfg.prompts.templates, cfg.prompts.num_templates)


def build_model(cfg: Config, load_clip_weights: bool = True) -> DPSeg:
    """DPSeg from a resolved config; CLIP weights from ``model.clip_pretrained`` unless told not to."""
    image, prompt, text = build_towers(cfg.model, load_weights=load_clip_weights)
    try:
        return DPSeg(cfg.model, image, prompt, text, num_templates=len(model_templates(cfg)))
    except ValueError as e:
        raise ConfigError(f"the model section of the config is inconsistent: {e}") from None


def save_model(model: DPSeg, cfg: Config, directory: Union[str, os.PathLike]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"dpseg_version": __version__, "prompt_encoder": state_fingerprint(model.prompt_encoder)}
    save_safetensors(model.state_dict(), directory / WEIGHTS_NAME, metadata=meta)
    atomic_write_text(directory / CONFIG_NAME, json.dumps({"dpseg": meta, **cfg.to_dict()}, indent=2))
    return directory


def _resolve_checkpoint(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise CheckpointError(f"{path} is a file; a dpseg checkpoint is a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint {source} does not exist (expected a directory or a Hugging Face hub id org/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached
        pass
    if not _hub_reachable():
        raise WeightsUnavailableError(
            f"checkpoint {source} is neither a local directory nor in the Hugging Face cache, and the hub is "
            "unreachable; download it on a connected machine and pass the directory"
        )
    return Path(snapshot_download(source, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))


def load_model(source: Union[str, os.PathLike], device: Optional[Union[str, torch.device]] = None) -> tuple[DPSeg, Config]:
    """Load our checkpoint directory (or hub id) strictly; returns (model in eval mode, its config)."""
    directory = _resolve_checkpoint(str(source))
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(f"checkpoint directory {directory} must hold {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    data.pop("dpseg", None)
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path} is not a dpseg config this version can read: {e}") from None
    with ThreadPoolExecutor(1) as pool:  # hash the weights while the model is built (hashlib releases the GIL)
        pool.submit(safetensors_integrity, weights)
        model = build_model(cfg, load_clip_weights=False)
    state = read_state_dict(weights, "dpseg checkpoint", fix=WEIGHTS_FIX)  # content hash verified (cached above)
    load_strict(model, state, "DPSeg model of this config", str(weights))
    model.eval()
    return (model.to(device) if device is not None else model), cfg


def check_model_dir(directory: Union[str, os.PathLike]) -> list[tuple[str, str, str]]:
    """Integrity of a checkpoint directory without building the model: [(file, ok|unverified|damaged, detail)]."""
    directory = Path(directory)
    rows = []
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    try:
        config_from_dict({k: v for k, v in json.loads(cfg_path.read_text()).items() if k != "dpseg"})
        rows.append((str(cfg_path), "ok", "a config this version reads"))
    except (OSError, ValueError, ConfigError) as e:
        rows.append((str(cfg_path), "damaged", f"unreadable ({str(e).splitlines()[0][:160]})"))
    if not weights.is_file():
        rows.append((str(weights), "damaged", "missing"))
    else:
        status, detail = safetensors_integrity(weights)
        rows.append((str(weights), status, detail if status != "damaged" else f"{detail}; {WEIGHTS_FIX}"))
    return rows
