"""Class lists and label conventions: the one reader, the one canonical form of a class name, the ignore label.

* :data:`IGNORE_INDEX` (-1) is the label of unlabelled pixels everywhere inside dpseg (datasets, transforms, the
  loss, the synthetic world), whatever the value on disk (255, 65535, 459, ...); it is never a class index.
* A class name may list synonyms separated by commas ("sofa, couch"); the text tower averages them.
  :func:`canonical_name` strips each synonym, collapses runs of inner whitespace and joins them with ", ", so
  "sofa ,couch " and "sofa,  couch" are the same class; two names whose canonical forms differ only in letter
  case are also the same class (:func:`class_key`). Every class-list reader - user lists, class files, dataset
  ``classes.txt``, prompt banks, :class:`~dpseg.model.dual_prompt.PromptSet`, exemplar folder names - refuses such
  duplicates with :func:`check_class_list` / :func:`duplicate_groups`.
* A class name is printable text of at most :data:`MAX_NAME_CHARS` characters: control characters (ESC, BEL,
  form feed, ...), format characters (bidi overrides, zero-width) and line separators (U+2028, U+0085) are refused
  with their name and position, because they would change what a name means (a separator splits one class into
  two, shifting every later label) or what a terminal shows. A tab counts as a space. A list holds at most
  :data:`MAX_CLASSES` classes (what a label map can index).
* :func:`read_class_list` reads the shipped benchmark lists (package data, the peers' files byte for byte: label i
  means the same class as in their numbers) and user files: a JSON list of strings, or text with one class per
  line where line i names label value i (lines end at "\n", with an optional "\r" before it, nothing else).
  Blank lines are allowed only at the end (one in the middle would shift every later label); there is no comment
  syntax (a line starting with '#' is refused, not read as a class). Files are read by the bounded reader of
  :mod:`dpseg.safe_load` (regular files only, size and nesting caps).
* :func:`parse_class_list` reads a class list typed as one string (CLI ``--classes``, the demo's text box).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence, Union

from dpseg.errors import DataError, InputError, char_name, quote, unsafe_char
from dpseg.safe_load import read_json, read_text

IGNORE_INDEX = -1  # the label value of unlabelled pixels inside dpseg (never a class index)
CLASS_NAME_DIR = Path(__file__).parent / "data" / "class_names"
# builtin list -> expected length (a truncated or edited package file must not give silently wrong numbers)
BUILTIN_LISTS = {"coco": 171, "ade150": 150, "ade847": 847, "pc59": 59, "pc459": 459, "voc20": 20, "voc20b": 59}
MAX_NAME_CHARS = 300  # a class name (with its synonyms); CLIP reads 77 tokens, the longest shipped name has 113
MAX_CLASSES = 65535  # classes of one list: the most a 16-bit label map can index
MAX_LIST_BYTES = 16 << 20  # a class-list file


def name_problem(name: str) -> str:
    """Why ``name`` cannot be a class name ("" if it can): an unsafe character (module doc) or its length."""
    bad = unsafe_char(name, allow="\t")
    if bad is not None:
        return (
            f"holds the control character {char_name(bad[1])} at position {bad[0] + 1}; class names must be "
            "printable text (remove it; to give several classes use separate lines or ';')"
        )
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name):,} characters long; class names have at most {MAX_NAME_CHARS}"
    return ""


# ------------------------------------------------------------------------------------------- class names


def split_synonyms(name: str) -> list[str]:
    """'sofa,  couch ' -> ['sofa', 'couch'] (each synonym stripped, inner whitespace collapsed); InputError for a
    non-string or an empty name."""
    if not isinstance(name, str):
        raise InputError(f"class names must be strings, got {type(name).__name__}")
    problem = name_problem(name)
    if problem:
        raise InputError(f"class name {quote(name, 80)} {problem}")
    parts = [" ".join(p.split()) for p in name.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise InputError(f"class name {quote(name, 80)} is empty")
    return parts


def canonical_name(name: str) -> str:
    """The one spelling of a class name: synonyms stripped, inner whitespace collapsed, joined with ', '. It is the
    name dpseg shows and stores (prompt-bank files are keyed by it)."""
    return ", ".join(split_synonyms(name))


def class_key(name: str) -> str:
    """The identity of a class: its canonical form, case-folded. Names with equal keys are one class - the CLIP
    tokenizer would encode them identically anyway (it lower-cases and collapses whitespace), so accepting both
    would only make two identical prompts compete. Synonym order still matters ("sofa, couch" is not "couch,
    sofa": the first synonym is the one images are generated from)."""
    return canonical_name(name).casefold()


def duplicate_groups(names: Sequence[str]) -> list[list[str]]:
    """Groups (in first-appearance order) of the given names that name the same class; [] if there are none."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(class_key(name), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def describe_duplicates(groups: list[list[str]], n: int = 5) -> str:
    """ "'cat'" for a plain repeat; "'red solid square' (written 'red solid square', 'Red  solid square': names that
    differ only in case or spacing are one class)" when the spellings differ; the first ``n`` groups."""
    parts = []
    for g in groups[:n]:
        # case and spaces inside a synonym are worth a remark; spaces around commas and at the ends are not
        written = list(dict.fromkeys(", ".join(p.strip() for p in x.split(",") if p.strip()) for x in g))
        note = (
            ""
            if len(written) == 1
            else (
                f" (written {', '.join(repr(x) for x in written)}: names that differ "
                "only in case or spacing are one class)"
            )
        )
        parts.append(f"{canonical_name(g[0])!r}{note}")
    return ", ".join(parts) + (f" (and {len(groups) - n} more)" if len(groups) > n else "")


def check_class_list(class_names: Sequence[str], what: str = "the class list") -> list[str]:
    """Canonical names of a non-empty class list naming each class once (case and spacing aside; InputError)."""
    if isinstance(class_names, str):
        raise InputError(f"{what} must be a list of names, not one string")
    if len(class_names) > MAX_CLASSES:
        raise InputError(f"{what} has {len(class_names):,} classes; at most {MAX_CLASSES} (what a label map indexes)")
    try:
        names = [canonical_name(n) for n in class_names]
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    if not names:
        raise InputError(f"{what} is empty; give at least one class name")
    dup = duplicate_groups(list(class_names))
    if dup:
        raise InputError(f"{what} names {describe_duplicates(dup)} more than once; each class must appear once")
    return names


def parse_class_list(text: str) -> list[str]:
    """Classes from one string. If it holds ';' or a line break, those separate classes and commas join
    synonyms of one class ("sofa, couch; cat" = 2 classes); otherwise commas separate classes ("cat, sofa, lamp"
    = 3 classes). Whitespace around names is ignored; empty items are skipped; duplicates are an error."""
    if not isinstance(text, str):
        raise InputError(f"the class list must be a string or a list of names, got {type(text).__name__}")
    parts = re.split(r"[;\n]", text) if re.search(r"[;\n]", text) else text.split(",")
    parts = [p.strip() for p in parts if p.strip()]
    if not parts:
        raise InputError('the class list is empty; name at least one class, e.g. "cat, sofa, lamp"')
    return check_class_list(parts)


# ----------------------------------------------------------------------------------------- class-list files


def builtin_class_names(key: str) -> list[str]:
    """One of the shipped lists (coco, ade150, ade847, pc59, pc459, voc20, voc20b), exactly as the peers ship it."""
    if key not in BUILTIN_LISTS:
        raise DataError(f"unknown class-name list '{key}' (shipped lists: {', '.join(BUILTIN_LISTS)})")
    names = _read_json_list(CLASS_NAME_DIR / f"{key}.json")
    if len(names) != BUILTIN_LISTS[key]:
        raise DataError(
            f"package file class_names/{key}.json has {len(names)} names, "
            f"expected {BUILTIN_LISTS[key]}; reinstall dpseg"
        )
    return names


def read_class_list(source: Union[str, Path]) -> list[str]:
    """A shipped list name, a ``.json`` file (a list of strings, or an object with a ``class_names`` / ``classes`` /
    ``names`` list) or a text file with one class per line (rules in the module doc). Names are returned as written;
    empty lists and duplicates are refused (DataError naming the file)."""
    if isinstance(source, str) and source in BUILTIN_LISTS:
        return builtin_class_names(source)
    path = Path(source).expanduser()
    if not path.exists() or path.is_dir():  # FIFOs, devices: refused by the reader, naming what they are
        what = "is not a file" if path.exists() else "not found"
        raise DataError(
            f"class list {path} {what} (give a .json list, a .txt with one name per line, or one of: "
            f"{', '.join(BUILTIN_LISTS)})"
        )
    names = _read_json_list(path) if path.suffix.lower() == ".json" else _read_text_list(path)
    if not names:
        raise DataError(f"class list {path} holds no class names")
    try:
        check_class_list(names, f"class list {path}")
    except InputError as e:
        raise DataError(str(e)) from None
    return names


def _read_json_list(path: Path) -> list[str]:
    data = read_json(path, "class list", None, DataError, MAX_LIST_BYTES)
    if isinstance(data, dict):
        data = next((data[k] for k in ("class_names", "classes", "names") if k in data), None)
    if not isinstance(data, list) or not all(isinstance(n, str) and n.strip() for n in data):
        raise DataError(f"class list {path} must hold a JSON list of non-empty strings")
    return data


def _read_text_list(path: Path) -> list[str]:
    text = read_text(path, "class list", MAX_LIST_BYTES, DataError, encoding="utf-8-sig")
    # "\n" alone ends a line: str.splitlines() would also split at form feeds, U+2028 and others, silently making
    # two classes of one line and shifting every later label (module doc); those are refused below instead
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    for i, n in enumerate(names):
        problem = name_problem(n)
        if problem:
            raise DataError(f"class list {path} line {i + 1} {problem}")
        if not n:
            raise DataError(
                f"class list {path} line {i + 1} is blank; line i names label value i, so a blank line "
                "would shift every later label (remove it)"
            )
        if n.startswith("#"):
            raise DataError(
                f"class list {path} line {i + 1} starts with '#': class lists have no comments (line i "
                "names label value i); remove the line"
            )
    return names
