"""Choose a checkpoint's default score threshold (eval.min_score) on a labelled dataset and write it into the
checkpoint folder.

  dpseg calibrate runs/dpseg/final --dataset pc59 --bank banks/pc59
  dpseg calibrate CKPT --dataset my_data:val --max-images 200
  dpseg calibrate CKPT --dataset coco_stuff_171_val --background-class yes     (every pixel gets a class: 0)

`dpseg segment`, the Python API and the demo leave pixels whose best class probability is below eval.min_score
unlabelled. Training chooses it on its validation set; this command chooses it again, e.g. for another domain or
a checkpoint trained before calibration existed. Rule (dpseg/evaluation/calibrate.py): if the vocabulary has a
background or "other" class (--background-class yes), every pixel gets a class and the threshold is 0; otherwise
the dataset's ignore pixels count as "should stay unlabelled" and the threshold in 0, 0.05, ..., 0.95 with the best
mIoU over the classes plus "unlabelled" wins. The default (auto) says yes when under 1% of the pixels are ignore.
The checkpoint's config.json is rewritten atomically (the weights and their content hash are not touched) and
calibration.json beside it holds the whole table.
"""

from __future__ import annotations

import argparse

from dpseg.errors import InputError

CHOICES = {"auto": None, "yes": True, "no": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors); it is updated")
    parser.add_argument(
        "--dataset",
        required=True,
        help="labelled data: a catalog name (pc59, a150, ...) or a custom folder PATH[:SPLIT] (default split: val)",
    )
    parser.add_argument(
        "--root", default="", help="datasets root for catalog names (default: $DETECTRON2_DATASETS or ./datasets)"
    )
    parser.add_argument("--bank", help="prompt bank (default: the checkpoint's prompts.bank)")
    parser.add_argument(
        "--background-class",
        choices=list(CHOICES),
        default="auto",
        help="does the vocabulary have "
        "a background / 'other' class? yes: threshold 0; no: ignore pixels should stay unlabelled; "
        "auto (default): yes when under 1%% of the pixels are ignore",
    )
    parser.add_argument("--max-images", type=int, default=0, help="use the first N images (0 = all)")
    parser.add_argument(
        "--two-pass",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="threshold the refined map (default: as `dpseg segment`, the checkpoint's eval.two_pass)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dpseg.evaluation.calibrate import calibrate_checkpoint

    if args.max_images < 0:
        raise InputError(f"--max-images must be >= 0 (0 = all images), got {args.max_images}")
    result = calibrate_checkpoint(
        args.checkpoint,
        args.dataset,
        root=args.root,
        bank=args.bank,
        background_class=CHOICES[args.background_class],
        device=args.device,
        max_images=args.max_images,
        two_pass=args.two_pass,
        progress=not args.no_progress,
    )
    if result.scores:
        print(result.table())
    print(result.summary())
    print(
        f"written to {args.checkpoint}/config.json (eval.min_score = {result.min_score:g}, eval.background_class = "
        f"{str(result.background_class).lower()}) and calibration.json"
    )
    return 0
