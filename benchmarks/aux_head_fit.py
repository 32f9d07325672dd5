"""Does the first auxiliary head's training objective itself rank classes badly? Fit a fresh stage-0 auxiliary head
on a trained model's frozen stage-0 inputs and watch how it ranks the true class.

    python benchmarks/aux_head_fit.py --model RUN/final --data WORLD/seen [--steps 1000] [--lr 2e-3] [--json out.json]

SED's (and dpseg's) stage-0 auxiliary head is a 3x3 conv on the *detached* cost embedding of each class, trained by
its own per-class BCE (the training loss, ``SegmentationLoss``); category early rejection ranks classes by it. This
script takes the model's stage-0 inputs (the cost embedding of every class) for ``--train-images`` training scenes
(whole images at the model's input size), fits a freshly initialised head of the same shape on them with the same
loss (AdamW, batch 4, the model's learning rate by default), and on ``--held-out`` other training scenes reports,
before and during the fit and for the model's own trained head: the BCE, and at every labelled pixel how many
classes score above the true class (median) and how often the true class is first. The model is not changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from early_rejection_diagnosis import true_class_rank  # noqa: E402
from refinement_ablation import load_for_scoring  # noqa: E402

from dpseg.atomic import atomic_write_json
from dpseg.evaluation.protocols import whole_view
from dpseg.model.decoder import ClassHead
from dpseg.model.dual_prompt import dual_prompt
from dpseg.model.loss import SegmentationLoss


def quality(head: torch.nn.Module, inputs: list, labels: list, loss_fn) -> dict:
    """BCE and true-class rank of ``head`` over held-out stage-0 inputs (1, K, C, h, w) and labels (1, H, W)."""
    with torch.no_grad():
        scores = [head(x) for x in inputs]  # (1, K, h, w) each
        loss = sum(float(loss_fn(s, y)) for s, y in zip(scores, labels)) / len(inputs)
        rank = torch.cat([true_class_rank(s, y[0]) for s, y in zip(scores, labels)]).float()
    return {"loss": loss, "rank_median": float(rank.median()), "top1": float((rank == 0).float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a trained model folder with auxiliary heads")
    ap.add_argument("--data", required=True, help="the dataset folder it was trained on (its train split is used)")
    ap.add_argument("--train-images", type=int, default=150)
    ap.add_argument("--held-out", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.0, help="0: the model's train.lr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model, cfg, dataset, prompts = load_for_scoring(Path(args.model), args.data, "train", [], "the head fit")
    if model.decoder.aux_heads is None:
        raise SystemExit(f"{args.model} has no auxiliary heads (model.aux_heads=false)")
    n = args.train_images + args.held_out
    if n > len(dataset):
        raise SystemExit(f"{args.data} has {len(dataset)} training scenes; --train-images + --held-out is {n}")
    inputs, labels = [], []
    with torch.no_grad():
        R = dual_prompt(prompts.text, prompts.visual, model.prompt_type)  # (K, M, d)
        for i in range(n):
            item = dataset[i]
            feats = model.encode_image(whole_view(item["image"], cfg.eval, "cpu"))
            inputs.append(model.embed_cost_volume(feats.dense, R).contiguous())  # (1, K, C_0, h, w)
            labels.append(item["label"][None])  # (1, H, W)
    fit_x, fit_y = inputs[: args.train_images], labels[: args.train_images]
    test_x, test_y = inputs[args.train_images :], labels[args.train_images :]
    loss_fn = SegmentationLoss(cfg.train.loss_ignore)
    head = ClassHead(inputs[0].shape[2])
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr or cfg.train.lr)
    results = {"trained head of the model": quality(model.decoder.aux_heads[0], test_x, test_y, loss_fn)}
    results["fresh head, step 0"] = quality(head, test_x, test_y, loss_fn)
    checkpoints = {s for s in (10, 50, 260, 400, args.steps) if s <= args.steps}
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, len(fit_x), (4,))
        loss = sum(loss_fn(head(fit_x[i]), fit_y[i]) for i in batch.tolist()) / len(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            results[f"fresh head, step {step}"] = quality(head, test_x, test_y, loss_fn)
    K = inputs[0].shape[1]
    print(f"{args.model}, {args.held_out} held-out training scenes, {K} classes")
    print("| head | BCE | classes above the true class at its pixels, median | true class first (%) |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['loss']:.4f} | {r['rank_median']:.0f} | {100 * r['top1']:.1f} |")
    if args.json:
        atomic_write_json(Path(args.json), {"model": args.model, "classes": K, "results": results}, indent=2)


if __name__ == "__main__":
    main()
