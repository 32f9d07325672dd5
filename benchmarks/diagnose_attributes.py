"""Which attribute does a quickstart model get wrong? Per-attribute pixel accuracy of its predictions (method study).

    python benchmarks/diagnose_attributes.py RUN_DIR/final DATASET_FOLDER [--max-images 30]

RUN_DIR/final is a model the quickstart trained (`.dpseg_cache/quickstart/runs/<variant>-seed<s>-<key>/final`);
DATASET_FOLDER one of its synthetic dataset folders as `PATH[:SPLIT]` (`.../synthetic-<key>/seen` = its val split,
`.../seen:test`, `.../unseen:test`; world v3 has no unseen val split). The
model predicts the validation scenes through the evaluator's inference path (pass 1, and pass 2 where the model
has visual prompts); over the labelled pixels, the script counts how often the predicted class has the true colour,
pattern and shape, and all three (= pixel accuracy). It also prints the mIoU after merging classes that differ
only in one attribute ("blind to shape": the red dotted circle and the red dotted star count as one class), which
says how much of the mIoU that attribute costs. Chance: a uniformly random class of the vocabulary, same counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dpseg.data.catalog import build_dataset
from dpseg.data.synthetic.world import parse_class
from dpseg.evaluation.metrics import metrics_from_confusion
from dpseg.quickstart.experiment import Variant, predict_examples

ATTRIBUTES = ("colour", "pattern", "shape")


def merged(conf: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sum the confusion rows and columns of classes with the same group id."""
    ids = np.unique(groups, return_inverse=True)[1]
    n = ids.max() + 1
    out = np.zeros((n, n))
    np.add.at(out, (ids[:, None], ids[None, :]), conf)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--max-images", type=int, default=30)
    ap.add_argument("--single-pass", action="store_true", help="pass 1 only (text-only models always are)")
    args = ap.parse_args()
    dataset = build_dataset(str(args.dataset), split="val")
    n = min(args.max_images, len(dataset)) if args.max_images else len(dataset)
    names = list(dataset.class_names)
    attrs = np.asarray([parse_class(name).indices for name in names])  # (K, 3)
    k = len(names)
    model_cfg = json.loads((args.model_dir / "config.json").read_text())["model"]
    variant = Variant("run", model_cfg["prompt_type"], model_cfg["guidance"], "")
    two_pass = variant.two_pass and not args.single_pass  # a text-only model has no visual prompts to refine
    out = predict_examples(args.model_dir, args.dataset, list(range(n)), two_pass=two_pass)
    report: dict = {"model": str(args.model_dir), "dataset": str(args.dataset), "images": n, "classes": k}
    for key in ("pass1", "pass2"):
        if key not in out:
            continue
        conf = np.zeros((k, k))
        for label, pred in zip(out["labels"], out[key]):
            valid = (label >= 0) & (label < k) & (pred >= 0) & (pred < k)
            np.add.at(conf, (label[valid], pred[valid].astype(np.int64)), 1)
        total = conf.sum()
        same = {
            a: float(100 * (conf * (attrs[:, None, j] == attrs[None, :, j])).sum() / total)
            for j, a in enumerate(ATTRIBUTES)
        }
        gt_share = conf.sum(1) / total  # chance: the prediction is uniform over the K classes
        chance = {
            a: float(100 * (gt_share * (attrs[:, None, j] == attrs[None, :, j]).mean(1)).sum())
            for j, a in enumerate(ATTRIBUTES)
        }
        blind = {}
        for j, a in enumerate(ATTRIBUTES):
            others = [i for i in range(3) if i != j]
            groups = attrs[:, others[0]] * 100 + attrs[:, others[1]]
            blind[a] = metrics_from_confusion(merged(conf, groups))["mIoU"]
        metrics = metrics_from_confusion(conf)  # the evaluator's own: mIoU over the classes present in the labels
        report[key] = {
            "mIoU": metrics["mIoU"],
            "pixel_accuracy": metrics["pAcc"],
            "attribute_right_%": same,
            "attribute_right_chance_%": chance,
            "mIoU_blind_to_%": blind,
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
