"""What an inference option costs (or buys) in accuracy, measured in the synthetic world, paired by seed.

    python benchmarks/inference_option_accuracy.py --on eval.refine_source=pooled --seeds 8      # DPSeg, 8 seeds
    python benchmarks/early_rejection_accuracy.py --seeds 5 --topk 8     # the same for early rejection (a wrapper)

Trains (or reuses) one quickstart variant (``--variant``, default ``dual``: DPSeg) for each seed exactly as
``dpseg quickstart`` makes its runs - datasets, tiny CLIP, prompt bank and runs come from / go to the quickstart's
cache, ``--train`` overrides go into the training config - then scores every trained model twice with the real
evaluator, the inference settings ``--off`` (default: the preset's) and ``--on``, on the seen and unseen
vocabularies' test scenes and on the unseen scenes with every class's name (``unseen-all``, the largest
vocabulary). Prints each split's mIoU per seed for both settings and the per-seed difference (on - off: mean,
sample std, how many seeds are lower), pass 1 and pass 2; ``--json`` writes them. Inference settings are not part
of a run's key, so the second setting reuses every trained run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choose_on_seen import quickstart_world  # noqa: E402

from dpseg.atomic import atomic_write_json
from dpseg.config import build_config
from dpseg.data.synthetic.folders import TEST_SPLIT
from dpseg.quickstart import experiment as ex
from dpseg.quickstart.run import BUDGETS, _run_all


def compare(
    off: Sequence[str],
    on: Sequence[str],
    *,
    train: Sequence[str] = (),
    variant: str = "dual",
    seeds: int = 5,
    num_val: int = 0,
    cache: Path = Path(".dpseg_cache/quickstart"),
    jobs: int = 2,
    budget_name: str = "default",
) -> dict:
    """{"SPLIT PASS": {"off": [mIoU per seed], "on": [...], "diff": [on - off]}} on the quickstart's test scenes;
    prints the runs as they finish and a Markdown table."""
    budget = BUDGETS[budget_name]
    budget = dataclasses.replace(budget, num_val=num_val or budget.num_val)
    ds, _, base, bank = quickstart_world(budget, cache, overrides=list(train))
    spec = ex.VARIANTS[variant]
    splits = {"seen": ds.seen, "unseen": ds.unseen, "unseen-all": ds.unseen_all}
    settings = {"off": list(off), "on": list(on)}
    results: dict = {name: [] for name in settings}
    for name, options in settings.items():  # the first setting trains every run, the second reuses them
        runs = []
        for seed in range(seeds):
            cfg = ex.run_config(base, spec, seed, ds, bank, cache / "runs")
            cfg.eval = build_config("synthetic", overrides=[*train, *options]).eval
            runs.append((cfg, spec.name, seed, splits, budget.num_val, TEST_SPLIT))  # the quickstart's test scenes
        for _, seed, model_dir, result, seconds, _ in _run_all(runs, jobs):
            results[name].append(result)
            scores = ", ".join(f"{s} {p} {m['mIoU']:.1f}" for s, r in result.items() for p, m in r.items())
            print(f"{name} ({' '.join(options) or 'defaults'}) seed {seed}: {scores} ({model_dir}, {seconds:.0f} s)")
    print(f"\n{variant}, {seeds} seeds, {budget.num_val} test scenes per vocabulary")
    print(f"off: {' '.join(off) or 'defaults'}; on: {' '.join(on) or 'defaults'}; training: {' '.join(train) or '-'}")
    print("| split | pass | off: per seed | on: per seed | on - off: mean ± std | seeds lower |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for split in splits:
        for p in results["off"][0][split]:
            a = [r[split][p]["mIoU"] for r in results["off"]]
            b = [r[split][p]["mIoU"] for r in results["on"]]
            diff = [y - x for x, y in zip(a, b)]
            spread = statistics.stdev(diff) if len(diff) > 1 else 0.0
            summary[f"{split} {p}"] = {"off": a, "on": b, "diff": diff}
            print(
                f"| {split} | {p} | {' / '.join(f'{v:.1f}' for v in a)} | {' / '.join(f'{v:.1f}' for v in b)} | "
                f"{statistics.mean(diff):+.2f} ± {spread:.2f} | {sum(d < 0 for d in diff)} of {len(diff)} |"
            )
    return summary


def add_world_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every comparison takes: seeds, scenes, cache, processes, budget, where the JSON goes."""
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--num-val", type=int, default=0, help="test scenes per vocabulary (0: the budget's)")
    ap.add_argument("--cache", default=".dpseg_cache/quickstart")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--budget", default="default", choices=sorted(BUDGETS))
    ap.add_argument("--json")


def world_arguments(args: argparse.Namespace) -> dict:
    """:func:`add_world_arguments`' values as :func:`compare`'s keyword arguments."""
    return {
        "seeds": args.seeds,
        "num_val": args.num_val,
        "cache": Path(args.cache),
        "jobs": args.jobs,
        "budget_name": args.budget,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--on", action="append", required=True, help="an inference option of the 'on' arm (repeatable)")
    ap.add_argument("--off", action="append", default=[], help="an inference option of the 'off' arm (repeatable)")
    ap.add_argument("--train", action="append", default=[], help="a training option of every run (repeatable)")
    ap.add_argument("--variant", default="dual", choices=sorted(ex.VARIANTS))
    add_world_arguments(ap)
    args = ap.parse_args()
    summary = compare(args.off, args.on, train=args.train, variant=args.variant, **world_arguments(args))
    if args.json:
        options = {"variant": args.variant, "off": args.off, "on": args.on, "train": args.train}
        atomic_write_json(Path(args.json), {**options, "results": summary}, indent=2)  # its folder made if needed


if __name__ == "__main__":
    main()
