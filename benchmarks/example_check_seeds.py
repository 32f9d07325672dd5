"""The quickstart's example check for every seed's model (issue #23: the demo's example scene and ``dpseg segment``
on the quickstart example labelled right, by pixel majority, for every seed, not one lucky model):

    python benchmarks/example_check_seeds.py --seeds 8 --json docs/study/example-check-8seeds.json

For each seed's trained run of ``--variant`` (reused from the quickstart's cache: run ``method_study.py main`` or
``dpseg quickstart --seeds 8`` first; a missing run is an error, nothing is trained here) it chooses the score
threshold on the seen-class validation scenes as the quickstart does for its demo model (``calibrate_run``), then
segments the 8 example scenes (the first 8 unseen-class test scenes) as ``dpseg segment`` and the demo do, and counts
the objects right / wrong / unlabelled. The same check at threshold 0 (every pixel labelled) says whether an
unlabelled object is unrecognised or only below the threshold. The demo's pointer is left with the quickstart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choose_on_seen import add_trained_runs_arguments, trained_runs  # noqa: E402

from dpseg.atomic import atomic_write_json  # noqa: E402
from dpseg.data.synthetic.folders import TEST_SPLIT  # noqa: E402
from dpseg.quickstart import experiment as ex  # noqa: E402
from dpseg.quickstart.example import check_example, write_example  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trained_runs_arguments(ap)
    ap.add_argument("--json")
    args = ap.parse_args()
    ds, base, bank, runs = trained_runs(args.variant, args.seeds, args.num_val, Path(args.cache))
    variant = ex.VARIANTS[args.variant]
    out: dict = {"variant": args.variant, "seeds": {}}
    with tempfile.TemporaryDirectory(prefix="dpseg-example-") as tmp:
        example = write_example(Path(tmp), ds.unseen, TEST_SPLIT)
        for cfg in runs:
            model_dir = Path(cfg.train.output_dir) / "final"
            threshold = ex.calibrate_run(model_dir, ds.seen, args.num_val, inference=base.eval)
            bank_used = bank if variant.uses_bank else None
            checks = {
                "calibrated": check_example(example, model_dir, bank_used, point_demo=False),
                "threshold 0": check_example(example, model_dir, bank_used, min_score=0.0, point_demo=False),
            }
            out["seeds"][cfg.train.seed] = {
                "threshold": threshold,
                **{k: {"counts": c["counts"], "demo": c["demo_example"]["objects"]} for k, c in checks.items()},
            }
    print(f"\n{variant.title}: the 8 example scenes (unseen classes), objects right / wrong / unlabelled")
    print("| seed | threshold | calibrated | demo scene right | threshold 0 | demo scene right |")
    print("|---|---|---|---|---|---|")
    for seed, r in out["seeds"].items():
        cells = []
        for k in ("calibrated", "threshold 0"):
            c, demo = r[k]["counts"], r[k]["demo"]
            right = sum(o["verdict"] == "right" for o in demo)
            cells += [f"{c['right']} / {c['wrong']} / {c['unlabelled']} of {c['objects']}", f"{right}/{len(demo)}"]
        print(f"| {seed} | {r['threshold']:g} | " + " | ".join(cells) + " |")
    if args.json:
        atomic_write_json(Path(args.json), out, indent=1)


if __name__ == "__main__":
    main()
