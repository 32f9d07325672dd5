"""One class's file of a prompt bank (``BANK/classes/<slug>-<hash>.safetensors``): its name on disk, its metadata
and the checks of its tensors against the bank's manifest (M templates x embed_dim for T and V, x stage_dims[j] for
the v_j, a 1-D ``seeds``, finite values). :class:`dpseg.prompts.bank.PromptBank` reads and writes these files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

from dpseg.weights import safetensors_integrity, safetensors_nonfinite

STAGE_KEYS = ("visual_stage2", "visual_stage3", "visual_stage4")


def class_stem(name: str) -> str:
    """File-system-safe, collision-free file stem of a (canonical) class name."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:48] or "class"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def class_metadata(path: Path) -> Optional[dict]:
    """A class file's metadata ({} if it has none), or None if it is absent, truncated or not a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - absent, truncated or foreign file
        return None


def expected_shapes(manifest: dict) -> dict[str, tuple[int, int]]:
    """The shape of each prompt tensor of a class file: text and visual (M, embed_dim), visual_stage{2,3,4}
    (M, stage_dims[j])."""
    m, d = len(manifest["templates"]), manifest["embed_dim"]
    return {"text": (m, d), "visual": (m, d), **{k: (m, s) for k, s in zip(STAGE_KEYS, manifest["stage_dims"])}}


def tensor_problem(manifest: dict, shapes: dict) -> str:
    """'' if a class file's tensor shapes are those the manifest names (:func:`expected_shapes`, plus a 1-D
    ``seeds``), else what is wrong."""
    for key, shape in expected_shapes(manifest).items():
        if key not in shapes:
            return f"lacks the tensor '{key}'"
        if tuple(shapes[key]) != shape:
            return (
                f"holds tensor '{key}' of shape {tuple(shapes[key])}, but the bank's manifest says {shape} "
                "(M templates x width)"
            )
    if "seeds" not in shapes or len(shapes["seeds"]) != 1:
        return "lacks a 1-D tensor 'seeds'"
    return ""


def file_problem(manifest: dict, path: Path) -> str:
    """'' if a class file's tensors have the manifest's shapes and finite values, else what is wrong (the header
    gives the shapes; the values are read one tensor at a time)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        return tensor_problem(manifest, shapes) or safetensors_nonfinite(path)
    except Exception as e:  # noqa: BLE001 - a file the hash passed that still does not parse
        return f"is not a valid safetensors file ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"


def verify_class_files(manifest: dict, class_dir: Path) -> dict:
    """{"ok": [file names], "unverified": [file names], "damaged": [(file name, why)]} of every class file in
    ``class_dir``: its content hash, tensor shapes (against the manifest) and finite values."""
    out: dict = {"ok": [], "unverified": [], "damaged": []}
    for path in sorted(class_dir.glob("[!.]*.safetensors")):
        status, detail = safetensors_integrity(path)
        if status != "damaged":
            problem = file_problem(manifest, path)
            status, detail = ("damaged", problem) if problem else (status, detail)
        out[status].append((path.name, detail) if status == "damaged" else path.name)
    return out
