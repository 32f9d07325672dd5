"""Honest about the toy: ``dpseg segment`` and ``dpseg demo`` say once when the model is the synthetic-world model
of ``dpseg quickstart`` (a config of preset ``synthetic``), and name the classes that world does not have, which
such a model cannot know (it would still paint them somewhere, with confidence it has not earned)."""

from __future__ import annotations

from typing import Optional, Sequence

from dpseg.errors import InputError
from dpseg.vocab import split_synonyms

TOY_PRESET = "synthetic"
TOY_NOTE = (
    "this is the toy model of `dpseg quickstart`, trained on the built-in synthetic world: it knows rendered "
    "shapes named 'colour pattern shape' (e.g. 'red striped star'), not photos; pass --checkpoint for a "
    "real model"
)


def is_toy(cfg) -> bool:
    """Whether a checkpoint's config is the synthetic world's (preset ``synthetic``)."""
    return getattr(cfg, "preset", "") == TOY_PRESET


def outside_world(names: Sequence[str]) -> list[str]:
    """The class names of which no synonym is a class of the synthetic world (colour pattern shape)."""
    from dpseg.data.synthetic.world import parse_class  # only for toy models: segment's start-up stays lean

    def known(name: str) -> bool:
        for synonym in split_synonyms(name):
            try:
                parse_class(synonym)
                return True
            except InputError:
                pass
        return False

    return [n for n in names if not known(n)]


def outside_world_warning(names: Sequence[str]) -> Optional[str]:
    """One line naming the classes the toy world does not have, or None."""
    bad = outside_world(names)
    if not bad:
        return None
    from dpseg.data.synthetic.world import COLOURS, PATTERNS, SHAPES

    shown = ", ".join(repr(n) for n in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    return (
        f"{len(bad)} of {len(names)} classes are not in the toy model's world: {shown}; it only knows "
        f"'colour pattern shape' names with colour in {'/'.join(COLOURS)}, pattern in {'/'.join(PATTERNS)}, "
        f"shape in {'/'.join(SHAPES)} - its output for these classes means nothing"
    )
