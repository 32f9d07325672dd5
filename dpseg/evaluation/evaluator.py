"""Evaluate a model on a dataset: inference protocol -> confusion matrices -> metrics, optionally distributed.

Under ``torch.distributed`` each rank takes every world_size-th image and the confusion matrices are summed
across ranks before the metrics, so the numbers equal a single-process run.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from dpseg.distributed import rank_world
from dpseg.errors import InputError
from dpseg.evaluation.inference import Inference
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


def _collate(items):
    return items


@torch.no_grad()
def evaluate(
    inference: Inference, dataset, max_images: Optional[int] = None, progress: bool = True, desc: str = ""
) -> dict:
    """Evaluate ``inference`` (a model, the prompts of ``dataset.vocabulary`` - default: its class names - in order,
    and the eval settings) on ``dataset``, which yields items ``{"image", "label"}`` and has ``class_names`` (label
    order). Every pass of the inference is scored. ``max_images`` (None = ``eval.max_images``; 0 = all).
    Returns ``{"pass1": metrics[, "pass2": metrics], "num_images": n, "seconds": t, "protocol": {...}}``.
    """
    settings = inference.settings
    vocab = list(getattr(dataset, "vocabulary", dataset.class_names))
    merge = getattr(dataset, "merge_predictions_from", None)
    num_classes = len(dataset.class_names)
    ds_name = getattr(dataset, "name", type(dataset).__name__)
    if inference.num_classes != len(vocab):
        raise InputError(
            f"prompts hold {inference.num_classes} classes but dataset '{ds_name}' is prompted with {len(vocab)}"
        )
    limit = settings.max_images if max_images is None else max_images
    n = len(dataset) if not limit else min(limit, len(dataset))
    rank, world = rank_world()
    indices = list(range(rank, n, world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=max(1, settings.batch_size),
        shuffle=False,
        num_workers=settings.num_workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    # created up front so that every rank all-reduces the same matrices even if it got no images
    evaluators = {key: SemSegEvaluator(num_classes, dataset.class_names, merge, "cpu") for key in inference.passes}
    bar = progress_bar(len(indices), desc or ds_name, unit="img", enabled=progress and rank == 0)
    start = time.perf_counter()
    for batch in loader:
        for item, pred in zip(batch, inference.predict([it["image"] for it in batch])):
            for key, p in pred.items():
                evaluators[key].process(p.labels, item["label"])
        bar.update(len(batch))
    bar.close()
    out: dict = {key: ev.compute() for key, ev in sorted(evaluators.items())}
    out.update(
        num_images=n,
        seconds=round(time.perf_counter() - start, 2),
        protocol={
            "name": settings.protocol,
            "short_side": settings.short_side,
            "input_size": settings.input_size,
            **(
                {"window": settings.slide_window, "overlap": settings.slide_overlap}
                if settings.protocol == "slide"
                else {}
            ),
        },
    )
    return out
