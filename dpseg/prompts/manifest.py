"""A prompt bank's ``manifest.json``: its key (encoder fingerprints, templates, sizes, generator), read through the
bounded reader (:mod:`dpseg.safe_load`), type-checked field by field, and covered by its own content hash
``manifest_sha256`` (SHA-256 of the other fields as canonical JSON): a manifest edited by hand (another seed,
another fingerprint) or corrupted is "damaged", never silently trusted; one written before the hash existed loads
with a note. Like every dpseg hash it detects corruption and accidental edits, not a deliberate forger who can
write the bank (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from dpseg.atomic import atomic_write_json, finite_json
from dpseg.config import check_number
from dpseg.config_schema import NumberRule
from dpseg.errors import BankError, quote
from dpseg.prompts.templates import templates_id
from dpseg.safe_load import read_json
from dpseg.weights import state_fingerprint

MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest_sha256"
MAX_MANIFEST_BYTES = 16 << 20
# manifest field -> its type (and, for numbers, the rule): checked when a bank is opened
_MANIFEST_FIELDS: dict = {
    "prompt_encoder": str,
    "text_tower": str,
    "templates_id": str,
    "templates": list,
    "prompt_image_size": NumberRule(ge=1, le=8192),
    "embed_dim": NumberRule(ge=1, le=65536),
    "stage_dims": list,
    "generator": str,
    "generator_spec": str,
    "seed": NumberRule(ge=0, le=2**63 - 1),
    "images_per_class": NumberRule(ge=0, le=100000),
}


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a manifest's fields (its own hash left out) as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(root: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically with its content hash."""
    body = finite_json({k: v for k, v in manifest.items() if k != MANIFEST_HASH})  # hashed as it is written
    atomic_write_json(Path(root) / MANIFEST, {**body, MANIFEST_HASH: manifest_digest(body)})


def check_manifest(path: Path, manifest: dict) -> None:
    """BankError naming the first field of a manifest with a missing or wrongly typed value."""
    for name, kind in _MANIFEST_FIELDS.items():
        value = manifest.get(name)
        if isinstance(kind, NumberRule):
            if not isinstance(value, int) or isinstance(value, bool):
                raise BankError(
                    f"{path}: field '{name}' must be an integer, got {quote(value)}; the manifest is damaged"
                )
            check_number(f"{path}: field '{name}'", value, kind, BankError)
        elif not isinstance(value, kind):
            raise BankError(
                f"{path}: field '{name}' must be a {kind.__name__}, got {quote(value)}; the manifest is damaged"
            )
    templates, dims = manifest["templates"], manifest["stage_dims"]
    if not templates or not all(isinstance(t, str) for t in templates):
        raise BankError(f"{path}: field 'templates' must be a non-empty list of strings; the manifest is damaged")
    if len(dims) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 65536 for d in dims):
        raise BankError(f"{path}: field 'stage_dims' must hold 3 positive integers, got {quote(dims)}")
    if templates_id(templates) != manifest["templates_id"]:
        raise BankError(f"{path}: its templates do not match its templates_id; the manifest is damaged")


def manifest_status(root) -> tuple[str, str]:
    """("ok", digest) | ("unverified", why) | ("damaged", why) of a bank's manifest.json (never raises)."""
    path = Path(root) / MANIFEST
    try:
        manifest = read_manifest(path)
    except BankError as e:
        return "damaged", str(e)
    stored = manifest.get(MANIFEST_HASH)
    if stored is None:
        return "unverified", "no content hash (written by an older dpseg), so it cannot be checked for corruption"
    actual = manifest_digest(manifest)
    if stored != actual:
        return "damaged", (
            f"its content does not match the SHA-256 stored when it was written (stored {quote(str(stored)[:12])}…, "
            f"now {actual[:12]}…): the manifest was corrupted or edited by hand"
        )
    return "ok", actual


def read_manifest(path: Path) -> dict:
    """The manifest as a dict (BankError if it is not a regular file, too large, too deep or not an object)."""
    return read_json(path, "prompt-bank manifest", dict, BankError, MAX_MANIFEST_BYTES)


def make_key(prompt_encoder, text_tower, templates: Sequence[str], prompt_image_size: int) -> dict:
    """The encoder/template part of a bank key, computed from the modules themselves."""
    return {
        "prompt_encoder": state_fingerprint(prompt_encoder),
        "text_tower": state_fingerprint(text_tower),
        "templates_id": templates_id(list(templates)),
        "templates": list(templates),
        "prompt_image_size": int(prompt_image_size),
        "embed_dim": int(prompt_encoder.embed_dim),
        "stage_dims": [int(d) for d in prompt_encoder.stage_dims[:3]],
    }
