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
from inference_option_accuracy import add_world_arguments, compare, world_arguments  # noqa: E402

from dpseg.atomic import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topk", type=int, default=8, help="early rejection's k (SED-fast: 8)")
    ap.add_argument(
        "--from",
        dest="first",
        type=int,
        default=0,
        help="the first rejecting stage (eval.early_rejection_from; SED: 0)",
    )
    ap.add_argument(
        "--rank", default="heads", choices=["heads", "cost"], help="what ranks stage 0 (eval.early_rejection_rank)"
    )
    add_world_arguments(ap)
    args = ap.parse_args()
    off = ["eval.early_rejection_topk=0"]
    on = [f"eval.early_rejection_topk={args.topk}", f"eval.early_rejection_from={args.first}"]
    on += [f"eval.early_rejection_rank={args.rank}"]
    summary = compare(off, on, train=["model.aux_heads=true"], **world_arguments(args))
    if args.json:
        atomic_write_json(
            Path(args.json), {"topk": args.topk, "from": args.first, "rank": args.rank, "results": summary}, indent=2
        )


if __name__ == "__main__":
    main()
