"""The method study (docs/method-study.md, section 5): DPSeg's three parts tested in the synthetic world, the main
design and its controls, each world run through the quickstart's own stages and cache.

    python benchmarks/method_study.py main                    # 9 variants x 8 seeds x 100 test scenes per vocabulary
    python benchmarks/method_study.py no-text-gap             # a control: 4 key variants x 3 seeds, one property off
    python benchmarks/method_study.py --list                  # the worlds

Each world writes ``docs/study/WORLD.json`` (small: per seed, split and pass the mIoU, fwIoU, mAcc and pAcc of every
variant, the references, the settings) and ``docs/study/WORLD.md`` (the quickstart's table and its verdicts);
``python benchmarks/study_report.py`` reads them all. A world is a quickstart run, so a rerun reuses every trained and
evaluated run in the cache (``--cache``, default the quickstart's) and an interrupted study resumes where it stopped.
No world moves the cache's demo pointer (``latest.json``: the model ``dpseg demo`` shows): a study's example scenes
live in a temporary folder, so a model it pointed the demo at would come without its example.
The defaults it runs with are the synthetic preset's as committed; nothing here is chosen on the test scenes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dpseg.atomic import atomic_write_json, atomic_write_text
from dpseg.quickstart import default_cache
from dpseg.quickstart.experiment import VARIANTS
from dpseg.quickstart.run import BUDGETS, quickstart

STUDY_DIR = Path(__file__).resolve().parents[1] / "docs" / "study"
ALL_VARIANTS = tuple(VARIANTS)  # prompts {text, visual, dual} x guidance {upsampled F_c, F_v, both}
KEY_VARIANTS = ("text", "visual", "dual", "dual-upsampled")  # text+F_c, visual+F_v, dual+F_v (DPSeg), dual+F_c

# world -> (what it tests, variants, seeds, quickstart keyword arguments, extra --set overrides)
WORLDS: dict[str, tuple[str, tuple[str, ...], int, dict, list[str]]] = {
    "main": ("world v3 as designed: every property on", ALL_VARIANTS, 8, {}, []),
    "no-text-gap": (
        "control (a): the CLIP's captions use the vocabulary's pattern words (no text deficit; the CLIP is pretrained "
        "for it)",
        KEY_VARIANTS,
        3,
        {"text_gap": False},
        [],
    ),
    "no-generator-failures": (
        "control (b): the generator draws every class faithfully",
        KEY_VARIANTS,
        3,
        {},
        ["prompts.generator=synthetic:failures=off"],
    ),
    "clip-sees-generator-images": (
        "control (c): the CLIP's pretraining pool also holds generator images, so generated prompts carry no style gap "
        "to it (the CLIP is pretrained for it)",
        KEY_VARIANTS,
        3,
        {"clip_generator_images": True},
        [],
    ),
    "no-style-gap": (
        "control (c'): the generator draws in the scenes' style",
        KEY_VARIANTS,
        3,
        {},
        ["prompts.generator=synthetic:style=scene"],
    ),
}
KEPT_METRICS = ("mIoU", "fwIoU", "mAcc", "pAcc")


def compact(results: dict, world: str, what: str) -> dict:
    """results.json of a quickstart run without per-class tables, figure paths and the Markdown."""
    runs = {
        variant: {
            seed: {
                split: {p: {k: m[k] for k in KEPT_METRICS} for p, m in passes.items()} for split, passes in r.items()
            }
            for seed, r in by_seed.items()
        }
        for variant, by_seed in results["runs"].items()
    }
    keep = ("budget", "settings", "summary", "chance", "clip_dense", "tiny_clip_zero_shot", "verdicts", "timings_s")
    return {"world": world, "what": what, "runs": runs, **{k: results[k] for k in keep if k in results}}


def write_world(path: Path, world: dict, markdown: str) -> None:
    """A world file (``path``, JSON) and its Markdown beside it (``.md``, headed by what the world tests)."""
    atomic_write_json(path, world, indent=1)
    atomic_write_text(path.with_suffix(".md"), f"<!-- {world['what']} -->\n" + markdown)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def per_class(results: dict, world: str) -> dict:
    """Every run's per-class IoU: {"runs": {variant: {seed: {split: {pass: {"per_class_IoU": {class: IoU}}}}}}}."""
    runs = {
        variant: {
            seed: {
                split: {p: {"per_class_IoU": m["per_class_IoU"]} for p, m in passes.items()}
                for split, passes in r.items()
            }
            for seed, r in by_seed.items()
        }
        for variant, by_seed in results["runs"].items()
    }
    return {"world": world, "runs": runs}


@contextlib.contextmanager
def demo_pointer_kept(cache: Path) -> Iterator[None]:
    """Leave ``cache/latest.json`` as it was (or absent), however the study inside ends."""
    pointer = cache / "latest.json"
    before = pointer.read_text() if pointer.is_file() else None
    try:
        yield
    finally:
        if before is not None:
            atomic_write_text(pointer, before)
        else:
            pointer.unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("world", nargs="?", choices=sorted(WORLDS))
    ap.add_argument("--list", action="store_true", help="print the worlds and what each tests")
    ap.add_argument("--seeds", type=int, help="override the world's seed count")
    ap.add_argument("--num-val", type=int, default=100, help="test (and validation) scenes per vocabulary")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=STUDY_DIR)
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=ALL_VARIANTS,
        help="run only these of the world's variants (a partial study: needs an --out other than docs/study)",
    )
    ap.add_argument(
        "--per-class",
        action="store_true",
        help="also write OUT/WORLD-per-class.json, each run's per-class IoU (benchmarks/unseen_by_failure.py reads it)",
    )
    args = ap.parse_args()
    if args.list or not args.world:
        for name, (what, variants, seeds, _, _) in WORLDS.items():
            print(f"{name}: {what} ({len(variants)} variants x {seeds} seeds)")
        return
    what, variants, seeds, kwargs, overrides = WORLDS[args.world]
    if args.variants:
        if args.out.resolve() == STUDY_DIR.resolve():
            raise SystemExit(
                f"--variants runs part of the study; give --out DIR so that {STUDY_DIR} keeps the whole one"
            )
        variants = tuple(v for v in variants if v in args.variants)
        if not variants:
            raise SystemExit(f"world {args.world} has none of the variants {', '.join(args.variants)}")
    budget = dataclasses.replace(BUDGETS["default"], variants=variants, seeds=args.seeds or seeds, num_val=args.num_val)
    cache = args.cache or default_cache()
    with demo_pointer_kept(cache), tempfile.TemporaryDirectory(prefix="dpseg-study-") as tmp:
        results = quickstart(budget, cache, Path(tmp), overrides=overrides, workers=args.jobs, **kwargs)
    args.out.mkdir(parents=True, exist_ok=True)
    write_world(args.out / f"{args.world}.json", compact(results, args.world, what), results["markdown"])
    if args.per_class:
        atomic_write_json(args.out / f"{args.world}-per-class.json", per_class(results, args.world), indent=1)
        print(f"wrote {args.out / args.world}-per-class.json")


if __name__ == "__main__":
    main()
