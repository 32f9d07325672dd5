"""Atomic file writes: readers see the old file or the complete new one, never a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_target(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any failure it is removed.

    The file gets the usual permissions for a new file (0666 minus the umask), not mkstemp's private 0600,
    so run directories stay readable by a team.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
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
