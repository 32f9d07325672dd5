"""Label a whole image collection: one vocabulary over thousands to millions of images, on one or many GPUs.

  dpseg label photos/ --classes "person, car, tree" --checkpoint CKPT --out labels_out/
  torchrun --nproc-per-node 8 -m dpseg label photos/ --classes-file classes.txt --checkpoint CKPT --out labels_out/
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dpseg label ...
  (several nodes: --out on a filesystem they all share)

Inputs: image files, folders (every image below them, sub-folders included), quoted globs ('**' recurses) and
--list FILE (one image path a line, relative to the file's folder). They are expanded once into OUT/manifest.jsonl,
sorted by path relative to their common folder; a rerun uses that manifest.

OUT gets labels/NAME.png (palette label map: pixel value k = class k; 255 = unlabelled; 16-bit above 255 classes)
and labels/NAME.json (size, classes present with pixels, share and mean probability) per image, NAME being the
image's path relative to the common folder without its suffix; annotations.json (COCO: one RLE mask per image and
class present, with its mean probability as score); summary.json / summary.csv (per class: images, pixels, pixel
share); failures.jsonl; with --overlays overlays/NAME.jpg, with --save-scores scores/NAME.png.

Resumable: run the same command again after an interruption (Ctrl-C, a kill, a lost node) and it labels only what
is missing, with the same result as an uninterrupted run. A folder labelled with another checkpoint, vocabulary,
prompts, inference setting or output option is refused with what changed (a new --out, or --overwrite).
Exit status: 0 all images labelled, 1 some images failed (listed in OUT/failures.jsonl; a rerun retries them),
2 nothing ran (bad class list, checkpoint, options, or a folder of another job). Under torchrun rank 0 carries the
status (the other ranks exit 0 when images failed), so the job's merge is never cut short.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("images", nargs="*", help="image files, folders (recursive) and globs (quote them)")
    parser.add_argument("--list", action="append", default=[], metavar="FILE", help="a file of image paths, one a line")
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help='class names, e.g. "cat, sofa, lamp" or "sofa, couch; cat" (as segment)')
    classes.add_argument("--classes-file", help="class list file (one per line, or JSON) or a vocabulary name")
    parser.add_argument("--out", required=True, help="output folder (created; shared by all nodes)")
    parser.add_argument(
        "--checkpoint", help="checkpoint folder or hub id (default: the model of the last `dpseg quickstart`, a toy)"
    )
    parser.add_argument("--bank", help="prompt bank folder (default: the checkpoint's prompts.bank if it exists)")
    parser.add_argument("--exemplars", help="folder of your own prompt images, EXEMPLARS/<class name>/*.jpg")
    parser.add_argument("--text-only", action="store_true", help="no visual prompts (DEGRADED for models trained with)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8; part of the key)")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding processes per GPU/process (default 2)")
    refine = parser.add_mutually_exclusive_group()
    refine.add_argument("--refine", dest="refine", action="store_true", default=None, help="two passes")
    refine.add_argument("--no-refine", dest="refine", action="store_false", help="one pass only (faster)")
    parser.add_argument("--protocol", choices=["whole", "slide"], help="override the checkpoint's eval.protocol")
    parser.add_argument("--tile", type=int, default=0, help="N x N tiles at native resolution (multiple of 32)")
    parser.add_argument("--min-score", type=float, help="unlabelled below this probability (default: the checkpoint's)")
    parser.add_argument("--overlays", action="store_true", help="also write overlays/NAME.jpg (costs time and disk)")
    parser.add_argument("--save-scores", action="store_true", help="also write scores/NAME.png (16-bit probability)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (0-1)")
    parser.add_argument("--max-pixels", type=int, default=0, help="refuse images larger than this (default: 179 MP)")
    parser.add_argument("--device", help="cpu, cuda (default: cuda if available; under torchrun GPU = local rank)")
    parser.add_argument("--overwrite", action="store_true", help="delete the labels of another job in --out first")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def check_options(args: argparse.Namespace) -> None:
    """Every option checked before the model loads (exit status 2)."""
    from dpseg.errors import InputError

    if not args.images and not args.list:
        raise InputError("no images given: name files, folders, globs or --list FILE")
    if args.text_only and (args.bank or args.exemplars):
        raise InputError("--text-only cannot be combined with --bank or --exemplars")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0 (0 = decode in the model's process), got {args.workers}")
    if args.min_score is not None and not 0 <= args.min_score < 1:
        raise InputError(f"--min-score must be in [0, 1), got {args.min_score}")
    if not 0 <= args.alpha <= 1:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.tile and (args.tile < 32 or args.tile % 32):
        raise InputError(f"--tile must be 0 (off) or a multiple of 32 (>= 32), e.g. 1024; got {args.tile}")
    if args.max_pixels < 0:
        raise InputError(f"--max-pixels must be positive (0 = the default 179 MP), got {args.max_pixels}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file; give a folder (it is created if missing)")


def retry_command(args: argparse.Namespace) -> list[str]:
    """The user's command, reduced to its inputs, classes and output folder (for the toy model's refusal)."""
    classes = ["--classes", args.classes] if args.classes is not None else ["--classes-file", args.classes_file]
    lists = [a for f in args.list for a in ("--list", f)]
    return ["dpseg", "label", *args.images, *lists, *classes, "--out", args.out]


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from dpseg import distributed
    from dpseg.errors import InputError
    from dpseg.evaluation.runtime import resolve_device
    from dpseg.labelling.run import LabelOptions, RankFailed, label_collection
    from dpseg.quickstart import default_artifacts
    from dpseg.quickstart.toy import TOY_NOTE, is_toy, toy_refusal
    from dpseg.segmenter import Segmenter
    from dpseg.vocab import parse_class_list, read_class_list

    check_options(args)
    names = parse_class_list(args.classes) if args.classes is not None else read_class_list(args.classes_file)
    _, world, local = distributed.launched()
    device = resolve_device(args.device, local if world > 1 else 0, what="--device", error=InputError)
    started = distributed.start(device)
    rank = distributed.rank_world()[0]
    say = (lambda text: print(text, file=sys.stderr)) if rank == 0 else (lambda text: None)
    try:
        checkpoint, bank = args.checkpoint, args.bank
        if checkpoint is None:
            checkpoint, quickstart_bank = default_artifacts()
            if bank is None and not args.text_only and not args.exemplars and quickstart_bank is not None:
                bank = str(quickstart_bank)
            say(f"no --checkpoint: using the quickstart model {checkpoint}")
        seg = Segmenter.from_pretrained(checkpoint, device=device)
        if is_toy(seg.cfg):  # as segment: names outside its world are refused, with the commands for photos
            refusal = toy_refusal(names, retry=retry_command(args))
            if refusal:
                raise InputError(refusal)
            say(f"note: {TOY_NOTE}")
        if args.protocol:
            seg.settings = dataclasses.replace(seg.settings, protocol=args.protocol)
        if args.max_pixels:
            seg.max_pixels = args.max_pixels
        seg.set_vocabulary(names, bank=bank, exemplars=args.exemplars, text_only=args.text_only)
        min_score = seg.min_score if args.min_score is None else args.min_score
        say(f"{len(names)} classes; prompts: {seg.prompt_source}; device {device}; unlabelled below {min_score:g}")
        options = LabelOptions(
            inputs=list(args.images),
            lists=list(args.list),
            out=Path(args.out).expanduser(),
            batch_size=args.batch_size,
            workers=args.workers,
            refine=args.refine,
            tile=args.tile,
            min_score=args.min_score,
            overlays=args.overlays,
            save_scores=args.save_scores,
            alpha=args.alpha,
            max_pixels=args.max_pixels,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
        try:
            report = label_collection(seg, options)
        except RankFailed:
            return 2  # rank 0 prints why
        s = report.stats
        say(
            f"labelled {report.labelled} of {report.images} images into {options.out} ({report.new} by this run"
            + (f"; {report.failed} failed, listed in {options.out / 'failures.jsonl'})" if report.failed else ")")
        )
        if report.new:
            say(
                f"{report.new / max(report.seconds, 1e-9):.3g} images/s over {report.world} process(es), batches of "
                f"{report.batch_size}; time summed over processes: decode {s['decode_s']:.1f} s (in loader workers), "
                f"waiting for images {s['wait_s']:.1f} s, model {s['model_s']:.1f} s, writing {s['write_s']:.1f} s"
            )
        say(f"COCO annotations: {options.out / 'annotations.json'}; per class: {options.out / 'summary.json'}")
        # Only rank 0 exits 1 for failed images: torchrun ends every other process as soon as one exits non-zero,
        # and the other ranks leave while rank 0 still merges the COCO file and the summary.
        return report.exit_code if rank == 0 else 0
    finally:
        if started:
            distributed.stop()
