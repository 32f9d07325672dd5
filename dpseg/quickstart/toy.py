"""Honest about the toy: ``dpseg segment`` and ``dpseg demo`` say once when the model is the synthetic-world model
of ``dpseg quickstart`` (a config of preset ``synthetic``), and refuse class names that world does not have, which
such a model cannot know (it would paint them somewhere, with confidence it has not earned; no prompt bank and no
text-only mode changes that). The refusal is one message that says what the toy can and cannot do and names the
real route for photos: SED's released checkpoint, converted (:data:`PHOTO_CHECKPOINT`), with the exact commands.
"""

from __future__ import annotations

import shlex
from typing import Optional, Sequence

from dpseg.errors import InputError
from dpseg.vocab import split_synonyms

TOY_PRESET = "synthetic"
TOY_NOTE = (
    "this is the toy model of `dpseg quickstart`, trained on the built-in synthetic world: it knows rendered "
    "shapes named 'colour pattern shape' (e.g. 'red striped star'), not photos; pass --checkpoint for a "
    "real model"
)


# Where the README's "SED's released checkpoints" section converts SED-B to, and the commands that get it there
PHOTO_CHECKPOINT = "checkpoints/sed-b"
SED_FILE = "sed_b.pth"
CONVERT_COMMAND = f"dpseg convert sed {SED_FILE} {PHOTO_CHECKPOINT}"


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


def world_description() -> str:
    """What the toy knows, in one clause: its naming rule and the words it knows."""
    from dpseg.data.synthetic.world import COLOURS, PATTERNS, SHAPES

    return (
        f"rendered shapes named 'colour pattern shape' (colour {'/'.join(COLOURS)}, pattern {'/'.join(PATTERNS)}, "
        f"shape {'/'.join(SHAPES)}; e.g. 'red striped star')"
    )


def toy_refusal(names: Sequence[str], retry: Sequence[str]) -> Optional[str]:
    """The one message for class names outside the toy's world, or None when every name is in it.

    ``retry`` is the user's command with the toy's model, e.g. ``["dpseg", "segment", "photos/", "--classes",
    "person, sky", "--out", "out"]``; the message gives it back with ``--checkpoint`` set to the converted SED
    checkpoint, after the conversion command. Both commands run as printed once SED's file is downloaded
    (``tests/test_first_hour.py``)."""
    bad = outside_world(names)
    if not bad:
        return None
    shown = ", ".join(repr(n) for n in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
    return (
        f"{shown} {'is' if len(bad) == 1 else 'are'} not in the toy model's world: the model of `dpseg quickstart` "
        f"knows only {world_description()}, and no prompt bank or text-only mode can teach it other names. "
        f"For photos use SED's released model: download {SED_FILE} (README, section \"SED's released "
        f'checkpoints"), then `{CONVERT_COMMAND}` and `{shell_join([*retry, "--checkpoint", PHOTO_CHECKPOINT])}`'
    )


def shell_join(argv: Sequence[str]) -> str:
    """A command line to paste: arguments that need quoting in double quotes when that is safe (as people write
    them), else as shlex quotes them."""
    return " ".join(
        f'"{a}"' if shlex.quote(a) != a and not any(c in a for c in '"$`\\!') else shlex.quote(a) for a in argv
    )
