"""Convert another implementation's checkpoint into a dpseg checkpoint folder.

  dpseg convert sed model_final.pth checkpoints/sed-b          SED's released ConvNeXt-B or -L model (detected)
  dpseg segment photo.jpg --checkpoint checkpoints/sed-b --classes "person, sky, tree" --out out/

SED (github.com/xb534/SED) links its trained checkpoints from its README; the converted folder runs SED's exact
network (presets sed-b / sed-l) with text prompts only, and can start a DPSeg training run
(--set train.init_from=FOLDER). The architecture comes from the tensor shapes unless --preset / --config / --set
say otherwise. The file is read with torch.load(weights_only=True): no pickled code is run.
"""

from __future__ import annotations

import argparse
import sys

from dpseg.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("format", choices=["sed"], help="what the checkpoint is: sed (SED's model_final.pth)")
    parser.add_argument("checkpoint", help="the checkpoint file to convert")
    parser.add_argument("out", help="output folder (config.json + model.safetensors)")
    add_config_arguments(
        parser,
        preset_help="sed-b or sed-l (default: read from the checkpoint's tensor shapes; only needed for another SED)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite a checkpoint already in the output folder")


def run(args: argparse.Namespace) -> int:
    from dpseg.convert import convert_sed

    done = convert_sed(
        args.checkpoint,
        args.out,
        preset=args.preset,
        config_file=args.config,
        overrides=args.overrides,
        overwrite=args.force,
    )
    ignored = f"; not needed: {', '.join(k.rsplit('.', 1)[-1] for k in done.ignored)}" if done.ignored else ""
    print(
        f"converted {args.checkpoint} into {done.directory} (preset {done.preset}, {done.tensors} tensors, "
        f"{done.parameters / 1e6:.2f}M parameters{ignored}) in {done.seconds:.1f} s",
        file=sys.stderr,
    )
    print(
        f'segment a photo: dpseg segment photo.jpg --checkpoint {done.directory} --classes "person, sky, tree" '
        "--out out/",
        file=sys.stderr,
    )
    return 0
