"""User-facing errors.

Every path a user touches (CLI, Python API, demo, dataset preparation, prompt banks, checkpoints) raises a
subclass of :class:`DPSegError` with a one-line message that says what was wrong and how to fix it. The CLI
prints such errors as ``error: <message>`` and exits with status 2; anything else is a bug and keeps its
traceback.

A message is safe to print whatever it quotes: :class:`DPSegError` escapes control, format and line-separator
characters (a class name holding ESC cannot drive the terminal, a U+2028 cannot break the line) and shortens the
message to :data:`MESSAGE_LIMIT` characters. Code that puts a user's value into a message quotes it with
:func:`quote` (escaped, at most ~200 characters, bounded work even for a huge or self-referencing value).
"""

from __future__ import annotations

import reprlib
import unicodedata
from typing import Any, Sequence

MESSAGE_LIMIT = 2000  # characters of one error line (a message quoting a 1 MB value stays one short line)
QUOTE_LIMIT = 200  # characters of one quoted value
# control (Cc), format (Cf: bidi overrides, zero-width), line/paragraph separators, surrogates, private use
_UNSAFE = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co"))


def unsafe_char(text: str, allow: str = "") -> tuple[int, str] | None:
    """(position, character) of the first control, format or line-separator character of ``text`` not in
    ``allow``, or None when every character is printable text."""
    for i, c in enumerate(text):
        if c not in allow and (c < " " or "\x7f" <= c <= "\x9f" or unicodedata.category(c) in _UNSAFE):
            return i, c
    return None


_C0_NAMES = {0: "NUL", 7: "BEL", 8: "BACKSPACE", 9: "TAB", 10: "LINE FEED", 11: "VERTICAL TAB", 12: "FORM FEED"}
_C0_NAMES.update({13: "CARRIAGE RETURN", 27: "ESC", 127: "DEL", 0x85: "NEXT LINE"})


def char_name(c: str) -> str:
    """'U+001B ESC', 'U+2028 LINE SEPARATOR': the code point and its name where one is known."""
    name = _C0_NAMES.get(ord(c)) or unicodedata.name(c, "")
    return f"U+{ord(c):04X}" + (f" {name}" if name else "")


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def printable(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` as one printable line: unsafe characters (:func:`unsafe_char`) escaped as \\xNN / \\uNNNN, and
    at most ``limit`` characters (the middle is cut and the cut is said)."""
    if len(text) > 4 * limit:  # never scan megabytes to print 2000 characters
        text = text[: 2 * limit] + text[-2 * limit :]
    if unsafe_char(text) is not None:
        text = "".join(_escape(c) if unsafe_char(c) else c for c in text)
    if len(text) > limit:
        head, tail = text[: limit * 2 // 3], text[-(limit // 3) + 20 :]
        text = f"{head}[...]{tail}"
    return text


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = QUOTE_LIMIT, QUOTE_LIMIT, 60


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """A user's value for an error message: repr-like ('text', 1.5, [1, 2, ...]), escaped, at most ``limit``
    characters. Bounded work: a YAML alias bomb or a 1 MB string is never expanded or copied whole."""
    if isinstance(value, str):
        out: list[str] = []
        used = 2
        for c in value:
            piece = _escape(c) if unsafe_char(c) else c
            if used + len(piece) > limit - 5:
                return "'" + "".join(out) + "'[...]"
            out.append(piece)
            used += len(piece)
        return "'" + "".join(out) + "'"
    return printable(_REPR.repr(value), limit)


class DPSegError(Exception):
    """A problem with the user's input, files or environment (not a bug in dpseg). Its message is made one
    printable line of at most :data:`MESSAGE_LIMIT` characters (module doc)."""

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str):
            args = (printable(args[0]), *args[1:])
        super().__init__(*args)


class ConfigError(DPSegError, ValueError):
    """A bad config key, value or file."""


class CheckpointError(DPSegError):
    """A weight file that is missing, unreadable, truncated or does not match the model."""


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights are not in the local cache and cannot be downloaded."""


class DataError(DPSegError):
    """A dataset, image or label that is missing or malformed."""


class BankError(DPSegError):
    """A prompt bank that is missing, incomplete or built for another model."""


class InputError(DPSegError, ValueError):
    """A bad argument to a public function (shapes, class lists, options)."""


def short_list(items: Sequence[str], n: int = 8) -> str:
    """The first ``n`` items joined by commas, and how many there are in all when some were left out."""
    head = ", ".join(items[:n])
    return head + (f", ... ({len(items)} in all)" if len(items) > n else "")
