"""Reading, writing and strictly loading weight files.

Formats: ``.safetensors`` (preferred, what dpseg writes), and ``.pt``/``.pth``/``.bin`` PyTorch pickles read
with ``weights_only=True`` (never arbitrary code). Containers ``{"state_dict": ...}`` / ``{"model": ...}`` and
DistributedDataParallel ``module.`` prefixes are unwrapped. Loading is strict: anything missing, unexpected or
of the wrong shape is reported by name in a :class:`~dpseg.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from dpseg.atomic import atomic_target
from dpseg.errors import CheckpointError

PathLike = Union[str, os.PathLike]
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def read_state_dict(path: PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a flat name → tensor mapping from a weight file, with one-line errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; pass the weight file inside it")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{what} file {path} has suffix '{path.suffix}'; expected one of {', '.join(WEIGHT_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} file {path} is empty (0 bytes); re-download or re-save it")
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
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} file {path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


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


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, source: str) -> None:
    """Check, then copy ``state`` into ``module`` (dtype cast to the module's)."""
    check_state_dict(module, state, what, source)
    module.load_state_dict(dict(state), strict=True)


def save_safetensors(state: Mapping[str, torch.Tensor], path: PathLike, metadata: Optional[dict] = None) -> Path:
    """Atomically write a state dict as safetensors (shared storage is copied, tensors made contiguous)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_target(path) as tmp:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def state_fingerprint(module_or_state: Union[nn.Module, Mapping[str, torch.Tensor]]) -> str:
    """A short content hash of a state dict: identifies exact weights (used to key prompt banks)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (never when HF_HUB_OFFLINE is set): decides between a clear offline
    error and a download."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
