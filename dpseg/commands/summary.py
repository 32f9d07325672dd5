"""Print parameter counts (total / trainable) per component of the model a config builds.

Weights are not loaded (counts do not depend on them), so this works offline for dpseg-b and dpseg-l.
"""

from __future__ import annotations

import argparse

from dpseg.commands import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, config_positional=True)


def run(args: argparse.Namespace) -> int:
    from dpseg.build import build_model, component_counts, format_counts

    cfg = config_from_args(args)
    model = build_model(cfg, load_clip_weights=False)
    print(
        f"preset {cfg.preset}: {cfg.model.clip_model}, M = {model.num_templates} templates, "
        f"prompts {cfg.model.prompt_type}, guidance {cfg.model.guidance}"
    )
    print(format_counts(component_counts(model)))
    return 0
