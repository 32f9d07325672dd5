"""The ``dpseg`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; the
module is imported only when its command runs, so ``dpseg --help`` is instant, and a command module imports its
heavy machinery (torch, open_clip, gradio, numpy) inside the functions that use it, so that ``dpseg COMMAND --help``
is instant too (``tests/test_cli_help.py``). User errors
(:class:`~dpseg.errors.DPSegError`) print as one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Optional, Sequence

from dpseg import __version__
from dpseg.errors import DPSegError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "dpseg.commands.quickstart",
        "run the whole method end to end on the built-in synthetic world (CPU, minutes)",
    ),
    "prepare": (
        "dpseg.commands.prepare",
        "convert an official dataset archive to the evaluation layout, or verify one",
    ),
    "prompts": ("dpseg.commands.prompts", "build, extend and inspect prompt banks (text + visual prompts)"),
    "train": ("dpseg.commands.train", "train DPSeg (torchrun for several GPUs)"),
    "eval": ("dpseg.commands.evaluate", "evaluate a checkpoint on the zero-shot benchmarks (mIoU tables)"),
    "segment": ("dpseg.commands.segment", "segment your own images into free-text classes"),
    "label": ("dpseg.commands.label", "label a whole image collection (torchrun, resumable, COCO output)"),
    "demo": ("dpseg.commands.demo", "browser demo (gradio) on 127.0.0.1"),
    "calibrate": ("dpseg.commands.calibrate", "choose a checkpoint's default score threshold on a labelled dataset"),
    "check": ("dpseg.commands.check", "verify the content hashes of checkpoints, training runs and prompt banks"),
    "summary": ("dpseg.commands.summary", "print the model's parameter counts per component"),
    "convert": (
        "dpseg.commands.convert",
        "turn SED's released checkpoints into dpseg checkpoints (presets sed-b, sed-l)",
    ),
    "config": ("dpseg.commands.config", "print the resolved config of a preset, YAML file and --set overrides"),
}


PRESET_HELP = "base preset: dpseg-b (default), dpseg-l, sed-b, sed-l, dpseg-tiny, synthetic"


def add_config_arguments(
    parser: argparse.ArgumentParser, config_positional: bool = False, preset_help: str = PRESET_HELP
) -> None:
    """The shared config flags: a YAML delta file, a preset (``preset_help`` says what this command accepts), and
    --set overrides."""
    if config_positional:
        parser.add_argument("config", nargs="?", help="YAML file with deltas from the preset defaults")
    else:
        parser.add_argument("--config", help="YAML file with deltas from the preset defaults")
    parser.add_argument("--preset", help=preset_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=1e-4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace):
    from dpseg.config import build_config

    return build_config(preset=args.preset, file=getattr(args, "config", None), overrides=args.overrides)


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="dpseg",
        description="Open-vocabulary semantic segmentation with dual-prompt cost volumes (DPSeg, CVPR 2025).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{lines}\n\nRun 'dpseg COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dpseg {__version__}")
    parser.add_argument("command", nargs="?", help="one of the commands below")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        top.parse_args(argv)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"error: 'dpseg {name}' is not implemented yet in this version ({help_})", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog=f"dpseg {name}", description=(module.__doc__ or help_).strip().split("\n\n")[0]
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    previous = _terminate_like_ctrl_c()
    try:
        return int(module.run(args) or 0)
    except DPSegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("interrupted; finished work is kept and the command can be resumed", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``), raised where the command is, so that it unwinds as after
    Ctrl-C: worker processes stopped, temporary files removed. Python's default would end the process on the spot
    and leave a quickstart's training processes running."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _terminate_like_ctrl_c():
    """Install the SIGTERM handler; the previous handler, or None where signals cannot be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
