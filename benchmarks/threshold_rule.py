"""Which pixels to leave unlabelled on classes the model never saw (issue #23, the example check): the calibrated
absolute threshold (``score >= t``) against a threshold relative to the image's most confident pixel
(``score >= r * max score of the image``), both chosen on the seen-class validation scenes.

    python benchmarks/threshold_rule.py --seeds 8 --json docs/study/threshold-rule.json
    python benchmarks/threshold_rule.py --from-json docs/study/threshold-rule.json     # the tables again, no model run

Why a relative rule: the model is less confident on classes it never trained on, so a threshold chosen on seen
classes leaves most unseen objects unlabelled (docs/method-study.md section 8, the example check). If that were a
shift of the whole vocabulary's confidence scale, a bar relative to each image's top score would not depend on it.
Its value r, like t, is chosen on seen/val by the calibration's criterion (mIoU over the K classes + "unlabelled",
ties to the lower value).

A diagnosis, not a choice: nothing here changes a default. The seen/val numbers say whether the two rules can be
told apart on the only split choices may use; the unseen/test numbers (mIoU K + unlabelled, objects right / wrong /
unlabelled by pixel majority over all scenes, the 8 example scenes and the demo's scene) say whether the failure on
unseen classes is a global scale shift (then the relative rule recovers the objects recognised at threshold 0) or
not.

For each seed's trained run of ``--variant`` (from the quickstart's cache; nothing is trained here) every scene is
segmented once as ``dpseg segment`` does (the checkpoint's refinement settings, two passes) with every pixel
labelled; the rules are applied to the saved label and score maps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choose_on_seen import add_trained_runs_arguments, trained_runs  # noqa: E402

from dpseg.atomic import atomic_write_json  # noqa: E402
from dpseg.data.synthetic.folders import CHOICE_SPLIT, TEST_SPLIT  # noqa: E402
from dpseg.evaluation.calibrate import THRESHOLDS  # noqa: E402
from dpseg.evaluation.metrics import metrics_from_confusion  # noqa: E402
from dpseg.quickstart import experiment as ex  # noqa: E402
from dpseg.quickstart.example import IGNORE_ON_DISK, VERDICTS, score_objects  # noqa: E402
from dpseg.safe_load import read_json  # noqa: E402
from dpseg.segmenter import Segmenter  # noqa: E402
from dpseg.vocab import read_class_list  # noqa: E402

RULES = ("absolute", "relative")
EXAMPLE_SCENES = 8  # the quickstart's example: the first 8 unseen/test scenes, the first of them the demo's


def segment_split(seg: Segmenter, folder: Path, split: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(labels, scores, ground truth) of every scene of ``folder``'s ``split``, every pixel labelled."""
    seg.set_vocabulary(read_class_list(folder / "classes.txt"))
    out = []
    for path in sorted((folder / "images" / split).glob("*.png")):
        result = seg.segment(path, min_score=0.0)
        label = np.asarray(Image.open(folder / "labels" / split / path.name))
        out.append((result.labels.astype(np.int64), result.scores, label))
    return out


def kept(scores: np.ndarray, rule: str, value: float) -> np.ndarray:
    """Pixels a rule labels: ``score >= value`` (absolute) or ``score >= value * the image's top score``."""
    bar = value if rule == "absolute" else value * float(scores.max())
    return scores >= bar


def miou_with_unlabelled(maps, K: int, rule: str, value: float) -> float:
    """mIoU (%) over the K classes + "unlabelled" (ground truth: ignore pixels), the calibration's criterion."""
    conf = torch.zeros(K + 1, K + 1, dtype=torch.int64)
    for labels, scores, gt in maps:
        p = np.where(kept(scores, rule, value), labels, K)
        g = np.where(gt == IGNORE_ON_DISK, K, gt.astype(np.int64))
        conf += torch.bincount(torch.from_numpy((g * (K + 1) + p).ravel()), minlength=(K + 1) ** 2).view(K + 1, K + 1)
    return float(metrics_from_confusion(conf)["mIoU"])


def objects(maps, names: list[str], rule: str, value: float) -> list[list[dict]]:
    """Per scene, every ground-truth object's verdict (:func:`score_objects`) under a rule."""
    return [score_objects(gt, np.where(kept(s, rule, value), lab, -1), names, -1) for lab, s, gt in maps]


def counts(scenes: list[list[dict]]) -> dict:
    return {v: sum(o["verdict"] == v for s in scenes for o in s) for v in VERDICTS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_trained_runs_arguments(ap)
    ap.add_argument("--json")
    ap.add_argument("--from-json", help="print the tables and paired differences of an earlier run's JSON")
    args = ap.parse_args()
    if args.from_json:
        _table(read_json(Path(args.from_json), "threshold-rule results", dict))
        return
    ds, base, bank, runs = trained_runs(args.variant, args.seeds, args.num_val, Path(args.cache))
    variant = ex.VARIANTS[args.variant]
    seen_names, unseen_names = (read_class_list(f / "classes.txt") for f in (ds.seen, ds.unseen))
    out: dict = {"variant": args.variant, "grid": list(THRESHOLDS), "seeds": {}}
    for cfg in runs:
        model_dir = Path(cfg.train.output_dir) / "final"
        ex.adopt_inference_settings(model_dir, base.eval)  # as the quickstart's demo model refines
        seg = Segmenter.from_pretrained(model_dir, device="cpu", bank=str(bank) if variant.uses_bank else None)
        val = segment_split(seg, ds.seen, CHOICE_SPLIT)
        test = segment_split(seg, ds.unseen, TEST_SPLIT)
        row: dict = {}
        for rule in RULES:
            table = {t: miou_with_unlabelled(val, len(seen_names), rule, t) for t in THRESHOLDS}
            best = max(table.values())
            value = min(t for t, m in table.items() if m >= best - 1e-9)  # ties to the lower value
            verdicts = objects(test, unseen_names, rule, value)
            row[rule] = {
                "value": value,
                "seen_val_miou": round(best, 3),
                "unseen_test_miou": round(miou_with_unlabelled(test, len(unseen_names), rule, value), 3),
                "objects": counts(verdicts),
                "example": counts(verdicts[:EXAMPLE_SCENES]),
                "demo_scene": verdicts[0],
            }
        zero = objects(test, unseen_names, "absolute", 0.0)
        row["threshold 0"] = {
            "unseen_test_miou": round(miou_with_unlabelled(test, len(unseen_names), "absolute", 0.0), 3),
            "objects": counts(zero),
            "example": counts(zero[:EXAMPLE_SCENES]),
            "demo_scene": zero[0],
        }
        out["seeds"][cfg.train.seed] = row
        print(f"seed {cfg.train.seed}: " + "; ".join(f"{k} {_line(v)}" for k, v in row.items()), flush=True)
    gap = [r["relative"]["seen_val_miou"] - r["absolute"]["seen_val_miou"] for r in out["seeds"].values()]
    out["seen_val_relative_minus_absolute"] = {"mean": statistics.mean(gap), "per_seed": gap}
    _table(out)
    if args.json:
        atomic_write_json(Path(args.json), out, indent=1)


def _line(r: dict) -> str:
    c, e = r["objects"], r["example"]
    value = f"{r['value']:g}, " if "value" in r else ""
    demo = sum(o["verdict"] == "right" for o in r["demo_scene"])
    return (
        f"{value}unseen {r['unseen_test_miou']:.1f}, objects {c['right']}/{c['wrong']}/{c['unlabelled']}, "
        f"example {e['right']}/{e['wrong']}/{e['unlabelled']}, demo {demo}/{len(r['demo_scene'])}"
    )


def _table(out: dict) -> None:
    rows = list(out["seeds"].values())
    for what, get in (
        ("seen/val mIoU (K + unlabelled)", lambda r: r["seen_val_miou"]),
        ("unseen/test mIoU (K + unlabelled)", lambda r: r["unseen_test_miou"]),
        ("unseen/test objects right", lambda r: r["objects"]["right"]),
        ("unseen/test objects unlabelled", lambda r: r["objects"]["unlabelled"]),
    ):
        d = [get(r["relative"]) - get(r["absolute"]) for r in rows]
        print(
            f"relative - absolute, {what}: {statistics.mean(d):+.2f} +- {statistics.stdev(d) if len(d) > 1 else 0:.2f}"
            f" (higher on {sum(x > 0 for x in d)} of {len(d)}; per seed {', '.join(f'{x:+.1f}' for x in d)})"
        )
    print(
        "\n| seed | rule | value (seen/val) | seen/val mIoU (K+1) | unseen/test mIoU (K+1) | objects R/W/U (100 "
        "scenes) | example R/W/U | demo scene right |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seed, row in out["seeds"].items():
        for rule, r in row.items():
            c, e = r["objects"], r["example"]
            demo = sum(o["verdict"] == "right" for o in r["demo_scene"])
            print(
                f"| {seed} | {rule} | {r.get('value', 0):g} | {r.get('seen_val_miou', float('nan')):.1f} | "
                f"{r['unseen_test_miou']:.1f} | {c['right']} / {c['wrong']} / {c['unlabelled']} | "
                f"{e['right']} / {e['wrong']} / {e['unlabelled']} | {demo} of {len(r['demo_scene'])} |"
            )


if __name__ == "__main__":
    main()
