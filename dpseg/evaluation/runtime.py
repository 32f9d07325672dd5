"""Device and numeric precision: one resolver for training, ``dpseg eval``, ``dpseg segment`` and the demo, so a
checkpoint runs at the same precision on every surface.

* device ``auto`` = this process's CUDA GPU when there is one, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` are
  checked (asking for CUDA on a machine without it is an error, not a silent CPU run);
* precision ``auto`` = bf16 autocast on a CUDA GPU that supports it, else fp32; ``fp16`` (autocast + loss scaling
  when training) needs CUDA; an explicit ``bf16`` on a GPU without it is an error.
"""

from __future__ import annotations

import contextlib
from typing import Union

import torch

from dpseg.errors import ConfigError, DPSegError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(
    request: Union[str, torch.device, None] = "auto",
    local_rank: int = 0,
    what: str = "the device",
    error: type[DPSegError] = ConfigError,
) -> torch.device:
    """``request`` -> a usable torch.device (``what`` names the setting in errors, e.g. "config key 'train.device'";
    ``error`` is the class raised: ConfigError for config keys, InputError for flags and arguments)."""
    if request is None or request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(request)
    except (RuntimeError, TypeError):
        raise error(f"{what} must be auto, cpu, cuda or cuda:N, got {request!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise error(f"{what} asks for CUDA ({request}) but no CUDA GPU is available here; use cpu")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise error(f"{what} asks for {device} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise error(f"{what}={str(request)!r} is not supported; use auto, cpu or cuda")
    return device


def resolve_precision(requested: str, device: torch.device, what: str = "precision") -> str:
    """``auto`` -> bf16 on a GPU that supports it, else fp32; explicit choices are checked against the device."""
    if requested not in PRECISIONS:
        raise ConfigError(f"{what} must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if requested == "auto":
        return "bf16" if bf16_ok else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError(f"{what}=fp16 needs a CUDA GPU; use auto or fp32 on the CPU")
    if requested == "bf16" and device.type == "cuda" and not bf16_ok:
        raise ConfigError(f"this GPU has no bfloat16 support; set {what} to fp16 (with loss scaling) or fp32")
    return requested


def autocast(precision: str, device: torch.device):
    """The forward pass's autocast context (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
