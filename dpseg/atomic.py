"""Atomic file writes: readers see the old file or the complete new one, never a partial file; and the one
writer of the JSON files dpseg produces (strict JSON: no NaN or Infinity, which many readers refuse)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read without changing it where the system allows (os.umask(0) would briefly make files
    that other threads create world-writable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions of a new file: 0666 minus the umask (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_target(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any failure it is removed.

    The file gets the usual permissions of a new file (:func:`file_mode`), not mkstemp's private 0600: set when
    the writer is done, right before the rename, because a writer may replace the temporary file with one of its
    own (safetensors' ``save_file`` does, with mode 0600), so run directories stay readable by a team.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    with atomic_target(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-Infinity, also numpy's) replaced by None (JSON null): a
    number that does not exist is written as null, never as the non-standard NaN / Infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # numpy/torch scalar
        return finite_json(value.item())
    return value


def json_text(value: Any, indent: Optional[int] = 2, **kwargs: Any) -> str:
    """The one way dpseg turns data into JSON text for a file it writes: strict JSON (non-finite numbers become
    null, :func:`finite_json`; ``allow_nan=False`` guarantees it)."""
    return json.dumps(finite_json(value), indent=indent, allow_nan=False, **kwargs)


def atomic_write_json(path: Union[str, os.PathLike], value: Any, indent: Optional[int] = 2, **kwargs: Any) -> None:
    """Write ``value`` as strict JSON (:func:`json_text`), atomically."""
    atomic_write_text(path, json_text(value, indent, **kwargs))
