"""Convert an official dataset archive to the evaluation layout, or verify a prepared one.

  dpseg prepare a150 --src ~/downloads/ADEChallengeData2016 --root datasets
  dpseg prepare pc459 --verify --root datasets
  dpseg prepare --list

Datasets: coco_stuff, a150, a847, pc59, pc459, voc (writes PAS-20 and PAS-20b). --src is the unpacked
official folder (default: where the peers expect it inside --root, i.e. converting in place). Finished files are
kept, so an interrupted run resumes; --force rewrites everything.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dpseg.errors import InputError

# dataset -> (module, function, raw folder inside the root, catalog entries it produces)
CONVERTERS = {
    "coco_stuff": ("coco_stuff", "prepare_coco_stuff", "coco-stuff", ("coco_stuff_171_train", "coco_stuff_171_val")),
    "a150": ("ade20k", "prepare_a150", "ADEChallengeData2016", ("a150",)),
    "a847": ("ade20k", "prepare_a847", "ADE20K_2021_17_01", ("a847",)),
    "pc59": ("pascal", "prepare_pc59", "VOCdevkit/VOC2010", ("pc59",)),
    "pc459": ("pascal", "prepare_pc459", "VOCdevkit/VOC2010", ("pc459",)),
    "voc": ("pascal", "prepare_voc", "VOCdevkit/VOC2012", ("voc20", "voc20b")),
}
ALIASES = {
    "coco": "coco_stuff",
    "coco171": "coco_stuff",
    "coco_stuff_171": "coco_stuff",
    "ade150": "a150",
    "ade20k_150": "a150",
    "ade847": "a847",
    "ade20k_847": "a847",
    "ade20k_full": "a847",
    "pascal_context_59": "pc59",
    "pascal_context_459": "pc459",
    "voc20": "voc",
    "voc20b": "voc",
    "pas20": "voc",
    "pas20b": "voc",
    "voc2012": "voc",
}


def resolve(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in CONVERTERS:
        raise InputError(f"unknown dataset '{name}' (choose from: {', '.join(CONVERTERS)})")
    return key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("dataset", nargs="?", help=f"one of: {', '.join(CONVERTERS)}")
    parser.add_argument("--src", help="the unpacked official download (default: ROOT/<its usual folder>)")
    parser.add_argument("--root", default="", help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--verify", action="store_true", help="check a prepared dataset instead of converting")
    parser.add_argument("--list", action="store_true", help="show every catalog dataset and whether it is ready")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _list(root: Path) -> int:
    from dpseg.data.catalog import list_datasets  # here, as below: `dpseg prepare --help` is instant

    print(f"datasets root: {root}")
    for row in list_datasets(root):
        print(f"  {row['name']:<22} {row['classes']:>4} classes  {row['status']:<14} {row['title']}")
    return 0


def _verify(key: str, root: Path, workers: int, progress: bool) -> int:
    from dpseg.data.catalog import get_entry
    from dpseg.data.prepare.verify import verify_entry

    failed = 0
    for name in CONVERTERS[key][3]:
        entry = get_entry(name)
        assert entry is not None  # CONVERTERS names catalog entries
        problems, info = verify_entry(entry, root, workers, progress)
        status = "FAIL" if problems else "OK"
        print(f"{status} {entry.name} ({entry.title}), labels in {root / entry.label_dir}")
        for line in info:
            print(f"   {line}")
        for p in problems:
            print(f"   problem: {p}")
        failed += bool(problems)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    from dpseg.data.catalog import default_root

    root = default_root(args.root)
    if args.list:
        return _list(root)
    if not args.dataset:
        raise InputError(
            "name a dataset to prepare or verify (coco_stuff, a150, a847, pc59, pc459, voc), or pass --list"
        )
    if args.workers < 1:
        raise InputError("--workers must be >= 1")
    key = resolve(args.dataset)
    progress = not args.no_progress
    if args.verify:
        return _verify(key, root, args.workers, progress)
    module, func, folder, _ = CONVERTERS[key]
    src = Path(args.src).expanduser() if args.src else root / folder
    if not src.is_dir():
        raise InputError(
            f"--src {src} is not a folder; point it at the unpacked official {folder.split('/')[-1]} download"
        )
    import importlib

    convert = getattr(importlib.import_module(f"dpseg.data.prepare.{module}"), func)
    convert(src, root, workers=args.workers, force=args.force, progress=progress)
    print(f"done; check it with: dpseg prepare {key} --verify --root {root}")
    return 0
