"""Vocabularies: a dataset's class list by name (``dpseg/data/class_names/<name>.json``) or a user file.

A file is either JSON (a list of names) or text with one class per line (blank lines and lines starting with
``#`` are skipped). Synonyms go in one name separated by commas ("sofa, couch").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dpseg.errors import InputError
from dpseg.prompts.bank import check_class_list

CLASS_NAME_DIR = Path(__file__).resolve().parents[1] / "data" / "class_names"


def vocabulary_names() -> list[str]:
    return sorted(p.stem for p in CLASS_NAME_DIR.glob("*.json"))


def _read_names(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read class list {path}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"class list {path} is not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = next((data[k] for k in ("class_names", "classes", "names") if k in data), None)
        if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
            raise InputError(f"class list {path} must hold a JSON list of class-name strings")
        return data
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_vocabulary(name_or_file: str) -> list[str]:
    """Class names of a dataset vocabulary name or a file, checked (non-empty, no duplicates)."""
    path = Path(name_or_file).expanduser()
    if path.is_file():
        source = str(path)
    elif re.fullmatch(r"[A-Za-z0-9_.-]+", name_or_file) and (CLASS_NAME_DIR / f"{name_or_file}.json").is_file():
        path, source = CLASS_NAME_DIR / f"{name_or_file}.json", f"vocabulary '{name_or_file}'"
    elif path.exists():
        raise InputError(f"class list {path} is not a file")
    else:
        raise InputError(
            f"'{name_or_file}' is neither a class-list file nor a vocabulary name "
            f"({', '.join(vocabulary_names()) or 'none installed'})"
        )
    names = _read_names(path)
    if not names:
        raise InputError(f"{source} holds no class names")
    check_class_list(names, source)
    return names
