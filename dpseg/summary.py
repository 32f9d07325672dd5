"""Print parameter counts (total / trainable) per component of the model a config builds.

Weights are not loaded (counts do not depend on them), so this works offline for dpseg-b and dpseg-l.
"""

from __future__ import annotations

import argparse

from torch import nn

from dpseg.cli import add_config_arguments, config_from_args


def component_counts(model) -> list[tuple[str, int, int]]:
    """(component, total, trainable) rows for a DPSeg model, plus a total row."""
    parts: list[tuple[str, nn.Module]] = [
        ("image encoder (CLIP image tower, lr × encoder_lr_mult)", model.image_encoder),
        ("visual-prompt encoder (frozen copy)", model.prompt_encoder),
        ("text encoder (frozen CLIP text tower)", model.text_encoder),
        ("cost embedding", model.cost_embedding),
        ("visual cost embeddings", model.visual_cost),
        ("decoder (aggregation, upsampling, fusion, head)", model.decoder),
    ]
    if model.upsampled_cost is not None:
        parts.append(("upsampled-cost guidance (SED mode)", model.upsampled_cost))
    rows = [(name, sum(p.numel() for p in m.parameters()), sum(p.numel() for p in m.parameters() if p.requires_grad))
            for name, m in parts]
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(r[1] for r in rows), "a component is missing from the summary"
    rows.append(("total", total, sum(p.numel() for p in model.parameters() if p.requires_grad)))
    return rows


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n / 1e3:.2f}K" if n else "0"


def format_counts(rows: list[tuple[str, int, int]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'component':<{width}}  {'total':>10}  {'trainable':>10}"]
    lines += [f"{name:<{width}}  {_human(t):>10}  {_human(tr):>10}" for name, t, tr in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, config_positional=True)


def run(args: argparse.Namespace) -> int:
    from dpseg.build import build_model

    cfg = config_from_args(args)
    model = build_model(cfg, load_clip_weights=False)
    print(f"preset {cfg.preset}: {cfg.model.clip_model}, M = {model.num_templates} templates, "
          f"prompts {cfg.model.prompt_type}, guidance {cfg.model.guidance}")
    print(format_counts(component_counts(model)))
    return 0
