"""Why SED's category early rejection costs DPSeg accuracy: rejected present classes, or the decoder's changed class
context?

    python benchmarks/early_rejection_diagnosis.py --models RUN/final [RUN/final ...] --data WORLD/unseen \\
        --split test [--topk 8] [--max-images 100] [--json out.json]

The models must have auxiliary heads (``model.aux_heads=true``; ``benchmarks/early_rejection_accuracy.py`` trains
them). For every image, pass 1 is decoded from the same image features:

* ``off``: every class decoded at every stage (the default);
* ``on``: early rejection (``eval.early_rejection_topk`` = k): after each auxiliary head only the classes among the
  k best at some pixel stay in the decoder; class attention then runs over the survivors only;
* ``masked``: ``off``'s logits with the classes that ``on`` rejected set to the rejected logit - the same classes
  removed, but every survivor decoded with all classes beside it;
* ``head s``: ``off``'s logits with the classes that stage s's auxiliary head alone (its top k on ``off``'s run)
  would reject set to the rejected logit - which head's ranking loses present classes.

``masked`` - ``off`` is what rejecting those classes costs by itself (present classes lost); ``on`` - ``masked`` is
what decoding the survivors without the rejected classes beside them costs (the class attention sees another set
of classes than in training). Also reported per rule: classes kept per image, the share of the present classes
kept, the share of labelled pixels whose class was rejected; and per head, at every labelled pixel, how many
classes score above the true class (median) and how often none does. Scored with the model's own evaluation
protocol (the quickstart's: the whole image, batch of one, as SED-fast), pass 1 only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from refinement_ablation import load_for_scoring, spread  # noqa: E402

from dpseg.atomic import atomic_write_json
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion
from dpseg.evaluation.protocols import predict
from dpseg.model.early_rejection import REJECTED_LOGIT, kept_classes

WAY_NAMES = {
    "on": "early rejection (SED-fast's cascade)",
    "masked": "off, masked by the cascade's kept classes",
    "head 0": "off, masked by head 0's top k (the cascade's first rule)",
    "head 1": "off, masked by head 1's top k",
    "head 2": "off, masked by head 2's top k",
}


def decodings(model, prompts, topk: int, log: dict):
    """A protocol forward that decodes pass 1 without and with early rejection, and ``off`` masked by the classes each
    auxiliary head alone would keep; ``log`` gets each call's kept classes, (B, K) bool, per rule, and the auxiliary
    logits."""

    def forward(x: torch.Tensor) -> dict:
        feats = model.encode_image(x)
        off_out = model.decode(feats, prompts)
        off = off_out["logits"]  # (B, K, h, w)
        on = model.decode(feats, prompts, early_rejection_topk=topk)["logits"]  # rejected classes: REJECTED_LOGIT
        out = {"off": off, "on": on}
        log["on"] = (on > REJECTED_LOGIT / 2).flatten(2).any(-1)  # (B, K)
        log["aux"] = off_out["aux"]
        for s, scores in enumerate(off_out["aux"]):  # (B, K, h_s, w_s) per stage
            kept = torch.stack([kept_classes(scores[b : b + 1], topk) for b in range(len(scores))])  # (B, K)
            log[f"head {s}"] = kept
            out[f"head {s}"] = off.masked_fill(~kept[:, :, None, None], REJECTED_LOGIT)  # (B, K, h, w)
        out["masked"] = off.masked_fill(~log["on"][:, :, None, None], REJECTED_LOGIT)
        return out

    return forward


def true_class_rank(scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(1, K, h, w) logits, (H, W) label -> for every labelled pixel, how many classes score above its true class
    (nearest resize to the label)."""
    up = F.interpolate(scores.float(), size=label.shape[-2:], mode="nearest")[0]  # (K, H, W)
    valid = label >= 0
    true = up[:, valid].gather(0, label[valid][None].long())  # (1, N)
    return (up[:, valid] > true).sum(0)  # (N,)


@torch.no_grad()
def score_model(model_dir: Path, data: str, split: str, max_images: int, topk: int) -> dict:
    model, cfg, dataset, prompts = load_for_scoring(model_dir, data, split, [], "the diagnosis")
    if model.decoder.aux_heads is None:
        raise SystemExit(f"{model_dir} has no auxiliary heads: early rejection needs a model trained with them")
    if cfg.eval.protocol != "whole":
        raise SystemExit(f"{model_dir} evaluates with protocol {cfg.eval.protocol!r}; this diagnosis assumes 'whole'")
    K = len(dataset.class_names)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    rules = ["on"] + [f"head {s}" for s in range(len(model.decoder.aux_heads))]
    confs: dict = {}
    counts = {r: {"kept": 0, "present_kept": 0, "pixels_rejected": 0} for r in rules}
    ranks: dict = {r: [] for r in rules[1:]}
    present_n = pixels = 0
    for i in range(n):
        item = dataset[i]
        label = item["label"]
        log: dict = {}
        pred = predict(decodings(model, prompts, topk, log), [item["image"]], cfg.eval, K)[0]
        for way, p in pred.items():
            confs.setdefault(way, ConfusionMatrix(K)).update(p.labels.long(), label)
        valid = label >= 0
        present = torch.zeros(K, dtype=torch.bool)
        present[label[valid].unique()] = True
        present_n += int(present.sum())
        pixels += int(valid.sum())
        for r in rules:
            kept = log[r][0]  # (K,): one image
            counts[r]["kept"] += int(kept.sum())
            counts[r]["present_kept"] += int((kept & present).sum())
            counts[r]["pixels_rejected"] += int((~kept[label[valid]]).sum())
        for s, scores in enumerate(log["aux"]):
            ranks[f"head {s}"].append(true_class_rank(scores, label))
    out: dict = {"classes": K, "mIoU": {w: metrics_from_confusion(c.mat)["mIoU"] for w, c in confs.items()}}
    out["present_per_image"] = present_n / n
    for r in rules:
        out[r] = {
            "kept_per_image": counts[r]["kept"] / n,
            "present_kept": counts[r]["present_kept"] / max(1, present_n),
            "labelled_pixels_rejected": counts[r]["pixels_rejected"] / max(1, pixels),
        }
        if r in ranks:
            rank = torch.cat(ranks[r]).float()
            out[r]["true_class_rank_median"] = float(rank.median())
            out[r]["true_class_top1"] = float((rank == 0).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="model folders with auxiliary heads, one per seed")
    ap.add_argument("--data", required=True, help="a dataset folder (classes.txt, images/SPLIT, labels/SPLIT)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-images", type=int, default=0)
    ap.add_argument("--topk", type=int, default=8, help="early rejection's k (SED-fast: 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.topk < 1:
        raise SystemExit(f"--topk must be at least 1, got {args.topk}")
    torch.set_num_threads(args.threads)
    per_model = {}
    for m in args.models:
        per_model[m] = r = score_model(Path(m), args.data, args.split, args.max_images, args.topk)
        print(f"{m}: mIoU " + ", ".join(f"{w} {v:.1f}" for w, v in r["mIoU"].items()), flush=True)
    rows = list(per_model.values())
    off = [r["mIoU"]["off"] for r in rows]
    print(f"\n{args.data}:{args.split}, {len(rows)} models, k = {args.topk} of {rows[0]['classes']} classes, pass 1")
    print(
        f"off (no rejection): mIoU {spread(off)}; classes present per image "
        f"{spread([r['present_per_image'] for r in rows])}"
    )
    print(
        "| rule | mIoU - off (paired) | classes kept per image | present classes kept (%) | labelled pixels "
        "rejected (%) | classes above the true class at its pixels, median | true class first (%) |"
    )
    print("|---|---|---|---|---|---|---|")
    differences = {}
    for way in rows[0]["mIoU"]:
        if way == "off":
            continue
        differences[way] = [r["mIoU"][way] - o for r, o in zip(rows, off)]
        rule = "on" if way == "masked" else way
        cells = [spread(differences[way], signed=True)]
        for key, scale in (
            ("kept_per_image", 1),
            ("present_kept", 100),
            ("labelled_pixels_rejected", 100),
            ("true_class_rank_median", 1),
            ("true_class_top1", 100),
        ):
            values = [scale * r[rule][key] for r in rows if key in r[rule]]
            cells.append(spread(values) if values else "-")
        print(f"| {WAY_NAMES.get(way, way)} | " + " | ".join(cells) + " |")
    if args.json:
        atomic_write_json(
            Path(args.json),
            {
                "data": args.data,
                "split": args.split,
                "topk": args.topk,
                "models": per_model,
                "differences": differences,
            },
            indent=2,
        )


if __name__ == "__main__":
    main()
