"""Reading, writing and strictly loading weight files.

Formats: ``.safetensors`` (preferred, what dpseg writes), and ``.pt``/``.pth``/``.bin`` PyTorch pickles read
with ``weights_only=True`` (never arbitrary code). Containers ``{"state_dict": ...}`` / ``{"model": ...}`` and
DistributedDataParallel ``module.`` prefixes are unwrapped. Loading is strict: anything missing, unexpected or
of the wrong shape is reported by name in a :class:`~dpseg.errors.CheckpointError`.

Content hashes: every safetensors file dpseg writes (checkpoints, training checkpoints, prompt-bank class files)
carries ``dpseg_sha256`` in its metadata, the SHA-256 of the file's header (tensor table and metadata, this field
left out, as canonical JSON) followed by its tensor data. Loading recomputes it, so a flipped bit anywhere in the
file is an error naming the file instead of silently different weights. Files written before hashes existed (no
``dpseg_sha256``) still load, with a note that they cannot be checked.

Valid but unusable weights: every floating-point tensor read by :func:`read_state_dict` must be finite (a NaN
checkpoint with a correct hash would otherwise segment every pixel as class 0), and ``dpseg check`` scans for
non-finite values too (:func:`safetensors_check`). Only regular files are read; the header JSON goes through the
bounded reader (:mod:`dpseg.safe_load`: depth cap, object type).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import stat
import weakref
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from dpseg.atomic import atomic_target
from dpseg.errors import CheckpointError, quote
from dpseg.safe_load import loads_json, open_regular

PathLike = Union[str, os.PathLike]
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
HASH_KEY = "dpseg_sha256"
_PLACEHOLDER = "0" * 64  # reserved in the header at write time, replaced in place by the digest (same length)
_CHUNK = 1 << 23
log = logging.getLogger("dpseg")


# ------------------------------------------------------------------------------------------ content hashes


def _read_header(f, size: int) -> tuple[dict, int]:
    raw = f.read(8)
    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(raw, "little")
    if n > size - 8 or n > 100_000_000:
        raise ValueError("its header length points beyond the end of the file")
    try:
        header = loads_json(f.read(n), "its header", dict, CheckpointError)
    except CheckpointError as e:  # callers report ValueErrors as "not a valid safetensors file (...)"
        raise ValueError(str(e)) from None
    return header, 8 + n


def _sha256_stream(f, h) -> str:
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    while True:
        n = f.readinto(buffer)
        if not n:
            return h.hexdigest()
        h.update(view[:n])


@functools.lru_cache(maxsize=4096)
def _digests(path: str, stamp: tuple) -> tuple[Optional[str], str]:
    """(stored digest or None, computed digest) of a safetensors file; ``stamp`` keys the cache on the file's state."""
    with _open(path) as f:
        header, start = _read_header(f, stamp[1])
        declared = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if declared != stamp[1] - start:
            raise ValueError(
                f"truncated or padded: {stamp[1] - start} bytes of tensor data, the header declares {declared}"
            )
        meta = dict(header.get("__metadata__") or {})
        stored = meta.pop(HASH_KEY, None)
        table = {**header, "__metadata__": meta}
        h = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
        return stored, _sha256_stream(f, h)


def _open(path: PathLike):
    """A regular file opened for reading (a FIFO or device is a ValueError, reported as an invalid file)."""
    try:
        return open_regular(path, "file", CheckpointError)
    except CheckpointError as e:
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory") from None
        raise ValueError(str(e).split(" is ", 1)[-1]) from None


def _stamp(path: PathLike) -> tuple:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def safetensors_integrity(path: PathLike) -> tuple[str, str]:
    """("ok", digest) | ("unverified", why) | ("damaged", why) for a safetensors file (see the module doc)."""
    try:
        stored, actual = _digests(str(Path(path).resolve()), _stamp(path))
    except OSError as e:
        return "damaged", f"cannot be read ({e.strerror or e})"
    except (ValueError, KeyError, TypeError, IndexError) as e:  # JSON errors too: a flipped bit in the header
        return "damaged", f"not a valid safetensors file ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"
    if stored is None:
        return "unverified", "no content hash (written by an older dpseg), so it cannot be checked for corruption"
    if stored != actual:
        return "damaged", (
            f"its content does not match the SHA-256 stored when it was written "
            f"(stored {quote(str(stored)[:12])}…, now {actual[:12]}…): the file was corrupted or modified"
        )
    return "ok", actual


def safetensors_metadata(path: PathLike) -> dict:
    """The ``__metadata__`` of a safetensors file (ValueError/OSError if it cannot be read)."""
    with _open(path) as f:
        header, _ = _read_header(f, os.fstat(f.fileno()).st_size)
    return dict(header.get("__metadata__") or {})


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a whole file (streamed; cached per file state within a process)."""
    return _file_sha256(str(Path(path).resolve()), _stamp(path))


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str, stamp: tuple) -> str:
    with _open(path) as f:
        return _sha256_stream(f, hashlib.sha256())


_noted: set = set()


def note_unverified(path: PathLike, what: str) -> None:
    """Say once per file that it has no content hash (it still loads)."""
    key = str(Path(path).resolve())
    if key not in _noted:
        _noted.add(key)
        log.warning(
            "note: %s %s has no content hash (written by an older dpseg): it loads, but corruption in it "
            "cannot be detected",
            what,
            path,
        )


def read_state_dict(path: PathLike, what: str = "checkpoint", fix: str = "") -> dict[str, torch.Tensor]:
    """Read a flat name → tensor mapping from a weight file, with one-line errors for bad files.

    ``fix``: for dpseg's own files (a content hash is expected), what to do when the hash does not match; a file
    without a hash then gets a note. Other files (e.g. CLIP weights) are checked only if they carry a hash.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; pass the weight file inside it")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(
            f"{what} file {path} has suffix '{path.suffix}'; expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    if not stat.S_ISREG(path.stat().st_mode):
        raise CheckpointError(f"{what} {path} is not a regular file (a FIFO, device or socket); pass the weight file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} file {path} is empty (0 bytes); re-download or re-save it")
    obj: Any  # whatever the file holds; checked below to be a state dict of tensors
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure means a broken file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"cannot read {what} file {path}: it is truncated or not a valid {path.suffix} file ({reason[:160]})"
        ) from None
    if path.suffix == ".safetensors":  # after parsing: a truncated file keeps its own message
        status, detail = safetensors_integrity(path)
        if status == "damaged":
            raise CheckpointError(f"{what} file {path} is damaged: {detail}; {fix or 're-download or re-save it'}")
        if status == "unverified" and fix:
            note_unverified(path, what)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} file {path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    problem = nonfinite_problem(obj)
    if problem:
        raise CheckpointError(f"{what} file {path} {problem}; {fix or 're-download or re-save it'}")
    return obj


def _nonfinite_count(t: torch.Tensor) -> int:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0
    return int(t.numel() - torch.isfinite(t).sum())


def nonfinite_problem(state: Mapping[str, torch.Tensor]) -> str:
    """'' if every floating tensor of ``state`` is finite, else a message naming the first tensor with NaN or
    Infinity values (a hash-valid file of such weights segments every pixel as one class)."""
    bad = [(k, n, t.numel()) for k, t in state.items() if (n := _nonfinite_count(t))]
    return _describe_nonfinite(bad) if bad else ""


def safetensors_nonfinite(path: PathLike) -> str:
    """:func:`nonfinite_problem` of a safetensors file, read one tensor at a time (memory: the largest tensor)."""
    from safetensors import safe_open

    bad: list[tuple[str, int, int]] = []
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            t = f.get_tensor(key)
            if n := _nonfinite_count(t):
                bad.append((key, n, t.numel()))
    return _describe_nonfinite(bad) if bad else ""


def _describe_nonfinite(bad: list[tuple[str, int, int]]) -> str:
    name, n, total = bad[0]
    more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
    return (
        f"holds non-finite weights (NaN or Infinity): tensor {quote(name, 120)} has {n:,} of {total:,} values "
        f"non-finite{more}; the weights are unusable (a diverged training run?)"
    )


def safetensors_check(path: PathLike) -> tuple[str, str]:
    """What ``dpseg check`` says of a safetensors file: :func:`safetensors_integrity`, and "damaged" also when a
    file with a valid (or no) hash holds non-finite weights."""
    status, detail = safetensors_integrity(path)
    if status == "damaged":
        return status, detail
    try:
        problem = safetensors_nonfinite(path)
    except Exception as e:  # noqa: BLE001 - the hash passed, yet the tensors do not parse: damaged all the same
        return "damaged", f"not a valid safetensors file ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"
    return ("damaged", problem) if problem else (status, detail)


def _short(names: list[str], n: int = 6) -> str:
    head = ", ".join(names[:n])
    return head + (f", ... ({len(names)} in all)" if len(names) > n else "")


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str) -> None:
    """Raise CheckpointError if ``state`` does not match ``module`` exactly (names and shapes)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_short(mismatched, 3)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the {what}: " + "; ".join(problems))


def load_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str, assign: bool = False
) -> None:
    """Check, then copy ``state`` into ``module`` (dtype cast to the module's). ``assign``: adopt the state's tensors
    instead of copying them (no second copy of a model just read from disk; same dtypes required)."""
    check_state_dict(module, state, what, source)
    if assign:
        current = module.state_dict()
        state = {k: v if v.dtype == current[k].dtype else v.to(current[k].dtype) for k, v in state.items()}
    module.load_state_dict(dict(state), strict=True, assign=assign)


def save_safetensors(state: Mapping[str, torch.Tensor], path: PathLike, metadata: Optional[dict] = None) -> Path:
    """Atomically write a state dict as safetensors with its content hash (shared storage is copied, tensors made
    contiguous)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items() if k != HASH_KEY}
    with atomic_target(path) as tmp:
        save_file(tensors, tmp, metadata={**meta, HASH_KEY: _PLACEHOLDER})
        _write_digest(tmp)
    return path


def _write_digest(path: str) -> None:
    """Replace the placeholder digest in the header by the file's digest (same length: nothing else moves)."""
    _, digest = _digests(str(Path(path).resolve()), _stamp(path))
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = f.read(n)
        slot = f'"{HASH_KEY}":"{_PLACEHOLDER}"'.encode()
        at = header.find(slot)
        assert at >= 0 and header.find(slot, at + 1) < 0, "the digest slot must appear once in the header"
        f.seek(8 + at + len(slot) - len(_PLACEHOLDER) - 1)
        f.write(digest.encode())


# module -> (its tensors' identity and version counters, fingerprint): a module's fingerprint is computed once while
# its weights stay the same tensors, unmodified (every in-place change bumps a tensor's version counter)
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensor_stamp(module: nn.Module) -> tuple:
    return tuple(
        (name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype))
        for name, t in module.state_dict(keep_vars=True).items()
    )


def remember_fingerprint(module: nn.Module, fingerprint: str) -> None:
    """Record a module's fingerprint known from a verified file (its ``state_fingerprint`` as saved with it), so
    that checking a prompt bank against it does not hash its weights again."""
    _FINGERPRINTS[module] = (_tensor_stamp(module), fingerprint)


def state_fingerprint(module_or_state: Union[nn.Module, Mapping[str, torch.Tensor]]) -> str:
    """A short content hash of a state dict: identifies exact weights (used to key prompt banks)."""
    if isinstance(module_or_state, nn.Module):
        known = _FINGERPRINTS.get(module_or_state)
        stamp = _tensor_stamp(module_or_state)
        if known is not None and known[0] == stamp:
            return known[1]
        fingerprint = _fingerprint(module_or_state.state_dict())
        _FINGERPRINTS[module_or_state] = (stamp, fingerprint)
        return fingerprint
    return _fingerprint(module_or_state)


def _fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
