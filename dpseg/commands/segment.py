"""Segment your own images into free-text classes.

  dpseg segment photo.jpg shots/ "more/**/*.png" --classes "cat, sofa, lamp" --checkpoint CKPT --bank BANK --out out/
  dpseg segment scene.png --classes "red striped star; blue dotted circle" --out out/    (the quickstart's toy model)

Classes: with --classes, commas separate classes ("cat, sofa, lamp" = 3 classes) unless the string holds a ';',
then ';' separates classes and commas join synonyms of one class ("sofa, couch; cat; floor lamp" = 3 classes).
--classes-file: one class per line (commas join synonyms, '#' starts a comment line), a JSON list, or a shipped
vocabulary name (ade150, ade847, coco, pc59, pc459, voc20).

Without --checkpoint the model of the last `dpseg quickstart` is used (a toy of the synthetic world; it says so).
Pixels whose best class probability is below --min-score stay unlabelled (255); the default is the checkpoint's
eval.min_score, chosen on its validation split when it was trained (`dpseg calibrate` redoes it; 0 = label all).

Per image IMAGE, OUT gets IMAGE.png (label map: pixel value k = class k in the order given; with at most 255
classes a palette PNG that shows the overlay's colours in any viewer, 255 = unlabelled in black; 16-bit grayscale
otherwise), IMAGE_overlay.jpg (colours + legend, long side at most 4096 px) and IMAGE.json (size, prompt source,
threshold, unlabelled pixels, and per class: pixels, area share, mean probability); with --save-masks
IMAGE_masks/NN_class.png per class present (255 = the class, 0 elsewhere), with --save-scores IMAGE_scores.png
(16-bit grayscale: probability of the winning class = value / 65535). OUT/summary.json lists every input. A bad
image is reported on one line and skipped. Exit status: 0 all images done, 1 some images failed, 2 nothing could
run (bad class list, checkpoint, bank or options).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import glob
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from dpseg.atomic import atomic_write_json
from dpseg.config import check_number
from dpseg.config_schema import NumberRule
from dpseg.errors import DPSegError, InputError, printable
from dpseg.progress import progress as progress_bar
from dpseg.quickstart import default_artifacts
from dpseg.quickstart.toy import TOY_NOTE, is_toy, toy_refusal
from dpseg.vocab import parse_class_list, read_class_list

# torch, PIL, the model and the image writers are imported where they are used: `dpseg segment --help` stays instant
if TYPE_CHECKING:
    from PIL import Image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument(
        "images",
        nargs="+",
        help="image files, folders (their images, not sub-folders) and globs (quote them; '**' matches sub-folders)",
    )
    classes = parser.add_mutually_exclusive_group()  # required, checked with --out: one message names both
    classes.add_argument("--classes", help='class names, e.g. "cat, sofa, lamp" or "sofa, couch; cat" (see below)')
    classes.add_argument("--classes-file", help="class list file (one per line, or JSON) or a vocabulary name")
    parser.add_argument(
        "--checkpoint",
        help="checkpoint folder (config.json + model.safetensors) or hub id "
        "(default: the model of the last `dpseg quickstart`, a toy)",
    )
    parser.add_argument("--out", help="output folder (created; required)")
    parser.add_argument("--bank", help="prompt bank folder (default: the checkpoint's prompts.bank if it exists)")
    parser.add_argument(
        "--exemplars",
        help="folder of your own prompt images, EXEMPLARS/<class name>/*.jpg "
        "(with --bank, the bank covers the other classes)",
    )
    parser.add_argument(
        "--text-only",
        action="store_true",
        help="no visual prompts; DEGRADED for models trained with visual prompts (allowed only with this flag)",
    )
    refine = parser.add_mutually_exclusive_group()
    refine.add_argument(
        "--refine",
        dest="refine",
        action="store_true",
        default=None,
        help="two-pass prompt refinement (default: the checkpoint's eval.two_pass)",
    )
    refine.add_argument("--no-refine", dest="refine", action="store_false", help="one pass only (faster)")
    parser.add_argument(
        "--tile",
        type=int,
        default=0,
        help="segment large images in N x N tiles at native "
        "resolution (multiple of 32, e.g. 1024): more detail on small objects",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        help="leave pixels unlabelled (255, or 65535 in 16-bit maps) when "
        "their best class probability is below this (default: the checkpoint's eval.min_score; 0 = "
        "label every pixel)",
    )
    parser.add_argument("--save-masks", action="store_true", help="also write one binary PNG per class present")
    parser.add_argument(
        "--save-scores", action="store_true", help="also write the winning probability as a 16-bit PNG (value / 65535)"
    )
    parser.add_argument("--protocol", choices=["whole", "slide"], help="override the checkpoint's eval.protocol")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--max-pixels", type=int, default=0, help="refuse images larger than this (default: 179 MP)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (0-1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def expand_inputs(specs: list[str], out_dir: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders and globs -> (image paths in order without duplicates, [(input, error)])."""
    from dpseg.image_io import is_image_file

    files, errors, seen = [], [], set()
    out_dir = out_dir.resolve()
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if is_image_file(p))
            if not found:
                errors.append((spec, "folder holds no image files (.jpg, .png, .webp, .bmp, .tif, .gif)"))
        elif path.exists():
            found = [path]
        elif glob.has_magic(spec):
            found = sorted(
                p for p in map(Path, glob.glob(os.path.expanduser(spec), recursive=True)) if is_image_file(p)
            )
            if not found:
                errors.append((spec, "pattern matches no image files"))
        else:
            errors.append((spec, "no such file or folder"))
            found = []
        for p in found:
            real = p.resolve()
            if real in seen or out_dir in real.parents:  # never re-read our own outputs
                continue
            seen.add(real)
            files.append(p)
    return files, errors


def output_names(paths: list[Path]) -> list[str]:
    """File stems, made unique with -2, -3, ... when two inputs share a name."""
    names, used = [], set()
    for p in paths:
        name, i = p.stem or "image", 2
        while name in used:
            name, i = f"{p.stem}-{i}", i + 1
        used.add(name)
        names.append(name)
    return names


def mask_file_name(index: int, name: str, num_classes: int) -> str:
    """``07_sofa-couch.png``: the class index (zero-padded to the vocabulary's width) and a file-safe class name."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "class"
    return f"{index:0{len(str(num_classes - 1))}d}_{slug}.png"


def _mask(labels, index: int) -> Image.Image:
    from dpseg.image_io import mask_image

    return mask_image(labels == index)


def _write_outputs(result, image, path: Path, name: str, out: Path, args, extra: dict) -> dict:
    """Write one image's outputs; the label map and the overlay are drawn before any file is written, and a failure
    part-way removes this image's files again (no partial outputs)."""
    from dpseg.image_io import label_image, save_atomic, score_image
    from dpseg.visualize import class_palette, overlay

    K = len(result.class_names)
    rgb = image.permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    label_png = label_image(result.labels, K, class_palette(result.class_names))
    overlay_jpg = overlay(rgb, result.labels, result.class_names, result.pixels, args.alpha)
    writes: list[tuple[Path, Callable[[], Image.Image], dict]] = [
        (out / f"{name}.png", lambda: label_png, {}),
        (out / f"{name}_overlay.jpg", lambda: overlay_jpg, {"quality": 90}),
    ]
    files: dict = {}
    if args.save_masks:  # drawn one at a time while writing: a mask per class of a huge image is large
        files["masks"] = {}
        for c in result.present:
            rel = f"{name}_masks/{mask_file_name(c.index, c.name, K)}"
            writes.append((out / rel, functools.partial(_mask, result.labels, c.index), {}))
            files["masks"][c.name] = rel
    if args.save_scores:
        writes.append((out / f"{name}_scores.png", lambda: score_image(result.scores), {}))
        files.update(scores_png=f"{name}_scores.png", scores_scale=65535)
    info = {
        "image": str(path),
        "label_png": f"{name}.png",
        "label_bits": 8 if K <= 255 else 16,
        "label_format": "palette PNG" if K <= 255 else "16-bit grayscale PNG",
        "overlay": f"{name}_overlay.jpg",
        **files,
        **extra,
        **result.to_dict(),
    }
    written: list[Path] = []
    try:
        for target, draw, kwargs in writes:
            save_atomic(draw(), target, **kwargs)
            written.append(target)
        atomic_write_json(out / f"{name}.json", info)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        if args.save_masks and (out / f"{name}_masks").is_dir() and not any((out / f"{name}_masks").iterdir()):
            (out / f"{name}_masks").rmdir()
        raise
    return info


def check_out_dir(out: Path) -> None:
    """--out must be a folder that exists or can be created (checked before any model is loaded)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file; give a folder (it is created if missing)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is a file, so the folder cannot be created; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: no permission to write in {parent}; choose another --out")


def check_options(args: argparse.Namespace) -> None:
    """Every option checked before the model loads, so a typo costs nothing (exit status 2)."""
    missing = [
        what
        for what, given in (
            (
                'the classes to find (--classes "cat, sofa" or --classes-file FILE)',
                args.classes is not None or args.classes_file is not None,
            ),
            ("an output folder (--out DIR)", args.out is not None),
        )
        if not given
    ]
    if missing:
        raise InputError(f"give {' and '.join(missing)}")
    if args.text_only and (args.bank or args.exemplars):
        raise InputError("--text-only cannot be combined with --bank or --exemplars")
    if args.min_score is not None:  # the numeric rule of the config keys (dpseg.config.check_number)
        check_number("--min-score", args.min_score, NumberRule(ge=0, lt=1), InputError)
    check_number("--alpha", args.alpha, NumberRule(ge=0, le=1), InputError)
    if args.tile and (args.tile < 32 or args.tile % 32):
        raise InputError(f"--tile must be 0 (off) or a multiple of 32 (>= 32), e.g. 1024; got {args.tile}")
    if args.max_pixels < 0:
        raise InputError(f"--max-pixels must be positive (0 = the default 179 MP), got {args.max_pixels}")
    if args.device is not None:
        from dpseg.evaluation.runtime import resolve_device

        resolve_device(args.device, what="--device", error=InputError)  # the resolver eval and the demo use too
    check_out_dir(Path(args.out).expanduser())


def retry_command(args: argparse.Namespace) -> list[str]:
    """The user's command, reduced to its inputs, classes and output folder (for messages that suggest it again)."""
    classes = ["--classes", args.classes] if args.classes is not None else ["--classes-file", args.classes_file]
    return ["dpseg", "segment", *args.images, *classes, "--out", args.out]


@contextlib.contextmanager
def _quiet(logger: str):
    """Hold back a logger's warnings (the command prints the same information itself)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def run(args: argparse.Namespace) -> int:
    check_options(args)
    if args.classes is not None:
        names = parse_class_list(args.classes)
    else:
        names = read_class_list(args.classes_file)
    out = Path(args.out).expanduser()
    files, failures = expand_inputs(args.images, out)
    if not files:  # one line, naming each input and why it gave no image
        named = "; ".join(f"{printable(spec, 300)}: {err}" for spec, err in failures)
        raise InputError(named or f"no images to segment in {' '.join(printable(s, 300) for s in args.images)}")
    for spec, err in failures:
        print(f"error: {printable(spec, 300)}: {err}", file=sys.stderr)

    checkpoint, bank = args.checkpoint, args.bank
    if checkpoint is None:  # the quickstart's model, as the demo does
        checkpoint, quickstart_bank = default_artifacts()
        if bank is None and not args.text_only and not args.exemplars and quickstart_bank is not None:
            bank = str(quickstart_bank)
        print(f"no --checkpoint: using the quickstart model {checkpoint}", file=sys.stderr)
    from dpseg.segmenter import Segmenter

    seg = Segmenter.from_pretrained(checkpoint, device=args.device)
    if is_toy(seg.cfg):  # said once, before any work; names outside its world: one message with the real route
        refusal = toy_refusal(names, retry=retry_command(args))
        if refusal:
            raise InputError(refusal)
        print(f"note: {TOY_NOTE}", file=sys.stderr)
    if args.protocol:
        seg.settings = dataclasses.replace(seg.settings, protocol=args.protocol)
    if args.max_pixels:
        seg.max_pixels = args.max_pixels
    with _quiet("dpseg.segmenter"):  # the prompt source is printed below, once
        seg.set_vocabulary(names, bank=bank, exemplars=args.exemplars, text_only=args.text_only)
    min_score = seg.min_score if args.min_score is None else args.min_score
    why = "--min-score" if args.min_score is not None else "the checkpoint's eval.min_score"
    threshold = (
        f"every pixel gets its most probable class (threshold 0: {why})"
        if min_score == 0
        else f"pixels below probability {min_score:g} stay unlabelled ({why})"
    )
    print(f"{len(names)} classes; prompts: {seg.prompt_source}; device {seg.device}; {threshold}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"checkpoint": str(checkpoint), "tile": args.tile}
    done, start = [], time.perf_counter()
    bar = progress_bar(len(files), "segment", unit="img", enabled=not args.quiet)
    for path, name in zip(files, output_names(files)):
        try:
            image = seg.load(path)
            result = seg.segment(image, refine=args.refine, tile=args.tile, min_score=min_score)
            done.append(_write_outputs(result, image, path, name, out, args, extra))
        except DPSegError as e:
            failures.append((str(path), str(e)))
            bar.write(f"error: {printable(str(path), 300)}: {e}", file=sys.stderr)
        except (RuntimeError, MemoryError) as e:
            if not _is_oom(e):
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            failures.append((str(path), "out of memory"))
            bar.write(
                f"error: {printable(str(path), 300)}: out of memory; try --tile 1024 (or smaller) or --device cpu",
                file=sys.stderr,
            )
        bar.update(1)
    bar.close()

    summary = {
        "checkpoint": str(checkpoint),
        "classes": names,
        "prompts": seg.prompt_source,
        "min_score": min_score,
        "seconds": round(time.perf_counter() - start, 2),
        "images": done,
        "failed": [{"input": s, "error": e} for s, e in failures],
    }
    atomic_write_json(out / "summary.json", summary)
    print(
        f"segmented {len(done)} image(s) into {out}" + (f"; {len(failures)} input(s) failed" if failures else ""),
        file=sys.stderr,
    )
    return 1 if failures else 0
