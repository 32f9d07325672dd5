"""Choose a default on the seen classes only (method study, sections 2 and 3): train one quickstart variant with
each training option and score every trained model with each inference option on the seen-class validation scenes.

    python benchmarks/choose_on_seen.py --variant dual --seeds 5 --num-val 100 \\
        --train model.visual_cost_norm=none --train model.visual_cost_norm=batch --train model.visual_cost_norm=class
    python benchmarks/choose_on_seen.py --variant dual --seeds 5 --num-val 100 \\
        --eval "eval.refine_min_score=0 eval.refine_min_area=0.001" --eval "eval.refine_min_score=0.3"

Datasets, the tiny CLIP, the prompt bank and the runs come from the quickstart's cache, made (or reused) exactly as
`dpseg quickstart --num-val N` makes them; a run trained here is reused by the quickstart when its config matches.
Each ``--train`` / ``--eval`` value is one option: space-separated ``key=value`` overrides (none: the preset's
defaults). The unseen classes are never touched. Prints each option's seen-class mIoU per seed (pass 1, and pass 2
for variants with visual prompts) and mean ± sample std over seeds; ``--json`` also writes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path
from typing import Sequence

from dpseg.atomic import atomic_write_json
from dpseg.config import build_config
from dpseg.data.synthetic.folders import CHOICE_SPLIT, build_datasets
from dpseg.data.synthetic.world import all_classes
from dpseg.prompts.generate import get_generator
from dpseg.quickstart import experiment as ex
from dpseg.quickstart.clip_pretrain import pretrained_clip
from dpseg.quickstart.run import BUDGETS, _run_all, clip_settings


def _overrides(option: str) -> list[str]:
    return option.split()


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}" if values else "-"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def quickstart_world(budget, cache: Path, log=print, overrides: Sequence[str] = ()) -> tuple:
    """(datasets, tiny CLIP weights, base config, prompt bank) of the default world, made or reused from ``cache``
    exactly as ``dpseg quickstart`` makes them with ``budget``'s sizes; ``overrides`` go into the base config."""
    sizes = {"num_train": budget.num_train, "num_val": budget.num_val, "num_test": budget.num_val}  # the quickstart's
    ds = build_datasets(cache, seed=0, size=128, log=log, **sizes)
    clip_cfg = build_config("synthetic")
    style = get_generator("synthetic", clip_cfg.prompts).style
    clip = pretrained_clip(clip_cfg, cache, clip_settings(budget, clip_cfg, True, style), log=log)
    base = build_config("synthetic", overrides=[f"model.clip_pretrained={clip}", *overrides])
    base.train.iterations = budget.iterations
    bank = ex.build_prompt_bank(base, cache, [k.name for k in all_classes()], log=log)
    return ds, clip, base, bank


def add_trained_runs_arguments(ap: argparse.ArgumentParser, seeds: int = 8) -> None:
    """--variant, --seeds, --num-val and --cache: which trained study runs :func:`trained_runs` reads."""
    ap.add_argument("--variant", default="dual", choices=sorted(ex.VARIANTS))
    ap.add_argument("--seeds", type=int, default=seeds)
    ap.add_argument("--num-val", type=int, default=100, help="the world's scenes per split (as the runs were made)")
    ap.add_argument("--cache", default=".dpseg_cache/quickstart")


def trained_runs(variant_name: str, seeds: int, num_val: int, cache: Path) -> tuple:
    """(datasets, base config, prompt bank, run configs of seeds 0..seeds-1) of ``variant_name`` in the default world
    with ``num_val`` scenes, every run already trained in ``cache`` (nothing is trained: a missing run is an error)."""
    budget = dataclasses.replace(BUDGETS["default"], num_val=num_val)
    ds, _, base, bank = quickstart_world(budget, cache)
    variant = ex.VARIANTS[variant_name]
    runs = [ex.run_config(base, variant, seed, ds, bank, cache / "runs") for seed in range(seeds)]
    missing = [cfg.train.seed for cfg in runs if not ex.is_trained(cfg)]
    if missing:
        raise SystemExit(f"seeds {missing} of {variant_name} are not trained in {cache}: run method_study.py first")
    return ds, base, bank, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="dual", choices=sorted(ex.VARIANTS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--seed-list", help="comma-separated seeds instead of 0..seeds-1 (e.g. 5 to schedule one run, or 0,1,2,4)"
    )
    ap.add_argument("--num-val", type=int, default=100, help="seen-class validation scenes")
    ap.add_argument("--train", action="append", default=None, help="one training option (repeatable)")
    ap.add_argument("--eval", action="append", default=None, help="one inference option (repeatable)")
    ap.add_argument("--cache", default=".dpseg_cache/quickstart")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--budget", default="default", choices=sorted(BUDGETS), help="the quickstart budget's sizes")
    ap.add_argument("--json")
    args = ap.parse_args()
    budget = dataclasses.replace(BUDGETS[args.budget], num_val=args.num_val)
    cache = Path(args.cache)
    log = print
    ds, clip, base, bank = quickstart_world(budget, cache, log)
    variant = ex.VARIANTS[args.variant]
    train_options, eval_options = args.train or [""], args.eval or [""]
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    jobs: list[list] = [[] for _ in eval_options]  # one batch per inference option: the first trains every run
    for t in train_options:
        # the budget's length first, so that a training option may change it (``train.iterations=400``)
        cfg_t = build_config(
            "synthetic",
            overrides=[f"train.iterations={budget.iterations}", f"model.clip_pretrained={clip}", *_overrides(t)],
        )
        for i, e in enumerate(eval_options):
            inference = build_config("synthetic", overrides=[*_overrides(t), *_overrides(e)]).eval
            for seed in seeds:
                cfg = ex.run_config(cfg_t, variant, seed, ds, bank, cache / "runs")
                cfg.eval = inference  # not part of the run's key: the later batches reuse the trained runs
                jobs[i].append(((t or "(preset)", e or "(preset)"), cfg, seed))
    results: dict = {}
    for batch in jobs:
        work = [(cfg, variant.name, seed, {"seen": ds.seen}, budget.num_val, CHOICE_SPLIT) for _, cfg, seed in batch]
        for ((t, e), _, _), (_, seed, _, result, seconds, reused) in zip(batch, _run_all(work, args.jobs)):
            passes = {p: m["mIoU"] for p, m in result["seen"].items()}
            results.setdefault((t, e), []).append(passes)
            log(
                f"{t} | {e} | seed {seed}: "
                + ", ".join(f"{p} {v:.1f}" for p, v in passes.items())
                + (" (trained run reused)" if reused else f" ({seconds:.0f}s)")
            )
    print(f"\nseen-class mIoU on {budget.num_val} seen/val scenes, {variant.title}, seeds {', '.join(map(str, seeds))}")
    print("| training option | inference option | per seed (pass 1) | pass 1 | pass 2 | pass 2 - pass 1 |")
    print("|---|---|---|---|---|---|")
    for (t, e), runs in results.items():
        p1 = [r["pass1"] for r in runs]
        p2 = [r["pass2"] for r in runs if "pass2" in r]
        diff = [b - a for a, b in zip(p1, p2)]
        print(f"| {t} | {e} | {' / '.join(f'{v:.1f}' for v in p1)} | {_spread(p1)} | {_spread(p2)} | {_spread(diff)} |")
    if args.json:
        atomic_write_json(Path(args.json), {f"{t} | {e}": runs for (t, e), runs in results.items()}, indent=2)


if __name__ == "__main__":
    main()
