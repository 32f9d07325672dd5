"""Semantic-segmentation metrics from a streaming confusion matrix (detectron2 ``SemSegEvaluator`` semantics).

``conf[g, p]`` counts pixels of ground-truth class g predicted as class p; ignored pixels (label -1) are dropped
before counting, so predictions on them never count. Per class c:
IoU = TP / (GT + Pred - TP), Acc = TP / GT. A class with no GT pixel in the whole split has IoU = Acc = NaN and
is left out of the means even if it was predicted (the peers' convention, which the paper's numbers use).
mIoU / mAcc = mean over those classes; fwIoU = sum of IoU weighted by GT pixel share; pAcc = sum TP / sum GT.
All values are reported in percent.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from dpseg.distributed import all_reduce_sum
from dpseg.errors import InputError


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix with ``torch.bincount`` on the device of the inputs."""

    def __init__(self, num_classes: int, device=None):
        if num_classes < 1:
            raise InputError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """pred: integer class map; gt: same shape, -1 (any negative) = ignore."""
        if pred.shape != gt.shape:
            raise InputError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(gt.shape)}")
        if pred.is_floating_point() or gt.is_floating_point():
            raise InputError("predictions and labels must be integer class maps (take the argmax of the scores first)")
        k = self.num_classes
        gt = gt.reshape(-1).to(self.mat.device, torch.int64)
        pred = pred.reshape(-1).to(self.mat.device, torch.int64)
        valid = gt >= 0
        gt, pred = gt[valid], pred[valid]
        if gt.numel() == 0:
            return
        if int(gt.max()) >= k:
            raise InputError(f"label value {int(gt.max())} is out of range for {k} classes")
        if int(pred.min()) < 0 or int(pred.max()) >= k:
            raise InputError(f"prediction values must be in 0..{k - 1}, got {int(pred.min())}..{int(pred.max())}")
        self.mat += torch.bincount(gt * k + pred, minlength=k * k).reshape(k, k)  # (K*K,) -> (K gt, K pred)

    def all_reduce(self) -> torch.Tensor:
        """The matrix summed over all ranks when torch.distributed is initialised (a copy; self is unchanged)."""
        return all_reduce_sum(self.mat).cpu()


def _pct(x: float) -> Optional[float]:
    return None if math.isnan(x) else 100.0 * float(x)


def metrics_from_confusion(conf, class_names: Optional[Sequence[str]] = None) -> dict:
    """mIoU, fwIoU, mAcc, pAcc and per-class IoU / Acc (percent; None for classes absent from the GT)."""
    conf = np.asarray(conf.cpu() if isinstance(conf, torch.Tensor) else conf, dtype=np.float64)
    k = conf.shape[0]
    if conf.shape != (k, k):
        raise InputError(f"confusion matrix must be square, got {conf.shape}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise InputError(f"{len(names)} class names for a {k}-class confusion matrix")
    tp = np.diag(conf)
    gt = conf.sum(axis=1)
    pred = conf.sum(axis=0)
    present = gt > 0
    iou = np.full(k, np.nan)
    acc = np.full(k, np.nan)
    iou[present] = tp[present] / (gt[present] + pred[present] - tp[present])
    acc[present] = tp[present] / gt[present]
    total = gt.sum()
    if total == 0:
        miou = fwiou = macc = pacc = float("nan")
    else:
        miou, macc = iou[present].mean(), acc[present].mean()
        fwiou = float((iou[present] * gt[present] / total).sum())
        pacc = tp.sum() / total
    return {
        "mIoU": _pct(miou),
        "fwIoU": _pct(fwiou),
        "mAcc": _pct(macc),
        "pAcc": _pct(pacc),
        "num_classes": k,
        "classes_present": int(present.sum()),
        "pixels": int(total),
        "per_class_IoU": {n: _pct(v) for n, v in zip(names, iou)},
        "per_class_Acc": {n: _pct(v) for n, v in zip(names, acc)},
    }
