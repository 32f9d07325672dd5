"""dpseg quickstart [--fast]: the whole method, end to end, on the built-in synthetic world (CPU, minutes).

The experiment itself is :func:`dpseg.quickstart.run.quickstart`; this module only parses the command line.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from dpseg.commands import add_config_arguments
from dpseg.errors import InputError
from dpseg.quickstart import default_artifacts, default_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fast", action="store_true", help="a two-minute smoke run (tiny sizes, one seed)")
    parser.add_argument("--out", default="runs/quickstart", help="where results.md/json and figure.png go")
    parser.add_argument(
        "--cache",
        help="datasets, CLIP, prompt bank and runs (default: $DPSEG_CACHE/quickstart if "
        "DPSEG_CACHE is set, else .dpseg_cache/quickstart)",
    )
    parser.add_argument("--seeds", type=int, help="training seeds per variant (default 2; --fast: 1)")
    parser.add_argument("--iterations", type=int, help="training steps per run (default: the budget's)")
    parser.add_argument(
        "--clip-steps",
        type=int,
        help="the tiny CLIP's pretraining steps (default 4000: the CLIP shipped with dpseg; any other value "
        "pretrains one here, about 0.36 s per step on 2 cores; --fast: 100) (docs/method-study.md, section 1f)",
    )
    parser.add_argument(
        "--retrain-clip",
        action="store_true",
        help="pretrain the tiny CLIP here (minutes) even where dpseg ships one pretrained with the same settings",
    )
    parser.add_argument(
        "--num-val",
        type=int,
        help="scenes per evaluation split: seen/val (calibration) and the seen, unseen and unseen-all test splits "
        "(default 30; --fast: 8)",
    )
    # The world's properties (dpseg/data/synthetic/README.md), each on by default with a switch: they are what lets
    # the world test the claim that visual prompts bridge a gap between text and image without deciding it.
    parser.add_argument(
        "--no-text-gap",
        action="store_true",
        help="the tiny CLIP's captions use the vocabulary's pattern words (solid/striped/dotted)",
    )
    parser.add_argument(
        "--no-style-gap",
        action="store_true",
        help="prompt images drawn in the scenes' style (prompts.generator=synthetic:style=scene)",
    )
    parser.add_argument(
        "--no-generator-failures",
        action="store_true",
        help="the generator draws every class faithfully (prompts.generator=synthetic:failures=off)",
    )
    parser.add_argument(
        "--clip-sees-generator-images",
        action="store_true",
        help="the tiny CLIP's pretraining pool also holds generator images, as in world v2 (pretrains it here)",
    )
    # The single-process stages (tiny CLIP pretraining) use every core; the DPSeg runs go one thread per process
    # instead (--jobs), which beats threads on these small tensors. On a busy machine --threads 1 avoids threads
    # spinning against each other (seen: 3.5 s vs 0.35 s per CLIP step).
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads of the main process (default 0 = torch's default)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="DPSeg runs trained in parallel, one thread each (default: min(2, CPU cores))",
    )
    add_config_arguments(
        parser, preset_help="synthetic (the default and the only preset the quickstart runs; --set changes it)"
    )


def run(args: argparse.Namespace) -> int:
    import torch  # here, as the experiment: `dpseg quickstart --help` is instant

    from dpseg.quickstart.run import BUDGETS, quickstart

    budget = BUDGETS["fast" if args.fast else "default"]  # changed below only through replace()
    if args.seeds is not None:
        if args.seeds < 1:
            raise InputError(f"--seeds must be >= 1, got {args.seeds}")
        budget = replace(budget, seeds=args.seeds)
    if args.iterations is not None:
        if args.iterations < 1:
            raise InputError(f"--iterations must be >= 1, got {args.iterations}")
        budget = replace(budget, iterations=args.iterations)
    if args.clip_steps is not None:
        if args.clip_steps < 1:
            raise InputError(f"--clip-steps must be >= 1, got {args.clip_steps}")
        budget = replace(budget, clip_steps=args.clip_steps)
    if args.num_val is not None:
        if args.num_val < 1:
            raise InputError(f"--num-val must be >= 1, got {args.num_val}")
        budget = replace(budget, num_val=args.num_val)
    if args.threads < 0 or args.jobs < 0:
        raise InputError("--threads and --jobs must be >= 0 (0 = automatic)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset not in (None, "synthetic"):
        raise InputError(
            f"quickstart runs the 'synthetic' preset; drop --preset {args.preset} (use --set to change it)"
        )
    workers = args.jobs if args.jobs else min(2, os.cpu_count() or 1)
    cache = Path(args.cache) if args.cache else default_cache()
    generator = [
        *(["style=scene"] if args.no_style_gap else []),
        *(["failures=off"] if args.no_generator_failures else []),
    ]
    overrides = [*args.overrides, *([f"prompts.generator=synthetic:{','.join(generator)}"] if generator else [])]
    results = quickstart(
        budget,
        cache,
        Path(args.out),
        getattr(args, "config", None),
        overrides,
        workers,
        text_gap=not args.no_text_gap,
        retrain_clip=args.retrain_clip,
        clip_generator_images=args.clip_sees_generator_images,
    )
    print(brief(results, Path(args.out)))
    print(next_commands(Path(args.out), cache))
    return 0


def brief(results: dict, out: Path) -> str:
    """What the console shows at the end: the mIoU table, the example check and where the whole report is (the
    verdicts, the tiny CLIP's checks and the times are in results.md)."""
    from dpseg.quickstart.experiment import VARIANTS
    from dpseg.quickstart.report import markdown_table

    titles = {k: v.title for k, v in VARIANTS.items()}
    table = markdown_table(results["summary"], titles, results["chance"], results["clip_dense"])
    check = results.get("example_check")
    return "\n".join(
        [
            "",
            "mIoU % on the test scenes (mean ± std over seeds; background not scored):",
            "",
            table,
            "",
            *([check["summary"], ""] if check else []),
            f"The whole report (verdicts on the method's claims, the tiny CLIP's checks, times): {out / 'results.md'};",
            f"data: {out / 'results.json'}; figure: {results['figure']}.",
            "",
        ]
    )


def next_commands(out: Path, cache: Path) -> str:
    """What to run next (the README's three commands), with this run's paths."""
    example = out / "example"
    model = evaluated = ""
    if cache.resolve() != default_cache().resolve():  # without --checkpoint, commands look in the default cache only
        checkpoint, bank = default_artifacts(cache)
        with_bank = f" --bank {bank}" if bank else ""
        model, evaluated = f" --checkpoint {checkpoint}{with_bank}", f" {checkpoint}{with_bank}"
    return "\n".join(
        [
            "Next (the quickstart's DPSeg model, a toy of the synthetic world):",
            f"  dpseg segment {example}/images/val --classes-file {example}/classes.txt --out runs/segment{model}",
            f"  dpseg demo{model}    # then open http://127.0.0.1:7860, press 'Use the example', then 'Segment'",
            f"  dpseg eval{evaluated} --datasets {example} --output runs/eval",
        ]
    )
