"""When two class names mean the same class: the one rule every class-list reader applies before its duplicate check.

A class name may list synonyms separated by commas ("sofa, couch"). Its **canonical form** strips each synonym and
collapses runs of inner whitespace to one space ("sofa ,  couch " -> "sofa, couch"); it is the name dpseg shows
and stores (prompt-bank files are keyed by it). Two names are the **same class** when their canonical forms are
equal ignoring case: "red solid square", "Red  solid square" and "red solid square " name one class, which the CLIP
tokenizer would encode identically anyway (it lower-cases and collapses whitespace), so accepting both would only
make two identical prompts compete. Synonym order still matters ("sofa, couch" is not "couch, sofa": the first
synonym is the one images are generated from).

Readers that apply it (each raises its own error type): :func:`dpseg.prompts.bank.check_class_list` (user class
lists, vocabulary files, prompt banks, the segmenter and the demo), :func:`dpseg.data.vocab.load_class_names`
(dataset ``classes.txt``), :class:`dpseg.model.prompts.PromptSet`, and
:func:`dpseg.prompts.exemplars.find_exemplars` (exemplar folder names).
"""

from __future__ import annotations

from typing import Sequence


def canonical_name(name: str) -> str:
    """"sofa ,  couch " -> "sofa, couch"; ValueError for a non-string or an empty name."""
    if not isinstance(name, str):
        raise TypeError(f"class names must be strings, got {type(name).__name__}")
    parts = [" ".join(p.split()) for p in name.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"class name {name!r} is empty")
    return ", ".join(parts)


def class_key(name: str) -> str:
    """The identity of a class: its canonical form, case-folded."""
    return canonical_name(name).casefold()


def duplicate_groups(names: Sequence[str]) -> list[list[str]]:
    """Groups (in first-appearance order) of the given names that name the same class; [] if there are none."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(class_key(name), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def describe_duplicates(groups: list[list[str]], n: int = 5) -> str:
    """"'cat'" for a plain repeat; "'red solid square' (written 'red solid square', 'Red  solid square': names that
    differ only in case or spacing are one class)" when the spellings differ; the first ``n`` groups."""
    parts = []
    for g in groups[:n]:
        # case and spaces inside a synonym are worth a remark; spaces around commas and at the ends are not
        written = list(dict.fromkeys(", ".join(p.strip() for p in x.split(",") if p.strip()) for x in g))
        note = "" if len(written) == 1 else (f" (written {', '.join(repr(x) for x in written)}: names that differ "
                                             "only in case or spacing are one class)")
        parts.append(f"{canonical_name(g[0])!r}{note}")
    return ", ".join(parts) + (f" (and {len(groups) - n} more)" if len(groups) > n else "")
