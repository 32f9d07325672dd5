"""Training checkpoints: atomic directories, strict loading, pruning (RNG states: :mod:`dpseg.engine.rng`).

Layout of a run's ``OUTPUT/checkpoints/step-00005000/``:

* ``trainable.safetensors`` — the model's state minus the frozen towers (visual-prompt encoder, text tower),
  which are rebuilt from the config and checked against the fingerprints stored in ``state.pt``;
* ``state.pt`` — optimizer, loss scaler, step, data position, schedule, every rank's RNG states (python, numpy,
  torch, CUDA), best evaluation so far, the resolved config; plain tensors and containers only, read back with
  ``torch.load(weights_only=True)``;
* ``config.yaml`` — the resolved config, readable without torch (``dpseg train --resume RUN`` reads it).

A checkpoint is written into a hidden temporary directory and renamed into place, so a crash at any moment leaves
either no checkpoint or a complete one; only complete ones are ever listed. ``trainable.safetensors`` is written
last and carries the content hashes: its own (see :mod:`dpseg.weights`) and the SHA-256 of ``state.pt`` and of
``config.yaml``, so a flipped bit in any of them (or non-finite weights) is found before anything is restored.
Resuming from a run directory skips damaged checkpoints and continues from the newest intact one, saying which it
skipped and why. Checkpoints written before hashes existed are checked as far as possible (``state.pt``'s zip
CRCs) and load with a note; those written before ``config.yaml`` was hashed report it as unverified.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from dpseg.config import Config, save_config
from dpseg.engine.distributed import mix_seed
from dpseg.engine.rng import restore_rng, seed_all
from dpseg.errors import CheckpointError, ConfigError, quote
from dpseg.model.dpseg import is_frozen_tower
from dpseg.weights import (
    file_sha256,
    note_unverified,
    read_state_dict,
    safetensors_check,
    safetensors_metadata,
    save_safetensors,
)

TRAINABLE, STATE, CONFIG = "trainable.safetensors", "state.pt", "config.yaml"
FORMAT, VERSION = "dpseg-train-state", 1
STATE_HASH = "state_sha256"  # in trainable.safetensors' metadata
CONFIG_HASH = "config_sha256"  # in trainable.safetensors' metadata (checkpoints written before it: unverified)
FIX = (
    "resume from the run directory (dpseg train --resume RUN_DIR continues from the newest intact checkpoint) "
    "or delete this checkpoint directory"
)
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: Union[str, os.PathLike]) -> Path:
    return Path(output_dir) / "checkpoints"


def is_checkpoint(path: Path) -> bool:
    return bool(_NAME.match(path.name)) and (path / TRAINABLE).is_file() and (path / STATE).is_file()


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_checkpoint(p)]
    return sorted(found, key=_step_of)


def _step_of(path: Path) -> int:
    """N of a ``step-N`` checkpoint folder (one that :func:`is_checkpoint` accepted)."""
    match = _NAME.match(path.name)
    assert match is not None, path
    return int(match.group(1))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not is_frozen_tower(k)}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into the non-frozen part of ``model``; CheckpointError naming any key or shape mismatch."""
    expected = trainable_state(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
            if keys
        ]
        raise CheckpointError(
            f"{source} does not fit the model of this config ({'; '.join(parts)}); "
            "resume with the config the run was started with"
        )
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(is_frozen_tower(k) for k in result.missing_keys)


# ------------------------------------------------------------------------------------------ save/load


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(output_dir, step: int, model: nn.Module, state: dict, cfg: Config) -> Path:
    """Write ``checkpoints/step-NNNNNNNN`` atomically and return it (an existing one of that step is replaced)."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is as readable as the run directory
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp / STATE)
        save_config(cfg, tmp / CONFIG)
        # trainable last: it holds the hashes
        meta = {"step": step, STATE_HASH: file_sha256(tmp / STATE), CONFIG_HASH: file_sha256(tmp / CONFIG)}
        save_safetensors(trainable_state(model), tmp / TRAINABLE, metadata=meta)
        for name in (TRAINABLE, STATE, CONFIG):
            _fsync(tmp / name)
        if final.exists():  # re-written after resuming from an older checkpoint: swap, then drop the old one
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def checkpoint_integrity(path: Path) -> list[tuple[str, str, str]]:
    """[(file, ok|unverified|damaged, detail)] for the weights and the training state of a checkpoint directory."""
    path = Path(path)
    status, detail = safetensors_check(path / TRAINABLE)
    rows = [(str(path / TRAINABLE), status, detail)]
    meta = safetensors_metadata(path / TRAINABLE) if status == "ok" else {}
    stored = meta.get(STATE_HASH)
    rows.append(_config_row(path / CONFIG, meta.get(CONFIG_HASH) if status == "ok" else None))
    try:
        if stored is not None:
            actual = file_sha256(path / STATE)
            rows.append(
                (str(path / STATE), "ok", actual)
                if actual == stored
                else (str(path / STATE), "damaged", _mismatch(stored, actual))
            )
        else:  # older checkpoint (or weights already damaged): the zip CRCs still catch flipped bits and truncation
            with zipfile.ZipFile(path / STATE) as z:
                bad = z.testzip()
            rows.append(
                (str(path / STATE), "damaged", f"member {bad} fails its CRC check")
                if bad
                else (str(path / STATE), "unverified", "no content hash (written by an older dpseg); zip CRCs pass")
            )
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        rows.append((str(path / STATE), "damaged", f"truncated or unreadable ({reason})"))
    return rows


def _mismatch(stored: str, actual: str) -> str:
    return (
        f"its content does not match the SHA-256 stored when it was written (stored {quote(str(stored)[:12])}…, "
        f"now {actual[:12]}…): the file was corrupted or modified"
    )


def _config_row(path: Path, stored: Optional[str]) -> tuple[str, str, str]:
    """config.yaml against the hash stored in trainable.safetensors (None: an older checkpoint, or damaged weights)."""
    if stored is None:
        return str(path), "unverified", "no content hash (written by an older dpseg, or its weights are damaged)"
    try:
        actual = file_sha256(path)
    except (OSError, ValueError) as e:
        return str(path), "damaged", f"missing or unreadable ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"
    return (str(path), "ok", actual) if actual == stored else (str(path), "damaged", _mismatch(stored, actual))


def checkpoint_problem(path: Path) -> Optional[str]:
    """None if the checkpoint is intact (or old and unverifiable), else a one-line reason."""
    return _problem(checkpoint_integrity(path))


def _problem(rows: list[tuple[str, str, str]]) -> Optional[str]:
    return "; ".join(f"{Path(f).name} {detail}" for f, status, detail in rows if status == "damaged") or None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(trainable state, training state) of a checkpoint directory, read without executing any pickled code,
    after checking the content hashes."""
    if not is_checkpoint(path):
        raise CheckpointError(
            f"{path} is not a training checkpoint (expected a step-N directory with {TRAINABLE} and {STATE})"
        )
    rows = checkpoint_integrity(path)
    problem = _problem(rows)
    if problem:
        raise CheckpointError(f"training checkpoint {path} is damaged: {problem}; {FIX}")
    if any(status == "unverified" for _, status, _ in rows):
        note_unverified(path, "training checkpoint")
    weights = read_state_dict(path / TRAINABLE, "training checkpoint", fix=FIX)
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or unsafe file
        reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(
            f"cannot read {path / STATE}: truncated, or not written by dpseg train ({reason})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path / STATE} is not a dpseg training state")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path / STATE} has format version {state.get('version')}; this dpseg reads version {VERSION}"
        )
    return weights, state


def prune_checkpoints(output_dir, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (0 = keep all) and stale temporary directories."""
    root = checkpoint_root(output_dir)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and (p.name.endswith(".tmp") or p.name.endswith(".old")):
                shutil.rmtree(p, ignore_errors=True)
    if keep > 0:
        for p in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(p)
            removed.append(p)
    return removed


# -------------------------------------------------------------------------------------------- resuming


def newest_intact(run_dir, notes: list) -> Optional[Path]:
    """The newest checkpoint of ``run_dir`` that passes its integrity check (None if it has none); every damaged
    one skipped is described in ``notes``; CheckpointError if all are damaged."""
    found = list_checkpoints(run_dir)
    skipped: list[str] = []
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            notes.extend(skipped)
            return path
        skipped.append(f"skipped damaged checkpoint {path}: {problem}")
    if found:
        raise CheckpointError(
            f"every checkpoint of {run_dir} is damaged (newest: {skipped[0].split(': ', 1)[1]}); "
            "restore them from a backup, or start a new run with another train.output_dir"
        )
    return None


def resume_target(output_dir, resume: Optional[str], notes: Optional[list] = None) -> Optional[Path]:
    """The checkpoint a run continues from (None = new run), or a one-line error.

    ``resume``: None = new run, refused if ``output_dir`` already holds checkpoints; ``"auto"`` = the newest
    intact checkpoint of ``output_dir`` if any; otherwise a run directory (its newest intact checkpoint) or a
    ``step-N`` checkpoint directory (which must be intact). Skipped damaged checkpoints are described in ``notes``.
    """
    notes = [] if notes is None else notes
    if resume is None:
        found = list_checkpoints(output_dir)
        if found:
            raise ConfigError(
                f"train.output_dir {output_dir} already holds checkpoints of a run (latest {found[-1].name}); "
                "pass --resume to continue it, or choose another --set train.output_dir=..."
            )
        return None
    if resume == "auto":
        return newest_intact(output_dir, notes)
    path = Path(resume).expanduser()
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such run directory or checkpoint")
    if is_checkpoint(path):
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(
                f"--resume {path}: the checkpoint is damaged ({problem}); pass the run directory "
                f"{path.parent.parent} to continue from its newest intact checkpoint"
            )
        return path
    newest = newest_intact(path, notes)
    if newest is None:
        raise CheckpointError(
            f"--resume {path}: no complete checkpoint there (expected {path}/checkpoints/step-N or a step-N directory)"
        )
    return newest


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and prefix.count(".") < 1 else {key: v})
    return out


def config_changes(old: dict, new: dict) -> list[str]:
    """``section.key: old -> new`` for every setting that differs (output_dir excluded: runs may move)."""
    a, b = _flatten(old), _flatten(new)
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k != "train.output_dir"
    ]


def restore_training(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler, frozen: dict, rank: int, world_size: int
) -> tuple[dict, list[str]]:
    """Load checkpoint ``path`` into model, optimizer, loss scaler and this rank's RNG.

    ``frozen`` holds the fingerprints of the frozen towers as built now; they must equal the saved ones. Returns
    (the training state: step, consumed_samples, best, config, ...; notes for the log).
    """
    weights, state = load_checkpoint(path)
    load_trainable(model, weights, str(path))
    for name, fingerprint in frozen.items():
        if state["frozen"].get(name) != fingerprint:
            raise CheckpointError(
                f"{path}: the frozen {name} differs from the one this run was trained with "
                "(model.clip_pretrained or the CLIP weights file changed); resume with the original CLIP weights"
            )
    names = [g["name"] for g in optimizer.param_groups]
    saved = [g.get("name") for g in state["optimizer"]["param_groups"]]
    if names != saved:
        raise CheckpointError(
            f"{path}: optimizer groups {saved} do not match this model's {names}; resume with the run's config"
        )
    current = [(g["lr_mult"], g["weight_decay"]) for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for g, (mult, wd) in zip(optimizer.param_groups, current):  # settings given now win over saved ones
        g["lr_mult"], g["weight_decay"] = mult, wd
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    notes = [f"resumed from {path} at step {state['step']}"]
    rngs = state["rng"]
    if len(rngs) == world_size:
        restore_rng(rngs[rank])
    else:  # data order and augmentation are position-seeded and stay exact; only e.g. drop path is reseeded
        seed_all(mix_seed(0x7A1, rank, state["step"]))
        notes.append(
            f"the run had {len(rngs)} processes and now has {world_size}: the data order is kept, the "
            "other random streams (drop path) are reseeded, so this continuation is not bit-exact"
        )
    return state, notes
