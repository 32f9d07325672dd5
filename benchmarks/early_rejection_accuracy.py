"""What SED's category early rejection costs DPSeg in accuracy, measured in the synthetic world, paired by seed.

    python benchmarks/early_rejection_accuracy.py --seeds 5 --topk 8       # ~1 min per run on a free core

Trains the quickstart's ``dual`` variant (DPSeg) *with auxiliary heads* (``model.aux_heads=true``: the heads that
rank the classes; their BCE joins the training loss, as in SED) for each seed, exactly as ``dpseg quickstart``
makes its runs (datasets, tiny CLIP, prompt bank and runs come from / go to the quickstart's cache), then scores
every trained model twice with the real evaluator - early rejection off and on (``eval.early_rejection_topk``) -
on the seen and unseen vocabularies and on the unseen scenes with every class's name (``unseen-all``, the largest
vocabulary). Prints each split's mIoU per seed for both settings and the per-seed difference (on - off: mean,
sample std, how many seeds lose), pass 1 and pass 2; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choose_on_seen import quickstart_world  # noqa: E402

from dpseg.config import build_config
from dpseg.data.synthetic.folders import TEST_SPLIT
from dpseg.quickstart import experiment as ex
from dpseg.quickstart.run import BUDGETS, _run_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--topk", type=int, default=8, help="early rejection's k (SED-fast: 8)")
    ap.add_argument("--num-val", type=int, default=0, help="test scenes per vocabulary (0: the budget's)")
    ap.add_argument("--cache", default=".dpseg_cache/quickstart")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--budget", default="default", choices=sorted(BUDGETS))
    ap.add_argument("--json")
    args = ap.parse_args()
    budget = BUDGETS[args.budget]
    budget = dataclasses.replace(budget, num_val=args.num_val or budget.num_val)
    cache = Path(args.cache)
    ds, _, base, bank = quickstart_world(budget, cache, overrides=["model.aux_heads=true"])
    variant = ex.VARIANTS["dual"]
    splits = {"seen": ds.seen, "unseen": ds.unseen, "unseen-all": ds.unseen_all}
    settings = {"off": 0, "on": args.topk}
    results: dict = {name: [] for name in settings}
    for name, k in settings.items():  # the first setting trains every run, the second reuses them
        jobs = []
        for seed in range(args.seeds):
            cfg = ex.run_config(base, variant, seed, ds, bank, cache / "runs")
            cfg.eval = build_config(
                "synthetic", overrides=["model.aux_heads=true", f"eval.early_rejection_topk={k}"]
            ).eval
            jobs.append((cfg, variant.name, seed, splits, budget.num_val, TEST_SPLIT))  # the quickstart's test scenes
        for _, seed, model_dir, result, seconds, _ in _run_all(jobs, args.jobs):
            results[name].append(result)
            scores = ", ".join(f"{s} {p} {m['mIoU']:.1f}" for s, r in result.items() for p, m in r.items())
            print(f"early rejection {name} (k={k}) seed {seed}: {scores} ({model_dir}, {seconds:.0f} s)", flush=True)
    print(f"\nDPSeg (dual + auxiliary heads), {args.seeds} seeds, {budget.num_val} test scenes per vocabulary")
    print(f"| split | pass | off: per seed | on (k={args.topk}): per seed | on - off: mean ± std | seeds lower |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for split in splits:
        for p in results["off"][0][split]:
            off = [r[split][p]["mIoU"] for r in results["off"]]
            on = [r[split][p]["mIoU"] for r in results["on"]]
            diff = [b - a for a, b in zip(off, on)]
            spread = statistics.stdev(diff) if len(diff) > 1 else 0.0
            lower = sum(d < 0 for d in diff)
            summary[f"{split} {p}"] = {"off": off, "on": on, "diff": diff}
            print(
                f"| {split} | {p} | {' / '.join(f'{v:.1f}' for v in off)} | {' / '.join(f'{v:.1f}' for v in on)} | "
                f"{statistics.mean(diff):+.2f} ± {spread:.2f} | {lower} of {len(diff)} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"topk": args.topk, "results": summary}, indent=2))


if __name__ == "__main__":
    main()
