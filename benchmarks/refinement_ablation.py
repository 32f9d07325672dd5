"""Refinement (pass 2) taken apart: crop framing x which prompts a crop replaces x predicted or ground-truth masks, and
how well pass 1 detects the classes it refines.

    python benchmarks/refinement_ablation.py --models RUN/final [RUN/final ...] --data WORLD/seen --split val \\
        [--max-images 100] [--set eval.refine_min_area=0.01] [--json out.json]

For every model (one per seed) and every setting, pass 2 is computed on the same pass-1 features through the model's
own refinement code (:func:`dpseg.model.refine.refine_prompts`): with *predicted* masks the crops are cut around the
classes pass 1 detects (the real refinement); with *ground-truth* masks they are cut around the true objects of
every class present in the image (an upper bound on what better detection could give). Detection is reported as
classes detected per image, classes present per image, and the share of detected classes that are present.
Prints mIoU per setting as mean ± std over the models and the paired pass 2 - pass 1 difference; ``--json`` keeps the
per-model numbers. Uses the ``whole`` protocol at the model's own input size, the quickstart's synthetic scenes are
already that size, so ground-truth labels align with the model input.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from dpseg.atomic import atomic_write_json
from dpseg.checkpoint import load_model
from dpseg.config import parse_override, validate_eval
from dpseg.data.catalog import build_dataset
from dpseg.evaluation.inference import refine_policy
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion
from dpseg.evaluation.protocols import predict
from dpseg.model.refine import detected_classes, refine_prompts
from dpseg.prompts.resolve import vocabulary_prompts

FRAMINGS = ("context", "tight", "masked")
REPLACES = ("both", "global", "stages")
MASKS = ("predicted", "ground truth")


def oracle_logits(label: torch.Tensor, num_classes: int, hw: tuple[int, int]) -> torch.Tensor:
    """Logits whose voting pixels are the ground truth: +10 for a pixel's true class, -10 elsewhere (ignore: no vote)
    at the model's output size (1, K, h, w)."""
    small = F.interpolate(label[None, None].float(), size=hw, mode="nearest")[0, 0].long()  # (h, w)
    logits = torch.full((1, num_classes, *hw), -10.0)
    valid = small >= 0
    logits[0, small[valid], valid.nonzero()[:, 0], valid.nonzero()[:, 1]] = 10.0
    return logits


class _OneImage:
    """Pass 1 and the pass 2 of any setting for one image, all from the same pass-1 features."""

    def __init__(self, model, prompts, policy, label: torch.Tensor, num_classes: int):
        self.model, self.prompts, self.policy, self.label, self.K = model, prompts, policy, label, num_classes
        self.feats = self.first = None

    def pass1(self, x: torch.Tensor) -> dict:
        if self.feats is None:
            self.feats = self.model.encode_image(x)
            self.first = self.model.decode(self.feats, self.prompts)["logits"]
        return {"pass1": self.first}

    def pass2(self, setting: tuple[str, str, str]):
        framing, replace, masks = setting
        policy = dataclasses.replace(self.policy, framing=framing, replace=replace, crop_weight=1.0)

        def forward(x: torch.Tensor) -> dict:
            first = self.pass1(x)["pass1"]
            votes = first if masks == "predicted" else oracle_logits(self.label, self.K, tuple(first.shape[-2:]))
            refined, _ = refine_prompts(self.model, x, votes, self.prompts, policy)
            return {"pass1": self.model.decode(self.feats, refined)["logits"]}

        return forward


def load_for_scoring(model_dir: Path, data: str, split: str, sets: list[str], who: str = "the ablation"):
    """A trained model in eval mode with its config (``sets``: eval.* overrides), a dataset split and the prompts of
    its vocabulary: (model, cfg, dataset, prompts)."""
    model, cfg = load_model(model_dir, device="cpu")
    model.eval()
    for text in sets:  # e.g. the detection thresholds, eval.refine_min_area=0.01
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        if section != "eval" or not hasattr(cfg.eval, name):
            raise SystemExit(f"--set takes eval.* keys, not {key!r}")
        setattr(cfg.eval, name, type(getattr(cfg.eval, name))(value))
    validate_eval(cfg.eval)
    dataset = build_dataset(data, split=split)
    prompts = vocabulary_prompts(cfg, model, list(dataset.class_names), torch.device("cpu"), who)
    return model, cfg, dataset, prompts


@torch.no_grad()
def score_model(
    model_dir: Path, data: str, split: str, max_images: int, settings: list[tuple[str, str, str]], sets: list[str]
) -> dict:
    model, cfg, dataset, prompts = load_for_scoring(model_dir, data, split, sets)
    K = len(dataset.class_names)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    confs = {"pass1": ConfusionMatrix(K), **{" / ".join(s): ConfusionMatrix(K) for s in settings}}
    counts = {"detected": 0, "present": 0, "right": 0}
    policy = refine_policy(cfg.eval)
    for i in range(n):
        item = dataset[i]
        one = _OneImage(model, prompts, policy, item["label"], K)
        pred = predict(one.pass1, [item["image"]], cfg.eval, K)[0]["pass1"]
        confs["pass1"].update(pred.labels.long(), item["label"])
        for setting in settings:
            pred = predict(one.pass2(setting), [item["image"]], cfg.eval, K)[0]["pass1"]
            confs[" / ".join(setting)].update(pred.labels.long(), item["label"])
        detected = detected_classes(one.first, policy.min_area, policy.max_classes, policy.min_score)[0]
        present = torch.zeros(K, dtype=torch.bool)
        present[item["label"][item["label"] >= 0].unique()] = True
        counts["detected"] += int(detected.sum())
        counts["present"] += int(present.sum())
        counts["right"] += int((detected & present).sum())
    out = {key: metrics_from_confusion(c.mat)["mIoU"] for key, c in confs.items()}
    out["detection"] = {
        "detected_per_image": counts["detected"] / n,
        "present_per_image": counts["present"] / n,
        "detected_that_are_present": counts["right"] / max(1, counts["detected"]),
        "present_that_are_detected": counts["right"] / max(1, counts["present"]),
    }
    return out


def spread(values: list[float], signed: bool = False) -> str:
    """Mean ± sample std of per-model values (the value alone for one model); ``signed``: with its sign."""
    fmt = "+.1f" if signed else ".1f"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {statistics.stdev(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="model folders, one per seed")
    ap.add_argument("--data", required=True, help="a dataset folder (classes.txt, images/SPLIT, labels/SPLIT)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-images", type=int, default=0)
    ap.add_argument("--framing", nargs="+", default=list(FRAMINGS), choices=FRAMINGS)
    ap.add_argument("--replace", nargs="+", default=list(REPLACES), choices=REPLACES)
    ap.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    ap.add_argument("--set", action="append", default=[], help="an eval.* override for pass 1's detection (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = list(itertools.product(args.framing, args.replace, args.masks))
    per_model = {}
    for m in args.models:
        per_model[m] = score_model(Path(m), args.data, args.split, args.max_images, settings, args.set)
        print(f"{m}: pass 1 {per_model[m]['pass1']:.1f}, detection {per_model[m]['detection']}", flush=True)
    p1 = [r["pass1"] for r in per_model.values()]
    print(f"\n{args.data}:{args.split}, {len(per_model)} models; pass 1 mIoU {spread(p1)}")
    print("| framing | replaces | masks | pass 2 | pass 2 - pass 1 (paired) | higher for |")
    print("|---|---|---|---|---|---|")
    for setting in settings:
        key = " / ".join(setting)
        p2 = [r[key] for r in per_model.values()]
        diff = [b - a for a, b in zip(p1, p2)]
        higher = sum(d > 0 for d in diff)
        print(f"| {' | '.join(setting)} | {spread(p2)} | {spread(diff)} | {higher}/{len(diff)} |")
    det = [r["detection"] for r in per_model.values()]
    for k in det[0]:
        print(f"detection, {k}: {spread([d[k] for d in det])}")
    if args.json:
        atomic_write_json(
            Path(args.json), {"data": args.data, "split": args.split, "set": args.set, "models": per_model}, indent=2
        )


if __name__ == "__main__":
    main()
