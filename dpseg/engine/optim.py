"""AdamW with the peers' parameter groups, the cosine schedule, and mixed precision.

Groups (SED / CAT-Seg; docs/paper-choices.md, Training recipe): the image encoder at ``lr × train.encoder_lr_mult``,
everything else trainable at ``lr``; weight decay ``train.weight_decay`` except on parameters owned by normalisation or
embedding modules (detectron2 ``WEIGHT_DECAY_NORM = 0``, embeddings 0) and on biases. Frozen towers are not in
the optimizer. The schedule is detectron2's ``WarmupCosineLR``: ``0.5 (1 + cos(pi t / T))`` from the base lr to
0 over the whole run, multiplied during the optional warm-up by a linear ramp from 0.001 to 1. It is a pure
function of the step, so resuming needs no scheduler state beyond the step itself.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dpseg.config import TrainConfig
from dpseg.errors import ConfigError

NO_DECAY_MODULES: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
    nn.Embedding,
    nn.EmbeddingBag,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
WARMUP_FACTOR = 0.001  # detectron2's default start of the linear warm-up


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: owned by a norm/embedding module, biases, ``*embedding``."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NO_DECAY_MODULES) or param_name == "bias" or param_name.endswith("embedding"):
                names.add(full)
    return names


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups ``{params, lr_mult, weight_decay, name}``; every trainable parameter in exactly one group."""
    roles = model.parameter_groups()  # {"image_encoder": [...], "decoder": [...]}
    mults = {"image_encoder": cfg.encoder_lr_mult}
    names = {id(p): n for n, p in model.named_parameters()}
    skip = no_decay_names(model)
    groups: list[dict[str, Any]] = []
    for role, params in roles.items():
        for decay in (True, False):
            chosen = [p for p in params if (names[id(p)] not in skip) == decay]
            if chosen:
                groups.append(
                    {
                        "params": chosen,
                        "lr_mult": mults.get(role, 1.0),
                        "name": f"{role}/{'decay' if decay else 'no_decay'}",
                        "weight_decay": cfg.weight_decay if decay else 0.0,
                    }
                )
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    if len(grouped) != len(set(grouped)) or set(grouped) != set(trainable):
        raise RuntimeError("parameter_groups() does not cover every trainable parameter exactly once")
    return groups


def build_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    if cfg.lr <= 0 or cfg.weight_decay < 0 or cfg.encoder_lr_mult < 0 or cfg.grad_clip < 0:
        raise ConfigError(
            "config keys 'train.lr' (> 0), 'train.weight_decay', 'train.encoder_lr_mult', 'train.grad_clip' (>= 0) "
            "are out of range"
        )
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    # Same maths either way; fused kernels on a GPU, and on the CPU the multi-tensor (foreach) kernels, which torch
    # picks by default only for CUDA tensors (synthetic preset, 179 tensors, one thread: 9.1 vs 11.7 ms per step).
    cuda = device.type == "cuda"
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=cuda or None, foreach=None if cuda else True
    )


def cpu_fused_adamw() -> bool:
    """Whether this torch has AdamW's fused kernel for CPU tensors (torch >= 2.4)."""
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)


def lr_factor(step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the base lr for the update made at ``step`` (0-based) of ``total``."""
    factor = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if warmup > 0 and step < warmup:
        alpha = step / warmup
        factor *= WARMUP_FACTOR * (1 - alpha) + alpha
    return factor


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * g["lr_mult"]


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, needed (and enabled) only for fp16."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
