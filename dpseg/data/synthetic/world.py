"""The synthetic open-vocabulary world: its attributes, classes, the fixed seen/unseen split and phrase parsing.

A class is one combination of three attributes and is named by a short phrase, always in the order
*colour pattern shape*: "red striped star", "blue solid circle". 5 colours x 3 patterns x 5 shapes = 75 classes.
Objects stand upright (tilted by at most 14 degrees), patterns are drawn in a darker shade of the object colour,
backgrounds are textured and weakly coloured (see :mod:`~dpseg.data.synthetic.render`).

**Split (fixed, part of** :data:`WORLD_VERSION` **).** The 16 unseen classes are two 2x2x2 "cubes" of
attribute values (:data:`UNSEEN_CUBES`):

    {red, green} x {striped, dotted} x {circle, star}   and   {blue, yellow} x {solid, dotted} x {square, triangle}

the other 59 classes are seen. Inside a cube every unseen class has an unseen neighbour that differs from it in
only its colour, one that differs only in its pattern and one that differs only in its shape, so telling the
unseen classes apart needs all three attributes. They are still new combinations of known values: every colour,
pattern and shape occurs in at least 8 seen classes and every pair of attribute values of an unseen class occurs
in at least one seen class (colour-pattern and pattern-shape pairs in at least two; a colour-shape pair such as
"red ... circle" only with the one pattern outside the cube, "red solid circle"). ``tests/test_synthetic_world.py``
checks all of this. Unseen classes never occur in training images, training captions of the tiny CLIP, or the
training vocabulary.

**Pattern words.** The class vocabulary names patterns "solid", "striped", "dotted". The tiny CLIP's captions
use the caption-only synonyms of :data:`CAPTION_PATTERN_WORDS` ("plain", "stripy", "spotted") unless its text
gap is switched off (:mod:`~dpseg.quickstart.clip_pretrain`); the generator and :func:`parse_class`
understand both.

**Labels.** Objects are labelled with the index of their class in the vocabulary of the dataset they belong to
(``classes.txt``). The background is *not* a class: it is the ignore label (-1 in memory, 255 on disk), as
Pascal-Context-59 and VOC-20 do in the peers' protocol. The vocabulary thus only holds things with a name, the
mIoU measures how well named objects are recognised and delineated, and the per-pixel BCE (ignore = negative)
still teaches the model to give every class a low score on the background.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dpseg.errors import InputError

# Bump when rendering, attributes or the split change: it keys every cached dataset, CLIP and prompt bank.
# v2: the cube split, caption-only pattern synonyms (text gap), prompt-style generator images (style gap).
# v3: the generator's own per-class failures (generator.py), no generator images in the tiny CLIP's pretraining pool,
#     three dataset splits (seen/val for choices, seen/test and unseen/test reported) (README).
WORLD_VERSION = 3

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 225),
    "yellow": (230, 205, 35),
    "purple": (145, 50, 200),
}
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
# The words the tiny CLIP's captions use for PATTERNS when its text gap is on; never a class-vocabulary word.
CAPTION_PATTERN_WORDS: tuple[str, ...] = ("plain", "stripy", "spotted")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# The noun used in captions that name some attributes but no shape ("a red striped shape").
GENERIC_NOUN = "shape"
# The unseen classes: two cubes of (colours, patterns, shapes).
UNSEEN_CUBES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (("red", "green"), ("striped", "dotted"), ("circle", "star")),
    (("blue", "yellow"), ("solid", "dotted"), ("square", "triangle")),
)


@dataclass(frozen=True, order=True)
class ObjectClass:
    """One class of the world: indices into COLOURS, PATTERNS and SHAPES."""

    colour: str
    pattern: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.pattern} {self.shape}"

    @property
    def indices(self) -> tuple[int, int, int]:
        return list(COLOURS).index(self.colour), PATTERNS.index(self.pattern), SHAPES.index(self.shape)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]


def is_unseen(c: int, p: int, s: int) -> bool:
    """The split rule (see the module docstring): whether (colour, pattern, shape) indices lie in an unseen cube."""
    colour, pattern, shape = list(COLOURS)[c], PATTERNS[p], SHAPES[s]
    return any(colour in cs and pattern in ps and shape in ss for cs, ps, ss in UNSEEN_CUBES)


def all_classes() -> list[ObjectClass]:
    """Every class, in the canonical order colour-major, then pattern, then shape."""
    return [ObjectClass(c, p, s) for c in COLOURS for p in PATTERNS for s in SHAPES]


def seen_classes() -> list[ObjectClass]:
    """The 59 training classes, canonical order (= label values of the ``seen`` datasets)."""
    return [k for k in all_classes() if not is_unseen(*k.indices)]


def unseen_classes() -> list[ObjectClass]:
    """The 16 held-out classes, canonical order (= label values of the ``unseen`` dataset)."""
    return [k for k in all_classes() if is_unseen(*k.indices)]


def vocabulary(name: str) -> list[ObjectClass]:
    """The class list of an evaluation vocabulary: ``seen``, ``unseen`` or ``all`` (seen first, then unseen)."""
    if name == "seen":
        return seen_classes()
    if name == "unseen":
        return unseen_classes()
    if name == "all":
        return seen_classes() + unseen_classes()
    raise InputError(f"unknown synthetic vocabulary '{name}' (choose seen, unseen or all)")


_WORD = r"[a-z]+"
_PHRASE = re.compile(r"\b(" + _WORD + r")\s+(" + _WORD + r")\s+(" + _WORD + r")\b")
# Pattern word -> the vocabulary's pattern: both the vocabulary words and the caption-only synonyms.
_PATTERN_OF = {**{p: p for p in PATTERNS}, **dict(zip(CAPTION_PATTERN_WORDS, PATTERNS))}


def caption_pattern_word(pattern: str, text_gap: bool) -> str:
    """The word captions use for a vocabulary pattern: its caption-only synonym when the text gap is on."""
    return CAPTION_PATTERN_WORDS[PATTERNS.index(pattern)] if text_gap else pattern


def parse_class(name: str) -> ObjectClass:
    """'red striped star' (or 'red stripy star') -> ObjectClass; raises InputError naming the bad word."""
    words = name.strip().lower().split()
    if len(words) != 3:
        raise InputError(
            f"synthetic class {name!r} must be three words: colour pattern shape (e.g. 'red striped star')"
        )
    colour, pattern, shape = words
    patterns = (*PATTERNS, *CAPTION_PATTERN_WORDS)
    for word, valid, what in ((colour, COLOURS, "colour"), (pattern, patterns, "pattern"), (shape, SHAPES, "shape")):
        if word not in valid:
            raise InputError(f"synthetic class {name!r}: '{word}' is not a {what} of the world ({', '.join(valid)})")
    return ObjectClass(colour, _PATTERN_OF[pattern], shape)


def find_class_in_text(text: str) -> ObjectClass:
    """The one class phrase inside a templated sentence ("a bad photo of a red striped star." -> red striped star).

    Exactly one run of three words colour-pattern-shape must occur (a pattern may be a vocabulary word or its
    caption synonym: "a red stripy star" -> red striped star); anything else raises InputError.
    """
    lowered = text.lower()
    found = []
    for i in range(len(lowered)):  # overlapping matches: scan from every word start
        if i and lowered[i - 1].isalpha():
            continue
        m = _PHRASE.match(lowered, i)
        if m and m.group(1) in COLOURS and m.group(2) in _PATTERN_OF and m.group(3) in SHAPES:
            found.append(ObjectClass(m.group(1), _PATTERN_OF[m.group(2)], m.group(3)))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise InputError(
            f"text {text!r} holds {what} class phrase(s) of the synthetic world; it needs exactly one "
            f"'colour pattern shape' phrase (colours: {', '.join(COLOURS)}; patterns: {', '.join(PATTERNS)} or "
            f"{', '.join(CAPTION_PATTERN_WORDS)}; shapes: {', '.join(SHAPES)})"
        )
    return found[0]
