"""The prompts a dataset's vocabulary is trained / evaluated with, computed once and kept on the device.

With ``prompts.bank`` set, T, V and v_j come from the prompt bank (checked against the model's frozen encoders and
template set). Without a bank, a text-only model (``model.prompt_type=text`` and ``model.guidance`` other than
``visual``) gets T from its own text tower with the model's templates; any model that needs visual prompts is an
error that says how to build a bank.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dpseg.build import model_templates
from dpseg.config import Config
from dpseg.errors import BankError
from dpseg.model.prompts import PromptSet
from dpseg.prompts.templates import templates_id


def vocabulary_prompts(cfg: Config, model, class_names: Sequence[str], device: torch.device, what: str) -> PromptSet:
    """PromptSet for ``class_names`` (in label order) on ``device``; ``what`` names the vocabulary in errors."""
    templates = model_templates(cfg)
    if cfg.prompts.bank:
        from dpseg.prompts.bank import PromptBank

        bank = PromptBank.open(cfg.prompts.bank)
        if bank.manifest.get("templates_id") != templates_id(templates):
            raise BankError(
                f"prompt bank {cfg.prompts.bank} was built with another template set ({len(bank.templates)} templates) than "
                f"the model's prompts.templates={cfg.prompts.templates} / num_templates={cfg.prompts.num_templates} "
                f"({len(templates)} templates); build the bank with the training config"
            )
        try:
            return bank.prompt_set(list(class_names), model=model, device=device)
        except BankError as e:
            raise BankError(f"{what}: {e}") from None
    if model.needs_visual_prompts:
        raise BankError(
            f"model.prompt_type={cfg.model.prompt_type} with model.guidance={cfg.model.guidance} needs visual prompts, "
            f"but prompts.bank is empty; build a bank for {what} ('dpseg prompts build --vocab ... --out BANK') and "
            "--set prompts.bank=BANK, or train text-only (--set model.prompt_type=text --set model.guidance=upsampled)"
        )
    text = model.encode_text_prompts(list(class_names), templates).to(device)  # (K, M, d)
    return PromptSet(list(class_names), text)


def sample_step_classes(labels: torch.Tensor, num_classes: int, limit: int, seed: int) -> torch.Tensor | None:
    """Class indices (sorted) scored at one training step, or None for all of them (``train.classes_per_step``).

    Every class present in ``labels`` (B, H, W; -1 = ignore) is kept, so no labelled pixel loses its class; random
    absent classes, drawn with ``seed``, fill up to ``limit`` as negatives. ``limit`` 0 or >= ``num_classes``: None.
    """
    if limit <= 0 or limit >= num_classes or (labels.numel() and int(labels.max()) >= num_classes):
        return None  # all classes (out-of-range labels are left to the loss, which names them)
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[labels[labels >= 0].unique().cpu()] = True
    absent = (~present).nonzero().flatten()
    fill = max(0, limit - int(present.sum()))
    order = torch.randperm(len(absent), generator=torch.Generator().manual_seed(seed))[:fill]
    present[absent[order]] = True
    return present.nonzero().flatten()


def remap_labels(labels: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels in the index space of ``classes`` (a sorted subset of range(num_classes)); others become ignore (-1)."""
    lut = torch.full((num_classes + 1,), -1, dtype=labels.dtype, device=labels.device)  # slot num_classes: ignore
    lut[classes.to(labels.device)] = torch.arange(len(classes), dtype=labels.dtype, device=labels.device)
    return lut[torch.where(labels >= 0, labels, torch.full_like(labels, num_classes))]
