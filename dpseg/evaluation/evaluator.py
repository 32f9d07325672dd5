"""Evaluate a model on a dataset: inference protocol -> confusion matrices -> metrics, optionally distributed.

Under ``torch.distributed`` each rank takes every world_size-th image and the confusion matrices are summed
across ranks before the metrics, so the numbers equal a single-process run.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from dpseg.errors import InputError
from dpseg.evaluation.inference import model_forward, predict, protocol_from_config, refine_policy
from dpseg.evaluation.metrics import ConfusionMatrix, metrics_from_confusion
from dpseg.progress import progress as progress_bar


class SemSegEvaluator:
    """Streaming mIoU for one prediction stream.

    ``merge_predictions_from=m`` maps every predicted index >= m to m before counting (PAS-20b: the model is
    prompted with 20 VOC names + 39 background-like names and anything past the first 20 is "background").
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Optional[Sequence[str]] = None,
        merge_predictions_from: Optional[int] = None,
        device=None,
    ):
        if merge_predictions_from is not None and merge_predictions_from != num_classes - 1:
            raise InputError(
                f"merge_predictions_from={merge_predictions_from} must be the last class ({num_classes - 1})"
            )
        self.class_names = list(class_names) if class_names is not None else None
        self.merge_from = merge_predictions_from
        self.conf = ConfusionMatrix(num_classes, device)
        self.num_images = 0

    def reset(self) -> None:
        self.conf.reset()
        self.num_images = 0

    def process(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        if self.merge_from is not None:
            pred = pred.clamp(max=self.merge_from)
        self.conf.update(pred, gt)
        self.num_images += 1

    def confusion(self) -> torch.Tensor:
        return self.conf.all_reduce()

    def compute(self) -> dict:
        return metrics_from_confusion(self.confusion(), self.class_names)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _collate(items):
    return items


@torch.no_grad()
def evaluate(
    model,
    prompts,
    dataset,
    eval_cfg,
    device="cpu",
    two_pass: Optional[bool] = None,
    max_images: Optional[int] = None,
    progress: bool = True,
    forward=None,
    desc: str = "",
) -> dict:
    """Evaluate on ``dataset`` with the protocol of ``eval_cfg`` (an EvalConfig).

    ``dataset`` yields items ``{"image", "label"}`` and has ``class_names`` (label order); ``prompts`` must hold
    ``dataset.vocabulary`` (default: the class names) in order. ``forward`` replaces the model call (tests, or a
    custom runner); by default it is ``model(images, prompts)``, or the two-pass refinement when ``two_pass``.
    Returns ``{"pass1": metrics[, "pass2": metrics], "num_images": n, "seconds": t, "protocol": {...}}``.
    """
    two_pass = eval_cfg.two_pass if two_pass is None else two_pass
    protocol = protocol_from_config(eval_cfg)
    vocab = list(getattr(dataset, "vocabulary", dataset.class_names))
    merge = getattr(dataset, "merge_predictions_from", None)
    num_classes = len(dataset.class_names)
    ds_name = getattr(dataset, "name", type(dataset).__name__)
    if prompts is not None and len(prompts.class_names) != len(vocab):
        raise InputError(
            f"prompts hold {len(prompts.class_names)} classes but dataset '{ds_name}' is prompted with {len(vocab)}"
        )
    if forward is None:
        forward = model_forward(
            model,
            prompts,
            two_pass=two_pass,
            class_chunk=eval_cfg.class_chunk,
            refine=refine_policy(eval_cfg),
            early_rejection_topk=eval_cfg.early_rejection_topk,
        )
    limit = eval_cfg.max_images if max_images is None else max_images
    n = len(dataset) if not limit else min(limit, len(dataset))
    rank, world = _rank_world()
    indices = list(range(rank, n, world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=max(1, eval_cfg.batch_size),
        shuffle=False,
        num_workers=eval_cfg.num_workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    # created up front so that every rank all-reduces the same matrices even if it got no images
    evaluators = {
        key: SemSegEvaluator(num_classes, dataset.class_names, merge, "cpu")
        for key in (("pass1", "pass2") if two_pass else ("pass1",))
    }
    bar = progress_bar(len(indices), desc or ds_name, unit="img", enabled=progress and rank == 0)
    start = time.perf_counter()
    for batch in loader:
        preds = predict(forward, [it["image"] for it in batch], protocol, device, num_classes=len(vocab))
        for item, pred in zip(batch, preds):
            if set(pred) != set(evaluators):
                raise InputError(f"the forward function returned passes {sorted(pred)}, expected {sorted(evaluators)}")
            for key, p in pred.items():
                evaluators[key].process(p.labels, item["label"])
        bar.update(len(batch))
    bar.close()
    out: dict = {key: ev.compute() for key, ev in sorted(evaluators.items())}
    out.update(
        num_images=n,
        seconds=round(time.perf_counter() - start, 2),
        protocol={
            "name": protocol.name,
            "short_side": protocol.short_side,
            "input_size": protocol.input_size,
            **({"window": protocol.window, "overlap": protocol.overlap} if protocol.name == "slide" else {}),
        },
    )
    return out
