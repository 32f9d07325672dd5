"""Print the resolved config (defaults + preset + YAML deltas + --set overrides) as complete YAML."""

from __future__ import annotations

import argparse

from dpseg.commands import add_config_arguments, config_from_args
from dpseg.config import dump_config, list_presets, save_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, config_positional=True)
    parser.add_argument("--out", help="also write the resolved config to this file (.yaml or .json)")
    parser.add_argument("--list-presets", action="store_true", help="list the preset names and exit")


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    cfg = config_from_args(args)
    print(dump_config(cfg), end="")
    if args.out:
        save_config(cfg, args.out)
    return 0
