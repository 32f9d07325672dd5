"""Where the unseen-class mIoU is lost: per-class IoU split by the generator's designed failures (world v3).

    python benchmarks/unseen_by_failure.py runs/quickstart/results.json [--split unseen] [--json OUT.json]

A diagnosis, not a claim. Reads a quickstart (or method-study) ``results.json`` written with per-class IoU and
splits the unseen classes by ``failure_profile()``'s ``hard`` flag - the classes whose prompt images the generator
misdraws most of the time (colour or shape, systematically per class), fixed by the world version before any run.
For every variant and seed: the mean IoU over the hard classes and over the others (classes present in the split's
labels), then per seed the differences between DPSeg (dual prompts, F_v) and each other variant on each group,
paired by seed (mean ± sample std, how many seeds DPSeg is higher), and each class's IoU averaged over the seeds.
Pass 1 unless ``--pass pass2``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dpseg.atomic import atomic_write_json
from dpseg.data.synthetic.generator import failure_profile

DPSEG = "dual"


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.1f}" if values else "-"
    return f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f}"


def group_means(per_class: dict, hard: set[str]) -> dict:
    """{'hard': mean IoU of the hard classes present, 'other': of the rest} (None IoU = class absent)."""
    present = {c: v for c, v in per_class.items() if v is not None}
    groups = {
        "hard": [v for c, v in present.items() if c in hard],
        "other": [v for c, v in present.items() if c not in hard],
    }
    return {g: statistics.mean(v) if v else None for g, v in groups.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results.json with per-class IoU (dpseg quickstart writes one)")
    ap.add_argument("--split", default="unseen", help="the vocabulary to split (unseen or unseen-all)")
    ap.add_argument("--pass", dest="pass_", default="pass1", choices=("pass1", "pass2"))
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args()
    runs = json.loads(Path(args.results).read_text())["runs"]
    profile = {k.name: f for k, f in failure_profile().items()}
    hard = {name for name, f in profile.items() if f.hard}
    out: dict = {"results": args.results, "split": args.split, "pass": args.pass_, "variants": {}, "paired": {}}
    per_class: dict[str, dict[str, list[float]]] = {}
    for variant, seeds in runs.items():
        rows = {}
        for seed, splits in seeds.items():
            metrics = splits.get(args.split, {}).get(args.pass_)
            if metrics is None or "per_class_IoU" not in metrics:
                continue
            rows[seed] = group_means(metrics["per_class_IoU"], hard)
            for c, v in metrics["per_class_IoU"].items():
                if v is not None:
                    per_class.setdefault(variant, {}).setdefault(c, []).append(v)
        if rows:
            out["variants"][variant] = rows
    if DPSEG not in out["variants"]:
        raise SystemExit(
            f"{args.results}: no {args.pass_} per-class IoU of the DPSeg variant ({DPSEG!r}) on {args.split}"
        )
    names = sorted({c for v in per_class.values() for c in v}, key=lambda c: (c not in hard, c))
    n_hard = sum(c in hard for c in names)
    print(
        f"{args.results}: {args.split}, {args.pass_}; {n_hard} hard classes of {len(names)} present: "
        + ", ".join(c for c in names if c in hard)
    )
    print("\n| variant | seeds | hard classes, mean IoU | other classes, mean IoU |\n|---|---|---|---|")
    for variant, rows in out["variants"].items():
        h = [r["hard"] for r in rows.values() if r["hard"] is not None]
        o = [r["other"] for r in rows.values() if r["other"] is not None]
        print(f"| {variant} | {len(rows)} | {spread(h).lstrip('+')} | {spread(o).lstrip('+')} |")
    print("\n| DPSeg − variant, paired by seed | hard classes | DPSeg higher | other classes | DPSeg higher |")
    print("|---|---|---|---|---|")
    mine = out["variants"][DPSEG]
    for variant, rows in out["variants"].items():
        if variant == DPSEG:
            continue
        seeds = sorted(set(rows) & set(mine))
        paired = {
            g: [mine[s][g] - rows[s][g] for s in seeds if mine[s][g] is not None and rows[s][g] is not None]
            for g in ("hard", "other")
        }
        out["paired"][variant] = {"seeds": seeds, **paired}
        wins = {g: sum(d > 0 for d in paired[g]) for g in paired}
        cells = [f"{spread(paired[g])} | {wins[g]}/{len(paired[g])}" for g in ("hard", "other")]
        print(f"| {variant} | {' | '.join(cells)} |")
    print("\n| class | hard | failure | " + " | ".join(per_class) + " |\n|---|---|---|" + "---|" * len(per_class))
    for c in names:
        f = profile[c]
        cells = [f"{statistics.mean(per_class[v][c]):.1f}" if c in per_class[v] else "-" for v in per_class]
        print(
            f"| {c} | {'hard' if c in hard else ''} | {f.mode} → {f.wrong} ({f.rate:.2f}) | " + " | ".join(cells) + " |"
        )
    out["per_class_mean"] = {v: {c: statistics.mean(x) for c, x in d.items()} for v, d in per_class.items()}
    out["hard_classes"] = sorted(hard & set(names))
    if args.json:
        atomic_write_json(Path(args.json), out)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
