"""dpseg train CONFIG [--set k=v ...] [--resume [RUN_OR_CHECKPOINT]] (torchrun for several GPUs).

The loop itself is :func:`dpseg.engine.train.train`; this module only parses the command line.
"""

from __future__ import annotations

import argparse

from dpseg.commands import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, config_positional=True)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="RUN_OR_CHECKPOINT",
        help="continue a run: bare = the newest checkpoint of train.output_dir (a new run if there is none); "
        "or a run directory / checkpoint directory (its saved config is used unless CONFIG or --preset is given)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def run(args: argparse.Namespace) -> int:
    from dpseg.config import build_config, load_config
    from dpseg.engine.resume import CONFIG, resume_target
    from dpseg.engine.train import train

    if args.resume not in (None, "auto") and not (args.config or args.preset):
        ckpt = resume_target(None, args.resume)  # the newest intact checkpoint; train() reports what it skipped
        assert ckpt is not None  # only resume=None gives None
        saved = load_config(ckpt / CONFIG)
        cfg = build_config(delta=saved.to_dict(), overrides=args.overrides)
        cfg.train.output_dir = str(ckpt.parent.parent)
        resume = args.resume
    else:
        cfg, resume = config_from_args(args), args.resume
    train(cfg, resume=resume, progress=not args.no_progress)
    return 0
