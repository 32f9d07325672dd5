"""The one bounded reader of every JSON and YAML file dpseg reads (configs, checkpoint ``config.json``, class
lists, prompt-bank manifests, safetensors headers, results and caches), and of the bytes of any file a user names.

Whatever a file holds, reading it costs bounded time and memory and fails with one line
(:class:`~dpseg.errors.DPSegError` of the caller's kind, value quotes escaped and short):

* only regular files are opened (a FIFO, a device or a socket is refused up front: opening is non-blocking, the
  type is checked on the open descriptor, so nothing can hang on a pipe or stream from ``/dev/zero``);
* a size cap, checked before reading (``max_bytes``);
* a nesting-depth cap (:data:`MAX_DEPTH`): ``[[[[...]]]]`` or a YAML tree nested thousands deep is refused
  before any recursive code sees it;
* YAML anchors and aliases are allowed (``<<: *base`` is handy in configs) but their *expanded* size is capped
  (:data:`MAX_YAML_NODES` nodes, depth counted through aliases) and an alias inside its own anchor is refused,
  so a 300-byte "billion laughs" file is one error line after microseconds, not gigabytes after a minute;
  only YAML's safe tags are constructed (never Python objects);
* the top-level type is checked (``expect``): a config that is a JSON list or a string is one error line.

Nothing here executes code from a file: JSON is data, YAML is read with the safe constructor.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Any, Optional, Union

import yaml

from dpseg.errors import DataError, DPSegError, printable

PathLike = Union[str, os.PathLike]
ErrorType = type[DPSegError]
MAX_DEPTH = 32  # nesting levels of any JSON/YAML value dpseg reads (its own files use at most 5)
MAX_JSON_BYTES = 64 << 20  # a JSON file (the largest dpseg writes, results.json, is kilobytes)
MAX_YAML_BYTES = 1 << 20  # a YAML config (a complete resolved config is ~5 KB)
MAX_YAML_NODES = 100_000  # scalars + collections of a YAML document with every alias expanded
_KINDS: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}


def _type_word(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "empty (null)"}.get(
        type(value), f"a {type(value).__name__}"
    )


# ------------------------------------------------------------------------------------------------- bytes


def open_regular(path: PathLike, what: str, error: ErrorType = DataError, show_path: bool = True) -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file (symlinks followed); else ``error`` saying
    "``what`` ``path`` is a FIFO ..." (``show_path=False``: "``what`` is a FIFO ...").

    Non-blocking open plus a type check on the descriptor: a FIFO never blocks, a device is never read, and a file
    swapped for one between a check and the open is still caught."""
    name = f"{what} {printable(str(path), 300)}" if show_path else what
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        why = "does not exist" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.strerror or e})"
        raise error(f"{name} {why}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(mode)
                else "a FIFO (named pipe)"
                if stat.S_ISFIFO(mode)
                else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "not a regular file"
            )
            raise error(f"{name} is {kind}, not a regular file; dpseg reads only files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: PathLike, what: str, max_bytes: int, error: ErrorType = DataError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes (else ``error``, before reading it)."""
    with open_regular(path, what, error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{what} {printable(str(path), 300)} is {size:,} bytes, above the limit of {max_bytes:,}")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"{what} {printable(str(path), 300)} cannot be read ({e.strerror or e})") from None
    if len(data) > max_bytes:  # grew while being read
        raise error(f"{what} {printable(str(path), 300)} is above the limit of {max_bytes:,} bytes")
    return data


def read_text(path: PathLike, what: str, max_bytes: int, error: ErrorType = DataError, encoding: str = "utf-8") -> str:
    """A regular text file of at most ``max_bytes`` bytes, decoded (``utf-8-sig`` drops a byte-order mark)."""
    data = read_bytes(path, what, max_bytes, error)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise error(
            f"{what} {printable(str(path), 300)} is not {encoding.replace('-sig', '')} text "
            f"(byte {e.start}: {e.reason})"
        ) from None


# -------------------------------------------------------------------------------------------------- JSON


def check_depth(value: Any, what: str, error: ErrorType = DataError, max_depth: int = MAX_DEPTH) -> None:
    """``error`` if ``value`` (built of dicts and lists) nests deeper than ``max_depth`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > max_depth:
                raise error(f"{what} is nested more than {max_depth} levels deep; dpseg's files never are")
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))


def _check_type(value: Any, expect: Optional[type], what: str, error: ErrorType) -> Any:
    if expect is not None and not isinstance(value, expect):
        raise error(f"{what} must hold {_KINDS.get(expect, expect.__name__)}, not {_type_word(value)}")
    return value


def loads_json(
    text: Union[str, bytes],
    what: str,
    expect: Optional[type] = None,
    error: ErrorType = DataError,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse JSON text with the depth cap and the top-level type check (module doc)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{what} is nested more than {max_depth} levels deep; dpseg's files never are") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except ValueError as e:  # JSONDecodeError, and Python's limit on digits of an integer
        raise error(f"{what} is not valid JSON ({printable(str(e).splitlines()[0] if str(e) else '?', 160)})") from None
    check_depth(value, what, error, max_depth)
    return _check_type(value, expect, what, error)


def read_json(
    path: PathLike,
    what: str,
    expect: Optional[type] = dict,
    error: ErrorType = DataError,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """A JSON file read with every bound of the module doc; ``what`` names it in messages ("class list")."""
    data = read_bytes(path, what, max_bytes, error)
    return loads_json(data, f"{what} {printable(str(path), 300)}", expect, error)


# -------------------------------------------------------------------------------------------------- YAML


class _BoundedError(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting and alias-expansion bounds of the module doc, enforced while the
    document is composed (before any Python object exists)."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_YAML_NODES

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0  # expanded depth of the node being composed
        self._open: set = set()  # anchors whose node is being composed (an alias to one would be a cycle)
        self._size: dict = {}  # id(node) -> (expanded node count, expanded depth)
        self._keep: list = []  # the nodes measured (ids stay valid while they live)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                raise _BoundedError(f"alias *{printable(event.anchor, 60)} is used inside its own anchor (a cycle)")
            node = super().compose_node(parent, index)
            _, depth = self._size.get(id(node), (1, 1))
            if self._depth + depth > self.max_depth:
                raise _BoundedError(f"nested more than {self.max_depth} levels deep (aliases expanded)")
            return node
        anchor = getattr(self.peek_event(), "anchor", None)
        self._depth += 1
        if self._depth > self.max_depth:
            raise _BoundedError(f"nested more than {self.max_depth} levels deep")
        if anchor is not None:
            self._open.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)
        self._measure(node)
        return node

    def _measure(self, node) -> None:
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        sizes = [self._size.get(id(c), (1, 1)) for c in children]
        total = 1 + sum(s for s, _ in sizes)
        self._size[id(node)] = (total, 1 + max((d for _, d in sizes), default=0))
        self._keep.append(node)
        if total > self.max_nodes:
            raise _BoundedError(
                f"expands to more than {self.max_nodes:,} values (anchors and aliases expanded: an alias bomb?)"
            )


_RAISE = object()


def loads_yaml(
    text: str, what: str, expect: Optional[type] = None, error: ErrorType = DataError, invalid: Any = _RAISE
) -> Any:
    """Parse YAML text with the safe constructor and every bound of the module doc. ``invalid``: returned instead
    of an error when the text is not valid YAML (a bound exceeded is always an error)."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters already here (a YAMLError)
        value = loader.get_single_data()
    except _BoundedError as e:
        raise error(f"{what} {e}") from None
    except RecursionError:  # not reached under the depth cap; kept so that no traceback can escape
        raise error(f"{what} is nested too deeply") from None
    except yaml.YAMLError as e:
        if invalid is not _RAISE:
            return invalid
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{what} is not valid YAML{where}: {printable(str(problem), 160)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return _check_type(value, expect, what, error)


def read_yaml(
    path: PathLike,
    what: str,
    expect: Optional[type] = dict,
    error: ErrorType = DataError,
    max_bytes: int = MAX_YAML_BYTES,
) -> Any:
    """A YAML file read with every bound of the module doc; an empty file is ``None`` (the caller decides)."""
    text = read_text(path, what, max_bytes, error)
    label = f"{what} {printable(str(Path(path)), 300)}"
    value = loads_yaml(text, label, None, error)
    return None if value is None else _check_type(value, expect, label, error)
