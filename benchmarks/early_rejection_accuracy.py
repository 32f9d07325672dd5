"""What SED's category early rejection costs DPSeg in accuracy, measured in the synthetic world, paired by seed.

    python benchmarks/early_rejection_accuracy.py --seeds 5 --topk 8       # ~1 min per run on a free core

Trains the quickstart's ``dual`` variant (DPSeg) *with auxiliary heads* (``model.aux_heads=true``: the heads that
rank the classes; their BCE joins the training loss, as in SED) for each seed, exactly as ``dpseg quickstart``
makes its runs, then scores every trained model twice with the real evaluator - early rejection off and on
(``eval.early_rejection_topk``) - on the seen and unseen vocabularies and on the unseen scenes with every class's
name (``unseen-all``). ``benchmarks/inference_option_accuracy.py`` does the work (the same for any inference
option); this prints its table and ``--json`` writes the per-seed mIoU and differences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_option_accuracy import compare  # noqa: E402

from dpseg.atomic import atomic_write_json
from dpseg.quickstart.run import BUDGETS


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
    summary = compare(
        ["eval.early_rejection_topk=0"],
        [f"eval.early_rejection_topk={args.topk}"],
        train=["model.aux_heads=true"],
        seeds=args.seeds,
        num_val=args.num_val,
        cache=Path(args.cache),
        jobs=args.jobs,
        budget_name=args.budget,
    )
    if args.json:
        atomic_write_json(Path(args.json), {"topk": args.topk, "results": summary}, indent=2)


if __name__ == "__main__":
    main()
