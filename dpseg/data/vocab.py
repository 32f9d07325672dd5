"""Class-name lists: the benchmarks' lists shipped as package data, or a user's file.

The shipped JSON files are the peers' (SED / CAT-Seg ``datasets/*.json``) byte for byte: same order, so label
``i`` means the same class as in their numbers, and synonyms kept as ``"a, b"`` (the text tower averages them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from dpseg.classnames import describe_duplicates, duplicate_groups
from dpseg.errors import DataError

CLASS_NAME_DIR = Path(__file__).parent / "class_names"

# builtin list -> expected length (a truncated or edited package file must not give silently wrong numbers)
BUILTIN_LISTS = {"coco": 171, "ade150": 150, "ade847": 847, "pc59": 59, "pc459": 459, "voc20": 20, "voc20b": 59}


def builtin_class_names(key: str) -> list[str]:
    """One of the shipped lists: coco, ade150, ade847, pc59, pc459, voc20, voc20b."""
    if key not in BUILTIN_LISTS:
        raise DataError(f"unknown class-name list '{key}' (shipped lists: {', '.join(BUILTIN_LISTS)})")
    names = _read_json_list(CLASS_NAME_DIR / f"{key}.json")
    if len(names) != BUILTIN_LISTS[key]:
        raise DataError(f"package file class_names/{key}.json has {len(names)} names, expected {BUILTIN_LISTS[key]}; reinstall dpseg")
    return names


def load_class_names(source: Union[str, Path]) -> list[str]:
    """A builtin list name, a ``.json`` file holding a list of strings, or a text file with one class per line.

    In a text file, line i is label value i; blank lines are not allowed in the middle (they would shift every
    later label), trailing blank lines are ignored; ``a, b`` declares synonyms of one class.
    """
    if isinstance(source, str) and source in BUILTIN_LISTS:
        return builtin_class_names(source)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"class-name file {path} not found (give a .json list, a .txt with one name per line, or one of: {', '.join(BUILTIN_LISTS)})")
    names = _read_json_list(path) if path.suffix.lower() == ".json" else _read_text_list(path)
    if not names:
        raise DataError(f"class-name file {path} holds no class names")
    try:
        dup = duplicate_groups(names)
    except ValueError as e:  # a line of only commas
        raise DataError(f"class-name file {path}: {e}; give every label value a name") from None
    if dup:
        raise DataError(f"class-name file {path} lists {describe_duplicates(dup)} more than once; each class must "
                        "appear once")
    return names


def _read_json_list(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read class-name file {path}: {e}") from None
    if not isinstance(data, list) or not all(isinstance(n, str) and n.strip() for n in data):
        raise DataError(f"class-name file {path} must hold a JSON list of non-empty strings")
    return data


def _read_text_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class-name file {path}: {e}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    for i, n in enumerate(names):
        if not n:
            raise DataError(f"class-name file {path} line {i + 1} is blank; line i names label value i, so blank lines would shift labels")
    return names
